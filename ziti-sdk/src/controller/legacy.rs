//! Legacy API sessions: `POST /authenticate?method=cert`, header `zt-session`, refreshed by
//! `GET /current-api-session` (edge-client-api.md §3.3). Deprecated upstream, still accepted by
//! 2.x controllers.

use std::time::Duration;

use serde_json::Value;
use url::Url;

use super::{ApiError, ControllerError, Unreachable};

/// Header carrying a legacy session token.
pub(crate) const ZT_SESSION: &str = "zt-session";

/// A legacy API session as the controller described it.
pub(crate) struct LegacyAnswer {
    pub token: String,
    /// Remaining lifetime (inactivity timeout) reported by the controller.
    pub lifetime: Option<Duration>,
}

fn parse(
    headers: &reqwest::header::HeaderMap,
    body: &[u8],
) -> Result<LegacyAnswer, ControllerError> {
    let v: Value = serde_json::from_slice(body).map_err(|source| ControllerError::Decode {
        what: "the API session answer".into(),
        source,
    })?;
    let data = v.get("data").unwrap_or(&Value::Null);
    let token = headers
        .get(ZT_SESSION)
        .and_then(|h| h.to_str().ok())
        .map(str::to_string)
        .or_else(|| {
            data.get("token")
                .and_then(Value::as_str)
                .map(str::to_string)
        })
        .ok_or_else(|| ControllerError::Protocol("api session answer has no token".into()))?;
    let secs = data
        .get("expirationSeconds")
        .and_then(Value::as_u64)
        .or_else(|| {
            headers
                .get("expiration-seconds")
                .and_then(|h| h.to_str().ok())
                .and_then(|s| s.trim().parse().ok())
        });
    Ok(LegacyAnswer {
        token,
        lifetime: secs.map(Duration::from_secs),
    })
}

async fn finish(url: &Url, resp: reqwest::Response) -> Result<LegacyAnswer, ControllerError> {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = super::read_body(url, resp).await?;
    if !(200..300).contains(&status) {
        return Err(ControllerError::Api(ApiError::from_body(status, &body)));
    }
    parse(&headers, &body)
}

/// Certificate authentication.
pub(crate) async fn authenticate(
    http: &reqwest::Client,
    api: &Url,
    config_types: &[String],
) -> Result<LegacyAnswer, ControllerError> {
    let url = super::api_join(api, "authenticate?method=cert")?;
    let body = serde_json::json!({
        "configTypes": config_types,
        "sdkInfo": super::sdk_info(),
        "envInfo": super::env_info(),
    });
    let resp = http
        .post(url.clone())
        .json(&body)
        .send()
        .await
        .map_err(|e| Unreachable::new(&url, e))?;
    finish(&url, resp).await
}

/// Extends the session (any authenticated call would; this one returns the new expiry).
pub(crate) async fn refresh(
    http: &reqwest::Client,
    api: &Url,
    token: &str,
) -> Result<LegacyAnswer, ControllerError> {
    let url = super::api_join(api, "current-api-session")?;
    let resp = http
        .get(url.clone())
        .header(ZT_SESSION, token)
        .send()
        .await
        .map_err(|e| Unreachable::new(&url, e))?;
    let mut ans = finish(&url, resp).await?;
    // The refresh answer repeats the same token; keep ours if the header is absent.
    if ans.token.is_empty() {
        ans.token = token.to_string();
    }
    Ok(ans)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_from_header_or_body() {
        let mut h = reqwest::header::HeaderMap::new();
        let body = br#"{"data":{"token":"body-tok","expirationSeconds":1800},"meta":{}}"#;
        let a = parse(&h, body).unwrap();
        assert_eq!(a.token, "body-tok");
        assert_eq!(a.lifetime, Some(Duration::from_secs(1800)));
        h.insert(ZT_SESSION, "hdr-tok".parse().unwrap());
        h.insert("expiration-seconds", "60".parse().unwrap());
        let a = parse(&h, br#"{"data":{}}"#).unwrap();
        assert_eq!(a.token, "hdr-tok");
        assert_eq!(a.lifetime, Some(Duration::from_secs(60)));
        assert!(parse(&reqwest::header::HeaderMap::new(), br#"{"data":{}}"#).is_err());
    }
}
