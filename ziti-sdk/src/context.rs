//! [`ZitiContext`]: the public face of the SDK. One context per identity: it authenticates with
//! the controller, keeps one channel per edge router, and turns service names into streams.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//! use ziti_sdk::context::ZitiContext;
//!
//! let ctx = ZitiContext::from_file("alice.json").await?;
//! let mut stream = ctx.dial("echo").await?;
//! stream.write_all(b"hello").await?;
//! stream.shutdown().await?; // half-close: the service sees EOF and can still answer
//! let mut answer = Vec::new();
//! stream.read_to_end(&mut answer).await?;
//!
//! let mut listener = ctx.listen("my-service").await?;
//! while let Some(incoming) = listener.accept().await {
//!     println!("call from {:?}", incoming.peer().dialer_identity_name);
//! }
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, watch};

use crate::controller::{
    ApiErrorCode, AuthMethod, Controller, ControllerConfig, ControllerError, TokenKind,
};
use crate::e2ee::KeyPair;
use crate::edge::{DialFailure, Precedence};
use crate::error_report::error_chain;
use crate::identity::Identity;
use crate::router::{
    BindOptions, Binding, DialRequest, EdgeStream, IncomingDial, RouterAddr, RouterError,
    RouterPool,
};
use crate::services::Service;
use crate::session::{Session, SessionType};

/// Default time a dial may take (OpenZiti's default; `connectTimeoutSeconds` overrides per service).
pub const DEFAULT_DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Accepted connections waiting for [`ZitiListener::accept`] before new dials are refused.
const ACCEPT_QUEUE: usize = 1024;
/// Pause before dialing again after a router could not reach a just-changed terminator.
const STALE_TERMINATOR_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between rebind attempts.
const MAX_REBIND_BACKOFF: Duration = Duration::from_secs(2);

/// How a context behaves.
#[derive(Debug, Clone)]
pub struct ContextOptions {
    /// Authentication method (OIDC, legacy, or automatic like the upstream SDKs).
    pub auth: AuthMethod,
    /// Dial timeout when the service does not set one.
    pub dial_timeout: Duration,
    /// SDK flow control (default `true`): each circuit has its own window (SDK xgress mode,
    /// header 1028), so a connection nobody reads slows only itself. `false` uses legacy Data
    /// mode, where a connection whose application stops reading is closed once its receive
    /// buffer stays full (see [`crate::edge::channel`]).
    pub sdk_flow_control: bool,
    /// Channels per edge router that dials are spread over (default
    /// [`DEFAULT_DIAL_CHANNELS`](crate::router::DEFAULT_DIAL_CHANNELS)). The router drops
    /// payloads for a channel whose queue is full, so busy connections sharing one channel
    /// lose and resend each other's data; 1 keeps every connection on one channel per router,
    /// like the Go and C SDKs.
    pub dial_channels: usize,
}

impl Default for ContextOptions {
    fn default() -> Self {
        ContextOptions {
            auth: AuthMethod::Auto,
            dial_timeout: DEFAULT_DIAL_TIMEOUT,
            sdk_flow_control: true,
            dial_channels: crate::router::DEFAULT_DIAL_CHANNELS,
        }
    }
}

/// Per-dial options.
#[derive(Debug, Clone, Default)]
pub struct DialOptions {
    /// Dial the terminator of this hosting identity (`dialOptions.identity`).
    pub identity: Option<String>,
    /// Overrides the service's and the context's timeout.
    pub timeout: Option<Duration>,
    /// Caller id shown to the host.
    pub caller_id: Option<String>,
    /// Application data forwarded to the host.
    pub app_data: Option<Bytes>,
}

/// Per-listen options (terminator settings).
#[derive(Debug, Clone, Default)]
pub struct ListenOptions {
    /// Terminator cost.
    pub cost: u16,
    /// Terminator precedence.
    pub precedence: Precedence,
    /// Make this terminator addressable as `identity` (dialers use `dialOptions.identity`).
    pub identity: Option<String>,
    /// Bind on at most this many of the offered routers (`listenOptions.maxConnections`);
    /// `None`: every router.
    pub max_terminators: Option<usize>,
}

/// Why a dial failed, in terms a person can act on. Every variant names the service; where
/// there is an underlying cause, `source()` gives it (print the chain with
/// [`error_chain`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialError {
    /// The service does not exist or this identity cannot see it.
    #[error(
        "dial {service}: service not found (it does not exist, or no policy gives this identity access)"
    )]
    ServiceNotFound {
        /// Service name.
        service: String,
    },
    /// The identity sees the service but may not dial it.
    #[error("dial {service}: not authorized")]
    NotAuthorized {
        /// Service name.
        service: String,
        /// Who refused, and their words.
        #[source]
        source: DialCause,
    },
    /// Nobody hosts the service right now.
    #[error("dial {service}: no terminators: no host is serving this service right now")]
    NoTerminators {
        /// Service name.
        service: String,
    },
    /// The network did not answer in time.
    #[error("dial {service}: timed out after {after:?}")]
    Timeout {
        /// Service name.
        service: String,
        /// The timeout in force.
        after: Duration,
    },
    /// No edge router could carry the connection.
    #[error("dial {service}: no edge router available")]
    NoEdgeRouters {
        /// Service name.
        service: String,
        /// The controller's answer or the routers' connection failures.
        #[source]
        source: DialCause,
    },
    /// The controller refused or failed.
    #[error("dial {service}: controller request failed")]
    Controller {
        /// Service name.
        service: String,
        /// The controller's error.
        #[source]
        source: ControllerError,
    },
    /// Anything else the router reported.
    #[error("dial {service} failed")]
    Failed {
        /// Service name.
        service: String,
        /// What the router said or what went wrong with it.
        #[source]
        source: DialCause,
    },
}

/// The cause under a [`DialError`]: which party said no, with its own error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DialCause {
    /// The service grants this identity Bind but not Dial.
    #[error("no Dial policy grants this identity access (it may only bind)")]
    BindOnly,
    /// The controller's answer.
    #[error(transparent)]
    Controller(ControllerError),
    /// The edge router's answer or the failure to reach one.
    #[error(transparent)]
    Router(RouterError),
}

/// Why a listen failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ListenError {
    /// The service does not exist or this identity cannot see it.
    #[error("listen {service}: service not found")]
    ServiceNotFound {
        /// Service name.
        service: String,
    },
    /// The identity may not bind the service.
    #[error("listen {service}: not authorized to host this service")]
    NotAuthorized {
        /// Service name.
        service: String,
    },
    /// The controller refused or failed.
    #[error("listen {service}: controller request failed")]
    Controller {
        /// Service name.
        service: String,
        /// The controller's error.
        #[source]
        source: ControllerError,
    },
    /// The bind session offers no edge router.
    #[error("listen {service}: the bind session lists no edge routers")]
    NoEdgeRouters {
        /// Service name.
        service: String,
    },
    /// No router accepted the bind: `source()` is the first router's failure, `others` the rest.
    #[error("listen {service}: no edge router accepted the bind ({} tried)", 1 + others.len())]
    Bind {
        /// Service name.
        service: String,
        /// The first router's failure.
        #[source]
        source: RouterError,
        /// The failures of the other routers.
        others: Vec<RouterError>,
    },
}

/// Errors creating a context.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ContextError {
    /// The identity file could not be used.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// Authentication with the controller failed.
    #[error(transparent)]
    Controller(#[from] ControllerError),
}

/// An authenticated identity with its router channels. Cheap to clone.
#[derive(Clone)]
pub struct ZitiContext {
    inner: Arc<Inner>,
}

struct Inner {
    controller: Controller,
    pool: RouterPool,
    options: ContextOptions,
    services: tokio::sync::Mutex<HashMap<String, Service>>,
}

/// The last clone of a context going away retires its router pool: channels close once the
/// streams and bindings still on them end, so a context dropped while one of its streams is in
/// use does not cut that stream, and nothing stays connected after it.
impl Drop for Inner {
    fn drop(&mut self) {
        self.pool.retire();
    }
}

impl std::fmt::Debug for ZitiContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ZitiContext")
            .field("pool", &self.inner.pool)
            .finish_non_exhaustive()
    }
}

impl ZitiContext {
    /// Loads an identity file and authenticates with default options.
    pub async fn from_file(path: impl AsRef<Path>) -> Result<Self, ContextError> {
        let identity = Identity::load(path)?;
        Self::new(identity, ContextOptions::default()).await
    }

    /// Authenticates `identity` with its controller.
    pub async fn new(identity: Identity, options: ContextOptions) -> Result<Self, ContextError> {
        let controller =
            Controller::connect(&identity, ControllerConfig::with_auth_method(options.auth))
                .await?;
        Self::from_controller(&identity, controller, options).await
    }

    /// Builds a context on a controller connection opened with [`Controller::connect`] for
    /// `identity`, authenticating first unless it already has an API session. The controller's
    /// own configuration decides the authentication method; `options.auth` is not used. Lets a
    /// caller tell "controller unreachable" from "authentication failed".
    pub async fn from_controller(
        identity: &Identity,
        controller: Controller,
        options: ContextOptions,
    ) -> Result<Self, ContextError> {
        let token = controller.current_access_token().await?;
        let oidc = token.kind() == TokenKind::Oidc;
        let tls = Arc::new(identity.rustls_client_config(&[b"ziti-edge"])?);
        let pool = RouterPool::new(
            tls,
            token_strings(&controller, token.secret()),
            oidc,
            identity.name(),
        );
        pool.set_sdk_flow_control(options.sdk_flow_control);
        pool.set_dial_channels(options.dial_channels);
        Ok(ZitiContext {
            inner: Arc::new(Inner {
                controller,
                pool,
                options,
                services: tokio::sync::Mutex::new(HashMap::new()),
            }),
        })
    }

    /// The controller client (services, sessions, ...).
    pub fn controller(&self) -> &Controller {
        &self.inner.controller
    }

    /// The router channels.
    pub fn routers(&self) -> &RouterPool {
        &self.inner.pool
    }

    /// `true` if the API session is OIDC (tokens refreshed and pushed to routers).
    pub fn uses_oidc(&self) -> bool {
        self.inner.controller.auth_kind() == TokenKind::Oidc
    }

    /// Looks a service up by name, refreshing the list from the controller on a miss.
    pub async fn service(&self, name: &str) -> Result<Option<Service>, ControllerError> {
        let mut cache = self.inner.services.lock().await;
        if let Some(s) = cache.get(name) {
            return Ok(Some(s.clone()));
        }
        let all = self.inner.controller.services().await?;
        cache.clear();
        for s in all {
            cache.insert(s.name.clone(), s);
        }
        Ok(cache.get(name).cloned())
    }

    /// Dials `service` and returns a byte stream to whoever hosts it.
    pub async fn dial(&self, service: &str) -> Result<EdgeStream, DialError> {
        self.dial_with(service, &DialOptions::default()).await
    }

    /// Dials with options. Failures are also logged with the service name and the reason.
    pub async fn dial_with(
        &self,
        service: &str,
        opts: &DialOptions,
    ) -> Result<EdgeStream, DialError> {
        let result = self.dial_inner(service, opts).await;
        if let Err(e) = &result {
            tracing::warn!(service, reason = %error_chain(e), "dial failed");
        }
        result
    }

    async fn dial_inner(&self, name: &str, opts: &DialOptions) -> Result<EdgeStream, DialError> {
        let controller_err = |source: ControllerError| DialError::Controller {
            service: name.to_string(),
            source,
        };
        let svc = self
            .service(name)
            .await
            .map_err(controller_err)?
            .ok_or_else(|| DialError::ServiceNotFound {
                service: name.to_string(),
            })?;
        if !svc.permissions.dial {
            return Err(DialError::NotAuthorized {
                service: name.to_string(),
                source: DialCause::BindOnly,
            });
        }
        let timeout = opts
            .timeout
            .or_else(|| svc.configs.intercept().map(|i| i.connect_timeout()))
            .unwrap_or(self.inner.options.dial_timeout);
        // Two attempts: the second after dropping a cached session or a dead router channel.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let last_attempt = attempt >= 2;
            let session = self
                .inner
                .controller
                .session(&svc.id, SessionType::Dial)
                .await
                .map_err(|e| map_session_error(name, e))?;
            let routers = router_addrs(&session);
            let conn = match self.inner.pool.select(&routers).await {
                Ok(conn) => conn,
                Err(e) => {
                    // A session taken while its routers were away (a controller restart, a
                    // router not yet reconnected) is not kept: the next try asks afresh.
                    self.inner
                        .controller
                        .invalidate_session(&svc.id, SessionType::Dial);
                    if !last_attempt {
                        continue;
                    }
                    return Err(DialError::NoEdgeRouters {
                        service: name.to_string(),
                        source: DialCause::Router(e),
                    });
                }
            };
            let req = DialRequest {
                service: name.to_string(),
                session_token: session.token.clone(),
                encrypted: svc.encryption_required,
                terminator_identity: opts.identity.clone(),
                caller_id: opts.caller_id.clone(),
                app_data: opts.app_data.clone(),
                timeout,
            };
            match conn.dial(&req).await {
                Ok(stream) => {
                    tracing::debug!(service = name, router = conn.name(), "dialed");
                    return Ok(stream);
                }
                Err(RouterError::Dial { ref failure, .. })
                    if failure.is_stale_terminator() && !last_attempt =>
                {
                    tracing::debug!(service = name, reason = %failure, "stale terminator; dialing again");
                    tokio::time::sleep(STALE_TERMINATOR_PAUSE).await;
                }
                Err(e @ RouterError::Dial { .. }) => {
                    let retry = matches!(&e, RouterError::Dial { failure, .. } if failure.needs_new_session());
                    if retry {
                        self.inner
                            .controller
                            .invalidate_session(&svc.id, SessionType::Dial);
                        if !last_attempt {
                            continue;
                        }
                    }
                    return Err(map_dial_failure(name, e, timeout));
                }
                Err(RouterError::Timeout { after, .. }) => {
                    return Err(DialError::Timeout {
                        service: name.to_string(),
                        after,
                    });
                }
                Err(e @ RouterError::Closed { .. }) => {
                    if last_attempt {
                        return Err(DialError::NoEdgeRouters {
                            service: name.to_string(),
                            source: DialCause::Router(e),
                        });
                    }
                }
                Err(e) => {
                    return Err(DialError::Failed {
                        service: name.to_string(),
                        source: DialCause::Router(e),
                    });
                }
            }
        }
    }

    /// Hosts `service`: returns once at least one edge router has accepted the bind.
    pub async fn listen(&self, service: &str) -> Result<ZitiListener, ListenError> {
        self.listen_with(service, &ListenOptions::default()).await
    }

    /// Hosts `service` with terminator options. Bindings lost with their router are re-created
    /// (with backoff) until the listener is dropped.
    pub async fn listen_with(
        &self,
        name: &str,
        opts: &ListenOptions,
    ) -> Result<ZitiListener, ListenError> {
        let svc = self
            .service(name)
            .await
            .map_err(|source| ListenError::Controller {
                service: name.to_string(),
                source,
            })?
            .ok_or_else(|| ListenError::ServiceNotFound {
                service: name.to_string(),
            })?;
        if !svc.permissions.bind {
            return Err(ListenError::NotAuthorized {
                service: name.to_string(),
            });
        }
        let session = self
            .inner
            .controller
            .create_session(&svc.id, SessionType::Bind)
            .await
            .map_err(|source| ListenError::Controller {
                service: name.to_string(),
                source,
            })?;
        let bind_opts = BindOptions {
            cost: opts.cost,
            precedence: opts.precedence,
            listener_id: uuid::Uuid::new_v4().to_string(),
            terminator_identity: opts.identity.clone(),
            keypair: svc
                .encryption_required
                .then(|| Arc::new(KeyPair::generate())),
        };
        let (tx, rx) = mpsc::channel::<Result<IncomingDial, ListenError>>(ACCEPT_QUEUE);
        let (settings, settings_rx) = watch::channel((opts.cost, opts.precedence));
        let mut routers = router_addrs(&session);
        if let Some(max) = opts.max_terminators.filter(|m| *m > 0) {
            routers.truncate(max);
        }
        let mut failures = Vec::new();
        let mut bound_any = false;
        for router in routers {
            let first = match self.bind_on(&router, &svc, &session, &bind_opts).await {
                Ok(b) => {
                    bound_any = true;
                    Some(b)
                }
                Err(e) => {
                    tracing::debug!(service = name, router = %router.name, error = %error_chain(&e), "bind failed");
                    failures.push(e);
                    None
                }
            };
            tokio::spawn(supervise_binding(
                self.clone(),
                router,
                svc.clone(),
                bind_opts.clone(),
                first,
                tx.clone(),
                settings_rx.clone(),
            ));
        }
        if !bound_any {
            let mut failures = failures.into_iter();
            return Err(match failures.next() {
                Some(source) => ListenError::Bind {
                    service: name.to_string(),
                    source,
                    others: failures.collect(),
                },
                None => ListenError::NoEdgeRouters {
                    service: name.to_string(),
                },
            });
        }
        tracing::info!(service = name, "hosting");
        Ok(ZitiListener {
            service: name.to_string(),
            incoming: rx,
            settings,
        })
    }

    async fn bind_on(
        &self,
        router: &RouterAddr,
        svc: &Service,
        session: &Session,
        opts: &BindOptions,
    ) -> Result<Binding, RouterError> {
        let conn = self.inner.pool.get_or_connect(router).await?;
        conn.bind(&svc.name, &session.token, opts).await
    }
}

/// Keeps one router's binding alive: serves its dials, re-binds after it is lost.
async fn supervise_binding(
    ctx: ZitiContext,
    router: RouterAddr,
    svc: Service,
    mut opts: BindOptions,
    mut current: Option<Binding>,
    accepted: mpsc::Sender<Result<IncomingDial, ListenError>>,
    mut settings: watch::Receiver<(u16, Precedence)>,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if let Some(binding) = current.take() {
            backoff = Duration::from_millis(100);
            match serve_binding(binding, &accepted, &mut settings).await {
                ServeEnd::ListenerDropped => return,
                ServeEnd::Lost(e) => {
                    tracing::warn!(service = %svc.name, router = %router.name, reason = %error_chain(&e), "binding lost; re-binding");
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = accepted.closed() => return,
        }
        backoff = (backoff * 2).min(MAX_REBIND_BACKOFF);
        // A fresh session each time: the old one may be why the binding ended.
        let session = match ctx
            .inner
            .controller
            .create_session(&svc.id, SessionType::Bind)
            .await
        {
            Ok(s) => s,
            Err(e) => {
                // The service is gone or no longer ours to host: hosting ends, and says why.
                let end = match e.api_error().map(|a| a.code.clone()) {
                    Some(ApiErrorCode::NotFound) => Some(ListenError::ServiceNotFound {
                        service: svc.name.clone(),
                    }),
                    Some(ApiErrorCode::Unauthorized | ApiErrorCode::CouldNotValidate) => {
                        Some(ListenError::NotAuthorized {
                            service: svc.name.clone(),
                        })
                    }
                    _ => None,
                };
                if let Some(end) = end {
                    tracing::warn!(service = %svc.name, reason = %error_chain(&end), "hosting ended");
                    let _ = accepted.send(Err(end)).await;
                    return;
                }
                tracing::debug!(service = %svc.name, error = %error_chain(&e), "bind session unavailable");
                continue;
            }
        };
        (opts.cost, opts.precedence) = *settings.borrow_and_update();
        match ctx.bind_on(&router, &svc, &session, &opts).await {
            Ok(b) => {
                tracing::info!(service = %svc.name, router = %router.name, "re-bound");
                current = Some(b);
            }
            Err(e) => {
                tracing::debug!(service = %svc.name, router = %router.name, error = %error_chain(&e), "re-bind failed")
            }
        }
    }
}

enum ServeEnd {
    ListenerDropped,
    Lost(RouterError),
}

async fn serve_binding(
    mut binding: Binding,
    accepted: &mpsc::Sender<Result<IncomingDial, ListenError>>,
    settings: &mut watch::Receiver<(u16, Precedence)>,
) -> ServeEnd {
    loop {
        let dial = tokio::select! {
            d = binding.next_dial() => d,
            Ok(()) = settings.changed() => {
                let (cost, precedence) = *settings.borrow_and_update();
                binding.update(Some(cost), Some(precedence));
                continue;
            }
            _ = accepted.closed() => {
                binding.unbind().await;
                return ServeEnd::ListenerDropped;
            }
        };
        let dial = match dial {
            Ok(d) => d,
            Err(e) => return ServeEnd::Lost(e),
        };
        // Reserve room first: refusing is better than accepting what nobody will read.
        let permit = match accepted.clone().try_reserve_owned() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(_)) => {
                dial.reject("host is too busy").await;
                continue;
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                dial.reject("host stopped listening").await;
                binding.unbind().await;
                return ServeEnd::ListenerDropped;
            }
        };
        // The listener's owner accepts or rejects it (`ZitiListener::accept` / `next_dial`).
        permit.send(Ok(dial));
    }
}

/// Incoming connections for a hosted service. Dropping it unbinds.
///
/// [`accept`](Self::accept) takes every dial; [`next_dial`](Self::next_dial) hands each one
/// over undecided, so a host can look at who dials and with what app data, connect to its
/// server, and only then accept, or reject with a reason the dialer sees.
///
/// Also a [`futures::Stream`] of `Result<EdgeStream, ListenError>` (accepting every dial): an
/// `Err` says why hosting ended (the service was deleted, or this identity may no longer bind
/// it), then the stream ends.
#[derive(Debug)]
pub struct ZitiListener {
    service: String,
    incoming: mpsc::Receiver<Result<IncomingDial, ListenError>>,
    /// Terminator cost and precedence, watched by every binding.
    settings: watch::Sender<(u16, Precedence)>,
}

impl ZitiListener {
    /// The hosted service.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The next accepted connection; `None` once hosting has stopped (the stream interface
    /// says why).
    pub async fn accept(&mut self) -> Option<EdgeStream> {
        loop {
            let dial = self.next_dial().await?;
            match dial.accept_now() {
                Ok(stream) => return Some(stream),
                Err(e) => {
                    tracing::warn!(service = %self.service, error = %error_chain(&e), "accepting a dial failed")
                }
            }
        }
    }

    /// Changes the cost and precedence of every terminator of this listener, in place
    /// (UpdateBind), and of those re-created later. A health check marks a host failed with
    /// [`Precedence::Failed`] and healthy again with the precedence it started with.
    pub fn update_terminators(&self, cost: u16, precedence: Precedence) {
        self.settings.send_replace((cost, precedence));
    }

    /// The next dial, not yet answered: call [`IncomingDial::accept`] or
    /// [`IncomingDial::reject`] soon (the router gives up on it after its dial timeout).
    /// `None` once hosting has stopped.
    pub async fn next_dial(&mut self) -> Option<IncomingDial> {
        self.incoming.recv().await?.ok()
    }
}

impl futures::Stream for ZitiListener {
    type Item = Result<EdgeStream, ListenError>;

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Self::Item>> {
        loop {
            let Some(next) = std::task::ready!(self.incoming.poll_recv(cx)) else {
                return std::task::Poll::Ready(None);
            };
            match next.map(IncomingDial::accept_now) {
                Ok(Ok(stream)) => return std::task::Poll::Ready(Some(Ok(stream))),
                Ok(Err(e)) => {
                    tracing::warn!(service = %self.service, error = %error_chain(&e), "accepting a dial failed")
                }
                Err(end) => return std::task::Poll::Ready(Some(Err(end))),
            }
        }
    }
}

fn router_addrs(session: &Session) -> Vec<RouterAddr> {
    session
        .edge_routers
        .iter()
        .filter_map(|r| {
            r.tls_url().map(|url| RouterAddr {
                name: r.name.clone(),
                url: url.to_string(),
            })
        })
        .collect()
}

fn map_session_error(service: &str, e: ControllerError) -> DialError {
    let service = service.to_string();
    let Some(code) = e.api_error().map(|a| a.code.clone()) else {
        return DialError::Controller { service, source: e };
    };
    match code {
        ApiErrorCode::NotFound => DialError::ServiceNotFound { service },
        ApiErrorCode::CouldNotValidate | ApiErrorCode::Unauthorized => DialError::NotAuthorized {
            service,
            source: DialCause::Controller(e),
        },
        ApiErrorCode::NoEdgeRoutersAvailable => DialError::NoEdgeRouters {
            service,
            source: DialCause::Controller(e),
        },
        _ => DialError::Controller { service, source: e },
    }
}

/// Maps a router's refusal ([`RouterError::Dial`]) to what it means for the caller.
fn map_dial_failure(service: &str, e: RouterError, timeout: Duration) -> DialError {
    let service = service.to_string();
    let RouterError::Dial { failure, .. } = &e else {
        return DialError::Failed {
            service,
            source: DialCause::Router(e),
        };
    };
    match failure {
        DialFailure::NoTerminators(_) => DialError::NoTerminators { service },
        DialFailure::NotAuthorized(_) | DialFailure::PostureCheckFailed => {
            DialError::NotAuthorized {
                service,
                source: DialCause::Router(e),
            }
        }
        DialFailure::ServiceNotFound => DialError::ServiceNotFound { service },
        DialFailure::Timeout => DialError::Timeout {
            service,
            after: timeout,
        },
        _ => DialError::Failed {
            service,
            source: DialCause::Router(e),
        },
    }
}

/// The controller's token watch as plain strings for the router pool; the forwarding task ends
/// when the controller stops publishing or every router has gone.
fn token_strings(controller: &Controller, current: &str) -> watch::Receiver<String> {
    let (tx, rx) = watch::channel(current.to_string());
    let mut updates = controller.token_watch();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                changed = updates.changed() => if changed.is_err() { return },
                _ = tx.closed() => return,
            }
            let next = updates
                .borrow_and_update()
                .as_ref()
                .map(|t| t.secret().to_string());
            if let Some(secret) = next {
                tx.send_if_modified(|cur| {
                    if *cur == secret {
                        false
                    } else {
                        *cur = secret;
                        true
                    }
                });
            }
        }
    });
    rx
}
