//! Channel V2 frames: the [`Message`] value, its encoder and the streaming [`FrameDecoder`].
//!
//! Layout (all little-endian): magic `03 06 09 0C`, content type i32, sequence i32, header block
//! length u32, body length u32, header block, body.

use bytes::{BufMut, Bytes, BytesMut};

use super::headers::{HeaderBlockError, Headers, read_i32, read_u32};
use super::{REPLY_FOR, is_reflected_header};

/// Magic of a V2 frame.
pub const MAGIC_V2: [u8; 4] = [0x03, 0x06, 0x09, 0x0C];
/// Magic of the "unknown version" answer a listener sends when it cannot read our hello.
pub const MAGIC_UNKNOWN_VERSION: [u8; 4] = [0x03, 0x06, 0x09, 0x0A];
/// Size of the fixed frame prefix (magic + four 32-bit fields).
pub const FRAME_PREFIX_LEN: usize = 20;

/// Most versions we accept in an unknown-version answer (the Go listener sends 2).
const MAX_ADVERTISED_VERSIONS: u32 = 16;

/// One channel message (a decoded frame).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Content type (channel types 0..6, edge types 60783.., see [`super::content_type`] and
    /// `crate::edge::ContentType`).
    pub content_type: i32,
    /// Sender's sequence number.
    pub sequence: i32,
    /// Header block.
    pub headers: Headers,
    /// Body; after decoding, a zero-copy slice of the received buffer.
    pub body: Bytes,
}

impl Message {
    /// A message with no headers. The sequence is 0; the sender assigns the real one.
    pub fn new(content_type: i32, body: impl Into<Bytes>) -> Self {
        Self {
            content_type,
            sequence: 0,
            headers: Headers::new(),
            body: body.into(),
        }
    }

    /// Builder: set the sequence number.
    pub fn with_sequence(mut self, sequence: i32) -> Self {
        self.sequence = sequence;
        self
    }

    /// The request sequence this message answers (header 1), or `None` if it is not a reply.
    /// A value of -1 means "not a reply" (Go `IsReply`), and a wrong-length value is ignored.
    pub fn reply_for(&self) -> Option<i32> {
        self.headers.get_i32(REPLY_FOR).filter(|v| *v != -1)
    }

    /// `true` if this message is a reply to the request with sequence `seq`.
    pub fn is_reply_to(&self, seq: i32) -> bool {
        self.reply_for() == Some(seq)
    }

    /// Marks this message as the reply to `request`: header 1 = request's sequence, and every
    /// header with id 128..=255 of the request is copied (channel v4 `ReplyTo`; v5 copies only
    /// 128, which is a subset).
    pub fn reply_to(&mut self, request: &Message) {
        self.headers.put_i32(REPLY_FOR, request.sequence);
        for (id, value) in request.headers.iter() {
            if is_reflected_header(id) {
                self.headers.insert(id, value.clone());
            }
        }
    }

    /// Builder form of [`Message::reply_to`].
    pub fn replying_to(mut self, request: &Message) -> Self {
        self.reply_to(request);
        self
    }

    /// Number of bytes [`Message::encode`] appends.
    pub fn encoded_len(&self) -> usize {
        FRAME_PREFIX_LEN + self.headers.encoded_len() + self.body.len()
    }

    /// Appends the V2 wire form to `dst`.
    ///
    /// Fails only if the header block or body does not fit the 32-bit length fields (more than
    /// 2 GiB), in which case nothing is written.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), FrameError> {
        let hlen = self.headers.encoded_len();
        let blen = self.body.len();
        let hlen32 = i32::try_from(hlen).map_err(|_| FrameError::HeadersTooLarge {
            len: hlen as u64,
            max: i32::MAX as usize,
        })?;
        let blen32 = i32::try_from(blen).map_err(|_| FrameError::BodyTooLarge {
            len: blen as u64,
            max: i32::MAX as usize,
        })?;
        dst.reserve(FRAME_PREFIX_LEN + hlen + blen);
        dst.put_slice(&MAGIC_V2);
        dst.put_i32_le(self.content_type);
        dst.put_i32_le(self.sequence);
        dst.put_i32_le(hlen32);
        dst.put_i32_le(blen32);
        self.headers.encode(dst);
        dst.put_slice(&self.body);
        Ok(())
    }

    /// Convenience: the wire form in a fresh buffer.
    pub fn to_bytes(&self) -> Result<Bytes, FrameError> {
        let mut buf = BytesMut::with_capacity(self.encoded_len());
        self.encode(&mut buf)?;
        Ok(buf.freeze())
    }
}

/// Hard limits the decoder checks against the length fields **before** it buffers a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest header block accepted, in bytes.
    pub max_headers_len: usize,
    /// Largest body accepted, in bytes.
    pub max_body_len: usize,
    /// Most header entries accepted in one message.
    pub max_header_count: usize,
}

impl Default for Limits {
    /// 64 KiB of headers (a hello with a large OIDC JWT fits), 4 MiB body (peers send at most
    /// ~64 KiB per Data frame; the C SDK batches up to 31 KiB), 256 headers.
    fn default() -> Self {
        Self {
            max_headers_len: 64 * 1024,
            max_body_len: 4 * 1024 * 1024,
            max_header_count: 256,
        }
    }
}

/// A frame that cannot be decoded. All of these are fatal for the connection: the byte stream
/// can no longer be trusted to be aligned on frame boundaries.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first four bytes are not a known channel magic.
    #[error("not a channel V2 frame (magic {0:02x?})")]
    BadMagic([u8; 4]),
    /// The peer answered with "unknown version": it does not speak channel V2.
    #[error("peer does not speak channel V2 (it supports versions {versions:?})")]
    UnknownVersion {
        /// Versions the peer advertised.
        versions: Vec<u32>,
    },
    /// An unknown-version answer announcing an implausible number of versions.
    #[error("malformed unknown-version answer ({count} versions announced)")]
    BadUnknownVersion {
        /// The announced count.
        count: u32,
    },
    /// The header block is larger than [`Limits::max_headers_len`].
    #[error("header block of {len} bytes exceeds the limit of {max}")]
    HeadersTooLarge {
        /// Announced length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// The body is larger than [`Limits::max_body_len`].
    #[error("body of {len} bytes exceeds the limit of {max}")]
    BodyTooLarge {
        /// Announced length.
        len: u64,
        /// Configured limit.
        max: usize,
    },
    /// The header block is malformed.
    #[error("malformed header block")]
    Headers(#[from] HeaderBlockError),
}

/// Incremental decoder: feed it the bytes read from TLS, take out whole messages.
///
/// The decoder keeps no buffer of its own; it consumes complete frames from the caller's
/// `BytesMut` and leaves partial ones there. The returned body and header values share the
/// buffer's memory (zero copy).
#[derive(Debug, Clone, Default)]
pub struct FrameDecoder {
    limits: Limits,
}

impl FrameDecoder {
    /// A decoder with the given limits.
    pub fn new(limits: Limits) -> Self {
        Self { limits }
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// How many bytes the message at the front of `src` occupies in all, once its prefix shows
    /// it; until then, how many bytes it takes to learn that. A caller that buffers exactly
    /// this much before calling [`FrameDecoder::decode`] gives each frame an allocation of its
    /// own, so a body kept for a slow reader pins no other message's memory.
    ///
    /// Errors are the ones [`FrameDecoder::decode`] would return for the same prefix.
    pub fn frame_len(&self, src: &[u8]) -> Result<usize, FrameError> {
        let Some(magic) = src.get(..4) else {
            return Ok(4);
        };
        if magic == MAGIC_UNKNOWN_VERSION {
            let Some(count) = read_u32(src, 4) else {
                return Ok(8);
            };
            if count > MAX_ADVERTISED_VERSIONS {
                return Err(FrameError::BadUnknownVersion { count });
            }
            return Ok(8 + 4 * count as usize);
        }
        if magic != MAGIC_V2 {
            let mut m = [0u8; 4];
            m.copy_from_slice(magic);
            return Err(FrameError::BadMagic(m));
        }
        let (Some(hlen), Some(blen)) = (read_u32(src, 12), read_u32(src, 16)) else {
            return Ok(FRAME_PREFIX_LEN);
        };
        let (hlen, blen) = (hlen as usize, blen as usize);
        if hlen > self.limits.max_headers_len {
            return Err(FrameError::HeadersTooLarge {
                len: hlen as u64,
                max: self.limits.max_headers_len,
            });
        }
        if blen > self.limits.max_body_len {
            return Err(FrameError::BodyTooLarge {
                len: blen as u64,
                max: self.limits.max_body_len,
            });
        }
        Ok(FRAME_PREFIX_LEN.saturating_add(hlen).saturating_add(blen))
    }

    /// Tries to take one message off the front of `src`.
    ///
    /// * `Ok(Some(msg))`: a frame was consumed from `src`.
    /// * `Ok(None)`: more bytes are needed; `src` is untouched (its capacity may grow so the
    ///   rest of an announced frame fits, which only happens after the limits were checked).
    /// * `Err(_)`: protocol error; close the connection.
    pub fn decode(&mut self, src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
        let Some(magic) = src.get(..4) else {
            return Ok(None);
        };
        if magic == MAGIC_UNKNOWN_VERSION {
            return decode_unknown_version(src);
        }
        if magic != MAGIC_V2 {
            let mut m = [0u8; 4];
            m.copy_from_slice(magic);
            return Err(FrameError::BadMagic(m));
        }
        let (Some(hlen), Some(blen)) = (read_u32(src, 12), read_u32(src, 16)) else {
            return Ok(None);
        };
        let (hlen, blen) = (hlen as usize, blen as usize);
        if hlen > self.limits.max_headers_len {
            return Err(FrameError::HeadersTooLarge {
                len: hlen as u64,
                max: self.limits.max_headers_len,
            });
        }
        if blen > self.limits.max_body_len {
            return Err(FrameError::BodyTooLarge {
                len: blen as u64,
                max: self.limits.max_body_len,
            });
        }
        // Both are bounded by the limits above, so this cannot overflow in practice.
        let total = FRAME_PREFIX_LEN.saturating_add(hlen).saturating_add(blen);
        if src.len() < total {
            src.reserve(total - src.len());
            return Ok(None);
        }
        let content_type = read_i32(src, 4).unwrap_or_default();
        let sequence = read_i32(src, 8).unwrap_or_default();
        // A buffer holding exactly this frame is taken whole (no sharing with what follows).
        let frame = if src.len() == total {
            std::mem::take(src).freeze()
        } else {
            src.split_to(total).freeze()
        };
        let header_block = frame.slice(FRAME_PREFIX_LEN..FRAME_PREFIX_LEN + hlen);
        let headers = Headers::decode(&header_block, self.limits.max_header_count)?;
        let body = frame.slice(FRAME_PREFIX_LEN + hlen..);
        Ok(Some(Message {
            content_type,
            sequence,
            headers,
            body,
        }))
    }
}

/// `03 06 09 0A | count u32 | count x version u32`: always an error, once complete.
fn decode_unknown_version(src: &mut BytesMut) -> Result<Option<Message>, FrameError> {
    let Some(count) = read_u32(src, 4) else {
        return Ok(None);
    };
    if count > MAX_ADVERTISED_VERSIONS {
        return Err(FrameError::BadUnknownVersion { count });
    }
    let need = 8 + 4 * count as usize;
    if src.len() < need {
        return Ok(None);
    }
    let versions = (0..count as usize)
        .filter_map(|i| read_u32(src, 8 + 4 * i))
        .collect();
    let _ = src.split_to(need);
    Err(FrameError::UnknownVersion { versions })
}
