//! Dialing a service over a router channel (classic session-token Connect, legacy data mode).

use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::channel::Message;
use crate::edge::{self, CloseReason, ConnEvent, ConnState, EdgeConn};

use super::RouterError;
use super::connection::{INBOUND_QUEUE, RouterConnection, Sink};
use super::stream::{EdgeStream, PeerInfo};

/// What to dial.
#[derive(Debug, Clone)]
pub struct DialRequest {
    /// Service name (for the stream and for error messages).
    pub service: String,
    /// Dial service session token.
    pub session_token: String,
    /// `encryptionRequired` on the service: set up end-to-end encryption.
    pub encrypted: bool,
    /// Dial this hosting identity's terminator (`dialOptions.identity`).
    pub terminator_identity: Option<String>,
    /// Caller id forwarded to the host.
    pub caller_id: Option<String>,
    /// Application data forwarded to the host.
    pub app_data: Option<Bytes>,
    /// How long to wait for the router's answer.
    pub timeout: Duration,
}

impl RouterConnection {
    /// Dials `req.service` through this router. A refusal comes back as [`RouterError::Dial`]
    /// with the classified reason (no terminators, not authorized, ...).
    pub async fn dial(&self, req: &DialRequest) -> Result<EdgeStream, RouterError> {
        let (tx, rx) = mpsc::channel(INBOUND_QUEUE);
        // Register before sending: the host's data may follow StateConnected immediately.
        let conn_id = self.register_new(Sink::Stream(tx))?;
        let result = self.dial_registered(conn_id, req, rx).await;
        if result.is_err() {
            self.unregister(conn_id);
        }
        result
    }

    async fn dial_registered(
        &self,
        conn_id: u32,
        req: &DialRequest,
        rx: mpsc::Receiver<Message>,
    ) -> Result<EdgeStream, RouterError> {
        let mut edge = EdgeConn::dial(conn_id, req.encrypted);
        let mut connect = edge.connect_request(&req.session_token);
        connect.terminator_identity = req.terminator_identity.clone();
        connect.caller_id = req.caller_id.clone();
        connect.app_data = req.app_data.clone();

        let reply = match self.request(edge::connect(&connect), req.timeout).await {
            Ok(r) => r,
            Err(e) => {
                // The router may still build the circuit; tell it we gave up.
                let _ = self.try_send(edge.close("dial timed out"));
                return Err(e);
            }
        };
        let events = match edge.handle(&reply) {
            Ok(events) => events,
            Err(e) => {
                // E.g. an encrypted service answered without the host's key: refuse to
                // continue in clear.
                let _ = self.try_send(edge.close("dial failed"));
                return Err(RouterError::Protocol {
                    router: self.name().to_string(),
                    source: e,
                });
            }
        };
        let mut peer = PeerInfo::default();
        for event in events {
            match event {
                ConnEvent::Connected { circuit_id, .. } => peer.circuit_id = circuit_id,
                ConnEvent::Closed(CloseReason::DialFailed(failure)) => {
                    return Err(RouterError::Dial {
                        router: self.name().to_string(),
                        failure,
                    });
                }
                ConnEvent::Closed(CloseReason::ClosedByPeer { reason, .. }) => {
                    return Err(RouterError::Refused {
                        router: self.name().to_string(),
                        reason,
                    });
                }
                ConnEvent::Data(_) | ConnEvent::Fin => {}
            }
        }
        if edge.state() != ConnState::Connected {
            return Err(RouterError::Refused {
                router: self.name().to_string(),
                reason: format!(
                    "unexpected answer to Connect (content type {})",
                    reply.content_type
                ),
            });
        }
        // The encrypted direction starts with our stream header.
        while let Some(msg) = edge.poll_transmit() {
            self.send(msg).await?;
        }
        Ok(EdgeStream::new(self.clone(), edge, &req.service, rx, peer))
    }
}
