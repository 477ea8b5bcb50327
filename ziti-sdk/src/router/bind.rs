//! Hosting a service over a router channel: Bind, incoming Dials, accept or reject, Unbind.

use std::future::poll_fn;
use std::sync::Arc;
use std::task::Poll;
use std::time::{Duration, Instant};

use crate::channel::Message;
use crate::e2ee::KeyPair;
use crate::edge::{BindParams, BindRequest, Dial, Precedence};

use super::RouterError;
use super::connection::RouterConnection;
use super::stream::{EdgeStream, PeerInfo};

/// How long the router gets to answer a Bind.
const BIND_TIMEOUT: Duration = Duration::from_secs(15);

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

/// An established bind on one router: a terminator for the service. Dropping it removes the
/// terminator.
#[derive(Debug)]
pub struct Binding {
    conn: RouterConnection,
    bind_id: u32,
    service: String,
    token: String,
    keypair: Option<Arc<KeyPair>>,
}

/// A dial the router forwards to us; accept or reject it promptly (the router waits 5 s).
#[derive(Debug)]
pub struct IncomingDial {
    conn: RouterConnection,
    bind_id: u32,
    service: String,
    keypair: Option<Arc<KeyPair>>,
    dial: Box<Dial>,
    request: Box<Message>,
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
        let mut request = BindRequest::new(0, session_token);
        request.public_key = opts.keypair.as_ref().map(|k| k.public_key());
        request.cost = opts.cost;
        request.precedence = opts.precedence;
        request.listener_id = Some(opts.listener_id.clone());
        request.terminator_identity = opts.terminator_identity.clone();
        let params = BindParams {
            request,
            timeout: BIND_TIMEOUT,
        };
        let (bind_id, _) = self
            .open(|ch, now| ch.bind(now, &params))
            .await
            .map_err(|e| self.open_error(e))?;
        tracing::debug!(router = %self.name(), %service, bind_id, "bound");
        Ok(Binding {
            conn: self.clone(),
            bind_id,
            service: service.to_string(),
            token: session_token.to_string(),
            keypair: opts.keypair.clone(),
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
        let bind_id = self.bind_id;
        let conn = self.conn.clone();
        let next = poll_fn(|cx| {
            let r = conn.with(|s| {
                let Some(inbox) = s.binds.get_mut(&bind_id) else {
                    return Poll::Ready(Err(None));
                };
                if let Some(d) = inbox.dials.pop_front() {
                    return Poll::Ready(Ok(d));
                }
                if let Some(reason) = &inbox.closed {
                    return Poll::Ready(Err(Some(reason.clone())));
                }
                inbox.waker = Some(cx.waker().clone());
                Poll::Pending
            });
            match r {
                Ok(p) => p,
                Err(_) => Poll::Ready(Err(None)),
            }
        })
        .await;
        match next {
            Ok((dial, request)) => Ok(IncomingDial {
                conn: self.conn.clone(),
                bind_id,
                service: self.service.clone(),
                keypair: self.keypair.clone(),
                dial,
                request,
            }),
            Err(Some(reason)) if !self.conn.is_closed() => Err(RouterError::Refused {
                router: self.conn.name().to_string(),
                reason,
            }),
            Err(_) => Err(self.conn.closed_error()),
        }
    }

    /// Changes the terminator's cost and/or precedence in place (UpdateBind).
    pub fn update(&self, cost: Option<u16>, precedence: Option<Precedence>) {
        let (bind, token) = (self.bind_id, self.token.clone());
        let _ = self
            .conn
            .with(|s| s.ch.update_bind(bind, &token, cost, precedence));
    }

    /// Removes the terminator.
    pub async fn unbind(self) {
        // Drop does it.
    }
}

impl Drop for Binding {
    fn drop(&mut self) {
        let (bind, token) = (self.bind_id, self.token.clone());
        let _ = self.conn.with(|s| {
            s.binds.remove(&bind);
            s.ch.unbind(bind, &token);
        });
    }
}

impl IncomingDial {
    /// Who is dialing.
    pub fn peer(&self) -> PeerInfo {
        let d = &self.dial;
        PeerInfo {
            caller_id: d.caller_id.clone(),
            dialer_identity_id: d.dialer_identity_id.clone(),
            dialer_identity_name: d.dialer_identity_name.clone(),
            circuit_id: d.circuit_id.clone(),
            app_data: d.app_data.clone(),
        }
    }

    /// Accepts: answers DialSuccess on the router-provided connection id and (for encrypted
    /// services) sends our stream header first.
    pub async fn accept(self) -> Result<EdgeStream, RouterError> {
        self.accept_now()
    }

    /// [`accept`](Self::accept) without awaiting: answering only queues a message.
    pub fn accept_now(self) -> Result<EdgeStream, RouterError> {
        let (bind, keypair) = (self.bind_id, self.keypair.clone());
        let request = &self.request;
        let id = self
            .conn
            .with(|s| {
                s.ch.accept(Instant::now(), bind, request, keypair.as_deref())
            })?
            .map_err(|e| self.conn.open_error(e))?;
        Ok(EdgeStream::new(
            self.conn.clone(),
            id,
            &self.service,
            self.keypair.is_some(),
            self.peer(),
        ))
    }

    /// Rejects with DialFailed.
    pub async fn reject(&self, reason: &str) {
        let (bind, request) = (self.bind_id, &self.request);
        let _ = self.conn.with(|s| s.ch.reject(bind, request, reason));
    }
}
