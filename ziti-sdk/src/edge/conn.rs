//! Per-connection state machine (quinn-proto style: no I/O, no clock) and conn-id allocation.
//!
//! The router driver owns one [`EdgeConn`] per conn id, feeds it every edge message addressed to
//! that id with [`EdgeConn::handle`], and turns application writes into Data messages with
//! [`EdgeConn::send`]. Messages the protocol itself must emit (the end-to-end encryption stream
//! header) are taken with [`EdgeConn::poll_transmit`], which must be drained after every
//! `handle` / constructor call and before the next `send`.

use std::collections::HashSet;

use bytes::Bytes;

use super::ContentType;
use super::error::{DialFailure, StructuredError};
use super::messages::{self, ConnectRequest};
use super::parse::{Data, EdgeError, StateClosed, StateConnected, split_multipart};
use crate::channel::Message;
use crate::e2ee::{Decryptor, E2eeError, Encryptor, HEADER_BYTES, KeyPair, PublicKey, SessionKey};

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Connect sent, waiting for StateConnected / StateClosed.
    Connecting,
    /// Data flows both ways.
    Connected,
    /// We sent FIN; we can still receive.
    LocalFinSent,
    /// The peer sent FIN; we can still send.
    RemoteFinReceived,
    /// Finished (both FINs, StateClosed either way, or an error).
    Closed,
}

/// Why a connection closed.
#[derive(Debug, Clone, PartialEq)]
pub enum CloseReason {
    /// The Connect was refused (StateClosed reply while connecting).
    DialFailed(DialFailure),
    /// The router/peer closed an established connection.
    ClosedByPeer {
        /// Body text of StateClosed.
        reason: String,
        /// Structured error (1033), if any.
        error: Option<StructuredError>,
    },
}

/// What happened as a result of an incoming message.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnEvent {
    /// The dial succeeded.
    Connected {
        /// The host's public key, when end-to-end encrypted.
        peer_key: Option<PublicKey>,
        /// Circuit id (1026), for logs.
        circuit_id: Option<String>,
    },
    /// Application bytes (decrypted, multipart split).
    Data(Bytes),
    /// The peer will send no more data (half close).
    Fin,
    /// The connection is gone.
    Closed(CloseReason),
}

/// Misuse or protocol violations; after an error from `handle` the connection is closed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnError {
    /// End-to-end encryption failed (bad header, bad ciphertext, weak key).
    #[error("end-to-end encryption failed")]
    Crypto(#[from] E2eeError),
    /// We use end-to-end encryption but the peer sent no public key.
    #[error("peer did not send an end-to-end encryption key")]
    MissingPeerKey,
    /// Data arrived before the connection was established.
    #[error("data received before the connection was established")]
    DataBeforeConnected,
    /// A malformed edge message.
    #[error(transparent)]
    Edge(#[from] EdgeError),
    /// The operation is not allowed in this state (e.g. send after FIN).
    #[error("operation not allowed in state {0:?}")]
    InvalidState(ConnState),
    /// `poll_transmit` holds the stream header, which must go out before any data.
    #[error("stream header not yet taken with poll_transmit")]
    HeaderPending,
}

enum Crypto {
    Plain,
    /// Dialer waiting for the host's key in StateConnected.
    AwaitingPeerKey(KeyPair),
    /// Keys agreed; the decryptor is built from the peer's first Data (its stream header).
    Ready {
        enc: Encryptor,
        rx: SessionKey,
        dec: Option<Decryptor>,
    },
}

/// One edge connection (dialed or accepted).
pub struct EdgeConn {
    conn_id: u32,
    state: ConnState,
    crypto: Crypto,
    pending_header: Option<Message>,
    /// The secretstream header to use when encryption starts (`None`: a random one).
    header_seed: Option<[u8; HEADER_BYTES]>,
}

impl std::fmt::Debug for EdgeConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeConn")
            .field("conn_id", &self.conn_id)
            .field("state", &self.state)
            .field("encrypted", &self.is_encrypted())
            .finish()
    }
}

impl EdgeConn {
    /// A connection we are about to dial. With `encrypted`, a fresh kx client key pair is
    /// generated; its public key goes into Connect (see [`EdgeConn::connect_request`]).
    pub fn dial(conn_id: u32, encrypted: bool) -> Self {
        let crypto = if encrypted {
            Crypto::AwaitingPeerKey(KeyPair::generate())
        } else {
            Crypto::Plain
        };
        Self {
            conn_id,
            state: ConnState::Connecting,
            crypto,
            pending_header: None,
            header_seed: None,
        }
    }

    /// Like [`EdgeConn::dial`], with the randomness given: `keypair` (for an encrypted
    /// service) and the secretstream `header` our direction will start with.
    pub fn dial_with(conn_id: u32, keypair: Option<KeyPair>, header: [u8; HEADER_BYTES]) -> Self {
        Self {
            conn_id,
            state: ConnState::Connecting,
            crypto: keypair.map_or(Crypto::Plain, Crypto::AwaitingPeerKey),
            pending_header: None,
            header_seed: Some(header),
        }
    }

    /// Like [`EdgeConn::accept`], with the secretstream `header` given.
    pub fn accept_with(
        conn_id: u32,
        host_key: Option<&KeyPair>,
        dialer_key: Option<&PublicKey>,
        header: [u8; HEADER_BYTES],
    ) -> Result<Self, ConnError> {
        Self::accept_inner(conn_id, host_key, dialer_key, Some(header))
    }

    /// A connection accepted on a bind (after a Dial). `host_key` is the bind's kx server key
    /// pair when the service is encrypted, `dialer_key` the key from the Dial (1003).
    ///
    /// Send DialSuccess first, then drain [`EdgeConn::poll_transmit`] (the stream header).
    pub fn accept(
        conn_id: u32,
        host_key: Option<&KeyPair>,
        dialer_key: Option<&PublicKey>,
    ) -> Result<Self, ConnError> {
        Self::accept_inner(conn_id, host_key, dialer_key, None)
    }

    fn accept_inner(
        conn_id: u32,
        host_key: Option<&KeyPair>,
        dialer_key: Option<&PublicKey>,
        header_seed: Option<[u8; HEADER_BYTES]>,
    ) -> Result<Self, ConnError> {
        let mut conn = Self {
            conn_id,
            state: ConnState::Connected,
            crypto: Crypto::Plain,
            pending_header: None,
            header_seed,
        };
        if let Some(kp) = host_key {
            let peer = dialer_key.ok_or(ConnError::MissingPeerKey)?;
            let keys = kp.server_session_keys(peer)?;
            conn.start_crypto(keys.tx, keys.rx);
        }
        Ok(conn)
    }

    /// The conn id.
    pub fn conn_id(&self) -> u32 {
        self.conn_id
    }

    /// Current state.
    pub fn state(&self) -> ConnState {
        self.state
    }

    /// `true` if data is end-to-end encrypted.
    pub fn is_encrypted(&self) -> bool {
        !matches!(self.crypto, Crypto::Plain)
    }

    /// Our kx public key while dialing an encrypted service.
    pub fn public_key(&self) -> Option<PublicKey> {
        match &self.crypto {
            Crypto::AwaitingPeerKey(kp) => Some(kp.public_key()),
            _ => None,
        }
    }

    /// A Connect request for this connection (conn id and public key filled in).
    pub fn connect_request(&self, session_token: &str) -> ConnectRequest {
        ConnectRequest {
            public_key: self.public_key(),
            ..ConnectRequest::new(self.conn_id, session_token)
        }
    }

    /// A protocol message to send now (the 24-byte stream header as the first Data), if any.
    pub fn poll_transmit(&mut self) -> Option<Message> {
        self.pending_header.take()
    }

    fn start_crypto(&mut self, tx: SessionKey, rx: SessionKey) {
        let (enc, header) = match self.header_seed {
            Some(h) => (Encryptor::with_fixed_header(&tx, h), h),
            None => Encryptor::new(&tx),
        };
        self.pending_header = Some(messages::data(
            self.conn_id,
            Bytes::copy_from_slice(&header),
            0,
        ));
        self.crypto = Crypto::Ready { enc, rx, dec: None };
    }

    /// Feeds one message addressed to this conn id. Unknown or irrelevant messages are ignored.
    /// On `Err` the connection is closed and should be removed (and a StateClosed sent).
    pub fn handle(&mut self, msg: &Message) -> Result<Vec<ConnEvent>, ConnError> {
        if self.state == ConnState::Closed {
            return Ok(Vec::new());
        }
        let result = match ContentType::from_i32(msg.content_type) {
            Some(ContentType::StateConnected) => self.on_connected(msg),
            Some(ContentType::StateClosed) => self.on_closed(msg),
            Some(ContentType::Data) => self.on_data(msg),
            _ => Ok(Vec::new()),
        };
        if result.is_err() {
            self.state = ConnState::Closed;
        }
        result
    }

    fn on_connected(&mut self, msg: &Message) -> Result<Vec<ConnEvent>, ConnError> {
        if self.state != ConnState::Connecting {
            return Ok(Vec::new());
        }
        let sc = StateConnected::parse(msg)?;
        if let Crypto::AwaitingPeerKey(kp) = &self.crypto {
            // We offered a key, so the service is encrypted: a plaintext answer is a downgrade.
            let peer = sc.peer_key.ok_or(ConnError::MissingPeerKey)?;
            let keys = kp.client_session_keys(&peer)?;
            self.start_crypto(keys.tx, keys.rx);
        }
        self.state = ConnState::Connected;
        Ok(vec![ConnEvent::Connected {
            peer_key: sc.peer_key,
            circuit_id: sc.circuit_id,
        }])
    }

    fn on_closed(&mut self, msg: &Message) -> Result<Vec<ConnEvent>, ConnError> {
        let sc = StateClosed::parse(msg)?;
        let reason = if self.state == ConnState::Connecting {
            CloseReason::DialFailed(sc.dial_failure())
        } else {
            CloseReason::ClosedByPeer {
                reason: sc.reason,
                error: sc.error,
            }
        };
        self.state = ConnState::Closed;
        Ok(vec![ConnEvent::Closed(reason)])
    }

    fn on_data(&mut self, msg: &Message) -> Result<Vec<ConnEvent>, ConnError> {
        let data = Data::parse(msg)?;
        match self.state {
            ConnState::Connecting => return Err(ConnError::DataBeforeConnected),
            // Nothing may follow the peer's FIN; drop stragglers rather than fail.
            ConnState::RemoteFinReceived | ConnState::Closed => return Ok(Vec::new()),
            ConnState::Connected | ConnState::LocalFinSent => {}
        }
        let mut events = Vec::new();
        if !data.body.is_empty() {
            let plain = match &mut self.crypto {
                Crypto::Plain => Some(data.body.clone()),
                // Cannot happen after Connected, but never trust it.
                Crypto::AwaitingPeerKey(_) => return Err(ConnError::MissingPeerKey),
                Crypto::Ready { rx, dec, .. } => match dec {
                    None => {
                        *dec = Some(Decryptor::new(rx, &data.body)?);
                        None
                    }
                    Some(d) => Some(Bytes::from(d.pull(&data.body)?)),
                },
            };
            if let Some(plain) = plain {
                // Multipart bodies are decrypted first, then split (C SDK order).
                let parts = if data.is_multipart() {
                    split_multipart(&plain)?
                } else {
                    vec![plain]
                };
                events.extend(
                    parts
                        .into_iter()
                        .filter(|p| !p.is_empty())
                        .map(ConnEvent::Data),
                );
            }
        }
        if data.is_fin() {
            events.push(ConnEvent::Fin);
            self.state = match self.state {
                ConnState::LocalFinSent => ConnState::Closed,
                _ => ConnState::RemoteFinReceived,
            };
        }
        Ok(events)
    }

    fn check_can_send(&self) -> Result<(), ConnError> {
        match self.state {
            ConnState::Connected | ConnState::RemoteFinReceived => {}
            other => return Err(ConnError::InvalidState(other)),
        }
        if self.pending_header.is_some() {
            return Err(ConnError::HeaderPending);
        }
        Ok(())
    }

    /// Turns application bytes into one Data message (encrypted if needed). Empty payloads are
    /// allowed but carry nothing.
    pub fn send(&mut self, payload: &[u8]) -> Result<Message, ConnError> {
        self.check_can_send()?;
        let body = match &mut self.crypto {
            Crypto::Plain => Bytes::copy_from_slice(payload),
            Crypto::AwaitingPeerKey(_) => return Err(ConnError::InvalidState(self.state)),
            Crypto::Ready { enc, .. } => Bytes::from(enc.push(payload)?),
        };
        Ok(messages::data(self.conn_id, body, 0))
    }

    /// Half close: a FIN Data message (empty, unencrypted body).
    pub fn close_write(&mut self) -> Result<Message, ConnError> {
        self.check_can_send()?;
        self.state = match self.state {
            ConnState::RemoteFinReceived => ConnState::Closed,
            _ => ConnState::LocalFinSent,
        };
        Ok(messages::fin(self.conn_id))
    }

    /// Full close: a StateClosed message; the connection is closed at once.
    pub fn close(&mut self, reason: &str) -> Message {
        self.state = ConnState::Closed;
        self.pending_header = None;
        messages::state_closed(self.conn_id, reason)
    }
}

/// Hands out conn ids for dials and binds: 1..=0x7FFF_FFFE, skipping ids in use. Router-assigned
/// ids for accepted connections start at 0x8000_0000, so the ranges never collide.
#[derive(Debug, Clone)]
pub struct ConnIdAllocator {
    next: u32,
    in_use: HashSet<u32>,
}

impl Default for ConnIdAllocator {
    fn default() -> Self {
        Self::new()
    }
}

impl ConnIdAllocator {
    /// Smallest id handed out.
    pub const MIN: u32 = 1;
    /// Largest id handed out (sdk-golang `MaxUint32/2 - 1`).
    pub const MAX: u32 = 0x7FFF_FFFE;

    /// An allocator starting at 1.
    pub fn new() -> Self {
        Self {
            next: Self::MIN,
            in_use: HashSet::new(),
        }
    }

    /// The next free id, or `None` if every id is in use.
    pub fn allocate(&mut self) -> Option<u32> {
        if self.in_use.len() >= (Self::MAX - Self::MIN + 1) as usize {
            return None;
        }
        loop {
            let id = self.next;
            self.next = if id >= Self::MAX { Self::MIN } else { id + 1 };
            if self.in_use.insert(id) {
                return Some(id);
            }
        }
    }

    /// Test hook: move the cursor to exercise wrap-around.
    #[cfg(test)]
    pub(super) fn with_next(mut self, next: u32) -> Self {
        self.next = next;
        self
    }

    /// Returns an id to the pool.
    pub fn release(&mut self, id: u32) {
        self.in_use.remove(&id);
    }

    /// Number of ids in use.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }
}
