//! Dialing a service over a router channel (classic session-token Connect).

use std::time::Duration;

use bytes::Bytes;

use crate::edge::DialParams;

use super::RouterError;
use super::connection::RouterConnection;
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
        let params = DialParams {
            session_token: req.session_token.clone(),
            encrypted: req.encrypted,
            terminator_identity: req.terminator_identity.clone(),
            caller_id: req.caller_id.clone(),
            app_data: req.app_data.clone(),
            timeout: req.timeout,
        };
        let (id, circuit_id) = self
            .open(|ch, now| ch.dial(now, &params))
            .await
            .map_err(|e| self.open_error(e))?;
        let peer = PeerInfo {
            circuit_id,
            ..PeerInfo::default()
        };
        Ok(EdgeStream::new(
            self.clone(),
            id,
            &req.service,
            req.encrypted,
            peer,
        ))
    }
}
