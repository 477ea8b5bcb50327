//! One-time-token (`ott`) enrollment (edge-client-api.md §2).
//!
//! Order of operations, chosen so that nothing is sent to a controller that has not proven it
//! issued the token:
//! 1. parse the JWT (untrusted) and check `exp` locally;
//! 2. fetch the TLS leaf certificate at `iss` over an unverified connection (nothing sent but a
//!    `GET /version`);
//! 3. verify the JWT signature with that leaf's key (`kid` = SHA-1 of the leaf is checked too);
//! 4. fetch `/.well-known/est/cacerts` over a connection pinned to that exact leaf: this becomes
//!    `id.ca`;
//! 5. generate a key and CSR and `POST /enroll?method=ott&token=<jti>`, verifying TLS against
//!    the new CA bundle.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ziti_sdk::enroll::{enroll, EnrollOptions};
//! let jwt = std::fs::read_to_string("client.jwt")?;
//! let identity = enroll(&jwt, EnrollOptions::default()).await?;
//! identity.save("client.json")?; // mode 0600
//! # Ok(()) }
//! ```

mod cacerts;
mod csr;
mod jwt;

use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustls_pki_types::CertificateDer;
use url::Url;

pub use cacerts::{CaCertsError, certs_to_pem, parse_cacerts_body, parse_pkcs7_certs};
pub use csr::{EnrollKeyType, KeyGenError};
pub use jwt::{EnrollmentClaims, EnrollmentToken, JwtError, JwtHeader};

use crate::controller::{ApiError, ApiErrorCode, Unreachable};
use crate::identity::{
    AcceptAnyServerCert, Identity, IdentityError, PinnedLeafVerifier, tls_config_with_roots,
    tls_config_with_verifier,
};

/// Enrollment settings.
#[derive(Debug, Clone)]
pub struct EnrollOptions {
    /// Key to generate for the identity.
    pub key_type: EnrollKeyType,
    /// Refuse a token whose `exp` has passed without contacting the controller (default true).
    /// Either way an expired token ends in [`EnrollError::Expired`].
    pub check_expiry_locally: bool,
    /// Timeout of each HTTP request.
    pub timeout: Duration,
}

impl Default for EnrollOptions {
    fn default() -> Self {
        Self {
            key_type: EnrollKeyType::default(),
            check_expiry_locally: true,
            timeout: Duration::from_secs(30),
        }
    }
}

impl EnrollOptions {
    /// Default options with the given key type.
    pub fn with_key_type(key_type: EnrollKeyType) -> Self {
        Self {
            key_type,
            ..Self::default()
        }
    }
}

/// Why enrollment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EnrollError {
    /// The JWT could not be parsed.
    #[error("invalid enrollment token")]
    InvalidToken(#[source] JwtError),
    /// The token is past its `exp` (checked locally or reported by the controller).
    #[error("enrollment token expired {detail}; ask your administrator for a new one")]
    Expired {
        /// When it expired, or what the controller said.
        detail: String,
    },
    /// The controller does not know the token: it was used already or never existed.
    #[error("enrollment token already used or unknown (the controller rejected it)")]
    AlreadyUsedOrUnknown,
    /// Only `ott` enrollment is implemented.
    #[error("enrollment method `{0}` is not supported (only `ott`)")]
    UnsupportedMethod(String),
    /// The token's signature does not match the certificate served at its issuer URL. The text
    /// includes the whole cause, so there is no `source()`.
    #[error("refusing to enroll: {}", crate::error_report::error_chain(.0))]
    Untrusted(JwtError),
    /// The issuer URL is unusable.
    #[error("invalid issuer URL `{0}` in enrollment token")]
    BadIssuer(String),
    /// Network or TLS failure talking to the controller.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// The controller served no certificate on the unverified connection.
    #[error("controller at {0} did not present a TLS certificate")]
    NoServerCertificate(String),
    /// The CA bundle could not be read.
    #[error(transparent)]
    CaBundle(#[from] CaCertsError),
    /// Key or CSR generation failed.
    #[error("cannot create the identity's key or certificate request")]
    KeyGeneration(#[from] KeyGenError),
    /// Any other error answer from the controller.
    #[error("enrollment failed")]
    Controller(#[source] ApiError),
    /// The controller's answer was not a certificate.
    #[error("unexpected enrollment response: {0}")]
    BadResponse(String),
    /// The resulting identity is invalid or could not be written.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// A TLS configuration could not be built.
    #[error("TLS setup failed")]
    Tls(#[from] rustls::Error),
    /// HTTP client construction failed.
    #[error("HTTP client setup failed")]
    Http(#[source] reqwest::Error),
}

fn now_unix() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// Enrolls with a one-time token and returns the new identity (not yet saved).
pub async fn enroll(jwt_text: &str, opts: EnrollOptions) -> Result<Identity, EnrollError> {
    let token = EnrollmentToken::parse(jwt_text).map_err(EnrollError::InvalidToken)?;
    let claims = token.claims().clone();
    if opts.check_expiry_locally && token.is_expired_at(now_unix()) {
        let ago = now_unix() - claims.exp.unwrap_or_default();
        return Err(EnrollError::Expired {
            detail: format!("{ago} s ago"),
        });
    }
    if claims.em != "ott" {
        return Err(EnrollError::UnsupportedMethod(claims.em));
    }
    let issuer = Url::parse(&claims.iss)
        .ok()
        .filter(|u| u.scheme() == "https" && u.host_str().is_some())
        .ok_or_else(|| EnrollError::BadIssuer(claims.iss.clone()))?;
    let api = crate::identity::normalize_api_url(issuer.as_str())?;
    let join = |rel: &str| {
        Url::parse(&format!("{}{rel}", api.as_str()))
            .map_err(|_| EnrollError::BadIssuer(claims.iss.clone()))
    };

    // 2. Learn the controller's leaf certificate.
    let leaf = fetch_server_leaf(&join("/version")?, opts.timeout).await?;

    // 3. The token must be signed by that certificate's key.
    if token.kid_matches(leaf.as_ref()) == Some(false) {
        tracing::debug!(
            "enrollment JWT kid does not match the controller leaf; checking signature"
        );
    }
    token
        .verify_with_cert(leaf.as_ref())
        .map_err(EnrollError::Untrusted)?;

    // 4. CA bundle over a connection pinned to the verified leaf.
    let pinned = tls_config_with_verifier(std::sync::Arc::new(PinnedLeafVerifier::new(leaf)))?;
    let client =
        crate::controller::http_client(pinned, opts.timeout, false).map_err(EnrollError::Http)?;
    let ca_url = join("/.well-known/est/cacerts")?;
    let resp = client
        .get(ca_url.clone())
        .header("Accept", "application/pkcs7-mime")
        .send()
        .await
        .map_err(|e| Unreachable::new(&ca_url, e))?;
    let status = resp.status().as_u16();
    let body = crate::controller::read_body(&ca_url, resp).await?;
    if status != 200 {
        return Err(EnrollError::Controller(ApiError::from_body(status, &body)));
    }
    let ca_certs = parse_cacerts_body(&body)?;
    let ca_pem = certs_to_pem(&ca_certs);

    // 5. Key, CSR, enroll.
    let key_type = opts.key_type;
    let sub = claims.sub.clone();
    let (key_pem, csr) = tokio::task::spawn_blocking(move || {
        let key = csr::generate(key_type)?;
        let csr = csr::csr_pem(&key.pair, &sub)?;
        Ok::<_, KeyGenError>((key.pem, csr))
    })
    .await
    .map_err(KeyGenError::Task)??;

    let verified = tls_config_with_roots(&ca_certs)?;
    let client =
        crate::controller::http_client(verified, opts.timeout, false).map_err(EnrollError::Http)?;
    let mut enroll_url = join("/enroll")?;
    enroll_url
        .query_pairs_mut()
        .append_pair("method", "ott")
        .append_pair("token", &claims.jti);
    let resp = client
        .post(enroll_url.clone())
        .header("Content-Type", "application/x-pem-file")
        .header("Accept", "application/json")
        .body(csr)
        .send()
        .await
        .map_err(|e| Unreachable::new(&enroll_url, e))?;
    let status = resp.status().as_u16();
    let body = crate::controller::read_body(&enroll_url, resp).await?;
    if !(200..300).contains(&status) {
        let err = ApiError::from_body(status, &body);
        return Err(match err.code {
            ApiErrorCode::EnrollmentExpired => EnrollError::Expired {
                detail: format!("(controller: {})", err.message),
            },
            ApiErrorCode::InvalidEnrollmentToken => EnrollError::AlreadyUsedOrUnknown,
            _ => EnrollError::Controller(err),
        });
    }
    let cert_pem = cert_from_response(&body)?;
    let identity = Identity::from_pem(api.as_str(), &cert_pem, &key_pem, &ca_pem)?;
    tracing::info!(identity = %identity.name(), controller = %api, "enrolled");
    Ok(identity)
}

/// Enrolls and writes the identity file (mode 0600).
pub async fn enroll_to_file(
    jwt_text: &str,
    opts: EnrollOptions,
    out: impl AsRef<Path>,
) -> Result<Identity, EnrollError> {
    let identity = enroll(jwt_text, opts).await?;
    identity.save(out)?;
    Ok(identity)
}

/// The leaf certificate served at `url`, read over an unverified TLS connection.
async fn fetch_server_leaf(
    url: &Url,
    timeout: Duration,
) -> Result<CertificateDer<'static>, EnrollError> {
    let cfg = tls_config_with_verifier(std::sync::Arc::new(AcceptAnyServerCert::new()))?;
    let client = crate::controller::http_client(cfg, timeout, true).map_err(EnrollError::Http)?;
    let resp = client
        .get(url.clone())
        .send()
        .await
        .map_err(|e| Unreachable::new(url, e))?;
    resp.extensions()
        .get::<reqwest::tls::TlsInfo>()
        .and_then(|info| info.peer_certificate())
        .map(|der| CertificateDer::from(der.to_vec()))
        .ok_or_else(|| EnrollError::NoServerCertificate(url.to_string()))
}

/// The certificate chain from an enrollment answer: JSON `data.cert`, or raw PEM from old
/// controllers.
fn cert_from_response(body: &[u8]) -> Result<String, EnrollError> {
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(body)
        && let Some(cert) = v.pointer("/data/cert").and_then(|c| c.as_str())
    {
        return Ok(cert.to_string());
    }
    let text = String::from_utf8_lossy(body);
    if text.trim_start().starts_with("-----BEGIN CERTIFICATE") {
        return Ok(text.into_owned());
    }
    Err(EnrollError::BadResponse(
        text.chars().take(200).collect::<String>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn response_forms() {
        let pem = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
        let json = serde_json::json!({"data":{"cert":pem},"meta":{}}).to_string();
        assert_eq!(cert_from_response(json.as_bytes()).unwrap(), pem);
        assert_eq!(cert_from_response(pem.as_bytes()).unwrap(), pem);
        assert!(matches!(
            cert_from_response(b"{\"data\":{}}"),
            Err(EnrollError::BadResponse(_))
        ));
    }

    #[tokio::test]
    async fn expired_token_fails_locally_before_any_network_use() {
        use base64::Engine;
        let b64 = |v: serde_json::Value| {
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
        };
        // Issuer points at a port nobody listens on: a network attempt would give Unreachable.
        let jwt = format!(
            "{}.{}.{}",
            b64(serde_json::json!({"alg":"RS256"})),
            b64(
                serde_json::json!({"iss":"https://127.0.0.1:9","sub":"s","jti":"j","exp":1000,"em":"ott"})
            ),
            "c2ln"
        );
        let err = enroll(&jwt, EnrollOptions::default()).await.unwrap_err();
        assert!(matches!(err, EnrollError::Expired { .. }), "{err}");
        let text = err.to_string();
        assert!(
            text.contains("expired") && text.contains("administrator"),
            "{text}"
        );
        // With the local check off, the controller is contacted (and here unreachable).
        let opts = EnrollOptions {
            check_expiry_locally: false,
            ..EnrollOptions::default()
        };
        let err = enroll(&jwt, opts).await.unwrap_err();
        assert!(matches!(err, EnrollError::Unreachable(_)), "{err}");
        assert!(err.to_string().contains("https://127.0.0.1:9"), "{err}");
    }

    #[test]
    fn messages_say_what_to_do() {
        assert!(
            EnrollError::AlreadyUsedOrUnknown
                .to_string()
                .contains("already used or unknown")
        );
    }
}
