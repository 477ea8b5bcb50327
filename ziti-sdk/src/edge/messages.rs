//! Builders for the edge messages an SDK sends. Each returns a [`Message`] with sequence 0; the
//! channel driver assigns the real sequence when it queues the message.

use bytes::Bytes;

use super::{ContentType, flags, header};
use crate::channel::Message;
use crate::e2ee::PublicKey;

fn msg(ct: ContentType, body: impl Into<Bytes>) -> Message {
    Message::new(ct as i32, body)
}

/// Parameters of a classic (session-token) dial.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnectRequest {
    /// Conn id chosen by the dialer, below 0x8000_0000 (see [`super::ConnIdAllocator`]).
    pub conn_id: u32,
    /// Dial service session token (body).
    pub session_token: String,
    /// Our kx **client** public key, only for `encryptionRequired` services (header 1003).
    pub public_key: Option<PublicKey>,
    /// Address a specific terminator instance (header 1006).
    pub terminator_identity: Option<String>,
    /// Caller id forwarded to the host (header 1008).
    pub caller_id: Option<String>,
    /// Application data forwarded to the host (header 1011).
    pub app_data: Option<Bytes>,
}

impl ConnectRequest {
    /// A request with only the required fields.
    pub fn new(conn_id: u32, session_token: impl Into<String>) -> Self {
        Self {
            conn_id,
            session_token: session_token.into(),
            ..Self::default()
        }
    }
}

/// Connect (60783): body = session token, 1000 = conn id, optional 1003/1006/1008/1011.
///
/// Legacy data mode (1028 absent) and no CryptoMethod (1009): both peer SDKs default to libsodium.
pub fn connect(req: &ConnectRequest) -> Message {
    let mut m = msg(
        ContentType::Connect,
        Bytes::copy_from_slice(req.session_token.as_bytes()),
    );
    let h = &mut m.headers;
    h.put_u32(header::CONN_ID, req.conn_id);
    if let Some(pk) = &req.public_key {
        h.insert(header::PUBLIC_KEY, Bytes::copy_from_slice(pk.as_bytes()));
    }
    if let Some(t) = &req.terminator_identity {
        h.put_str(header::TERMINATOR_IDENTITY, t);
    }
    if let Some(c) = &req.caller_id {
        h.put_str(header::CALLER_ID, c);
    }
    if let Some(a) = &req.app_data {
        h.insert(header::APP_DATA, a.clone());
    }
    m
}

/// Data (60786) for `conn_id`; header 1010 is only written when `flags != 0`.
pub fn data(conn_id: u32, body: impl Into<Bytes>, flags: u32) -> Message {
    let mut m = msg(ContentType::Data, body);
    m.headers.put_u32(header::CONN_ID, conn_id);
    if flags != 0 {
        m.headers.put_u32(header::FLAGS, flags);
    }
    m
}

/// Half close: Data with FIN and an empty, unencrypted body.
pub fn fin(conn_id: u32) -> Message {
    data(conn_id, Bytes::new(), flags::FIN)
}

/// StateClosed (60785) for a conn or bind id; the router sends no answer.
pub fn state_closed(conn_id: u32, reason: &str) -> Message {
    let mut m = msg(
        ContentType::StateClosed,
        Bytes::copy_from_slice(reason.as_bytes()),
    );
    m.headers.put_u32(header::CONN_ID, conn_id);
    m
}

/// Terminator precedence (header 1005).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Precedence {
    /// Normal terminator.
    #[default]
    Default = 0,
    /// Preferred over default terminators.
    Required = 1,
    /// Used only if nothing else is available.
    Failed = 2,
}

/// Parameters of a Bind (hosting a service).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BindRequest {
    /// The bind conn id we choose (below 0x8000_0000).
    pub conn_id: u32,
    /// Bind service session token (body).
    pub session_token: String,
    /// Our kx **server** public key, for `encryptionRequired` services (1003).
    pub public_key: Option<PublicKey>,
    /// Terminator cost (1004), sent only if > 0.
    pub cost: u16,
    /// Precedence (1005), sent only if not default.
    pub precedence: Precedence,
    /// Listener id (1021); a rebind with the same id replaces the old terminator.
    pub listener_id: Option<String>,
    /// Addressable terminator instance (1006).
    pub terminator_identity: Option<String>,
}

impl BindRequest {
    /// A request with only the required fields.
    pub fn new(conn_id: u32, session_token: impl Into<String>) -> Self {
        Self {
            conn_id,
            session_token: session_token.into(),
            ..Self::default()
        }
    }
}

/// Bind (60790): body token, 1000 bind id, 1012 = true (router allocates conn ids for dials),
/// 1024 = true (ask for BindSuccess), plus the optional fields of `req`.
pub fn bind(req: &BindRequest) -> Message {
    let mut m = msg(
        ContentType::Bind,
        Bytes::copy_from_slice(req.session_token.as_bytes()),
    );
    let h = &mut m.headers;
    h.put_u32(header::CONN_ID, req.conn_id);
    h.put_bool(header::ROUTER_PROVIDED_CONN_ID, true);
    h.put_bool(header::SUPPORTS_BIND_SUCCESS, true);
    if let Some(l) = &req.listener_id {
        h.put_str(header::LISTENER_ID, l);
    }
    if let Some(pk) = &req.public_key {
        h.insert(header::PUBLIC_KEY, Bytes::copy_from_slice(pk.as_bytes()));
    }
    if req.cost > 0 {
        h.put_u16(header::COST, req.cost);
    }
    if req.precedence != Precedence::Default {
        h.put_u8(header::PRECEDENCE, req.precedence as u8);
    }
    if let Some(t) = &req.terminator_identity {
        h.put_str(header::TERMINATOR_IDENTITY, t);
    }
    m
}

/// Unbind (60791): body token, 1000 bind id. No reply on success.
pub fn unbind(bind_conn_id: u32, session_token: &str) -> Message {
    let mut m = msg(
        ContentType::Unbind,
        Bytes::copy_from_slice(session_token.as_bytes()),
    );
    m.headers.put_u32(header::CONN_ID, bind_conn_id);
    m
}

/// UpdateBind (60794): change cost and/or precedence of a bind. No reply.
pub fn update_bind(
    bind_conn_id: u32,
    session_token: &str,
    cost: Option<u16>,
    precedence: Option<Precedence>,
) -> Message {
    let mut m = msg(
        ContentType::UpdateBind,
        Bytes::copy_from_slice(session_token.as_bytes()),
    );
    m.headers.put_u32(header::CONN_ID, bind_conn_id);
    if let Some(c) = cost {
        m.headers.put_u16(header::COST, c);
    }
    if let Some(p) = precedence {
        m.headers.put_u8(header::PRECEDENCE, p as u8);
    }
    m
}

/// HealthEvent (60795): report terminator health. No reply.
pub fn health_event(bind_conn_id: u32, session_token: &str, healthy: bool) -> Message {
    let mut m = msg(
        ContentType::HealthEvent,
        Bytes::copy_from_slice(session_token.as_bytes()),
    );
    m.headers.put_u32(header::CONN_ID, bind_conn_id);
    m.headers.put_bool(header::HEALTH_STATUS, healthy);
    m
}

/// DialSuccess (60788) as a **reply** to `dial` (without ReplyFor the router never sees it):
/// 1000 = bind conn id, body = new conn id as 4 LE bytes. `public_key` (1003) is only read by
/// 2.1+ routers; v2.0.x uses the key from the Bind.
///
/// Register the new conn id before sending this: data can follow immediately.
pub fn dial_success(
    dial: &Message,
    bind_conn_id: u32,
    new_conn_id: u32,
    public_key: Option<&PublicKey>,
) -> Message {
    let mut m = msg(
        ContentType::DialSuccess,
        Bytes::copy_from_slice(&new_conn_id.to_le_bytes()),
    );
    m.reply_to(dial);
    m.headers.put_u32(header::CONN_ID, bind_conn_id);
    if let Some(pk) = public_key {
        m.headers
            .insert(header::PUBLIC_KEY, Bytes::copy_from_slice(pk.as_bytes()));
    }
    m
}

/// DialFailed (60789) as a reply to `dial`: 1000 = bind conn id, body = reason text.
pub fn dial_failed(dial: &Message, bind_conn_id: u32, reason: &str) -> Message {
    let mut m = msg(
        ContentType::DialFailed,
        Bytes::copy_from_slice(reason.as_bytes()),
    );
    m.reply_to(dial);
    m.headers.put_u32(header::CONN_ID, bind_conn_id);
    m
}

/// UpdateToken (60803): push a refreshed OIDC access token; wait for the reply
/// (UpdateTokenSuccess / UpdateTokenFailure).
pub fn update_token(access_token: &str) -> Message {
    msg(
        ContentType::UpdateToken,
        Bytes::copy_from_slice(access_token.as_bytes()),
    )
}
