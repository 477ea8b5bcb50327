//! The header block of a channel message and the value encodings used inside it.
//!
//! Values are stored as raw bytes ([`Bytes`], zero-copy slices of the received frame); the typed
//! getters interpret them the way the Go channel library does (`openziti/channel` `Headers`
//! methods), including its strictness: a 4-byte integer header with a different length is
//! treated as absent, so a peer can never make us read a truncated number.

use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

/// Largest number of items in a string slice or map value (Go `DecodeStringSlice` & co.).
pub const MAX_COLLECTION_ITEMS: usize = 128;
/// Largest single string / bytes item inside a string slice or map value.
pub const MAX_COLLECTION_ITEM_LEN: usize = 8192;

/// A header value that is present but cannot be decoded as the requested collection type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderValueError {
    /// The value ends before a length prefix or an item it announces.
    #[error("header value truncated")]
    Truncated,
    /// More items than the peer libraries accept.
    #[error("header value has {0} items, at most 128 are allowed")]
    TooManyItems(u32),
    /// One item is longer than the peer libraries accept.
    #[error("header value item of {0} bytes exceeds the 8192-byte limit")]
    ItemTooLong(u32),
    /// A string item is not UTF-8.
    #[error("header value item is not valid UTF-8")]
    NotUtf8,
    /// Bytes are left over after the announced items.
    #[error("header value has {0} trailing bytes")]
    TrailingBytes(usize),
}

/// The headers of one channel message: integer ids mapped to byte values.
///
/// Order is irrelevant on the wire (Go marshals a map); this type keeps insertion order so that
/// encoding is deterministic. Setting an id that already exists replaces its value in place.
/// Decoding keeps every entry as received (so re-encoding is byte-identical and decoding stays
/// linear in the number of headers), and lookups see the **last** duplicate, like Go's map
/// assignment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Headers {
    entries: Vec<(i32, Bytes)>,
}

impl Headers {
    /// An empty header set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of entries (a received block may repeat an id; see [`Headers::get`]).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// `true` when there are no headers.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Iterates over `(id, raw value)` in insertion (wire) order, duplicates included.
    pub fn iter(&self) -> impl Iterator<Item = (i32, &Bytes)> {
        self.entries.iter().map(|(k, v)| (*k, v))
    }

    /// `true` if the header is present (whatever its value).
    pub fn contains(&self, id: i32) -> bool {
        self.entries.iter().any(|(k, _)| *k == id)
    }

    /// The raw value of a header (the last one if the id repeats).
    pub fn get(&self, id: i32) -> Option<&Bytes> {
        self.entries
            .iter()
            .rev()
            .find(|(k, _)| *k == id)
            .map(|(_, v)| v)
    }

    /// Sets a raw value, replacing any previous value of the same id (all duplicates).
    pub fn insert(&mut self, id: i32, value: impl Into<Bytes>) {
        let value = value.into();
        let count = self.entries.iter().filter(|(k, _)| *k == id).count();
        if count > 1 {
            // Only decoded blocks hold duplicates; keep the first slot's position.
            let mut seen = false;
            self.entries
                .retain(|(k, _)| *k != id || !std::mem::replace(&mut seen, true));
        }
        match self.entries.iter_mut().find(|(k, _)| *k == id) {
            Some(slot) => slot.1 = value,
            None => self.entries.push((id, value)),
        }
    }

    /// Removes a header (every entry with this id) and returns its value as [`Headers::get`]
    /// would have.
    pub fn remove(&mut self, id: i32) -> Option<Bytes> {
        let last = self.get(id).cloned()?;
        self.entries.retain(|(k, _)| *k != id);
        Some(last)
    }

    /// Number of bytes [`Headers::encode`] writes.
    pub fn encoded_len(&self) -> usize {
        self.entries.iter().map(|(_, v)| 8 + v.len()).sum()
    }

    /// Appends the wire form (`id:i32 LE | len:u32 LE | value`)* to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        for (id, value) in &self.entries {
            dst.put_i32_le(*id);
            // Values longer than u32::MAX cannot exist in a frame whose header length is checked.
            dst.put_u32_le(u32::try_from(value.len()).unwrap_or(u32::MAX));
            dst.put_slice(value);
        }
    }

    /// Parses a header block. `block` is usually a zero-copy slice of the received frame; each
    /// value is a sub-slice of it (no copy).
    ///
    /// Fails on a block that ends inside an entry or holds more than `max_count` entries.
    pub fn decode(block: &Bytes, max_count: usize) -> Result<Self, HeaderBlockError> {
        let mut headers = Headers::new();
        let mut pos = 0usize;
        let mut count = 0usize;
        while pos < block.len() {
            let meta = block
                .get(pos..pos + 8)
                .ok_or(HeaderBlockError::Truncated { offset: pos })?;
            let id = read_i32(meta, 0).ok_or(HeaderBlockError::Truncated { offset: pos })?;
            let len = read_u32(meta, 4).ok_or(HeaderBlockError::Truncated { offset: pos })?;
            let start = pos + 8;
            let end = start
                .checked_add(len as usize)
                .filter(|end| *end <= block.len())
                .ok_or(HeaderBlockError::Truncated { offset: pos })?;
            count += 1;
            if count > max_count {
                return Err(HeaderBlockError::TooManyHeaders { max: max_count });
            }
            // Push, not insert: no quadratic duplicate scan on hostile input; `get` reads the
            // last duplicate.
            headers.entries.push((id, block.slice(start..end)));
            pos = end;
        }
        Ok(headers)
    }

    // ---- typed setters ----

    /// Sets a little-endian u32.
    pub fn put_u32(&mut self, id: i32, v: u32) {
        self.insert(id, Bytes::copy_from_slice(&v.to_le_bytes()));
    }
    /// Sets a little-endian i32.
    pub fn put_i32(&mut self, id: i32, v: i32) {
        self.insert(id, Bytes::copy_from_slice(&v.to_le_bytes()));
    }
    /// Sets a little-endian u64.
    pub fn put_u64(&mut self, id: i32, v: u64) {
        self.insert(id, Bytes::copy_from_slice(&v.to_le_bytes()));
    }
    /// Sets a little-endian u16.
    pub fn put_u16(&mut self, id: i32, v: u16) {
        self.insert(id, Bytes::copy_from_slice(&v.to_le_bytes()));
    }
    /// Sets a single byte.
    pub fn put_u8(&mut self, id: i32, v: u8) {
        self.insert(id, Bytes::copy_from_slice(&[v]));
    }
    /// Sets a bool as one byte, `01` or `00`.
    pub fn put_bool(&mut self, id: i32, v: bool) {
        self.put_u8(id, u8::from(v));
    }
    /// Sets a string as raw UTF-8 (no length prefix, no NUL).
    pub fn put_str(&mut self, id: i32, v: &str) {
        self.insert(id, Bytes::copy_from_slice(v.as_bytes()));
    }
    /// Sets a string slice (`u32 count | (u32 len | bytes)*`; empty slice = empty value).
    pub fn put_string_slice<S: AsRef<str>>(&mut self, id: i32, items: &[S]) {
        let mut buf = BytesMut::new();
        if !items.is_empty() {
            buf.put_u32_le(len_u32(items.len()));
            for s in items {
                put_lv(&mut buf, s.as_ref().as_bytes());
            }
        }
        self.insert(id, buf.freeze());
    }
    /// Sets a u32 -> bytes map (`u32 count | (u32 key | u32 len | bytes)*`).
    pub fn put_u32_bytes_map(&mut self, id: i32, map: &BTreeMap<u32, Bytes>) {
        let mut buf = BytesMut::new();
        if !map.is_empty() {
            buf.put_u32_le(len_u32(map.len()));
            for (k, v) in map {
                buf.put_u32_le(*k);
                put_lv(&mut buf, v);
            }
        }
        self.insert(id, buf.freeze());
    }
    /// Sets a string -> string map (`u32 count | (u32 klen | k | u32 vlen | v)*`).
    pub fn put_string_map(&mut self, id: i32, map: &BTreeMap<String, String>) {
        let mut buf = BytesMut::new();
        if !map.is_empty() {
            buf.put_u32_le(len_u32(map.len()));
            for (k, v) in map {
                put_lv(&mut buf, k.as_bytes());
                put_lv(&mut buf, v.as_bytes());
            }
        }
        self.insert(id, buf.freeze());
    }

    // ---- typed getters (Go strictness) ----

    /// A u32; `None` if absent or not exactly 4 bytes.
    pub fn get_u32(&self, id: i32) -> Option<u32> {
        self.get(id)
            .and_then(|v| read_u32(v, 0).filter(|_| v.len() == 4))
    }
    /// An i32; `None` if absent or not exactly 4 bytes.
    pub fn get_i32(&self, id: i32) -> Option<i32> {
        self.get(id)
            .and_then(|v| read_i32(v, 0).filter(|_| v.len() == 4))
    }
    /// A u64; `None` if absent or not exactly 8 bytes.
    pub fn get_u64(&self, id: i32) -> Option<u64> {
        let v = self.get(id)?;
        let arr: [u8; 8] = v.as_ref().try_into().ok()?;
        Some(u64::from_le_bytes(arr))
    }
    /// A u16; `None` if absent or not exactly 2 bytes.
    pub fn get_u16(&self, id: i32) -> Option<u16> {
        let v = self.get(id)?;
        let arr: [u8; 2] = v.as_ref().try_into().ok()?;
        Some(u16::from_le_bytes(arr))
    }
    /// The first byte; `None` if absent or empty.
    pub fn get_u8(&self, id: i32) -> Option<u8> {
        self.get(id).and_then(|v| v.first().copied())
    }
    /// A bool: `Some(true)` only if the first byte is `01`; present-but-empty reads as
    /// `Some(false)` like Go.
    pub fn get_bool(&self, id: i32) -> Option<bool> {
        self.get(id).map(|v| v.first() == Some(&1))
    }
    /// `true` only if the header is present and reads as true (the usual flag check).
    pub fn flag(&self, id: i32) -> bool {
        self.get_bool(id).unwrap_or(false)
    }
    /// A UTF-8 string; `None` if absent or not valid UTF-8.
    pub fn get_str(&self, id: i32) -> Option<&str> {
        self.get(id).and_then(|v| std::str::from_utf8(v).ok())
    }
    /// A string slice. `Ok(None)` if absent, an error if malformed.
    pub fn get_string_slice(&self, id: i32) -> Result<Option<Vec<String>>, HeaderValueError> {
        let Some(v) = self.get(id) else {
            return Ok(None);
        };
        let mut r = Reader(v);
        let mut out = Vec::new();
        if let Some(n) = r.count()? {
            for _ in 0..n {
                out.push(r.string()?);
            }
        }
        r.finish()?;
        Ok(Some(out))
    }
    /// A u32 -> bytes map. `Ok(None)` if absent, an error if malformed.
    pub fn get_u32_bytes_map(
        &self,
        id: i32,
    ) -> Result<Option<BTreeMap<u32, Bytes>>, HeaderValueError> {
        let Some(v) = self.get(id) else {
            return Ok(None);
        };
        let mut r = Reader(v);
        let mut out = BTreeMap::new();
        if let Some(n) = r.count()? {
            for _ in 0..n {
                let k = r.u32()?;
                let item = r.item()?;
                out.insert(k, v.slice_ref(item));
            }
        }
        r.finish()?;
        Ok(Some(out))
    }
    /// A string -> string map. `Ok(None)` if absent, an error if malformed.
    pub fn get_string_map(
        &self,
        id: i32,
    ) -> Result<Option<BTreeMap<String, String>>, HeaderValueError> {
        let Some(v) = self.get(id) else {
            return Ok(None);
        };
        let mut r = Reader(v);
        let mut out = BTreeMap::new();
        if let Some(n) = r.count()? {
            for _ in 0..n {
                let k = r.string()?;
                let val = r.string()?;
                out.insert(k, val);
            }
        }
        r.finish()?;
        Ok(Some(out))
    }
}

/// Why a header block could not be parsed. Carried inside [`super::FrameError`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderBlockError {
    /// An entry (its 8-byte prefix or its value) runs past the end of the block.
    #[error("header block truncated at offset {offset}")]
    Truncated {
        /// Offset of the entry that does not fit.
        offset: usize,
    },
    /// More entries than the configured limit.
    #[error("more than {max} headers in one message")]
    TooManyHeaders {
        /// The configured limit.
        max: usize,
    },
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_lv(buf: &mut BytesMut, v: &[u8]) {
    buf.put_u32_le(len_u32(v.len()));
    buf.put_slice(v);
}

pub(crate) fn read_u32(b: &[u8], at: usize) -> Option<u32> {
    let arr: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(u32::from_le_bytes(arr))
}

pub(crate) fn read_i32(b: &[u8], at: usize) -> Option<i32> {
    let arr: [u8; 4] = b.get(at..at + 4)?.try_into().ok()?;
    Some(i32::from_le_bytes(arr))
}

/// Cursor over a collection-encoded header value.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, HeaderValueError> {
        let v = read_u32(self.0, 0).ok_or(HeaderValueError::Truncated)?;
        self.0 = self.0.get(4..).unwrap_or_default();
        Ok(v)
    }
    /// Item count; an empty value is an empty collection (that is how Go encodes one).
    fn count(&mut self) -> Result<Option<u32>, HeaderValueError> {
        if self.0.is_empty() {
            return Ok(None);
        }
        let n = self.u32()?;
        if n as usize > MAX_COLLECTION_ITEMS {
            return Err(HeaderValueError::TooManyItems(n));
        }
        Ok(Some(n))
    }
    fn item(&mut self) -> Result<&'a [u8], HeaderValueError> {
        let len = self.u32()?;
        if len as usize > MAX_COLLECTION_ITEM_LEN {
            return Err(HeaderValueError::ItemTooLong(len));
        }
        let item = self
            .0
            .get(..len as usize)
            .ok_or(HeaderValueError::Truncated)?;
        self.0 = self.0.get(len as usize..).unwrap_or_default();
        Ok(item)
    }
    fn string(&mut self) -> Result<String, HeaderValueError> {
        let item = self.item()?;
        std::str::from_utf8(item)
            .map(str::to_owned)
            .map_err(|_| HeaderValueError::NotUtf8)
    }
    fn finish(self) -> Result<(), HeaderValueError> {
        // Go ignores trailing bytes; we report them so a malformed value is visible, since no
        // known sender produces any.
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(HeaderValueError::TrailingBytes(self.0.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn integer_getters_follow_go_strictness() {
        let mut h = Headers::new();
        h.insert(1, vec![1u8, 0, 0]);
        h.insert(2, vec![1u8, 0, 0, 0]);
        h.insert(3, vec![7u8, 0, 0, 0, 0, 0, 0, 0, 0]);
        h.insert(4, Vec::<u8>::new());
        assert_eq!(h.get_u32(1), None);
        assert_eq!(h.get_u32(2), Some(1));
        assert_eq!(h.get_i32(2), Some(1));
        assert_eq!(h.get_u64(3), None);
        assert_eq!(h.get_u16(2), None);
        assert_eq!(h.get_u8(4), None);
        assert_eq!(h.get_bool(4), Some(false));
        assert_eq!(h.get_bool(2), Some(true));
        assert_eq!(h.get_bool(99), None);
        assert!(!h.flag(99));
    }

    #[test]
    fn misaligned_block_from_c_sdk_tests() {
        // SC tests/message_tests.cpp "parse_hdrs handles misaligned subsequent headers"
        let block = Bytes::from_static(&[
            1, 0, 0, 0, 1, 0, 0, 0, 0x42, 2, 0, 0, 0, 4, 0, 0, 0, 0xde, 0xad, 0xbe, 0xef,
        ]);
        let h = Headers::decode(&block, 16).unwrap();
        assert_eq!(h.get(1).unwrap().as_ref(), &[0x42]);
        assert_eq!(h.get(2).unwrap().as_ref(), &[0xde, 0xad, 0xbe, 0xef]);
    }

    #[test]
    fn truncated_blocks_fail() {
        let block = Bytes::from_static(&[1, 0, 0, 0, 5, 0, 0, 0, 1, 2]);
        assert!(matches!(
            Headers::decode(&block, 16),
            Err(HeaderBlockError::Truncated { offset: 0 })
        ));
        let block = Bytes::from_static(&[1, 0, 0]);
        assert!(Headers::decode(&block, 16).is_err());
        let block = Bytes::from_static(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]);
        assert!(matches!(
            Headers::decode(&block, 16),
            Err(HeaderBlockError::Truncated { offset: 8 })
        ));
    }

    #[test]
    fn duplicate_keeps_last_and_count_limit() {
        let block = Bytes::from_static(&[1, 0, 0, 0, 1, 0, 0, 0, 9, 1, 0, 0, 0, 1, 0, 0, 0, 8]);
        let mut h = Headers::decode(&block, 16).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(h.get_u8(1), Some(8));
        let mut out = BytesMut::new();
        h.encode(&mut out);
        assert_eq!(
            out.as_ref(),
            block.as_ref(),
            "decoded blocks re-encode verbatim"
        );
        h.insert(1, vec![5u8]);
        assert_eq!(h.len(), 1);
        assert_eq!(h.get_u8(1), Some(5));
        h.insert(2, vec![6u8]);
        assert_eq!(h.remove(1).as_deref(), Some(&[5u8][..]));
        assert!(!h.contains(1));
        assert_eq!(h.len(), 1);
        assert!(matches!(
            Headers::decode(&block, 1),
            Err(HeaderBlockError::TooManyHeaders { max: 1 })
        ));
    }

    #[test]
    fn collections_round_trip_and_reject_garbage() {
        let mut h = Headers::new();
        h.put_string_slice(1, &["a", "", "xyz"]);
        h.put_string_slice(2, &[] as &[&str]);
        let mut m = BTreeMap::new();
        m.insert(5u32, Bytes::from_static(b"five"));
        m.insert(0u32, Bytes::new());
        h.put_u32_bytes_map(3, &m);
        let mut sm = BTreeMap::new();
        sm.insert("k".to_string(), "v".to_string());
        h.put_string_map(4, &sm);
        assert_eq!(
            h.get_string_slice(1).unwrap().unwrap(),
            vec!["a".to_string(), String::new(), "xyz".to_string()]
        );
        assert_eq!(h.get(1).unwrap().len(), 4 + 4 + 1 + 4 + 4 + 3);
        assert_eq!(
            h.get_string_slice(2).unwrap().unwrap(),
            Vec::<String>::new()
        );
        assert!(h.get(2).unwrap().is_empty());
        assert_eq!(h.get_u32_bytes_map(3).unwrap().unwrap(), m);
        assert_eq!(h.get_string_map(4).unwrap().unwrap(), sm);
        assert_eq!(h.get_string_slice(9).unwrap(), None);

        h.insert(5, vec![1u8, 0, 0, 0, 9, 0, 0, 0, b'a']);
        assert_eq!(h.get_string_slice(5), Err(HeaderValueError::Truncated));
        h.insert(6, vec![200u8, 0, 0, 0]);
        assert_eq!(
            h.get_string_slice(6),
            Err(HeaderValueError::TooManyItems(200))
        );
        h.insert(7, vec![1u8, 0, 0, 0, 0, 0x40, 0, 0]);
        assert_eq!(
            h.get_string_slice(7),
            Err(HeaderValueError::ItemTooLong(0x4000))
        );
        h.insert(8, vec![1u8, 0, 0]);
        assert_eq!(h.get_string_map(8), Err(HeaderValueError::Truncated));
    }
}
