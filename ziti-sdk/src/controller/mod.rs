//! Controller Edge Client API client: mutual TLS against `id.ca`, authentication (OIDC or legacy),
//! token refresh, and the request helpers the service and session modules build on.
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! use ziti_sdk::controller::{Controller, ControllerConfig};
//! let id = ziti_sdk::identity::Identity::load("client.json")?;
//! let ctrl = Controller::connect(&id, ControllerConfig::default()).await?;
//! for svc in ctrl.services().await? {
//!     println!("{} dial={} bind={}", svc.name, svc.permissions.dial, svc.permissions.bind);
//! }
//! let mut tokens = ctrl.token_watch(); // new token after each OIDC refresh
//! # let _ = tokens.changed().await; Ok(()) }
//! ```

/// Evaluates `$op` (an expression using the Client API URL bound to `$api`) against the current
/// controller; when that one cannot answer (unreachable, or a cluster member without a leader),
/// against the next, each known controller at most once. (A macro, not a function taking an
/// async closure, so the futures stay `Send`.)
macro_rules! on_any_controller {
    ($ctrl:expr, $api:ident => $op:expr) => {{
        let tries = $ctrl.controller_count();
        let mut attempt = 1;
        loop {
            let $api = $ctrl.api_url();
            match $op {
                Err(e) if attempt < tries && $crate::controller::worth_another_controller(&e) => {
                    $ctrl.fail_over(&$api, &e);
                    attempt += 1;
                }
                other => break other,
            }
        }
    }};
}

mod api_error;
mod auth;
mod endpoints;
mod http;
mod legacy;
mod oidc;
mod request;
mod version;

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::sync::{Mutex, watch};
use url::Url;

pub use api_error::{ApiError, ApiErrorCode};
pub use auth::{ApiToken, AuthMethod, TokenKind};
pub use http::Unreachable;
pub(crate) use http::{client as http_client, read_body};
pub use version::VersionInfo;

use crate::error_report::error_chain;
use crate::identity::{Identity, IdentityError, controller_root};
use auth::AuthSession;

/// Config types requested with every service listing by default.
pub const DEFAULT_CONFIG_TYPES: [&str; 4] = [
    "intercept.v1",
    "ziti-tunneler-client.v1",
    "host.v1",
    "host.v2",
];

/// Settings of a [`Controller`].
#[derive(Debug, Clone)]
pub struct ControllerConfig {
    /// Which authentication flow to use.
    pub auth_method: AuthMethod,
    /// Config types to embed in service listings.
    pub config_types: Vec<String>,
    /// Timeout of each HTTP request.
    pub request_timeout: Duration,
    /// Refresh at least this long before the token expires.
    pub refresh_margin: Duration,
    /// Never refresh more often than this (protects against tiny lifetimes).
    pub min_refresh_interval: Duration,
    /// Refresh this long after each token is obtained, whatever its lifetime (tests use it to
    /// force OIDC refreshes without waiting half an hour).
    pub refresh_interval_override: Option<Duration>,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            auth_method: AuthMethod::Auto,
            config_types: DEFAULT_CONFIG_TYPES.iter().map(|s| s.to_string()).collect(),
            request_timeout: Duration::from_secs(30),
            refresh_margin: Duration::from_secs(60),
            min_refresh_interval: Duration::from_secs(5),
            refresh_interval_override: None,
        }
    }
}

impl ControllerConfig {
    /// Defaults with the given authentication method.
    pub fn with_auth_method(auth_method: AuthMethod) -> Self {
        Self {
            auth_method,
            ..Self::default()
        }
    }
}

/// Errors from controller calls.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControllerError {
    /// Network/TLS failure.
    #[error(transparent)]
    Unreachable(#[from] Unreachable),
    /// The controller answered with an error.
    #[error("{0}")]
    Api(ApiError),
    /// Authentication failed. The text includes the whole cause (typically the controller's
    /// [`ApiError`], see [`ControllerError::api_error`]), so there is no `source()`.
    #[error("{kind} authentication failed: {}", crate::error_report::error_chain(cause.as_ref()))]
    Authentication {
        /// `OIDC` or `legacy`.
        kind: &'static str,
        /// What went wrong.
        cause: Box<ControllerError>,
    },
    /// The identity needs a TOTP code, which this SDK cannot provide yet.
    #[error("this identity requires MFA (TOTP), which is not supported yet")]
    MfaRequired,
    /// The controller answered something we did not expect.
    #[error("unexpected controller answer: {0}")]
    Protocol(String),
    /// An answer could not be decoded.
    #[error("unexpected controller answer to {what}")]
    Decode {
        /// The request or document, e.g. `GET services`.
        what: String,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// A URL built from the controller's address or answers is invalid.
    #[error("invalid controller URL `{url}`")]
    Url {
        /// The text that should have been a URL.
        url: String,
        /// The parser's error.
        #[source]
        source: url::ParseError,
    },
    /// The identity's TLS material is unusable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// HTTP client construction failed.
    #[error("HTTP client setup failed")]
    Http(#[source] reqwest::Error),
}

impl ControllerError {
    /// The controller's error code, if this error carries one (looking through
    /// `Authentication`).
    pub fn api_error(&self) -> Option<&ApiError> {
        match self {
            Self::Api(e) => Some(e),
            Self::Authentication { cause, .. } => cause.api_error(),
            _ => None,
        }
    }
}

/// A connection to one controller. Cheap to clone; background refresh ends when the last clone
/// is dropped.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("api", &self.api_url().as_str())
            .finish_non_exhaustive()
    }
}

struct Inner {
    http: reqwest::Client,
    /// The identity's controllers and the cluster members learned since; one is current.
    endpoints: std::sync::Mutex<endpoints::Endpoints>,
    several_controllers: bool,
    config: ControllerConfig,
    version: VersionInfo,
    auth: Mutex<Option<AuthSession>>,
    token_tx: watch::Sender<Option<ApiToken>>,
    pub(crate) sessions: crate::session::SessionCache,
    refresher: std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Ok(mut r) = self.refresher.lock()
            && let Some(h) = r.take()
        {
            h.abort();
        }
    }
}

/// `sdkInfo` sent at login.
pub(crate) fn sdk_info() -> Value {
    serde_json::json!({"type": "ziti-sdk-rust", "version": env!("CARGO_PKG_VERSION")})
}

/// `envInfo` sent at login.
pub(crate) fn env_info() -> Value {
    serde_json::json!({"os": std::env::consts::OS, "arch": std::env::consts::ARCH})
}

/// `api` + `/` + `rel` (rel may carry a query string).
pub(crate) fn api_join(api: &Url, rel: &str) -> Result<Url, ControllerError> {
    let s = format!(
        "{}/{}",
        api.as_str().trim_end_matches('/'),
        rel.trim_start_matches('/')
    );
    Url::parse(&s).map_err(|source| ControllerError::Url { url: s, source })
}

impl Controller {
    /// Connects to the identity's controller: builds the mutual-TLS client (roots = `id.ca`) and
    /// reads `GET /version`, trying each controller URL in order. Authentication happens on the
    /// first call that needs it, or explicitly with [`authenticate`](Self::authenticate).
    pub async fn connect(
        identity: &Identity,
        mut config: ControllerConfig,
    ) -> Result<Self, ControllerError> {
        // Config types named in the identity file (Go SDK extension) are requested too.
        for t in identity.config_types().unwrap_or_default() {
            if !config.config_types.contains(t) {
                config.config_types.push(t.clone());
            }
        }
        let tls = identity.rustls_client_config(&[b"http/1.1"])?;
        let http =
            http_client(tls, config.request_timeout, false).map_err(ControllerError::Http)?;
        let urls = identity.client_api_urls();
        let mut first_err = None;
        for api in urls {
            match version::fetch(&http, api).await {
                Ok(version) => {
                    tracing::info!(controller = %api, version = %version.version, "using controller");
                    let (token_tx, _) = watch::channel(None);
                    let inner = Arc::new(Inner {
                        http,
                        endpoints: std::sync::Mutex::new(endpoints::Endpoints::new(urls, api)),
                        several_controllers: urls.len() > 1,
                        config,
                        version,
                        auth: Mutex::new(None),
                        token_tx,
                        sessions: crate::session::SessionCache::default(),
                        refresher: std::sync::Mutex::new(None),
                    });
                    return Ok(Self { inner });
                }
                Err(e) => {
                    tracing::debug!(controller = %api, error = %error_chain(&e), "controller not usable");
                    first_err.get_or_insert(e);
                }
            }
        }
        Err(first_err.unwrap_or(ControllerError::Identity(IdentityError::NoControllerUrl)))
    }

    /// `GET /version` as read at connect time.
    pub fn version(&self) -> &VersionInfo {
        &self.inner.version
    }

    /// Client API URL in use (it changes when that controller stops answering and another
    /// member of the cluster is used).
    pub fn api_url(&self) -> Url {
        match self.inner.endpoints.lock() {
            Ok(e) => e.current().clone(),
            Err(poisoned) => poisoned.into_inner().current().clone(),
        }
    }

    /// Every controller this client knows: the identity's URLs, then the cluster members the
    /// controllers reported (`GET /controllers`, HA clusters only), in the order they are tried.
    pub fn controllers(&self) -> Vec<Url> {
        match self.inner.endpoints.lock() {
            Ok(e) => e.all().to_vec(),
            Err(poisoned) => poisoned.into_inner().all().to_vec(),
        }
    }

    pub(crate) fn controller_count(&self) -> usize {
        self.inner.endpoints.lock().map(|e| e.len()).unwrap_or(1)
    }

    /// `failed` did not answer: move to the next known controller (once per failure, however
    /// many requests saw it).
    pub(crate) fn fail_over(&self, failed: &Url, why: &ControllerError) {
        let next = self
            .inner
            .endpoints
            .lock()
            .ok()
            .and_then(|mut e| e.fail_over(failed));
        if let Some(next) = next {
            tracing::warn!(from = %failed, to = %next, reason = %error_chain(why), "controller not answering; using another");
        }
    }

    /// `GET /controllers?limit=100` with the current token (never logging in: this runs after a
    /// login or refresh), the envelope's `data`.
    async fn cluster_listing(&self) -> Result<Value, ControllerError> {
        let token = match self.inner.auth.lock().await.as_ref() {
            Some(s) => s.token.clone(),
            None => return Ok(Value::Null),
        };
        let api = self.api_url();
        let url = api_join(&api, "controllers?limit=100")?;
        let (name, value) = token.header();
        let resp = self
            .inner
            .http
            .get(url.clone())
            .header(name, value)
            .header("accept", "application/json")
            .send()
            .await
            .map_err(|e| Unreachable::new(&url, e))?;
        let status = resp.status().as_u16();
        let body = read_body(&url, resp).await?;
        if !(200..300).contains(&status) {
            return Err(ControllerError::Api(ApiError::from_body(status, &body)));
        }
        let mut v: Value =
            serde_json::from_slice(&body).map_err(|source| ControllerError::Decode {
                what: "GET controllers".into(),
                source,
            })?;
        Ok(v.get_mut("data").map(Value::take).unwrap_or(Value::Null))
    }

    /// Adds the cluster's members (`GET /controllers`) to the controllers tried when the current
    /// one stops answering. Only HA controllers have the listing.
    async fn learn_cluster(&self) {
        if !self.inner.version.has_capability("HA_CONTROLLER") {
            return;
        }
        match self.cluster_listing().await {
            Ok(data) => {
                let members = endpoints::cluster_client_urls(&data);
                let learned = self
                    .inner
                    .endpoints
                    .lock()
                    .map(|mut e| e.learn(&members))
                    .unwrap_or(false);
                if learned {
                    let all: Vec<String> = self.controllers().iter().map(Url::to_string).collect();
                    tracing::info!(controllers = ?all, "controller cluster members");
                }
            }
            Err(e) => {
                tracing::debug!(error = %error_chain(&e), "cannot list the controller cluster")
            }
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ControllerConfig {
        &self.inner.config
    }

    /// The flow [`authenticate`](Self::authenticate) will use.
    pub fn auth_kind(&self) -> TokenKind {
        auth::choose(
            self.inner.config.auth_method,
            &self.inner.version,
            self.inner.several_controllers,
        )
    }

    /// Authenticates from scratch (replacing any current API session) and returns the token.
    pub async fn authenticate(&self) -> Result<ApiToken, ControllerError> {
        let mut guard = self.inner.auth.lock().await;
        let session = self.login().await?;
        let token = session.token.clone();
        *guard = Some(session);
        drop(guard);
        // Service sessions belong to the previous API session.
        self.inner.sessions.clear();
        self.publish(&token);
        self.ensure_refresher();
        // The other members of an HA cluster, in case this one stops answering.
        let me = self.clone();
        tokio::spawn(async move { me.learn_cluster().await });
        Ok(token)
    }

    /// The current API session token, authenticating first if there is none.
    pub async fn current_access_token(&self) -> Result<ApiToken, ControllerError> {
        {
            let guard = self.inner.auth.lock().await;
            if let Some(s) = guard.as_ref() {
                return Ok(s.token.clone());
            }
        }
        self.authenticate().await
    }

    /// A watch channel holding the current token; it changes after every authentication and
    /// every refresh (router connections push OIDC tokens onward with UpdateToken).
    pub fn token_watch(&self) -> watch::Receiver<Option<ApiToken>> {
        self.inner.token_tx.subscribe()
    }

    /// Ends the API session on the controller (`DELETE /current-api-session`) and forgets it.
    pub async fn logout(&self) -> Result<(), ControllerError> {
        let had = self.inner.auth.lock().await.is_some();
        if had {
            self.request(reqwest::Method::DELETE, "current-api-session", None)
                .await?;
        }
        *self.inner.auth.lock().await = None;
        self.inner.token_tx.send_replace(None);
        Ok(())
    }

    async fn login(&self) -> Result<AuthSession, ControllerError> {
        on_any_controller!(self, api => self.login_at(&api).await)
    }

    async fn login_at(&self, api: &Url) -> Result<AuthSession, ControllerError> {
        let inner = &self.inner;
        let cfg_types = &inner.config.config_types;
        match self.auth_kind() {
            TokenKind::Oidc => {
                let t = oidc::login(&inner.http, &controller_root(api), cfg_types)
                    .await
                    .map_err(|e| wrap_auth("OIDC", e))?;
                Ok(oidc_session(t))
            }
            TokenKind::Legacy => {
                let a = legacy::authenticate(&inner.http, api, cfg_types)
                    .await
                    .map_err(|e| wrap_auth("legacy", e))?;
                Ok(AuthSession {
                    token: ApiToken::new(TokenKind::Legacy, &a.token, a.lifetime),
                    refresh_token: None,
                    lifetime: a.lifetime,
                    obtained: Instant::now(),
                })
            }
        }
    }

    /// Refreshes the current session in place (falls back to a new login when refresh is not
    /// possible or rejected).
    async fn refresh_now(&self) -> Result<ApiToken, ControllerError> {
        let mut guard = self.inner.auth.lock().await;
        let refreshed = match guard.as_ref() {
            Some(s) => match (s.token.kind(), s.refresh_token.as_deref()) {
                (TokenKind::Oidc, Some(rt)) => {
                    on_any_controller!(self, api => {
                        oidc::refresh(&self.inner.http, &controller_root(&api), rt).await
                    })
                    .map(|mut t| {
                        // A provider may omit a new refresh token; the old one stays valid.
                        if t.refresh_token.is_none() {
                            t.refresh_token = Some(rt.to_string());
                        }
                        oidc_session(t)
                    })
                }
                (TokenKind::Legacy, _) => on_any_controller!(self, api => {
                    legacy::refresh(&self.inner.http, &api, s.token.secret()).await
                })
                .map(|a| AuthSession {
                    token: ApiToken::new(TokenKind::Legacy, &a.token, a.lifetime),
                    refresh_token: None,
                    lifetime: a.lifetime,
                    obtained: Instant::now(),
                }),
                (TokenKind::Oidc, None) => {
                    Err(ControllerError::Protocol("no refresh token".into()))
                }
            },
            None => Err(ControllerError::Protocol("no session".into())),
        };
        let session = match refreshed {
            Ok(s) => s,
            // Unreachable: keep the old session, the caller backs off and retries.
            Err(e @ ControllerError::Unreachable(_)) => return Err(e),
            Err(e) => {
                tracing::info!(error = %error_chain(&e), "API session refresh rejected; logging in again");
                let fresh = self.login().await?;
                self.inner.sessions.clear();
                fresh
            }
        };
        let token = session.token.clone();
        let changed = guard.as_ref().map(|s| s.token.secret()) != Some(token.secret());
        *guard = Some(session);
        drop(guard);
        if changed || token.kind() == TokenKind::Oidc {
            self.publish(&token);
        }
        tracing::debug!(kind = ?token.kind(), "API session refreshed");
        Ok(token)
    }

    fn publish(&self, token: &ApiToken) {
        self.inner.token_tx.send_replace(Some(token.clone()));
    }

    fn ensure_refresher(&self) {
        let Ok(mut slot) = self.inner.refresher.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|h| !h.is_finished()) {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        *slot = Some(tokio::spawn(refresh_loop(weak)));
    }

    pub(crate) fn session_cache(&self) -> &crate::session::SessionCache {
        &self.inner.sessions
    }
}

/// Whether another cluster member might answer where this one did not: it was unreachable, or
/// it answered 503 (busy, or a member cut off from its cluster's leader).
pub(crate) fn worth_another_controller(e: &ControllerError) -> bool {
    match e {
        ControllerError::Unreachable(_) => true,
        e => e.api_error().is_some_and(|a| a.status == 503),
    }
}

fn wrap_auth(kind: &'static str, e: ControllerError) -> ControllerError {
    match e {
        // Transport errors already say everything; MFA is its own case.
        e @ (ControllerError::Unreachable(_) | ControllerError::MfaRequired) => e,
        e => ControllerError::Authentication {
            kind,
            cause: Box::new(e),
        },
    }
}

fn oidc_session(t: oidc::TokenResponse) -> AuthSession {
    let lifetime = oidc::lifetime(&t);
    AuthSession {
        token: ApiToken::new(TokenKind::Oidc, &t.access_token, lifetime),
        refresh_token: t.refresh_token,
        lifetime,
        obtained: Instant::now(),
    }
}

/// Background refresh: sleeps until the session's refresh time, refreshes, repeats. Holds only a
/// weak reference so dropping the last `Controller` ends it.
async fn refresh_loop(weak: Weak<Inner>) {
    let mut failures = 0u32;
    loop {
        let wake = {
            let Some(inner) = weak.upgrade() else { return };
            let guard = inner.auth.lock().await;
            match guard.as_ref() {
                Some(s) if failures == 0 => s.refresh_at(&inner.config),
                Some(_) => Instant::now() + auth::backoff(failures),
                // Logged out: nothing to refresh until the next authenticate() restarts us.
                None => return,
            }
        };
        tokio::time::sleep_until(wake.into()).await;
        let Some(inner) = weak.upgrade() else { return };
        let ctrl = Controller { inner };
        match ctrl.refresh_now().await {
            Ok(_) => {
                failures = 0;
                ctrl.learn_cluster().await;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(error = %error_chain(&e), failures, "API session refresh failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_join_handles_slashes_and_queries() {
        let api = Url::parse("https://h:1/edge/client/v1").unwrap();
        assert_eq!(
            api_join(&api, "/services?limit=1").unwrap().as_str(),
            "https://h:1/edge/client/v1/services?limit=1"
        );
        assert_eq!(
            api_join(&api, "current-api-session/service-updates")
                .unwrap()
                .as_str(),
            "https://h:1/edge/client/v1/current-api-session/service-updates"
        );
    }
}
