//! Edge error information: structured errors (header 1033), error codes, retry hints, and the
//! classification of v2.0.x text-only dial failures.

use std::fmt;

/// Edge error codes (header 1014 and `code` in 1033; sdk-golang proto enum `Error`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ErrorCode(pub u32);

impl ErrorCode {
    /// No error.
    pub const OK: Self = Self(0);
    /// Internal error.
    pub const INTERNAL: Self = Self(1);
    /// API session unknown or expired.
    pub const INVALID_API_SESSION: Self = Self(2);
    /// Service session unknown or expired.
    pub const INVALID_SESSION: Self = Self(3);
    /// Dial token used to bind or vice versa.
    pub const WRONG_SESSION_TYPE: Self = Self(4);
    /// The session does not allow this edge router.
    pub const INVALID_EDGE_ROUTER_FOR_SESSION: Self = Self(5);
    /// Service unknown.
    pub const INVALID_SERVICE: Self = Self(6);
    /// Tunneling not enabled.
    pub const TUNNELING_NOT_ENABLED: Self = Self(7);
    /// Terminator invalid.
    pub const INVALID_TERMINATOR: Self = Self(8);
    /// Precedence invalid.
    pub const INVALID_PRECEDENCE: Self = Self(9);
    /// Cost invalid.
    pub const INVALID_COST: Self = Self(10);
    /// Service requires encryption and a key is missing.
    pub const ENCRYPTION_DATA_MISSING: Self = Self(11);
    /// Operation needs another API session type (e.g. UpdateToken on a legacy session).
    pub const INVALID_API_SESSION_TYPE: Self = Self(12);
    /// Instance id invalid.
    pub const INVALID_INSTANCE_ID: Self = Self(13);
    /// Policy denies access.
    pub const ACCESS_DENIED: Self = Self(14);
    /// Posture check failed (2.1+).
    pub const POSTURE_CHECK_FAILED: Self = Self(15);
}

/// What the router suggests doing after an error (sdk-golang `RetryHint*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RetryHint {
    /// Retry normally.
    #[default]
    Default,
    /// Back off before retrying.
    TooBusy,
    /// Get a fresh session and start over.
    StartOver,
    /// Do not retry.
    NotRetriable,
    /// A value this SDK does not know.
    Unknown(u8),
}

impl From<u8> for RetryHint {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Default,
            1 => Self::TooBusy,
            2 => Self::StartOver,
            3 => Self::NotRetriable,
            other => Self::Unknown(other),
        }
    }
}

/// The JSON error of header 1033: `{"message", "code", "cause", "retryHint"}`.
///
/// Parsed leniently: unknown fields are ignored and missing ones default, because v2.0.x
/// serializes `cause` from an arbitrary Go error and 2.1 adds fields.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct StructuredError {
    /// Human-readable message.
    pub message: String,
    /// Error code.
    pub code: Option<ErrorCode>,
    /// Retry hint.
    pub retry_hint: RetryHint,
    /// Whatever `cause` held, if not null.
    pub cause: Option<serde_json::Value>,
}

impl StructuredError {
    /// Parses the header value; `None` if it is not a JSON object.
    pub fn from_json(raw: &[u8]) -> Option<Self> {
        let v: serde_json::Value = serde_json::from_slice(raw).ok()?;
        let obj = v.as_object()?;
        let message = obj
            .get("message")
            .and_then(|m| m.as_str())
            .unwrap_or_default()
            .to_owned();
        let code = obj
            .get("code")
            .and_then(|c| c.as_u64())
            .and_then(|c| u32::try_from(c).ok())
            .map(ErrorCode);
        let retry_hint = obj
            .get("retryHint")
            .and_then(|r| r.as_u64())
            .map(|r| RetryHint::from(u8::try_from(r).unwrap_or(u8::MAX)))
            .unwrap_or_default();
        let cause = obj.get("cause").filter(|c| !c.is_null()).cloned();
        Some(Self {
            message,
            code,
            retry_hint,
            cause,
        })
    }
}

/// Which side failed to provide an end-to-end encryption key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptionSide {
    /// The dialer (us) sent no public key.
    Initiator,
    /// The hosting terminator registered no public key.
    Terminator,
}

/// Why a dial failed, classified from the StateClosed reply (text body on v2.0.x routers,
/// structured code on newer ones) or from the absence of a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialFailure {
    /// The service has no (online) terminator: nobody is hosting it right now.
    NoTerminators(String),
    /// Policy denies this identity access to the service.
    NotAuthorized(String),
    /// The service does not exist (or is not visible to this identity).
    ServiceNotFound,
    /// The service session is invalid or expired: create a new session and retry.
    InvalidSession(String),
    /// The API session is invalid or expired: re-authenticate.
    InvalidApiSession,
    /// The session does not allow dialing through this edge router.
    WrongEdgeRouter,
    /// The service requires end-to-end encryption and a key was missing.
    EncryptionMissing(EncryptionSide),
    /// The router has no controller connection.
    ControllerUnavailable,
    /// A posture check failed.
    PostureCheckFailed,
    /// No answer within the dial timeout.
    Timeout,
    /// Any other reason, verbatim.
    Other(String),
}

impl DialFailure {
    /// Classifies a StateClosed body text from a v2.0.x router (edge-protocol notes §8.5).
    pub fn classify(text: &str) -> Self {
        let t = text.to_ascii_lowercase();
        let has = |s: &str| t.contains(s);
        if has("no terminators") || has("no online terminators") {
            Self::NoTerminators(text.to_owned())
        } else if has("encryption required") && has("initiator") {
            Self::EncryptionMissing(EncryptionSide::Initiator)
        } else if has("encryption required") && has("terminator") {
            Self::EncryptionMissing(EncryptionSide::Terminator)
        } else if has("no access to service") || has("access denied") || has("not authorized") {
            Self::NotAuthorized(text.to_owned())
        } else if has("invalid api session") {
            Self::InvalidApiSession
        } else if has("invalid edge router") {
            Self::WrongEdgeRouter
        } else if has("invalid service") || has("service not found") {
            Self::ServiceNotFound
        } else if has("invalid session") || has("incorrect session type") || has("service token") {
            Self::InvalidSession(text.to_owned())
        } else if has("no controller available") {
            Self::ControllerUnavailable
        } else if has("posture") {
            Self::PostureCheckFailed
        } else {
            Self::Other(text.to_owned())
        }
    }

    /// Classifies using a structured error code when the router sent one (2.1+), falling back
    /// to the text.
    pub fn from_code_or_text(code: Option<ErrorCode>, text: &str) -> Self {
        match code {
            Some(ErrorCode::INVALID_API_SESSION) => Self::InvalidApiSession,
            Some(ErrorCode::INVALID_SESSION | ErrorCode::WRONG_SESSION_TYPE) => {
                Self::InvalidSession(text.to_owned())
            }
            Some(ErrorCode::INVALID_EDGE_ROUTER_FOR_SESSION) => Self::WrongEdgeRouter,
            Some(ErrorCode::INVALID_SERVICE) => Self::ServiceNotFound,
            Some(ErrorCode::ACCESS_DENIED) => Self::NotAuthorized(text.to_owned()),
            Some(ErrorCode::POSTURE_CHECK_FAILED) => Self::PostureCheckFailed,
            Some(ErrorCode::ENCRYPTION_DATA_MISSING) => match Self::classify(text) {
                enc @ Self::EncryptionMissing(_) => enc,
                _ => Self::EncryptionMissing(EncryptionSide::Initiator),
            },
            _ => Self::classify(text),
        }
    }

    /// `true` if getting a new service session (or re-authenticating) may fix it.
    pub fn needs_new_session(&self) -> bool {
        matches!(self, Self::InvalidSession(_) | Self::InvalidApiSession)
    }

    /// The fabric could not build a path to a terminator that has just changed (a router's
    /// "invalid egress destination": the hosting connection behind the terminator is gone or
    /// being replaced). Nothing was connected, so dialing again a moment later is safe.
    pub fn is_stale_terminator(&self) -> bool {
        matches!(self, Self::Other(t) if t.to_ascii_lowercase().contains("invalid egress destination"))
    }
}

impl fmt::Display for DialFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoTerminators(d) => write!(
                f,
                "no terminators: no one is hosting this service right now ({d})"
            ),
            Self::NotAuthorized(d) => write!(
                f,
                "not authorized: no dial policy grants this identity the service ({d})"
            ),
            Self::ServiceNotFound => f.write_str("service not found"),
            Self::InvalidSession(d) => write!(f, "service session invalid or expired ({d})"),
            Self::InvalidApiSession => {
                f.write_str("API session invalid or expired; authenticate again")
            }
            Self::WrongEdgeRouter => {
                f.write_str("this edge router is not allowed for the service session")
            }
            Self::EncryptionMissing(EncryptionSide::Initiator) => f.write_str(
                "service requires end-to-end encryption but the dialer sent no public key",
            ),
            Self::EncryptionMissing(EncryptionSide::Terminator) => f.write_str(
                "service requires end-to-end encryption but the hosting side registered no key",
            ),
            Self::ControllerUnavailable => {
                f.write_str("edge router has no controller connection; try another router")
            }
            Self::PostureCheckFailed => f.write_str("posture check failed"),
            Self::Timeout => f.write_str("dial timed out waiting for the edge router"),
            Self::Other(t) => f.write_str(t),
        }
    }
}

impl std::error::Error for DialFailure {}
