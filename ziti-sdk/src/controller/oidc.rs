//! OIDC authorization-code flow with PKCE for certificate identities (edge-client-api.md §3.4).
//!
//! The redirect URI `http://localhost:<port>/auth/callback` is never served: every step reads the
//! `Location` header of a 302 itself (the HTTP client follows no redirects).

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use rand::RngCore;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use url::Url;

use super::{ApiError, ControllerError, Unreachable};

/// OIDC client id registered by the controller for native SDKs.
pub(crate) const CLIENT_ID: &str = "openziti";
/// Port of the never-served redirect URI (any port is allowed by the controller).
const REDIRECT_URI: &str = "http://localhost:20315/auth/callback";

/// Tokens from the token endpoint.
#[derive(Clone, Deserialize)]
pub(crate) struct TokenResponse {
    pub access_token: String,
    #[serde(default)]
    pub refresh_token: Option<String>,
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub expires_in: Option<u64>,
}

fn random_b64(n: usize) -> String {
    let mut buf = vec![0u8; n];
    rand::rng().fill_bytes(&mut buf);
    URL_SAFE_NO_PAD.encode(buf)
}

fn protocol(step: &str, detail: impl std::fmt::Display) -> ControllerError {
    ControllerError::Protocol(format!("OIDC {step}: {detail}"))
}

fn location(resp: &reqwest::Response, base: &Url, step: &str) -> Result<Url, ControllerError> {
    let loc = resp
        .headers()
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| protocol(step, "redirect without Location header"))?;
    base.join(loc).map_err(|source| ControllerError::Url {
        url: format!("{loc} (OIDC {step} redirect)"),
        source,
    })
}

async fn error_from(url: &Url, resp: reqwest::Response) -> ControllerError {
    let status = resp.status().as_u16();
    match super::read_body(url, resp).await {
        Ok(body) => ControllerError::Api(ApiError::from_body(status, &body)),
        Err(e) => ControllerError::Unreachable(e),
    }
}

/// Runs the full login; `root` is the controller root URL (OIDC lives at `/oidc` below it).
pub(crate) async fn login(
    http: &reqwest::Client,
    root: &Url,
    config_types: &[String],
) -> Result<TokenResponse, ControllerError> {
    let join = |p: &str| {
        root.join(p).map_err(|source| ControllerError::Url {
            url: format!("{root}{p}"),
            source,
        })
    };
    let verifier = random_b64(32);
    let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
    let state = random_b64(16);
    let nonce = random_b64(16);

    // 1. Authorize: expect a redirect to the login page carrying the auth request id.
    let mut authorize = join("oidc/authorize")?;
    authorize
        .query_pairs_mut()
        .append_pair("client_id", CLIENT_ID)
        .append_pair("response_type", "code")
        .append_pair("scope", "openid offline_access")
        .append_pair("state", &state)
        .append_pair("nonce", &nonce)
        .append_pair("code_challenge", &challenge)
        .append_pair("code_challenge_method", "S256")
        .append_pair("redirect_uri", REDIRECT_URI);
    let resp = http
        .get(authorize.clone())
        .send()
        .await
        .map_err(|e| Unreachable::new(&authorize, e))?;
    let auth_request_id = if resp.status().is_redirection() {
        let loc = location(&resp, &authorize, "authorize")?;
        loc.query_pairs()
            .find(|(k, _)| k == "authRequestID" || k == "id")
            .map(|(_, v)| v.into_owned())
    } else if resp.status().is_success() {
        resp.headers()
            .get("auth-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    } else {
        return Err(error_from(&authorize, resp).await);
    }
    .ok_or_else(|| protocol("authorize", "no auth request id in the answer"))?;

    // 2. Certificate login (the TLS client certificate is the credential).
    let login_url = join("oidc/login/cert")?;
    let body = serde_json::json!({
        "id": auth_request_id,
        "configTypes": config_types,
        "sdkInfo": super::sdk_info(),
    });
    let resp = http
        .post(login_url.clone())
        .json(&body)
        .send()
        .await
        .map_err(|e| Unreachable::new(&login_url, e))?;
    if resp
        .headers()
        .get("totp-required")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    {
        return Err(ControllerError::MfaRequired);
    }
    if !resp.status().is_redirection() {
        return Err(error_from(&login_url, resp).await);
    }
    let callback = location(&resp, &login_url, "login")?;

    // 3. The callback redirects to our redirect URI with the code.
    let resp = http
        .get(callback.clone())
        .send()
        .await
        .map_err(|e| Unreachable::new(&callback, e))?;
    if !resp.status().is_redirection() {
        return Err(error_from(&callback, resp).await);
    }
    let final_loc = location(&resp, &callback, "callback")?;
    let mut code = None;
    let mut got_state = None;
    for (k, v) in final_loc.query_pairs() {
        match k.as_ref() {
            "code" => code = Some(v.into_owned()),
            "state" => got_state = Some(v.into_owned()),
            _ => {}
        }
    }
    if got_state.as_deref() != Some(state.as_str()) {
        return Err(protocol("callback", "state mismatch"));
    }
    let code = code.ok_or_else(|| protocol("callback", "no authorization code"))?;

    // 4. Exchange the code.
    let tokens = token_request(
        http,
        root,
        &[
            ("grant_type", "authorization_code"),
            ("client_id", CLIENT_ID),
            ("code", &code),
            ("code_verifier", &verifier),
            ("redirect_uri", REDIRECT_URI),
        ],
    )
    .await?;
    if let Some(id_token) = &tokens.id_token
        && let Some(claims) = unverified_claims(id_token)
        && let Some(n) = claims.get("nonce").and_then(|n| n.as_str())
        && n != nonce
    {
        return Err(protocol("token", "nonce mismatch"));
    }
    Ok(tokens)
}

/// Refreshes with the `refresh_token` grant (over the same mTLS client: the session may be bound
/// to the certificate).
pub(crate) async fn refresh(
    http: &reqwest::Client,
    root: &Url,
    refresh_token: &str,
) -> Result<TokenResponse, ControllerError> {
    token_request(
        http,
        root,
        &[
            ("grant_type", "refresh_token"),
            ("client_id", CLIENT_ID),
            ("refresh_token", refresh_token),
        ],
    )
    .await
}

async fn token_request(
    http: &reqwest::Client,
    root: &Url,
    form: &[(&str, &str)],
) -> Result<TokenResponse, ControllerError> {
    let url = root
        .join("oidc/oauth/token")
        .map_err(|source| ControllerError::Url {
            url: format!("{root}oidc/oauth/token"),
            source,
        })?;
    let resp = http
        .post(url.clone())
        .header(
            reqwest::header::AUTHORIZATION,
            format!("Basic {}", STANDARD.encode(format!("{CLIENT_ID}:"))),
        )
        .form(form)
        .send()
        .await
        .map_err(|e| Unreachable::new(&url, e))?;
    if !resp.status().is_success() {
        return Err(error_from(&url, resp).await);
    }
    let body = super::read_body(&url, resp).await?;
    serde_json::from_slice(&body).map_err(|source| ControllerError::Decode {
        what: "the OIDC token response".into(),
        source,
    })
}

/// Claims of a JWT without verifying it (the token came from our controller over mTLS).
pub(crate) fn unverified_claims(jwt: &str) -> Option<serde_json::Value> {
    let payload = jwt.split('.').nth(1)?;
    let bytes = URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Lifetime of an access token: `expires_in`, else `exp - iat` from its claims.
pub(crate) fn lifetime(tokens: &TokenResponse) -> Option<Duration> {
    if let Some(s) = tokens.expires_in.filter(|s| *s > 0) {
        return Some(Duration::from_secs(s));
    }
    let claims = unverified_claims(&tokens.access_token)?;
    let exp = claims.get("exp")?.as_i64()?;
    let iat = claims.get("iat")?.as_i64()?;
    u64::try_from(exp - iat).ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lifetime_from_expires_in_or_claims() {
        let t = TokenResponse {
            access_token: "x".into(),
            refresh_token: None,
            id_token: None,
            expires_in: Some(1800),
        };
        assert_eq!(lifetime(&t), Some(Duration::from_secs(1800)));
        let claims = URL_SAFE_NO_PAD.encode(br#"{"iat":100,"exp":160}"#);
        let t = TokenResponse {
            access_token: format!("h.{claims}.s"),
            expires_in: None,
            ..t
        };
        assert_eq!(lifetime(&t), Some(Duration::from_secs(60)));
        assert_eq!(unverified_claims("garbage"), None);
    }

    #[test]
    fn pkce_challenge_is_s256_of_verifier() {
        // RFC 7636 appendix B test vector.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
    }
}
