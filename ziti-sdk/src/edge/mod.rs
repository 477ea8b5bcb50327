//! Edge messages (the SDK <-> edge-router protocol carried in channel frames), sans IO.
//!
//! * [`ContentType`], [`header`] ids and [`flags`]: the protocol's numbers.
//! * Builders ([`connect`], [`data`], [`bind`], [`dial_success`], ...) return a
//!   [`channel::Message`] whose sequence the channel driver assigns.
//! * Parsers ([`StateConnected`], [`StateClosed`], [`Data`], [`Dial`], ...) and the dispatcher
//!   [`EdgeMessage::parse`] turn received messages into typed values.
//! * [`DialFailure`] classifies the text-only dial errors of v2.0.x routers; [`StructuredError`]
//!   reads header 1033.
//! * [`EdgeConn`] is the per-connection state machine (with optional end-to-end encryption) and
//!   [`ConnIdAllocator`] hands out connection ids.
//!
//! [`ContentType`]: crate::edge::ContentType
//! [`header`]: crate::edge::header
//! [`flags`]: crate::edge::flags
//! [`connect`]: crate::edge::connect
//! [`data`]: crate::edge::data
//! [`bind`]: crate::edge::bind
//! [`dial_success`]: crate::edge::dial_success
//! [`channel::Message`]: crate::channel::Message
//! [`StateConnected`]: crate::edge::StateConnected
//! [`StateClosed`]: crate::edge::StateClosed
//! [`Data`]: crate::edge::Data
//! [`Dial`]: crate::edge::Dial
//! [`EdgeMessage::parse`]: crate::edge::EdgeMessage::parse
//! [`DialFailure`]: crate::edge::DialFailure
//! [`StructuredError`]: crate::edge::StructuredError
//! [`EdgeConn`]: crate::edge::EdgeConn
//! [`ConnIdAllocator`]: crate::edge::ConnIdAllocator
//!
//! ```
//! use ziti_sdk::channel::Message;
//! use ziti_sdk::edge::{self, ConnectRequest, EdgeMessage, StateConnected};
//!
//! // Dial: build Connect for conn id 7 ...
//! let mut connect = edge::connect(&ConnectRequest::new(7, "service-session-jwt"));
//! connect.sequence = 1;
//! // ... the router answers with StateConnected (a reply to sequence 1).
//! let mut reply = Message::new(edge::ContentType::StateConnected as i32, "").replying_to(&connect);
//! reply.headers.put_u32(edge::header::CONN_ID, 7);
//! match EdgeMessage::parse(&reply)? {
//!     EdgeMessage::StateConnected(sc) => assert_eq!(sc.conn_id, 7),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), edge::EdgeError>(())
//! ```

/// One router connection as a sans-IO state machine.
pub mod channel;
mod conn;
mod error;
mod messages;
mod parse;

pub use channel::{
    BindParams, Channel, ChannelClosed, ChannelConfig, ConnClosed, DialParams, Event, OpenError,
    Recv, SendError,
};
pub use conn::{CloseReason, ConnError, ConnEvent, ConnIdAllocator, ConnState, EdgeConn};
pub use error::{DialFailure, ErrorCode, RetryHint, StructuredError};
pub use messages::{
    BindRequest, ConnectRequest, Precedence, bind, connect, data, dial_failed, dial_success, fin,
    health_event, state_closed, unbind, update_bind, update_token,
};
pub use parse::{
    BindSuccess, Data, Dial, EdgeError, EdgeMessage, StateClosed, StateConnected,
    UpdateTokenFailure, split_multipart,
};

/// Edge content types (sdk-golang `edge_client.proto` enum `ContentType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i32)]
pub enum ContentType {
    /// Dial request (S->R).
    Connect = 60783,
    /// Reply to Connect/Bind (R->S).
    StateConnected = 60784,
    /// Close a conn/bind; also the error reply (both directions).
    StateClosed = 60785,
    /// Payload for a conn id (both directions).
    Data = 60786,
    /// Router asks a hosting SDK to accept a circuit (R->S).
    Dial = 60787,
    /// Reply to Dial (S->R).
    DialSuccess = 60788,
    /// Reply to Dial (S->R).
    DialFailed = 60789,
    /// Host a service (S->R).
    Bind = 60790,
    /// Stop hosting (S->R).
    Unbind = 60791,
    /// Defined, unused.
    StateSessionEnded = 60792,
    /// Defined, no router handler.
    Probe = 60793,
    /// Change cost/precedence of a bind (S->R).
    UpdateBind = 60794,
    /// Terminator health pass/fail (S->R).
    HealthEvent = 60795,
    /// Optional diagnostics.
    TraceRoute = 60796,
    /// Optional diagnostics.
    TraceRouteResponse = 60797,
    /// Only if the SDK advertised SupportsInspect (R->S).
    ConnInspectRequest = 60798,
    /// Reply to ConnInspectRequest (S->R).
    ConnInspectResponse = 60799,
    /// Terminator created (R->S).
    BindSuccess = 60800,
    /// Reply to UpdateToken (R->S).
    UpdateTokenSuccess = 60801,
    /// Reply to UpdateToken; the router then closes the channel (R->S).
    UpdateTokenFailure = 60802,
    /// New OIDC access token (S->R).
    UpdateToken = 60803,
    /// Diagnostics inspection (R->S).
    InspectRequest = 60804,
    /// Reply to InspectRequest, JSON body (S->R).
    InspectResponse = 60805,
    /// Sessionless dial, ziti 2.1+ only (S->R).
    ConnectV2 = 60806,
    /// 2.1 proto; defined, unused.
    RouteCircuit = 60807,
    /// Posture responses, protobuf body (S->R).
    PostureResponse = 10800,
}

impl ContentType {
    /// Maps a wire value to a known edge content type.
    pub fn from_i32(v: i32) -> Option<Self> {
        use ContentType::*;
        Some(match v {
            60783 => Connect,
            60784 => StateConnected,
            60785 => StateClosed,
            60786 => Data,
            60787 => Dial,
            60788 => DialSuccess,
            60789 => DialFailed,
            60790 => Bind,
            60791 => Unbind,
            60792 => StateSessionEnded,
            60793 => Probe,
            60794 => UpdateBind,
            60795 => HealthEvent,
            60796 => TraceRoute,
            60797 => TraceRouteResponse,
            60798 => ConnInspectRequest,
            60799 => ConnInspectResponse,
            60800 => BindSuccess,
            60801 => UpdateTokenSuccess,
            60802 => UpdateTokenFailure,
            60803 => UpdateToken,
            60804 => InspectRequest,
            60805 => InspectResponse,
            60806 => ConnectV2,
            60807 => RouteCircuit,
            10800 => PostureResponse,
            _ => return None,
        })
    }
}

impl From<ContentType> for i32 {
    fn from(c: ContentType) -> i32 {
        c as i32
    }
}

/// Edge header ids (sdk-golang `edge_client.proto` enum `HeaderId`).
pub mod header {
    /// Trace UUID (bytes), reflected.
    pub const UUID: i32 = 128;
    /// Connection id (u32) on every per-connection message.
    pub const CONN_ID: i32 = 1000;
    /// Informational sequence (u32); the router ignores it.
    pub const SEQ: i32 = 1001;
    /// API session token (string), hello only.
    pub const SESSION_TOKEN: i32 = 1002;
    /// X25519 public key (32 bytes).
    pub const PUBLIC_KEY: i32 = 1003;
    /// Terminator cost (u16).
    pub const COST: i32 = 1004;
    /// Terminator precedence (byte).
    pub const PRECEDENCE: i32 = 1005;
    /// Terminator identity / instance id (string).
    pub const TERMINATOR_IDENTITY: i32 = 1006;
    /// Terminator identity secret (bytes).
    pub const TERMINATOR_IDENTITY_SECRET: i32 = 1007;
    /// Caller id (string), Connect -> Dial.
    pub const CALLER_ID: i32 = 1008;
    /// Crypto method: encoded inconsistently by Go and C; do not send.
    pub const CRYPTO_METHOD: i32 = 1009;
    /// Data flags (u32), see [`super::flags`].
    pub const FLAGS: i32 = 1010;
    /// Application data (bytes), Connect -> Dial.
    pub const APP_DATA: i32 = 1011;
    /// Bool in Bind/Connect/StateConnected; **u32 new conn id** in Dial.
    pub const ROUTER_PROVIDED_CONN_ID: i32 = 1012;
    /// Health status (bool), HealthEvent.
    pub const HEALTH_STATUS: i32 = 1013;
    /// Error code (u32), with 1033.
    pub const ERROR_CODE: i32 = 1014;
    /// Timestamp (u64), TraceRoute.
    pub const TIMESTAMP: i32 = 1015;
    /// Trace hop count (u32).
    pub const TRACE_HOP_COUNT: i32 = 1016;
    /// Trace hop type (string).
    pub const TRACE_HOP_TYPE: i32 = 1017;
    /// Trace hop id (string).
    pub const TRACE_HOP_ID: i32 = 1018;
    /// Trace source request id (u32).
    pub const TRACE_SOURCE_REQUEST_ID: i32 = 1019;
    /// Trace error (string).
    pub const TRACE_ERROR: i32 = 1020;
    /// Listener id (string), Bind.
    pub const LISTENER_ID: i32 = 1021;
    /// Connection type (byte), ConnInspectResponse.
    pub const CONN_TYPE: i32 = 1022;
    /// SDK answers ConnInspectRequest (bool).
    pub const SUPPORTS_INSPECT: i32 = 1023;
    /// Ask for / advertise BindSuccess (bool).
    pub const SUPPORTS_BIND_SUCCESS: i32 = 1024;
    /// Connection marker (string).
    pub const CONNECTION_MARKER: i32 = 1025;
    /// Circuit id (string).
    pub const CIRCUIT_ID: i32 = 1026;
    /// Stickiness token (bytes).
    pub const STICKINESS_TOKEN: i32 = 1027;
    /// SDK-side xgress flow control (bool). Never set by this SDK.
    pub const USE_XGRESS_TO_SDK: i32 = 1028;
    /// Xgress control id (string).
    pub const XGRESS_CTRL_ID: i32 = 1029;
    /// Xgress address (string).
    pub const XGRESS_ADDRESS: i32 = 1030;
    /// Requested inspect values (string slice).
    pub const INSPECT_REQUESTED_VALUES: i32 = 1031;
    /// Router evaluates posture responses (bool, hello answer).
    pub const SUPPORTS_POSTURE_CHECKS: i32 = 1032;
    /// Structured error (JSON).
    pub const STRUCTURED_ERROR: i32 = 1033;
    /// Dialer identity id (string), Dial.
    pub const DIALER_IDENTITY_ID: i32 = 1034;
    /// Dialer identity name (string), Dial.
    pub const DIALER_IDENTITY_NAME: i32 = 1035;
    /// Service id (string), ConnectV2.
    pub const SERVICE_ID: i32 = 1036;
    /// Service identifier type (byte), ConnectV2.
    pub const SERVICE_IDENTIFIER_TYPE: i32 = 1037;
    /// Reserved (2.1).
    pub const CONNECT_REQUEST_ID: i32 = 1038;
    /// Router capabilities (big-endian bitmask, hello answer).
    pub const ROUTER_CAPABILITIES: i32 = 1039;
    /// Reserved (2.1).
    pub const SERVICE_SUBSCRIPTION_INDEX: i32 = 1040;
}

/// Data flags (header 1010).
pub mod flags {
    /// Half close: no more data from the sender. Body empty and unencrypted.
    pub const FIN: u32 = 1;
    /// Sender uses trace UUID headers.
    pub const TRACE_UUID: u32 = 2;
    /// Sender can accept multipart data messages.
    pub const MULTIPART: u32 = 4;
    /// Stream semantics: payloads may be coalesced.
    pub const STREAM: u32 = 8;
    /// This body holds several `u16 LE length | bytes` parts.
    pub const MULTIPART_MSG: u32 = 16;
}

/// Fuzz entry point: decodes `data` as one channel frame (or, failing that, as a bare header
/// block with the first two bytes choosing a content type) and runs every edge parser on it.
/// Must never panic.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_parse(data: &[u8]) {
    use crate::channel::{FrameDecoder, Headers, Limits, Message};
    let mut buf = bytes::BytesMut::from(data);
    let msg = match FrameDecoder::new(Limits::default()).decode(&mut buf) {
        Ok(Some(m)) => m,
        _ => {
            let (ct, rest) = data.split_at_checked(2).unwrap_or((&[0, 0], data));
            let all = [
                60783, 60784, 60785, 60786, 60787, 60788, 60790, 60800, 60801, 60802,
            ];
            let idx = usize::from(u16::from_le_bytes([ct[0], ct[1]])) % all.len();
            let block = bytes::Bytes::copy_from_slice(rest);
            let Ok(headers) = Headers::decode(&block, 256) else {
                return;
            };
            let mut m = Message::new(all.get(idx).copied().unwrap_or(60786), block.clone());
            m.headers = headers;
            m
        }
    };
    let _ = EdgeMessage::parse(&msg);
    let _ = StateConnected::parse(&msg);
    if let Ok(sc) = StateClosed::parse(&msg) {
        let _ = sc.dial_failure().to_string();
    }
    if let Ok(d) = Data::parse(&msg) {
        let _ = d.parts();
    }
    let _ = Dial::parse(&msg);
    let _ = BindSuccess::parse(&msg);
    let _ = UpdateTokenFailure::parse(&msg);
    let _ = StructuredError::from_json(&msg.body);
    let _ = DialFailure::classify(&String::from_utf8_lossy(&msg.body));
    let mut conn = EdgeConn::dial(msg.headers.get_u32(header::CONN_ID).unwrap_or(1), true);
    let _ = conn.handle(&msg);
    let _ = conn.handle(&msg);
    let _ = conn.handle(&msg);
}

#[cfg(test)]
mod tests;
