//! Hosting a service over a router channel: Bind, incoming Dials, accept or reject, Unbind.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use crate::channel::Message;
use crate::e2ee::{KeyPair, PublicKey};
use crate::edge::{self, BindRequest, ContentType, EdgeConn, Precedence};

use super::RouterError;
use super::connection::{INBOUND_QUEUE, RouterConnection, Sink};
use super::stream::{EdgeStream, PeerInfo};

/// How long the router gets to answer a Bind.
const BIND_TIMEOUT: Duration = Duration::from_secs(15);
/// Dials and notices queued per binding before the router reader waits.
const BIND_QUEUE: usize = 64;

/// Terminator options of a bind.
#[derive(Debug, Clone, Default)]
pub struct BindOptions {
    /// Terminator cost (0..=65535).
    pub cost: u16,
    /// Terminator precedence.
    pub precedence: Precedence,
    /// Listener id; rebinding with the same id replaces the old terminator.
    pub listener_id: String,
    /// Make the terminator addressable as this identity (`dialOptions.identity`).
    pub terminator_identity: Option<String>,
    /// Host key pair (kx server) for `encryptionRequired` services; one per hosted service.
    pub keypair: Option<Arc<KeyPair>>,
}

/// An established bind on one router: a terminator for the service.
#[derive(Debug)]
pub struct Binding {
    conn: RouterConnection,
    bind_id: u32,
    service: String,
    token: String,
    keypair: Option<Arc<KeyPair>>,
    events: mpsc::Receiver<Message>,
}

/// A dial the router forwards to us; accept or reject it promptly (the router waits 5 s).
#[derive(Debug)]
pub struct IncomingDial {
    conn: RouterConnection,
    bind_id: u32,
    service: String,
    keypair: Option<Arc<KeyPair>>,
    msg: Message,
}

impl RouterConnection {
    /// Binds `service` with a Bind session token; the router answers before the terminator
    /// exists and reports problems later as StateClosed on the binding.
    pub async fn bind(
        &self,
        service: &str,
        session_token: &str,
        opts: &BindOptions,
    ) -> Result<Binding, RouterError> {
        let (tx, rx) = mpsc::channel(BIND_QUEUE);
        let bind_id = self.register_new(Sink::Bind(tx))?;
        let mut req = BindRequest::new(bind_id, session_token);
        req.public_key = opts.keypair.as_ref().map(|k| k.public_key());
        req.cost = opts.cost;
        req.precedence = opts.precedence;
        req.listener_id = Some(opts.listener_id.clone());
        req.terminator_identity = opts.terminator_identity.clone();
        let reply = match self.request(edge::bind(&req), BIND_TIMEOUT).await {
            Ok(r) => r,
            Err(e) => {
                self.unregister(bind_id);
                return Err(e);
            }
        };
        if ContentType::from_i32(reply.content_type) != Some(ContentType::StateConnected) {
            self.unregister(bind_id);
            return Err(RouterError::Refused {
                router: self.name().to_string(),
                reason: String::from_utf8_lossy(&reply.body).into_owned(),
            });
        }
        tracing::debug!(router = %self.name(), %service, bind_id, "bound");
        Ok(Binding {
            conn: self.clone(),
            bind_id,
            service: service.to_string(),
            token: session_token.to_string(),
            keypair: opts.keypair.clone(),
            events: rx,
        })
    }
}

impl Binding {
    /// The router channel this binding lives on.
    pub fn router(&self) -> &RouterConnection {
        &self.conn
    }

    /// Waits for the next dial. `Err` carries why the binding ended (router gone, or the
    /// router/controller removed the terminator); rebind after that.
    pub async fn next_dial(&mut self) -> Result<IncomingDial, RouterError> {
        loop {
            let Some(msg) = self.events.recv().await else {
                return Err(RouterError::Closed {
                    router: self.conn.name().to_string(),
                });
            };
            match ContentType::from_i32(msg.content_type) {
                Some(ContentType::Dial) => {
                    return Ok(IncomingDial {
                        conn: self.conn.clone(),
                        bind_id: self.bind_id,
                        service: self.service.clone(),
                        keypair: self.keypair.clone(),
                        msg,
                    });
                }
                Some(ContentType::BindSuccess) => {
                    tracing::info!(router = %self.conn.name(), service = %self.service, "terminator established");
                }
                Some(ContentType::StateClosed) => {
                    // The id is freed when the binding is dropped (exactly once).
                    let reason = String::from_utf8_lossy(&msg.body).into_owned();
                    return Err(RouterError::Refused {
                        router: self.conn.name().to_string(),
                        reason: if reason.is_empty() {
                            "binding closed by the router".into()
                        } else {
                            reason
                        },
                    });
                }
                _ => {}
            }
        }
    }

    /// Removes the terminator.
    pub async fn unbind(self) {
        let _ = self
            .conn
            .send(edge::unbind(self.bind_id, &self.token))
            .await;
        let _ = self
            .conn
            .send(edge::state_closed(self.bind_id, "unbind"))
            .await;
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        self.conn.unregister(self.bind_id);
    }
}

impl IncomingDial {
    /// Who is dialing.
    pub fn peer(&self) -> PeerInfo {
        let h = &self.msg.headers;
        let s = |id| h.get_str(id).map(str::to_owned);
        PeerInfo {
            caller_id: s(edge::header::CALLER_ID),
            dialer_identity_id: s(edge::header::DIALER_IDENTITY_ID),
            dialer_identity_name: s(edge::header::DIALER_IDENTITY_NAME),
            circuit_id: s(edge::header::CIRCUIT_ID),
            app_data: h.get(edge::header::APP_DATA).cloned(),
        }
    }

    /// Accepts: registers the router-provided conn id, answers DialSuccess and (for encrypted
    /// services) sends our stream header first.
    pub async fn accept(self) -> Result<EdgeStream, RouterError> {
        let refused = |reason: &str| RouterError::Refused {
            router: self.conn.name().to_string(),
            reason: reason.to_string(),
        };
        let Some(conn_id) = self
            .msg
            .headers
            .get_u32(edge::header::ROUTER_PROVIDED_CONN_ID)
        else {
            self.reject("no router-provided connection id").await;
            return Err(refused("dial without a router-provided connection id"));
        };
        let dialer_key = match self.msg.headers.get(edge::header::PUBLIC_KEY) {
            Some(raw) => Some(PublicKey::from_slice(raw)?),
            None => None,
        };
        let mut edge = match EdgeConn::accept(conn_id, self.keypair.as_deref(), dialer_key.as_ref())
        {
            Ok(e) => e,
            Err(source) => {
                self.reject("did not receive a usable peer crypto key")
                    .await;
                return Err(RouterError::Protocol {
                    router: self.conn.name().to_string(),
                    source,
                });
            }
        };
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        // Register before answering: data can follow DialSuccess immediately.
        self.conn.register(conn_id, Sink::Stream(tx));
        let reply = edge::dial_success(&self.msg, self.bind_id, conn_id, None);
        if let Err(e) = self.conn.send(reply).await {
            self.conn.unregister(conn_id);
            return Err(e);
        }
        while let Some(msg) = edge.poll_transmit() {
            self.conn.send(msg).await?;
        }
        let peer = self.peer();
        Ok(EdgeStream::new(
            self.conn.clone(),
            edge,
            &self.service,
            rx,
            peer,
        ))
    }

    /// Rejects with DialFailed.
    pub async fn reject(&self, reason: &str) {
        let _ = self
            .conn
            .send(edge::dial_failed(&self.msg, self.bind_id, reason))
            .await;
    }
}
