//! Channel V2 wire format (the framing under every edge-router connection), sans IO.
//!
//! * [`Message`]: content type, sequence, [`Headers`], body; [`Message::encode`] writes a frame.
//! * [`FrameDecoder`]: pulls whole messages out of a `BytesMut` that the I/O layer fills,
//!   checking [`Limits`] before buffering and slicing bodies without copying.
//! * [`hello`], [`HelloResult`], [`latency_probe`], [`latency_reply`]: the channel-level
//!   conversations with a router. Request/reply matching uses header 1 ([`Message::reply_for`],
//!   [`Message::reply_to`]).
//!
//! [`Message`]: crate::channel::Message
//! [`Headers`]: crate::channel::Headers
//! [`Message::encode`]: crate::channel::Message::encode
//! [`FrameDecoder`]: crate::channel::FrameDecoder
//! [`Limits`]: crate::channel::Limits
//! [`hello`]: crate::channel::hello
//! [`HelloResult`]: crate::channel::HelloResult
//! [`latency_probe`]: crate::channel::latency_probe
//! [`latency_reply`]: crate::channel::latency_reply
//! [`Message::reply_for`]: crate::channel::Message::reply_for
//! [`Message::reply_to`]: crate::channel::Message::reply_to
//!
//! ```
//! use bytes::BytesMut;
//! use ziti_sdk::channel::{self, FrameDecoder, HelloResult, Limits};
//!
//! // Client side: encode the hello into the outgoing buffer.
//! let mut out = BytesMut::new();
//! channel::hello("api-session-token", "my-identity").encode(&mut out)?;
//!
//! // ... write `out` to TLS; read the router's bytes into `inbuf` ...
//! # let mut answer = channel::Message::new(channel::content_type::RESULT, "");
//! # answer.sequence = -1;
//! # answer.headers.put_i32(channel::REPLY_FOR, -1);
//! # answer.headers.put_bool(channel::RESULT_SUCCESS, true);
//! # answer.headers.put_str(channel::PEER_ID, "router-1");
//! let mut inbuf = BytesMut::new();
//! # answer.encode(&mut inbuf)?;
//! let mut decoder = FrameDecoder::new(Limits::default());
//! while let Some(msg) = decoder.decode(&mut inbuf)? {
//!     if let Some(result) = HelloResult::parse(&msg) {
//!         assert!(result.success);
//!         assert_eq!(result.router_id.as_deref(), Some("router-1"));
//!     }
//! }
//! # Ok::<(), channel::FrameError>(())
//! ```

mod codec;
mod headers;
mod hello;

pub use codec::{
    FRAME_PREFIX_LEN, FrameDecoder, FrameError, Limits, MAGIC_UNKNOWN_VERSION, MAGIC_V2, Message,
};
pub use headers::{
    HeaderBlockError, HeaderValueError, Headers, MAX_COLLECTION_ITEM_LEN, MAX_COLLECTION_ITEMS,
};
pub use hello::{
    ChannelResult, HelloResult, ROUTER_CAPABILITIES_HEADER, RouterCapabilities,
    SESSION_TOKEN_HEADER, SUPPORTS_BIND_SUCCESS_HEADER, SUPPORTS_POSTURE_CHECKS_HEADER, hello,
    latency_probe, latency_reply,
};

/// Channel content types (channel library `messages.go`).
pub mod content_type {
    /// Client's first frame.
    pub const HELLO: i32 = 0;
    /// Unused on edge channels.
    pub const PING: i32 = 1;
    /// Hello answer and latency-probe answer; header 2 = success, body = message.
    pub const RESULT: i32 = 2;
    /// Client latency probe (header 128 = u64 timestamp).
    pub const LATENCY: i32 = 3;
    /// Not used by the edge listener.
    pub const LATENCY_RESPONSE: i32 = 4;
    /// Not configured on edge channels; never send.
    pub const HEARTBEAT: i32 = 5;
    /// Unframed payloads; links only.
    pub const RAW: i32 = 6;
}

/// Header 0: channel connection id (string).
pub const CONNECTION_ID: i32 = 0;
/// Header 1: sequence of the request a message replies to (i32, exactly 4 bytes).
pub const REPLY_FOR: i32 = 1;
/// Header 2: result success (bool).
pub const RESULT_SUCCESS: i32 = 2;
/// Header 3: hello router advertisements (unused by SDKs).
pub const HELLO_ROUTER_ADVERTISEMENTS: i32 = 3;
/// Header 4: peer version, five `|`-separated fields.
pub const HELLO_VERSION: i32 = 4;
/// Header 5: heartbeat (u64 nanos).
pub const HEARTBEAT: i32 = 5;
/// Header 6: heartbeat response (u64).
pub const HEARTBEAT_RESPONSE: i32 = 6;
/// Header 7: underlay type for grouped channels (string).
pub const TYPE: i32 = 7;
/// Header 8: peer id; the router identity id in the hello answer (string).
pub const PEER_ID: i32 = 8;
/// Header 9: channel is grouped (bool).
pub const IS_GROUPED: i32 = 9;
/// Header 10: group secret (bytes).
pub const GROUP_SECRET: i32 = 10;
/// Header 11: first connection of a group (bool).
pub const IS_FIRST_GROUP_CONNECTION: i32 = 11;
/// Header 12: underlay type (string).
pub const UNDERLAY_TYPE: i32 = 12;
/// Header 13: hello reject class (channel v5 only).
pub const HELLO_REJECT_CLASS: i32 = 13;
/// Header 128: the reflected correlation header (latency timestamp, edge trace UUID).
pub const REFLECTED_CORRELATION: i32 = 128;

/// Sequence used by the Go SDK for the hello.
pub const HELLO_SEQUENCE: i32 = -1;

/// Sequence numbers for the messages one channel sends (any unique i32 works; the router never
/// checks order). Starts at 1, wraps to 1 after `i32::MAX`, and never yields -1 (the hello's
/// value, which replies echo as "not a reply").
#[derive(Debug, Clone)]
pub struct Sequencer {
    next: i32,
}

impl Default for Sequencer {
    fn default() -> Self {
        Self { next: 1 }
    }
}

impl Sequencer {
    /// A counter starting at 1.
    pub fn new() -> Self {
        Self::default()
    }

    /// Takes the next sequence number.
    pub fn next_seq(&mut self) -> i32 {
        let seq = self.next;
        self.next = if seq == i32::MAX { 1 } else { seq + 1 };
        seq
    }

    /// Stamps `msg` with the next sequence number and returns it (remember it to match the
    /// reply with [`Message::is_reply_to`]).
    pub fn stamp(&mut self, msg: &mut Message) -> i32 {
        msg.sequence = self.next_seq();
        msg.sequence
    }
}

/// `true` for header ids 128..=255, which a reply copies from its request.
pub fn is_reflected_header(id: i32) -> bool {
    (128..=255).contains(&id)
}

/// Fuzz entry point: decodes `data` fed in chunks whose sizes come from the data itself, and
/// checks that chunked decoding agrees with one-shot decoding. Panics only on a real bug.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_decode(data: &[u8]) {
    let limits = Limits {
        max_headers_len: 4096,
        max_body_len: 65536,
        max_header_count: 64,
    };
    let (split_seed, stream) = match data.split_first() {
        Some((s, rest)) => (*s as usize, rest),
        None => (0, data),
    };
    let one_shot = decode_all(limits, stream, usize::MAX);
    let chunked = decode_all(limits, stream, split_seed % 17 + 1);
    assert_eq!(
        one_shot, chunked,
        "chunked decode differs from one-shot decode"
    );
    for m in &one_shot.0 {
        // Whatever decoded must re-encode to something that decodes to the same message.
        let Ok(bytes) = m.to_bytes() else { continue };
        let mut buf = bytes::BytesMut::from(&bytes[..]);
        let again = FrameDecoder::new(limits).decode(&mut buf);
        assert_eq!(again.ok().flatten().as_ref(), Some(m), "re-encode mismatch");
    }
}

#[cfg(any(test, feature = "fuzzing"))]
type DecodeOutcome = (Vec<Message>, Option<FrameError>);

#[cfg(any(test, feature = "fuzzing"))]
fn decode_all(limits: Limits, data: &[u8], chunk: usize) -> DecodeOutcome {
    let mut dec = FrameDecoder::new(limits);
    let mut buf = bytes::BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

#[cfg(test)]
mod tests;
