//! Parsers for the edge messages a router sends to an SDK.

use bytes::Bytes;

use super::error::{DialFailure, ErrorCode, StructuredError};
use super::{ContentType, flags, header};
use crate::channel::Message;
use crate::e2ee::{E2eeError, PublicKey};

/// A received edge message that cannot be interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EdgeError {
    /// The content type is not the one the parser handles.
    #[error("expected edge content type {expected}, got {got}")]
    WrongContentType {
        /// Expected content type.
        expected: i32,
        /// Received content type.
        got: i32,
    },
    /// A required header is absent or has the wrong length.
    #[error("edge message {content_type} lacks required header {header}")]
    MissingHeader {
        /// Content type of the message.
        content_type: i32,
        /// Missing header id.
        header: i32,
    },
    /// The public key header (1003) is malformed.
    #[error("bad public key header")]
    BadPublicKey(#[from] E2eeError),
    /// A MULTIPART_MSG body whose framing is broken.
    #[error("malformed multipart body: {0}")]
    Multipart(&'static str),
}

fn expect(msg: &Message, ct: ContentType) -> Result<(), EdgeError> {
    if msg.content_type == ct as i32 {
        Ok(())
    } else {
        Err(EdgeError::WrongContentType {
            expected: ct as i32,
            got: msg.content_type,
        })
    }
}

fn conn_id(msg: &Message) -> Result<u32, EdgeError> {
    msg.headers
        .get_u32(header::CONN_ID)
        .ok_or(EdgeError::MissingHeader {
            content_type: msg.content_type,
            header: header::CONN_ID,
        })
}

fn peer_key(msg: &Message) -> Result<Option<PublicKey>, EdgeError> {
    msg.headers
        .get(header::PUBLIC_KEY)
        .map(|k| PublicKey::from_slice(k))
        .transpose()
        .map_err(EdgeError::from)
}

fn string(msg: &Message, id: i32) -> Option<String> {
    msg.headers
        .get(id)
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

fn body_text(msg: &Message) -> String {
    String::from_utf8_lossy(&msg.body).into_owned()
}

/// StateConnected (60784): the answer to Connect or Bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateConnected {
    /// Conn id (1000).
    pub conn_id: u32,
    /// The request this answers (header 1).
    pub reply_for: Option<i32>,
    /// Circuit id (1026), on dials.
    pub circuit_id: Option<String>,
    /// The host's kx public key (1003) for encrypted services.
    pub peer_key: Option<PublicKey>,
    /// 1012 echoed: the router will provide conn ids for dials on this bind.
    pub router_provided_conn_id: bool,
}

impl StateConnected {
    /// Parses a StateConnected message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        expect(msg, ContentType::StateConnected)?;
        Ok(Self {
            conn_id: conn_id(msg)?,
            reply_for: msg.reply_for(),
            circuit_id: string(msg, header::CIRCUIT_ID),
            peer_key: peer_key(msg)?,
            router_provided_conn_id: msg.headers.flag(header::ROUTER_PROVIDED_CONN_ID),
        })
    }
}

/// StateClosed (60785): a conn or bind was closed, or a Connect/Bind failed (as a reply).
#[derive(Debug, Clone, PartialEq)]
pub struct StateClosed {
    /// Conn id (1000), if present (a router error reply may lack it).
    pub conn_id: Option<u32>,
    /// The request this answers, if it is an error reply.
    pub reply_for: Option<i32>,
    /// Body text: the reason.
    pub reason: String,
    /// Circuit id (1026), if one was allocated.
    pub circuit_id: Option<String>,
    /// Error code (1014).
    pub error_code: Option<ErrorCode>,
    /// Structured error (1033), parsed leniently.
    pub error: Option<StructuredError>,
}

impl StateClosed {
    /// Parses a StateClosed message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        expect(msg, ContentType::StateClosed)?;
        let error = msg
            .headers
            .get(header::STRUCTURED_ERROR)
            .and_then(|raw| StructuredError::from_json(raw));
        let error_code = msg
            .headers
            .get_u32(header::ERROR_CODE)
            .map(ErrorCode)
            .or_else(|| error.as_ref().and_then(|e| e.code));
        Ok(Self {
            conn_id: msg.headers.get_u32(header::CONN_ID),
            reply_for: msg.reply_for(),
            reason: body_text(msg),
            circuit_id: string(msg, header::CIRCUIT_ID),
            error_code,
            error,
        })
    }

    /// Classifies this close as a dial failure (meaningful when it answers a Connect).
    pub fn dial_failure(&self) -> DialFailure {
        let text = match (&self.error, self.reason.is_empty()) {
            (Some(e), true) => e.message.as_str(),
            _ => self.reason.as_str(),
        };
        DialFailure::from_code_or_text(self.error_code, text)
    }
}

/// Data (60786): payload for a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Data {
    /// Conn id (1000).
    pub conn_id: u32,
    /// Flags (1010), 0 if absent.
    pub flags: u32,
    /// Payload (zero-copy slice of the frame). Ciphertext on encrypted connections.
    pub body: Bytes,
    /// Trace UUID (128), if present.
    pub trace_uuid: Option<Bytes>,
}

impl Data {
    /// Parses a Data message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        expect(msg, ContentType::Data)?;
        Ok(Self {
            conn_id: conn_id(msg)?,
            flags: msg.headers.get_u32(header::FLAGS).unwrap_or(0),
            body: msg.body.clone(),
            trace_uuid: msg.headers.get(header::UUID).cloned(),
        })
    }

    /// FIN flag: the peer will send nothing more.
    pub fn is_fin(&self) -> bool {
        self.flags & flags::FIN != 0
    }

    /// MULTIPART_MSG flag: the (decrypted) body holds several parts.
    pub fn is_multipart(&self) -> bool {
        self.flags & flags::MULTIPART_MSG != 0
    }

    /// The application payloads of an **unencrypted** body: the body split into parts if
    /// MULTIPART_MSG is set, otherwise the body itself. Encrypted connections must decrypt
    /// first and call [`split_multipart`] on the plaintext.
    pub fn parts(&self) -> Result<Vec<Bytes>, EdgeError> {
        if self.is_multipart() {
            split_multipart(&self.body)
        } else {
            Ok(vec![self.body.clone()])
        }
    }
}

/// Splits a MULTIPART_MSG body: a sequence of `u16 LE length | bytes` parts (C SDK coalesced
/// writes). Parts are zero-copy slices. Errors on a truncated prefix or part.
pub fn split_multipart(body: &Bytes) -> Result<Vec<Bytes>, EdgeError> {
    let mut parts = Vec::new();
    let mut pos = 0usize;
    while pos < body.len() {
        let len = body
            .get(pos..pos + 2)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or(EdgeError::Multipart("length prefix truncated"))?;
        let start = pos + 2;
        let end = start + len;
        if end > body.len() {
            return Err(EdgeError::Multipart("part longer than the remaining body"));
        }
        parts.push(body.slice(start..end));
        pos = end;
    }
    Ok(parts)
}

/// Dial (60787): the router asks a hosting SDK to accept a new circuit on a bind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// Sequence of the Dial; DialSuccess/DialFailed must reply to it (keep the message or use
    /// [`super::dial_success`] with the original).
    pub sequence: i32,
    /// The bind conn id (1000) the circuit arrives on.
    pub bind_conn_id: u32,
    /// New conn id chosen by the router (1012 as u32), when the Bind asked for it.
    pub new_conn_id: Option<u32>,
    /// Bind session token of the terminator (body).
    pub token: String,
    /// Dialer's kx public key (1003), for encrypted services.
    pub peer_key: Option<PublicKey>,
    /// Caller id (1008).
    pub caller_id: Option<String>,
    /// Dialer identity id (1034, v2.0+).
    pub dialer_identity_id: Option<String>,
    /// Dialer identity name (1035, v2.0+).
    pub dialer_identity_name: Option<String>,
    /// Circuit id (1026).
    pub circuit_id: Option<String>,
    /// Application data (1011).
    pub app_data: Option<Bytes>,
}

impl Dial {
    /// Parses a Dial message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        expect(msg, ContentType::Dial)?;
        Ok(Self {
            sequence: msg.sequence,
            bind_conn_id: conn_id(msg)?,
            // Header 1012 is a u32 here, unlike the bool it is everywhere else.
            new_conn_id: msg.headers.get_u32(header::ROUTER_PROVIDED_CONN_ID),
            token: body_text(msg),
            peer_key: peer_key(msg)?,
            caller_id: string(msg, header::CALLER_ID),
            dialer_identity_id: string(msg, header::DIALER_IDENTITY_ID),
            dialer_identity_name: string(msg, header::DIALER_IDENTITY_NAME),
            circuit_id: string(msg, header::CIRCUIT_ID),
            app_data: msg.headers.get(header::APP_DATA).cloned(),
        })
    }
}

/// BindSuccess (60800): the terminator for a bind now exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BindSuccess {
    /// The bind conn id (1000).
    pub conn_id: u32,
}

impl BindSuccess {
    /// Parses a BindSuccess message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        expect(msg, ContentType::BindSuccess)?;
        Ok(Self {
            conn_id: conn_id(msg)?,
        })
    }
}

/// UpdateTokenFailure (60802); the router closes the channel after sending it.
#[derive(Debug, Clone, PartialEq)]
pub struct UpdateTokenFailure {
    /// The UpdateToken request this answers.
    pub reply_for: Option<i32>,
    /// Body text.
    pub message: String,
    /// Error code (1014).
    pub error_code: Option<ErrorCode>,
    /// Structured error (1033).
    pub error: Option<StructuredError>,
}

impl UpdateTokenFailure {
    /// Parses an UpdateTokenFailure message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        expect(msg, ContentType::UpdateTokenFailure)?;
        Ok(Self {
            reply_for: msg.reply_for(),
            message: body_text(msg),
            error_code: msg.headers.get_u32(header::ERROR_CODE).map(ErrorCode),
            error: msg
                .headers
                .get(header::STRUCTURED_ERROR)
                .and_then(|raw| StructuredError::from_json(raw)),
        })
    }
}

/// Every edge message an SDK can receive, for dispatch in the router driver.
#[derive(Debug, Clone, PartialEq)]
pub enum EdgeMessage {
    /// Connect/Bind answer.
    StateConnected(StateConnected),
    /// Close or error reply.
    StateClosed(StateClosed),
    /// Payload.
    Data(Data),
    /// Incoming circuit on a bind.
    Dial(Dial),
    /// Terminator created.
    BindSuccess(BindSuccess),
    /// Token update accepted (reply_for).
    UpdateTokenSuccess {
        /// The UpdateToken request answered.
        reply_for: Option<i32>,
    },
    /// Token update refused; the channel will close.
    UpdateTokenFailure(UpdateTokenFailure),
    /// A known edge type an SDK does not handle (inspect requests, trace route...).
    Unhandled(ContentType),
    /// A content type this SDK does not know (channel-level types included). Ignore it.
    Unknown(i32),
}

impl EdgeMessage {
    /// Classifies and parses a received message.
    pub fn parse(msg: &Message) -> Result<Self, EdgeError> {
        let Some(ct) = ContentType::from_i32(msg.content_type) else {
            return Ok(Self::Unknown(msg.content_type));
        };
        Ok(match ct {
            ContentType::StateConnected => Self::StateConnected(StateConnected::parse(msg)?),
            ContentType::StateClosed => Self::StateClosed(StateClosed::parse(msg)?),
            ContentType::Data => Self::Data(Data::parse(msg)?),
            ContentType::Dial => Self::Dial(Dial::parse(msg)?),
            ContentType::BindSuccess => Self::BindSuccess(BindSuccess::parse(msg)?),
            ContentType::UpdateTokenSuccess => Self::UpdateTokenSuccess {
                reply_for: msg.reply_for(),
            },
            ContentType::UpdateTokenFailure => {
                Self::UpdateTokenFailure(UpdateTokenFailure::parse(msg)?)
            }
            other => Self::Unhandled(other),
        })
    }

    /// The conn id the message is addressed to, if it has one.
    pub fn conn_id(&self) -> Option<u32> {
        match self {
            Self::StateConnected(m) => Some(m.conn_id),
            Self::StateClosed(m) => m.conn_id,
            Self::Data(m) => Some(m.conn_id),
            Self::Dial(m) => Some(m.bind_conn_id),
            Self::BindSuccess(m) => Some(m.conn_id),
            _ => None,
        }
    }
}
