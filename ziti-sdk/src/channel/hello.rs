//! The channel-level conversations an SDK has with an edge router: the hello exchange and the
//! latency probe.

use bytes::Bytes;

use super::{
    CONNECTION_ID, HELLO_SEQUENCE, HELLO_VERSION, Message, PEER_ID, REFLECTED_CORRELATION,
    RESULT_SUCCESS, content_type,
};

/// Edge header 1002: the API session token sent in the hello.
pub const SESSION_TOKEN_HEADER: i32 = 1002;
/// Edge header 1024 in the hello answer: router sends BindSuccess when asked.
pub const SUPPORTS_BIND_SUCCESS_HEADER: i32 = 1024;
/// Edge header 1032 in the hello answer: router evaluates posture responses.
pub const SUPPORTS_POSTURE_CHECKS_HEADER: i32 = 1032;
/// Edge header 1039 in the hello answer (2.1+): big-endian capability bitmask.
pub const ROUTER_CAPABILITIES_HEADER: i32 = 1039;

/// Builds the client hello: content type 0, sequence -1, header 1002 = API session token
/// (legacy `zt-session` token or OIDC access JWT), body = a label for logs (e.g. cert CN).
///
/// No grouping headers are set, so the router builds a plain single-underlay channel.
pub fn hello(session_token: &str, label: &str) -> Message {
    let mut m = Message::new(
        content_type::HELLO,
        Bytes::copy_from_slice(label.as_bytes()),
    )
    .with_sequence(HELLO_SEQUENCE);
    m.headers.put_str(SESSION_TOKEN_HEADER, session_token);
    m
}

/// A generic channel `Result` (content type 2) as seen by a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelResult {
    /// Header 2; absent counts as failure.
    pub success: bool,
    /// Header 1, the request sequence answered (None if not a reply).
    pub reply_for: Option<i32>,
    /// The body as text (error message on failure; usually empty on success).
    pub message: String,
}

impl ChannelResult {
    /// Reads a `Result` message; `None` if the content type is not 2.
    pub fn parse(msg: &Message) -> Option<Self> {
        (msg.content_type == content_type::RESULT).then(|| Self {
            success: msg.headers.flag(RESULT_SUCCESS),
            reply_for: msg.reply_for(),
            message: String::from_utf8_lossy(&msg.body).into_owned(),
        })
    }
}

/// Router capabilities from header 1039 (ziti 2.1+): capability *n* is bit *n* of a big-endian
/// unsigned integer of any length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RouterCapabilities(Bytes);

impl RouterCapabilities {
    /// Capability bit: multiple underlays per channel.
    pub const MULTI_CHANNEL: u32 = 1;
    /// Capability bit: ConnectV2 (sessionless dial).
    pub const CONNECT_V2: u32 = 2;
    /// Capability bit: service subscriptions.
    pub const SERVICE_SUBSCRIPTIONS: u32 = 4;
    /// Capability bit: posture checks over the edge channel.
    pub const POSTURE_CHECKS: u32 = 5;
    /// Capability bit: BindSuccess.
    pub const BIND_SUCCESS: u32 = 6;

    /// Wraps the raw header value.
    pub fn from_bytes(raw: Bytes) -> Self {
        Self(raw)
    }

    /// `true` if capability bit `bit` is set. Bits beyond the value's length are unset.
    pub fn has(&self, bit: u32) -> bool {
        let byte_from_end = (bit / 8) as usize;
        let Some(idx) = self.0.len().checked_sub(byte_from_end + 1) else {
            return false;
        };
        self.0.get(idx).is_some_and(|b| b & (1 << (bit % 8)) != 0)
    }
}

/// What the router told us in its hello answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HelloResult {
    /// Header 2. `true` does **not** mean authenticated: the router checks the token only
    /// after acknowledging the hello and simply closes the connection on failure.
    pub success: bool,
    /// Header 1: the hello's sequence (normally -1, which [`Message::reply_for`] would hide).
    pub reply_for: Option<i32>,
    /// Body text (failure reason, if any).
    pub message: String,
    /// Header 8: router identity id.
    pub router_id: Option<String>,
    /// Header 0: channel connection id.
    pub connection_id: Option<String>,
    /// Header 4: router version, `version|revision|build date|os|arch`.
    pub version: Option<String>,
    /// Header 1024: the router sends BindSuccess if the Bind asks for it.
    pub supports_bind_success: bool,
    /// Header 1032: the router evaluates posture responses sent on this channel.
    pub supports_posture_checks: bool,
    /// Header 1039 (2.1+ routers only).
    pub capabilities: Option<RouterCapabilities>,
}

impl HelloResult {
    /// Reads the hello answer; `None` if `msg` is not a `Result` (content type 2).
    pub fn parse(msg: &Message) -> Option<Self> {
        if msg.content_type != content_type::RESULT {
            return None;
        }
        let h = &msg.headers;
        let owned = |id| h.get_str(id).map(str::to_owned);
        Some(Self {
            success: h.flag(RESULT_SUCCESS),
            reply_for: h.get_i32(super::REPLY_FOR),
            message: String::from_utf8_lossy(&msg.body).into_owned(),
            router_id: owned(PEER_ID),
            connection_id: owned(CONNECTION_ID),
            version: owned(HELLO_VERSION),
            supports_bind_success: h.flag(SUPPORTS_BIND_SUCCESS_HEADER),
            supports_posture_checks: h.flag(SUPPORTS_POSTURE_CHECKS_HEADER),
            capabilities: h
                .get(ROUTER_CAPABILITIES_HEADER)
                .cloned()
                .map(RouterCapabilities::from_bytes),
        })
    }

    /// The first field of the version header (e.g. `v2.0.3`).
    pub fn version_number(&self) -> Option<&str> {
        self.version.as_deref().and_then(|v| v.split('|').next())
    }
}

/// Builds a latency probe: content type 3, header 128 = `sent_at_nanos` (u64 LE, Unix nanos by
/// convention; the router only reflects it). The caller sets the sequence and remembers it.
pub fn latency_probe(sent_at_nanos: u64) -> Message {
    let mut m = Message::new(content_type::LATENCY, Bytes::new());
    m.headers.put_u64(REFLECTED_CORRELATION, sent_at_nanos);
    m
}

/// If `msg` answers the latency probe that was sent with sequence `probe_seq`, returns the
/// timestamp reflected in header 128 (the value the probe carried).
///
/// The router answers with a successful `Result` replying to the probe. Only one probe should
/// be outstanding: the router ignores probes that arrive while it answers another.
pub fn latency_reply(msg: &Message, probe_seq: i32) -> Option<u64> {
    if msg.content_type != content_type::RESULT || !msg.is_reply_to(probe_seq) {
        return None;
    }
    msg.headers.get_u64(REFLECTED_CORRELATION)
}
