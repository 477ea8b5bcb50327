//! The xgress wire messages (edge content types 1100..=1103) as the Go SDK and the router encode
//! them (sdk-golang `xgress/messages.go`, identical in v1.7.0, which v2.0.x routers embed, and
//! v2).
//!
//! Every value here converts to and from a [`channel::Message`]; the channel framing itself
//! (little-endian header encodings) is [`crate::channel`]'s job. Decoding never panics: a message
//! that the Go decoder would reject, or that would make us guess, is a [`DecodeError`].
//!
//! [`channel::Message`]: crate::channel::Message

use std::collections::BTreeMap;
use std::fmt;
use std::ops::{BitOr, BitOrAssign};

use bytes::{BufMut, Bytes, BytesMut};

use crate::channel::{Headers, Message};

/// Edge content types of SDK xgress mode (sdk-golang `pb/edge_client_pb/edge_client.proto`).
pub mod content_type {
    /// A payload (data or a control flag such as EOF) for one circuit.
    pub const PAYLOAD: i32 = 1100;
    /// Acknowledgement of payloads; carries the receiver's buffer size and the RTT echo.
    pub const ACKNOWLEDGEMENT: i32 = 1101;
    /// Circuit control (trace route). Body: type byte, then the circuit id.
    pub const CONTROL: i32 = 1102;
    /// SDK -> router: this xgress is gone, tear the circuit down. Body: the circuit id.
    pub const CLOSE: i32 = 1103;
}

/// Channel header ids used by xgress messages (sdk-golang `xgress/messages.go`).
pub mod header {
    /// First id of the per-payload xgress headers: payload header `k` travels as `2000 + k`.
    pub const MIN_PAYLOAD_HEADER: i32 = 2000;
    /// Last id of the per-payload xgress headers (`2000 + 255`).
    pub const MAX_PAYLOAD_HEADER: i32 = 2255;
    /// Circuit id (string, raw bytes).
    pub const CIRCUIT_ID: i32 = 2256;
    /// Payload sequence: 8 bytes little-endian, the int32 sequence sign-extended to 64 bits
    /// (Go `PutUint64Header(uint64(int32))`); read back by truncation to 32 bits.
    pub const SEQUENCE: i32 = 2257;
    /// [`Flags`](super::Flags), u32 little-endian; absent means 0.
    pub const FLAGS: i32 = 2258;
    /// Acknowledgement: the receiver's buffered byte count, u32 little-endian; absent means
    /// `u32::MAX` (Go `UnmarshallAcknowledgement`).
    pub const RECV_BUFFER_SIZE: i32 = 2259;
    /// RTT clock: u16 little-endian milliseconds stamped by the payload's sender, echoed back in
    /// the acknowledgement.
    pub const RTT: i32 = 2260;
    /// Raw link-format payload bytes; used between routers only, ignored here.
    pub const PAYLOAD_RAW: i32 = 2261;
    /// Edge connection id (u32), the same id as `crate::edge::header::CONN_ID`.
    pub const CONN_ID: i32 = 1000;
}

/// Keys of the per-payload headers (the `k` in channel header `2000 + k`).
pub mod payload_header {
    /// Trace UUID (sdk-golang `xgress.HeaderKeyUUID`).
    pub const UUID: u8 = 0;
    /// Xgress capabilities, u32 **big-endian** (sdk-golang `xgress.go` `capabilitiesHeader`).
    /// Sent on CircuitStart and on the terminator's answer to it.
    pub const CAPABILITIES: u8 = 1;
    /// Edge data flags (`crate::edge::flags`, FIN = 1), u32 little-endian (sdk-golang
    /// `edgexg.PayloadFlagsHeader`), i.e. channel header 2016.
    pub const EDGE_FLAGS: u8 = 0x10;
}

/// Header ids inside control (1102) messages (sdk-golang `xgress/messages.go`).
pub mod control_header {
    /// Remaining hop count (u32).
    pub const HOP_COUNT: i32 = 20;
    /// Type of the answering hop (string).
    pub const HOP_TYPE: i32 = 21;
    /// Id of the answering hop (string).
    pub const HOP_ID: i32 = 22;
    /// Request timestamp, unix milliseconds (u64).
    pub const TIMESTAMP: i32 = 23;
    /// Correlation value; the router stores the request's channel sequence here (u32).
    pub const USER_VAL: i32 = 24;
    /// Error text (string).
    pub const ERROR: i32 = 25;
}

/// Xgress capability bits (sdk-golang `xgress.go`; bits 8..=16 are reserved for them).
pub mod capability {
    /// The peer understands the [`Flags::EOF`](super::Flags::EOF) half-close flag.
    pub const EOF: u32 = 1 << 8;
    /// Bits that carry capabilities; others are ignored on receipt.
    pub const MASK: u32 = 0x1FF00;
}

/// The per-payload xgress headers, by key (`2000 + key` on the wire). See [`payload_header`].
pub type PayloadHeaders = BTreeMap<u8, Bytes>;

/// Which end of the circuit an xgress is: the dialing side (initiator) or the hosting side
/// (terminator). Carried in [`Flags::ORIGINATOR`] so a payload that loops back is recognised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Originator {
    /// The dialing side; sends CircuitStart.
    Initiator,
    /// The hosting side; waits for CircuitStart before sending.
    Terminator,
}

impl Originator {
    /// The flag bit this originator sets on everything it sends.
    pub fn flag(self) -> Flags {
        match self {
            Originator::Initiator => Flags::empty(),
            Originator::Terminator => Flags::ORIGINATOR,
        }
    }

    /// The other end.
    pub fn invert(self) -> Self {
        match self {
            Originator::Initiator => Originator::Terminator,
            Originator::Terminator => Originator::Initiator,
        }
    }
}

/// Payload/acknowledgement flags (header 2258).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Flags(pub u32);

impl Flags {
    /// The sender's xgress is closing; the last payload it sends.
    pub const CIRCUIT_END: Flags = Flags(1);
    /// Set by the terminator on everything it sends (see [`Originator`]).
    pub const ORIGINATOR: Flags = Flags(2);
    /// First payload of the initiator; releases the terminator's sending.
    pub const CIRCUIT_START: Flags = Flags(4);
    /// One piece of a payload split by MTU; the first piece's data starts with a uvarint of the
    /// whole size.
    pub const CHUNK: Flags = Flags(8);
    /// This is a retransmission.
    pub const RETRANSMIT: Flags = Flags(16);
    /// Half close: the sender will send no more data (only if the peer has
    /// [`capability::EOF`]).
    pub const EOF: Flags = Flags(32);
    /// The sender can no longer deliver to its application: stop sending to it.
    pub const WRITE_FAILED: Flags = Flags(64);

    /// No flags.
    pub const fn empty() -> Self {
        Flags(0)
    }

    /// The raw bits.
    pub const fn bits(self) -> u32 {
        self.0
    }

    /// `true` if every bit of `other` is set.
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }

    /// `true` if any bit of `other` is set.
    pub const fn intersects(self, other: Flags) -> bool {
        self.0 & other.0 != 0
    }

    /// The originator these flags claim.
    pub const fn originator(self) -> Originator {
        if self.contains(Flags::ORIGINATOR) {
            Originator::Terminator
        } else {
            Originator::Initiator
        }
    }
}

impl BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        Flags(self.0 | rhs.0)
    }
}

impl BitOrAssign for Flags {
    fn bitor_assign(&mut self, rhs: Flags) {
        self.0 |= rhs.0;
    }
}

impl fmt::Debug for Flags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [(Flags, &str); 7] = [
            (Flags::CIRCUIT_END, "CIRCUIT_END"),
            (Flags::ORIGINATOR, "ORIGINATOR"),
            (Flags::CIRCUIT_START, "CIRCUIT_START"),
            (Flags::CHUNK, "CHUNK"),
            (Flags::RETRANSMIT, "RETRANSMIT"),
            (Flags::EOF, "EOF"),
            (Flags::WRITE_FAILED, "WRITE_FAILED"),
        ];
        let mut rest = self.0;
        let mut first = true;
        f.write_str("Flags(")?;
        for (flag, name) in NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
                rest &= !flag.0;
            }
        }
        if rest != 0 {
            if !first {
                f.write_str("|")?;
            }
            write!(f, "{rest:#x}")?;
        }
        f.write_str(")")
    }
}

/// The capabilities header value: u32 big-endian.
pub fn encode_capabilities(caps: u32) -> Bytes {
    Bytes::copy_from_slice(&caps.to_be_bytes())
}

/// Reads a capabilities header: the first 4 bytes big-endian, masked to [`capability::MASK`];
/// `None` if shorter than 4 bytes (Go `setPeerCapabilities` ignores those).
pub fn decode_capabilities(value: &[u8]) -> Option<u32> {
    let arr: [u8; 4] = value.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(arr) & capability::MASK)
}

/// The edge data flags a payload carries ([`payload_header::EDGE_FLAGS`]): the first 4 bytes,
/// little-endian (sdk-golang `chunk_reader.go` `readXgressChunk`).
pub fn edge_flags(headers: &PayloadHeaders) -> Option<u32> {
    let v = headers.get(&payload_header::EDGE_FLAGS)?;
    let arr: [u8; 4] = v.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(arr))
}

/// Why a message is not a valid xgress message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The content type is not one of 1100..=1103.
    #[error("content type {0} is not an xgress message (1100..=1103)")]
    NotXgress(i32),
    /// Payloads and acknowledgements must name their circuit (header 2256).
    #[error("xgress {kind} has no circuit id (header 2256)")]
    MissingCircuitId {
        /// "payload" or "acknowledgement".
        kind: &'static str,
    },
    /// The circuit id is not UTF-8 (circuit ids are ASCII).
    #[error("xgress circuit id is not UTF-8")]
    CircuitIdNotUtf8,
    /// A payload without header 2257.
    #[error("xgress payload has no sequence (header 2257)")]
    MissingSequence,
    /// Header 2257 is not 8 bytes. (Go reads such a value as sequence 0; we refuse to guess.)
    #[error("xgress payload sequence header is {0} bytes, expected 8")]
    BadSequence(usize),
    /// An acknowledgement body that is not a whole number of 4-byte sequences.
    #[error("xgress acknowledgement body of {0} bytes is not a multiple of 4")]
    BadAckBody(usize),
    /// A control body needs a type byte and at least one byte of circuit id.
    #[error("xgress control body of {0} bytes is too short")]
    ControlTooShort(usize),
}

fn circuit_id_from(headers: &Headers, kind: &'static str) -> Result<String, DecodeError> {
    let raw = headers
        .get(header::CIRCUIT_ID)
        .ok_or(DecodeError::MissingCircuitId { kind })?;
    utf8(raw)
}

fn utf8(raw: &[u8]) -> Result<String, DecodeError> {
    std::str::from_utf8(raw)
        .map(str::to_owned)
        .map_err(|_| DecodeError::CircuitIdNotUtf8)
}

/// One payload (content type 1100).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The circuit it belongs to.
    pub circuit_id: String,
    /// Flags; [`Originator::flag`] of the sender is always part of it.
    pub flags: Flags,
    /// The sender's RTT clock stamp (ms, wrapping), echoed by the acknowledgement; 0 = none.
    pub rtt: u16,
    /// Sequence number; each side counts its own from 0.
    pub sequence: i32,
    /// Per-payload headers ([`payload_header`]).
    pub headers: PayloadHeaders,
    /// Application bytes (may be empty for control payloads).
    pub data: Bytes,
}

impl Payload {
    /// Encodes as Go's `Payload.Marshall` does, plus header 1000 = `conn_id` when given (the Go
    /// SDK's `XgAdapter.ForwardPayload` adds it; the router ignores it and routes by circuit id).
    /// Go always writes the RTT header; so does this.
    pub fn to_message(&self, conn_id: Option<u32>) -> Message {
        let mut msg = Message::new(content_type::PAYLOAD, self.data.clone());
        for (k, v) in &self.headers {
            msg.headers
                .insert(header::MIN_PAYLOAD_HEADER + i32::from(*k), v.clone());
        }
        msg.headers.put_str(header::CIRCUIT_ID, &self.circuit_id);
        if self.flags.0 != 0 {
            msg.headers.put_u32(header::FLAGS, self.flags.0);
        }
        // Sign extension is what Go's uint64(int32) does.
        msg.headers
            .put_u64(header::SEQUENCE, i64::from(self.sequence) as u64);
        msg.headers.put_u16(header::RTT, self.rtt);
        if let Some(id) = conn_id {
            msg.headers.put_u32(header::CONN_ID, id);
        }
        msg
    }

    /// Decodes a 1100 message (Go `UnmarshallPayload`, but a wrong-length sequence is an error).
    pub fn from_message(msg: &Message) -> Result<Self, DecodeError> {
        if msg.content_type != content_type::PAYLOAD {
            return Err(DecodeError::NotXgress(msg.content_type));
        }
        let circuit_id = circuit_id_from(&msg.headers, "payload")?;
        let raw_seq = msg
            .headers
            .get(header::SEQUENCE)
            .ok_or(DecodeError::MissingSequence)?;
        let seq_bytes: [u8; 8] = raw_seq
            .as_ref()
            .try_into()
            .map_err(|_| DecodeError::BadSequence(raw_seq.len()))?;
        // Truncation is Go's int32(uint64).
        let sequence = u64::from_le_bytes(seq_bytes) as u32 as i32;
        let mut headers = PayloadHeaders::new();
        for (id, value) in msg.headers.iter() {
            if (header::MIN_PAYLOAD_HEADER..=header::MAX_PAYLOAD_HEADER).contains(&id) {
                let Ok(k) = u8::try_from(id - header::MIN_PAYLOAD_HEADER) else {
                    continue;
                };
                headers.insert(k, value.clone());
            }
        }
        Ok(Payload {
            circuit_id,
            flags: Flags(msg.headers.get_u32(header::FLAGS).unwrap_or(0)),
            rtt: msg.headers.get_u16(header::RTT).unwrap_or(0),
            sequence,
            headers,
            data: msg.body.clone(),
        })
    }
}

/// An acknowledgement (content type 1101).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acknowledgement {
    /// The circuit it belongs to.
    pub circuit_id: String,
    /// Flags; only the sender's [`Originator::flag`] is used.
    pub flags: Flags,
    /// Bytes the acknowledging side holds that its application has not read yet.
    pub recv_buffer_size: u32,
    /// The RTT stamp of the acknowledged payload, echoed; 0 = no sample.
    pub rtt: u16,
    /// Acknowledged sequences; empty for a pure window update.
    pub sequences: Vec<i32>,
}

impl Acknowledgement {
    /// Encodes as Go's `Acknowledgement.Marshall` does (body = big-endian int32 sequences,
    /// headers 2260, 2256, 2258 if non-zero, 2259), plus header 1000 = `conn_id` when given.
    pub fn to_message(&self, conn_id: Option<u32>) -> Message {
        let mut body = BytesMut::with_capacity(self.sequences.len() * 4);
        for seq in &self.sequences {
            body.put_i32(*seq);
        }
        let mut msg = Message::new(content_type::ACKNOWLEDGEMENT, body.freeze());
        msg.headers.put_u16(header::RTT, self.rtt);
        msg.headers.put_str(header::CIRCUIT_ID, &self.circuit_id);
        if self.flags.0 != 0 {
            msg.headers.put_u32(header::FLAGS, self.flags.0);
        }
        msg.headers
            .put_u32(header::RECV_BUFFER_SIZE, self.recv_buffer_size);
        if let Some(id) = conn_id {
            msg.headers.put_u32(header::CONN_ID, id);
        }
        msg
    }

    /// Decodes a 1101 message (Go `UnmarshallAcknowledgement`).
    pub fn from_message(msg: &Message) -> Result<Self, DecodeError> {
        if msg.content_type != content_type::ACKNOWLEDGEMENT {
            return Err(DecodeError::NotXgress(msg.content_type));
        }
        let circuit_id = circuit_id_from(&msg.headers, "acknowledgement")?;
        if !msg.body.len().is_multiple_of(4) {
            return Err(DecodeError::BadAckBody(msg.body.len()));
        }
        let sequences = msg
            .body
            .chunks_exact(4)
            .filter_map(|c| <[u8; 4]>::try_from(c).ok())
            .map(i32::from_be_bytes)
            .collect();
        Ok(Acknowledgement {
            circuit_id,
            flags: Flags(msg.headers.get_u32(header::FLAGS).unwrap_or(0)),
            recv_buffer_size: msg
                .headers
                .get_u32(header::RECV_BUFFER_SIZE)
                .unwrap_or(u32::MAX),
            rtt: msg.headers.get_u16(header::RTT).unwrap_or(0),
            sequences,
        })
    }
}

/// Control message types (first body byte of a 1102 message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ControlType {
    /// Trace route request.
    TraceRoute,
    /// Trace route response.
    TraceRouteResponse,
    /// A type this implementation does not know.
    Other(u8),
}

impl ControlType {
    /// The wire byte.
    pub fn to_byte(self) -> u8 {
        match self {
            ControlType::TraceRoute => 1,
            ControlType::TraceRouteResponse => 2,
            ControlType::Other(b) => b,
        }
    }

    /// From the wire byte.
    pub fn from_byte(b: u8) -> Self {
        match b {
            1 => ControlType::TraceRoute,
            2 => ControlType::TraceRouteResponse,
            other => ControlType::Other(other),
        }
    }
}

/// A circuit control message (content type 1102): trace route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Control {
    /// What kind of control.
    pub control_type: ControlType,
    /// The circuit it belongs to (from the body, after the type byte).
    pub circuit_id: String,
    /// All headers of the message ([`control_header`] ids, plus whatever the router added).
    pub headers: Headers,
}

impl Control {
    /// Encodes as Go's `Control.Marshall` does: body = type byte + circuit id, headers as held.
    pub fn to_message(&self) -> Message {
        let mut body = BytesMut::with_capacity(1 + self.circuit_id.len());
        body.put_u8(self.control_type.to_byte());
        body.put_slice(self.circuit_id.as_bytes());
        let mut msg = Message::new(content_type::CONTROL, body.freeze());
        msg.headers = self.headers.clone();
        msg
    }

    /// Decodes a 1102 message (Go `UnmarshallControl`: body of at least 2 bytes).
    pub fn from_message(msg: &Message) -> Result<Self, DecodeError> {
        if msg.content_type != content_type::CONTROL {
            return Err(DecodeError::NotXgress(msg.content_type));
        }
        let Some((kind, id)) = msg.body.split_first().filter(|(_, id)| !id.is_empty()) else {
            return Err(DecodeError::ControlTooShort(msg.body.len()));
        };
        Ok(Control {
            control_type: ControlType::from_byte(*kind),
            circuit_id: utf8(id)?,
            headers: msg.headers.clone(),
        })
    }

    /// The answer a circuit end gives to a trace route request (Go `CreateTraceResponse`): the
    /// request's headers with [`control_header::HOP_TYPE`] and [`control_header::HOP_ID`] set.
    pub fn trace_response(&self, hop_type: &str, hop_id: &str) -> Control {
        let mut headers = self.headers.clone();
        headers.put_str(control_header::HOP_TYPE, hop_type);
        headers.put_str(control_header::HOP_ID, hop_id);
        Control {
            control_type: ControlType::TraceRouteResponse,
            circuit_id: self.circuit_id.clone(),
            headers,
        }
    }
}

/// SDK -> router "this xgress is closed" (content type 1103; sdk-golang `xg_adapter.go`
/// `HandleXgressClose`). The router then tears the circuit down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseCircuit {
    /// The circuit to tear down (the whole body).
    pub circuit_id: String,
}

impl CloseCircuit {
    /// Body = circuit id, no headers (exactly what the Go SDK sends).
    pub fn to_message(&self) -> Message {
        Message::new(
            content_type::CLOSE,
            Bytes::copy_from_slice(self.circuit_id.as_bytes()),
        )
    }

    /// Decodes a 1103 message.
    pub fn from_message(msg: &Message) -> Result<Self, DecodeError> {
        if msg.content_type != content_type::CLOSE {
            return Err(DecodeError::NotXgress(msg.content_type));
        }
        Ok(CloseCircuit {
            circuit_id: utf8(&msg.body)?,
        })
    }
}

/// Any xgress message, dispatched on the content type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum XgMessage {
    /// 1100.
    Payload(Payload),
    /// 1101.
    Acknowledgement(Acknowledgement),
    /// 1102.
    Control(Control),
    /// 1103.
    Close(CloseCircuit),
}

impl XgMessage {
    /// `true` if `content_type` is one of 1100..=1103 (the shell routes these to the circuit).
    pub fn is_xgress(content_type: i32) -> bool {
        (content_type::PAYLOAD..=content_type::CLOSE).contains(&content_type)
    }

    /// Decodes any of the four message kinds.
    pub fn decode(msg: &Message) -> Result<Self, DecodeError> {
        match msg.content_type {
            content_type::PAYLOAD => Payload::from_message(msg).map(XgMessage::Payload),
            content_type::ACKNOWLEDGEMENT => {
                Acknowledgement::from_message(msg).map(XgMessage::Acknowledgement)
            }
            content_type::CONTROL => Control::from_message(msg).map(XgMessage::Control),
            content_type::CLOSE => CloseCircuit::from_message(msg).map(XgMessage::Close),
            other => Err(DecodeError::NotXgress(other)),
        }
    }

    /// Encodes; `conn_id` is added to payloads and acknowledgements only.
    pub fn encode(&self, conn_id: Option<u32>) -> Message {
        match self {
            XgMessage::Payload(p) => p.to_message(conn_id),
            XgMessage::Acknowledgement(a) => a.to_message(conn_id),
            XgMessage::Control(c) => c.to_message(),
            XgMessage::Close(c) => c.to_message(),
        }
    }

    /// The circuit the message names.
    pub fn circuit_id(&self) -> &str {
        match self {
            XgMessage::Payload(p) => &p.circuit_id,
            XgMessage::Acknowledgement(a) => &a.circuit_id,
            XgMessage::Control(c) => &c.circuit_id,
            XgMessage::Close(c) => &c.circuit_id,
        }
    }
}

/// The answer to an end-of-circuit or EOF payload that arrives for a connection the shell no
/// longer has, modelled on sdk-golang `msg_mux.go` `handlePayloadWithNoSink` (originator
/// inverted, receive buffer 0). Go sends no sequences; this one acknowledges the payload's
/// sequence too, so the far end also stops retransmitting it. `None` for any other payload
/// (those are dropped).
pub fn orphan_end_ack(payload: &Payload) -> Option<Acknowledgement> {
    let ends = payload.flags.intersects(Flags::CIRCUIT_END | Flags::EOF);
    (ends && payload.data.is_empty()).then(|| Acknowledgement {
        circuit_id: payload.circuit_id.clone(),
        flags: payload.flags.originator().invert().flag(),
        recv_buffer_size: 0,
        rtt: payload.rtt,
        sequences: vec![payload.sequence],
    })
}
