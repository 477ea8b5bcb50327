//! The controller's error envelope turned into a typed error (edge-client-api.md §6).
//!
//! Three shapes arrive in practice: the Edge API envelope `{"error":{code,message,cause,...}}`,
//! the bare `{code,message,cause}` of the OIDC login pages, and OAuth's
//! `{"error":"invalid_grant","error_description":"..."}` from the token endpoint.

use std::fmt;

use serde_json::Value;

/// Machine-readable error code from the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ApiErrorCode {
    /// `UNAUTHORIZED`: token missing, expired or invalid.
    Unauthorized,
    /// `INVALID_AUTH`: the controller did not accept the identity's credentials.
    InvalidAuth,
    /// `INVALID_AUTH_METHOD`.
    InvalidAuthMethod,
    /// `NOT_FOUND`: unknown entity or one the identity may not see.
    NotFound,
    /// `NO_EDGE_ROUTERS_AVAILABLE`.
    NoEdgeRoutersAvailable,
    /// `INVALID_POSTURE`.
    InvalidPosture,
    /// `ENROLLMENT_EXPIRED`.
    EnrollmentExpired,
    /// `INVALID_ENROLLMENT_TOKEN`: unknown or already used.
    InvalidEnrollmentToken,
    /// `COULD_NOT_VALIDATE`: request rejected by validation (e.g. no Dial/Bind permission).
    CouldNotValidate,
    /// `INVALID_FIELD`.
    InvalidField,
    /// `COULD_NOT_PROCESS_CSR` / `MISSING_OR_INVALID_CSR`.
    InvalidCsr,
    /// `CERT_IN_USE`.
    CertInUse,
    /// `UNSUPPORTED_MEDIA`.
    UnsupportedMedia,
    /// `RATE_LIMITED` / `SERVER_TOO_MANY_REQUESTS`.
    RateLimited,
    /// `TIMEOUT` / `CLUSTER_NO_LEADER`.
    Unavailable,
    /// `UNHANDLED`: internal controller error.
    Unhandled,
    /// OAuth `invalid_grant` (refresh token expired or revoked).
    InvalidGrant,
    /// Any other code, verbatim.
    Other(String),
}

impl ApiErrorCode {
    /// Maps a controller code string.
    pub fn parse(code: &str) -> Self {
        match code {
            "UNAUTHORIZED" => Self::Unauthorized,
            "INVALID_AUTH" => Self::InvalidAuth,
            "INVALID_AUTH_METHOD" => Self::InvalidAuthMethod,
            "NOT_FOUND" => Self::NotFound,
            "NO_EDGE_ROUTERS_AVAILABLE" => Self::NoEdgeRoutersAvailable,
            "INVALID_POSTURE" => Self::InvalidPosture,
            "ENROLLMENT_EXPIRED" => Self::EnrollmentExpired,
            "INVALID_ENROLLMENT_TOKEN" => Self::InvalidEnrollmentToken,
            "COULD_NOT_VALIDATE" => Self::CouldNotValidate,
            "INVALID_FIELD" => Self::InvalidField,
            "COULD_NOT_PROCESS_CSR" | "MISSING_OR_INVALID_CSR" => Self::InvalidCsr,
            "CERT_IN_USE" => Self::CertInUse,
            "UNSUPPORTED_MEDIA" => Self::UnsupportedMedia,
            "RATE_LIMITED" | "SERVER_TOO_MANY_REQUESTS" => Self::RateLimited,
            "TIMEOUT" | "CLUSTER_NO_LEADER" => Self::Unavailable,
            "UNHANDLED" => Self::Unhandled,
            "invalid_grant" => Self::InvalidGrant,
            other => Self::Other(other.to_string()),
        }
    }

    /// A code inferred from the HTTP status when the body carries none.
    fn from_status(status: u16) -> Self {
        match status {
            401 => Self::Unauthorized,
            404 => Self::NotFound,
            429 => Self::RateLimited,
            503 => Self::Unavailable,
            500 => Self::Unhandled,
            s => Self::Other(format!("HTTP_{s}")),
        }
    }

    /// What the code means for a person, in one line.
    fn explanation(&self) -> Option<&'static str> {
        Some(match self {
            Self::Unauthorized => "the API session is missing or has expired",
            Self::InvalidAuth => {
                "the controller did not accept this identity (unknown or revoked certificate, or \
                 disabled identity)"
            }
            Self::NotFound => "not found, or this identity has no access to it",
            Self::NoEdgeRoutersAvailable => {
                "no edge routers available for this service (check edge-router and \
                 service-edge-router policies and that a router is online)"
            }
            Self::InvalidPosture => "device posture check failed",
            Self::EnrollmentExpired => {
                "enrollment token expired; ask your administrator for a new one"
            }
            Self::InvalidEnrollmentToken => "enrollment token already used or unknown",
            Self::CouldNotValidate | Self::InvalidField => "the controller rejected the request",
            Self::InvalidCsr => "the controller could not process the certificate request",
            Self::CertInUse => "this certificate is already enrolled",
            Self::RateLimited => "the controller is rate limiting requests; retry later",
            Self::Unavailable => "the controller is busy or has no cluster leader; retry later",
            Self::Unhandled => "internal controller error",
            Self::InvalidGrant => "the refresh token was rejected; a new login is needed",
            _ => return None,
        })
    }
}

impl fmt::Display for ApiErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Self::Unauthorized => "UNAUTHORIZED",
            Self::InvalidAuth => "INVALID_AUTH",
            Self::InvalidAuthMethod => "INVALID_AUTH_METHOD",
            Self::NotFound => "NOT_FOUND",
            Self::NoEdgeRoutersAvailable => "NO_EDGE_ROUTERS_AVAILABLE",
            Self::InvalidPosture => "INVALID_POSTURE",
            Self::EnrollmentExpired => "ENROLLMENT_EXPIRED",
            Self::InvalidEnrollmentToken => "INVALID_ENROLLMENT_TOKEN",
            Self::CouldNotValidate => "COULD_NOT_VALIDATE",
            Self::InvalidField => "INVALID_FIELD",
            Self::InvalidCsr => "COULD_NOT_PROCESS_CSR",
            Self::CertInUse => "CERT_IN_USE",
            Self::UnsupportedMedia => "UNSUPPORTED_MEDIA",
            Self::RateLimited => "RATE_LIMITED",
            Self::Unavailable => "UNAVAILABLE",
            Self::Unhandled => "UNHANDLED",
            Self::InvalidGrant => "invalid_grant",
            Self::Other(s) => s,
        };
        f.write_str(s)
    }
}

/// A non-success answer from the controller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    /// HTTP status.
    pub status: u16,
    /// Error code.
    pub code: ApiErrorCode,
    /// The controller's message (may be empty).
    pub message: String,
    /// The innermost `cause.reason` / `causeMessage`, when given (e.g. "service not found").
    pub cause_reason: Option<String>,
}

impl std::error::Error for ApiError {}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.code.explanation() {
            Some(text) => write!(f, "{text}")?,
            None => write!(f, "controller error {}", self.code)?,
        }
        write!(f, " (HTTP {}, {}", self.status, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        if let Some(reason) = &self.cause_reason {
            write!(f, "; cause: {reason}")?;
        }
        f.write_str(")")
    }
}

/// Longest body excerpt kept when the body is not JSON.
const MAX_TEXT: usize = 300;

impl ApiError {
    /// Builds an error from an HTTP status and body, whatever the body's shape.
    pub fn from_body(status: u16, body: &[u8]) -> Self {
        let fallback = || Self {
            status,
            code: ApiErrorCode::from_status(status),
            message: String::from_utf8_lossy(body)
                .trim()
                .chars()
                .take(MAX_TEXT)
                .collect(),
            cause_reason: None,
        };
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            return fallback();
        };
        match v.get("error") {
            // Edge API envelope.
            Some(err @ Value::Object(_)) => Self::from_object(status, err),
            // OAuth token endpoint.
            Some(Value::String(code)) => Self {
                status,
                code: ApiErrorCode::parse(code),
                message: v
                    .get("error_description")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                cause_reason: None,
            },
            _ if v.get("code").is_some_and(Value::is_string) => Self::from_object(status, &v),
            _ => fallback(),
        }
    }

    fn from_object(status: u16, obj: &Value) -> Self {
        let code = obj
            .get("code")
            .and_then(Value::as_str)
            .map(ApiErrorCode::parse)
            .unwrap_or_else(|| ApiErrorCode::from_status(status));
        let message = obj
            .get("message")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        Self {
            status,
            code,
            message,
            cause_reason: cause_reason(obj),
        }
    }

    /// True for `401`s that mean "log in again" rather than "you may not".
    pub fn is_session_expired(&self) -> bool {
        self.status == 401 && matches!(self.code, ApiErrorCode::Unauthorized)
    }
}

/// Walks nested `cause` objects and returns the most specific reason text.
fn cause_reason(obj: &Value) -> Option<String> {
    let mut best = obj
        .get("causeMessage")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string);
    let mut cur = obj.get("cause");
    // Bounded walk: cause chains are short; never trust a server to keep them so.
    for _ in 0..8 {
        let Some(c) = cur else { break };
        match c {
            Value::Object(_) => {
                let text = ["reason", "message"]
                    .iter()
                    .find_map(|k| c.get(*k).and_then(Value::as_str))
                    .filter(|s| !s.is_empty());
                if let Some(t) = text {
                    let field = c.get("field").and_then(Value::as_str);
                    best = Some(match field {
                        Some(f) if !f.is_empty() => format!("{f}: {t}"),
                        _ => t.to_string(),
                    });
                }
                cur = c.get("cause");
            }
            Value::String(s) if !s.is_empty() => {
                best = Some(s.clone());
                break;
            }
            _ => break,
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_edge_envelope_with_nested_cause() {
        let body = br#"{"error":{"code":"COULD_NOT_VALIDATE","message":"The supplied request contains an invalid document",
            "requestId":"r1","cause":{"field":"ServiceId","reason":"service not found","value":"abc"},
            "args":{"urlVars":{}},"data":{}},"meta":{"apiVersion":"0.0.1"}}"#;
        let e = ApiError::from_body(400, body);
        assert_eq!(e.code, ApiErrorCode::CouldNotValidate);
        assert_eq!(
            e.cause_reason.as_deref(),
            Some("ServiceId: service not found")
        );
        let text = e.to_string();
        assert!(text.contains("rejected the request"), "{text}");
        assert!(text.contains("service not found"), "{text}");
    }

    #[test]
    fn enrollment_codes_have_actionable_text() {
        let e = ApiError::from_body(
            400,
            br#"{"error":{"code":"ENROLLMENT_EXPIRED","message":"The enrollment has expired"}}"#,
        );
        assert_eq!(e.code, ApiErrorCode::EnrollmentExpired);
        let t = e.to_string();
        assert!(
            t.contains("expired") && t.contains("ask your administrator"),
            "{t}"
        );
        let e = ApiError::from_body(
            400,
            br#"{"error":{"code":"INVALID_ENROLLMENT_TOKEN","message":"The supplied token is not valid"}}"#,
        );
        assert!(e.to_string().contains("already used or unknown"));
    }

    #[test]
    fn parses_bare_oidc_login_error() {
        let e = ApiError::from_body(
            401,
            br#"{"code":"INVALID_AUTH","message":"The authentication request failed"}"#,
        );
        assert_eq!(e.code, ApiErrorCode::InvalidAuth);
        assert!(e.to_string().contains("did not accept this identity"));
    }

    #[test]
    fn parses_oauth_error() {
        let e = ApiError::from_body(
            400,
            br#"{"error":"invalid_grant","error_description":"refresh token is expired"}"#,
        );
        assert_eq!(e.code, ApiErrorCode::InvalidGrant);
        assert_eq!(e.message, "refresh token is expired");
    }

    #[test]
    fn non_json_bodies_fall_back_to_status() {
        let e = ApiError::from_body(401, b"nope");
        assert!(e.is_session_expired());
        assert_eq!(e.message, "nope");
        let e = ApiError::from_body(418, &[0xff; 2000]);
        assert_eq!(e.code, ApiErrorCode::Other("HTTP_418".into()));
        assert!(e.message.chars().count() <= MAX_TEXT);
        let e = ApiError::from_body(502, br#"{"unexpected":true}"#);
        assert_eq!(e.code, ApiErrorCode::Other("HTTP_502".into()));
    }

    #[test]
    fn unknown_codes_are_kept_verbatim() {
        let e = ApiError::from_body(
            409,
            br#"{"error":{"code":"MFA_NOT_ENROLLED","message":"m"}}"#,
        );
        assert_eq!(e.code, ApiErrorCode::Other("MFA_NOT_ENROLLED".into()));
        assert!(e.to_string().contains("MFA_NOT_ENROLLED"));
    }
}
