//! API-session state: which flow to use, the current token, and when to refresh it.
//! The decisions here are pure functions; the controller shell performs the requests.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use super::{ControllerConfig, VersionInfo};

/// Which authentication flow to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    /// As the upstream SDKs choose: OIDC when the controller advertises `OIDC_AUTH` and an
    /// `edge-oidc` API (always OIDC when the identity lists several controllers), else legacy.
    #[default]
    Auto,
    /// Always OIDC (auth-code + PKCE with the client certificate).
    Oidc,
    /// Always a legacy `zt-session` API session.
    Legacy,
}

/// The flow an API session was obtained with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// OIDC access token (a JWT), sent as `Authorization: Bearer`.
    Oidc,
    /// Legacy session token, sent as `zt-session`.
    Legacy,
}

/// The current API session credential, as the data plane needs it (routers receive it in the
/// channel hello and, for OIDC, in UpdateToken after each refresh). `Debug` redacts the secret.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiToken {
    kind: TokenKind,
    secret: Arc<str>,
    expires_at: Option<SystemTime>,
}

impl fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiToken")
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

impl ApiToken {
    pub(crate) fn new(kind: TokenKind, secret: &str, lifetime: Option<Duration>) -> Self {
        Self {
            kind,
            secret: Arc::from(secret),
            expires_at: lifetime.and_then(|l| SystemTime::now().checked_add(l)),
        }
    }

    /// OIDC or legacy.
    pub fn kind(&self) -> TokenKind {
        self.kind
    }

    /// The token itself: the access-token JWT (OIDC) or the `zt-session` value (legacy).
    /// Never log it.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// When the controller will stop accepting it (legacy: after this much inactivity).
    pub fn expires_at(&self) -> Option<SystemTime> {
        self.expires_at
    }

    /// The HTTP header that carries this token.
    pub(crate) fn header(&self) -> (&'static str, String) {
        match self.kind {
            TokenKind::Oidc => ("authorization", format!("Bearer {}", self.secret)),
            TokenKind::Legacy => (super::legacy::ZT_SESSION, self.secret.to_string()),
        }
    }
}

/// An established API session.
pub(crate) struct AuthSession {
    pub token: ApiToken,
    /// OIDC refresh token.
    pub refresh_token: Option<String>,
    /// Lifetime the controller granted.
    pub lifetime: Option<Duration>,
    /// When it was obtained or last refreshed.
    pub obtained: Instant,
}

impl AuthSession {
    /// Next refresh instant for this session under `cfg`.
    pub fn refresh_at(&self, cfg: &ControllerConfig) -> Instant {
        self.obtained + refresh_delay(self.lifetime, cfg)
    }
}

/// Picks the flow (edge-client-api.md §3.2).
pub(crate) fn choose(
    method: AuthMethod,
    version: &VersionInfo,
    several_controllers: bool,
) -> TokenKind {
    match method {
        AuthMethod::Oidc => TokenKind::Oidc,
        AuthMethod::Legacy => TokenKind::Legacy,
        AuthMethod::Auto if several_controllers || version.supports_oidc() => TokenKind::Oidc,
        AuthMethod::Auto => TokenKind::Legacy,
    }
}

/// Default refresh delay when the controller reports no lifetime.
const UNKNOWN_LIFETIME_REFRESH: Duration = Duration::from_secs(300);

/// How long after obtaining a token to refresh it: half its lifetime (the C SDK refreshes between
/// 1/2 and 5/6), never later than `refresh_margin` before expiry, never sooner than
/// `min_refresh_interval`; `refresh_interval_override` wins outright (tests).
pub(crate) fn refresh_delay(lifetime: Option<Duration>, cfg: &ControllerConfig) -> Duration {
    if let Some(d) = cfg.refresh_interval_override {
        return d;
    }
    let delay = match lifetime {
        Some(l) => match (l / 2).min(l.saturating_sub(cfg.refresh_margin)) {
            // The margin does not fit into a short lifetime: fall back to half of it.
            d if d.is_zero() => l / 2,
            d => d,
        },
        None => UNKNOWN_LIFETIME_REFRESH,
    };
    delay.max(cfg.min_refresh_interval)
}

/// Back-off after failed refresh attempts: 1 s doubling to 60 s.
pub(crate) fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn version(caps: &[&str], oidc_api: bool) -> VersionInfo {
        let mut v = serde_json::json!({"version":"v2.0.3","capabilities":caps,"apiVersions":{}});
        if oidc_api {
            v["apiVersions"]["edge-oidc"] = serde_json::json!({"v1":{"path":"/oidc"}});
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn auto_follows_capabilities_and_controller_count() {
        let oidc = version(&["OIDC_AUTH", "HA_CONTROLLER"], true);
        let caps_only = version(&["OIDC_AUTH"], false);
        let legacy = version(&[], false);
        assert_eq!(choose(AuthMethod::Auto, &oidc, false), TokenKind::Oidc);
        assert_eq!(
            choose(AuthMethod::Auto, &caps_only, false),
            TokenKind::Legacy
        );
        assert_eq!(choose(AuthMethod::Auto, &legacy, false), TokenKind::Legacy);
        assert_eq!(choose(AuthMethod::Auto, &legacy, true), TokenKind::Oidc);
        assert_eq!(choose(AuthMethod::Legacy, &oidc, true), TokenKind::Legacy);
        assert_eq!(choose(AuthMethod::Oidc, &legacy, false), TokenKind::Oidc);
    }

    #[test]
    fn refresh_schedule() {
        let cfg = ControllerConfig::default();
        // 30 min token: refresh at 15 min.
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(1800)), &cfg),
            Duration::from_secs(900)
        );
        // Tiny lifetimes are clamped to the minimum interval.
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(2)), &cfg),
            cfg.min_refresh_interval
        );
        assert_eq!(refresh_delay(None, &cfg), UNKNOWN_LIFETIME_REFRESH);
        // A 1-minute token (controller minimum) with the default 60 s margin: half-life.
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(60)), &cfg),
            Duration::from_secs(30)
        );
        // Where the margin fits but is tighter than half-life, it wins.
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(90)), &cfg),
            Duration::from_secs(30)
        );
        let forced = ControllerConfig {
            refresh_interval_override: Some(Duration::from_millis(1500)),
            ..ControllerConfig::default()
        };
        assert_eq!(
            refresh_delay(Some(Duration::from_secs(1800)), &forced),
            Duration::from_millis(1500)
        );
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(30), Duration::from_secs(60));
    }

    #[test]
    fn token_debug_is_redacted() {
        let t = ApiToken::new(TokenKind::Oidc, "eyJsecret", Some(Duration::from_secs(5)));
        assert!(!format!("{t:?}").contains("eyJsecret"));
        assert_eq!(
            t.header(),
            ("authorization", "Bearer eyJsecret".to_string())
        );
    }
}
