//! The receive half of an xgress endpoint: out-of-order payloads held until the gap fills,
//! in-order delivery to the application, and the byte count reported in acknowledgements;
//! modelled on sdk-golang `xgress/link_receive_buffer.go` and `xgress.go` `nextTxPayload`.
//!
//! * A payload below the next expected sequence, or already held, is a duplicate: it is
//!   acknowledged again and dropped.
//! * A payload past the highest sequence seen is dropped **unacknowledged** while the buffer
//!   holds more than `rx_buffer_size` bytes (Go) or `max_rx_payloads` payloads (ours), or
//!   when it is `max_rx_payloads` or more sequences ahead; the peer retransmits it later.
//! * A payload filling a gap is taken up to twice those bounds (Go takes every one, which
//!   leaves memory unbounded against a hostile peer), and always when it is the next one in
//!   order and nothing is readable, since only it lets the application free space. Total:
//!   at most `2 * rx_buffer_size` bytes plus two payloads.
//! * The reported size is every byte received and not yet handed to the application, so a
//!   slow reader closes the peer's window of this circuit only.
//! * In order: CircuitStart and the capabilities header are consumed; EOF, CircuitEnd or an
//!   edge FIN (legacy half close, payload header 0x10) end the stream after their data;
//!   chunked payloads (MTU mode, never used by Go's defaults) are reassembled.

use std::collections::{BTreeMap, VecDeque};

use bytes::{Bytes, BytesMut};

use super::messages::{Flags, Payload, PayloadHeaders, edge_flags, payload_header};
use super::options::Options;

/// Edge FIN bit (`crate::edge::flags::FIN`), the legacy half close.
const EDGE_FIN: u32 = 1;

/// What the application reads from a circuit ([`Circuit::read`](super::Circuit::read)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// Stream bytes, in order. `headers` are the payload's xgress headers (edge flags at key
    /// [`payload_header::EDGE_FLAGS`]) and come with the first piece of a payload only. `data`
    /// may be empty when a payload carried only headers.
    Data {
        /// The bytes.
        data: Bytes,
        /// Per-payload headers, capabilities removed.
        headers: PayloadHeaders,
    },
    /// The peer will send nothing more (EOF, CircuitEnd, an edge FIN, or the circuit was
    /// closed). Returned again on every later read.
    Fin,
}

/// A payload the peer sent that cannot be reassembled.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// The first piece of a chunked payload does not start with a valid uvarint size.
    #[error("chunked payload has no valid size prefix")]
    BadChunkPrefix,
    /// The announced size of a chunked payload is over the receive buffer.
    #[error("chunked payload of {size} bytes exceeds the {max}-byte receive buffer")]
    ChunkTooLarge {
        /// Announced size.
        size: u64,
        /// Our receive buffer size.
        max: u32,
    },
    /// The pieces of a chunked payload add up to more than its announced size.
    #[error("chunked payload pieces exceed the announced {size} bytes")]
    ChunkOverflow {
        /// Announced size.
        size: usize,
    },
}

/// Whether to acknowledge a received payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RxOutcome {
    /// New: acknowledge.
    Accepted,
    /// Seen before: acknowledge again (the acknowledgement was lost or late).
    Duplicate,
    /// No room: do not acknowledge; the peer retransmits.
    Dropped,
}

#[derive(Debug)]
enum Item {
    Data {
        data: Bytes,
        headers: PayloadHeaders,
    },
    Fin,
}

#[derive(Debug)]
struct Held {
    flags: Flags,
    headers: PayloadHeaders,
    data: Bytes,
}

#[derive(Debug)]
struct Assembly {
    total: usize,
    buf: BytesMut,
    flags: Flags,
    headers: PayloadHeaders,
}

#[derive(Debug)]
pub(crate) struct ReceiveBuffer {
    /// Next sequence to deliver (Go `sequence + 1`).
    next_seq: i32,
    /// Highest sequence held so far (Go `maxSequence`).
    max_seq: i32,
    held: BTreeMap<i32, Held>,
    readable: VecDeque<Item>,
    /// Received bytes not yet read by the application (held, reassembling, readable).
    buffered: u64,
    assembly: Option<Assembly>,
    /// The stream has ended: nothing more reaches the application.
    ended: bool,
    /// The application is gone: everything is acknowledged and dropped.
    discarding: bool,
    duplicates: u64,
    dropped: u64,
}

impl ReceiveBuffer {
    pub(crate) fn new() -> Self {
        Self {
            next_seq: 0,
            max_seq: -1,
            held: BTreeMap::new(),
            readable: VecDeque::new(),
            buffered: 0,
            assembly: None,
            ended: false,
            discarding: false,
            duplicates: 0,
            dropped: 0,
        }
    }

    /// Takes one payload (Go `ReceiveUnordered`), then delivers whatever became in order.
    pub(crate) fn receive(
        &mut self,
        p: Payload,
        opts: &Options,
    ) -> Result<RxOutcome, ProtocolError> {
        let seq = p.sequence;
        if seq < self.next_seq || self.held.contains_key(&seq) {
            self.duplicates += 1;
            return Ok(RxOutcome::Duplicate);
        }
        if self.ended || self.discarding {
            // Nobody will read it; acknowledge so the peer's send buffer drains.
            return Ok(RxOutcome::Accepted);
        }
        let count = self.held.len() + self.readable.len();
        let rx_max = u64::from(opts.rx_buffer_size);
        let room = if seq > self.max_seq {
            // Past everything seen (Go drops these while full).
            let full = self.buffered > rx_max || count >= opts.max_rx_payloads;
            let ahead = i64::from(seq) - i64::from(self.next_seq);
            !full && ahead < opts.max_rx_payloads as i64
        } else if seq == self.next_seq && self.readable.is_empty() {
            // Held data the application cannot read yet: only this payload frees it.
            true
        } else {
            // A gap filler (Go takes them all): up to twice the bounds.
            self.buffered <= 2 * rx_max && count < opts.max_rx_payloads.saturating_mul(2)
        };
        if !room {
            self.dropped += 1;
            return Ok(RxOutcome::Dropped);
        }
        self.buffered += p.data.len() as u64;
        self.max_seq = self.max_seq.max(seq);
        self.held.insert(
            seq,
            Held {
                flags: p.flags,
                headers: p.headers,
                data: p.data,
            },
        );
        while let Some(next) = self.held.remove(&self.next_seq) {
            match self.next_seq.checked_add(1) {
                Some(n) => self.next_seq = n,
                None => {
                    // 2^31 payloads: the Go sequence space is exhausted; end the stream.
                    self.end();
                }
            }
            self.deliver(next, opts)?;
            if self.ended {
                break;
            }
        }
        Ok(RxOutcome::Accepted)
    }

    fn deliver(&mut self, p: Held, opts: &Options) -> Result<(), ProtocolError> {
        if self.ended {
            self.buffered = self.buffered.saturating_sub(p.data.len() as u64);
            return Ok(());
        }
        let (flags, mut headers, data) = if p.flags.contains(Flags::CHUNK) {
            match self.assemble(p, opts)? {
                Some(whole) => whole,
                None => return Ok(()),
            }
        } else {
            (p.flags, p.headers, p.data)
        };
        headers.remove(&payload_header::CAPABILITIES);
        let edge_fin = edge_flags(&headers).is_some_and(|f| f & EDGE_FIN != 0);
        let end = flags.intersects(Flags::EOF | Flags::CIRCUIT_END) || edge_fin;
        if flags.contains(Flags::CIRCUIT_START) {
            // Consumed here, data and all (Go `processTxPayload`).
            self.buffered = self.buffered.saturating_sub(data.len() as u64);
        } else if !data.is_empty() || !headers.is_empty() {
            self.readable.push_back(Item::Data { data, headers });
        }
        if end {
            self.end();
        }
        Ok(())
    }

    /// Chunk reassembly (Go `nextTxPayload`): the first piece starts with a uvarint of the
    /// whole size; pieces follow in sequence order.
    fn assemble(
        &mut self,
        p: Held,
        opts: &Options,
    ) -> Result<Option<(Flags, PayloadHeaders, Bytes)>, ProtocolError> {
        if let Some(a) = self.assembly.as_mut() {
            if a.buf.len().saturating_add(p.data.len()) > a.total {
                return Err(ProtocolError::ChunkOverflow { size: a.total });
            }
            a.buf.extend_from_slice(&p.data);
            if a.buf.len() < a.total {
                return Ok(None);
            }
            return Ok(self
                .assembly
                .take()
                .map(|a| (a.flags, a.headers, a.buf.freeze())));
        }
        if p.data.is_empty() {
            return Ok(Some((p.flags, p.headers, p.data)));
        }
        let (total, prefix) = read_uvarint(&p.data).ok_or(ProtocolError::BadChunkPrefix)?;
        self.buffered = self.buffered.saturating_sub(prefix as u64);
        let rest = p.data.slice(prefix..);
        if total == rest.len() as u64 {
            return Ok(Some((p.flags, p.headers, rest)));
        }
        if total > u64::from(opts.rx_buffer_size) {
            return Err(ProtocolError::ChunkTooLarge {
                size: total,
                max: opts.rx_buffer_size,
            });
        }
        let total = usize::try_from(total).map_err(|_| ProtocolError::BadChunkPrefix)?;
        if rest.len() > total {
            return Err(ProtocolError::ChunkOverflow { size: total });
        }
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&rest);
        self.assembly = Some(Assembly {
            total,
            buf,
            flags: p.flags,
            headers: p.headers,
        });
        Ok(None)
    }

    /// The stream ends here: Fin after what is readable; later payloads are dropped.
    fn end(&mut self) {
        if self.ended {
            return;
        }
        self.ended = true;
        self.held.clear();
        self.assembly = None;
        self.readable.push_back(Item::Fin);
        self.recount();
    }

    /// The router closed the connection: what is readable stays readable, then Fin.
    pub(crate) fn close_input(&mut self) {
        self.end();
    }

    /// The application is gone: drop everything, acknowledge whatever still arrives.
    pub(crate) fn discard_all(&mut self) {
        self.discarding = true;
        self.ended = true;
        self.held.clear();
        self.assembly = None;
        self.readable.clear();
        self.readable.push_back(Item::Fin);
        self.buffered = 0;
    }

    fn recount(&mut self) {
        let readable: u64 = self
            .readable
            .iter()
            .map(|i| match i {
                Item::Data { data, .. } => data.len() as u64,
                Item::Fin => 0,
            })
            .sum();
        let held: u64 = self.held.values().map(|h| h.data.len() as u64).sum();
        let assembling = self.assembly.as_ref().map_or(0, |a| a.buf.len() as u64);
        self.buffered = readable + held + assembling;
    }

    /// Hands out up to `max` bytes (at least 1) of the next in-order payload.
    pub(crate) fn read(&mut self, max: usize) -> Option<Delivery> {
        let max = max.max(1);
        match self.readable.front_mut()? {
            Item::Fin => Some(Delivery::Fin),
            Item::Data { data, headers } => {
                if data.len() > max {
                    let piece = data.split_to(max);
                    let headers = std::mem::take(headers);
                    self.buffered = self.buffered.saturating_sub(max as u64);
                    return Some(Delivery::Data {
                        data: piece,
                        headers,
                    });
                }
                let Some(Item::Data { data, headers }) = self.readable.pop_front() else {
                    return None;
                };
                self.buffered = self.buffered.saturating_sub(data.len() as u64);
                Some(Delivery::Data { data, headers })
            }
        }
    }

    /// Something (data or Fin) can be read.
    pub(crate) fn has_readable(&self) -> bool {
        !self.readable.is_empty()
    }

    /// The stream end has been reached in order (a Fin is queued or was read).
    pub(crate) fn ended(&self) -> bool {
        self.ended && !self.discarding
    }

    /// Bytes received and not yet read (the size acknowledgements report).
    pub(crate) fn buffered(&self) -> u64 {
        self.buffered
    }

    #[cfg(test)]
    pub(crate) fn held_payloads(&self) -> usize {
        self.held.len() + self.readable.len()
    }

    pub(crate) fn duplicates(&self) -> u64 {
        self.duplicates
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Go `binary.Uvarint`: at most 10 bytes, no overflow.
fn read_uvarint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut value = 0u64;
    for (i, b) in buf.iter().take(10).enumerate() {
        let bits = u64::from(b & 0x7f);
        if i == 9 && *b > 1 {
            return None;
        }
        value |= bits << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(seq: i32, flags: Flags, data: &'static [u8]) -> Payload {
        Payload {
            circuit_id: "c".into(),
            flags,
            rtt: 0,
            sequence: seq,
            headers: PayloadHeaders::new(),
            data: Bytes::from_static(data),
        }
    }

    fn read_all(b: &mut ReceiveBuffer) -> (Vec<u8>, bool) {
        let mut out = Vec::new();
        while let Some(d) = b.read(usize::MAX) {
            match d {
                Delivery::Data { data, .. } => out.extend_from_slice(&data),
                Delivery::Fin => return (out, true),
            }
        }
        (out, false)
    }

    #[test]
    fn reorders_acks_duplicates_and_counts_bytes() {
        let opts = Options::default();
        let mut b = ReceiveBuffer::new();
        assert_eq!(
            b.receive(payload(1, Flags::empty(), b"world"), &opts),
            Ok(RxOutcome::Accepted)
        );
        assert!(!b.has_readable());
        assert_eq!(b.buffered(), 5);
        assert_eq!(
            b.receive(payload(1, Flags::empty(), b"world"), &opts),
            Ok(RxOutcome::Duplicate)
        );
        b.receive(payload(0, Flags::empty(), b"hello "), &opts)
            .unwrap();
        assert_eq!(b.buffered(), 11);
        assert_eq!(
            b.read(3),
            Some(Delivery::Data {
                data: Bytes::from_static(b"hel"),
                headers: PayloadHeaders::new()
            })
        );
        assert_eq!(b.buffered(), 8);
        assert_eq!(read_all(&mut b), (b"lo world".to_vec(), false));
        assert_eq!(b.buffered(), 0);
        assert_eq!(
            b.receive(payload(0, Flags::empty(), b"x"), &opts),
            Ok(RxOutcome::Duplicate)
        );
        assert_eq!(b.duplicates(), 2);
    }

    #[test]
    fn full_buffer_drops_new_but_takes_gap_fillers() {
        let opts = Options {
            rx_buffer_size: 5,
            ..Options::default()
        };
        let mut b = ReceiveBuffer::new();
        b.receive(payload(0, Flags::empty(), b"12345"), &opts)
            .unwrap();
        b.receive(payload(3, Flags::empty(), b"x"), &opts).unwrap();
        // 6 bytes > 5: a payload past the highest sequence is dropped ...
        assert_eq!(
            b.receive(payload(4, Flags::empty(), b"?"), &opts),
            Ok(RxOutcome::Dropped)
        );
        // ... gap fillers are taken.
        for (seq, d) in [(2, b"y"), (1, b"z")] {
            assert_eq!(
                b.receive(payload(seq, Flags::empty(), d), &opts),
                Ok(RxOutcome::Accepted)
            );
        }
        assert_eq!(read_all(&mut b), (b"12345zyx".to_vec(), false));
        assert_eq!(b.buffered(), 0);
        assert_eq!(
            b.receive(payload(4, Flags::empty(), b"?"), &opts),
            Ok(RxOutcome::Accepted)
        );
        assert_eq!(b.dropped(), 1);

        // Gap fillers stop at twice the buffer, except the next payload when nothing is
        // readable.
        let mut b = ReceiveBuffer::new();
        b.receive(payload(0, Flags::empty(), b"1234"), &opts)
            .unwrap();
        b.receive(payload(3, Flags::empty(), b"12"), &opts).unwrap();
        b.receive(payload(2, Flags::empty(), b"123456"), &opts)
            .unwrap();
        assert_eq!(b.buffered(), 12);
        assert_eq!(
            b.receive(payload(1, Flags::empty(), b"1"), &opts),
            Ok(RxOutcome::Dropped),
            "12 > 10"
        );
        assert_eq!(read_all(&mut b), (b"1234".to_vec(), false));
        assert_eq!(
            b.receive(payload(1, Flags::empty(), b"1"), &opts),
            Ok(RxOutcome::Accepted),
            "nothing readable, 8 held"
        );
        assert_eq!(read_all(&mut b), (b"112345612".to_vec(), false));
    }

    #[test]
    fn count_and_distance_bounds() {
        let opts = Options {
            max_rx_payloads: 4,
            ..Options::default()
        };
        let mut b = ReceiveBuffer::new();
        assert_eq!(
            b.receive(payload(4, Flags::empty(), b""), &opts),
            Ok(RxOutcome::Dropped),
            "4 ahead"
        );
        for seq in [3, 2, 1] {
            assert_eq!(
                b.receive(payload(seq, Flags::empty(), b"a"), &opts),
                Ok(RxOutcome::Accepted)
            );
        }
        b.receive(payload(0, Flags::empty(), b"a"), &opts).unwrap();
        assert_eq!(b.held_payloads(), 4);
        assert_eq!(
            b.receive(payload(4, Flags::empty(), b"a"), &opts),
            Ok(RxOutcome::Dropped),
            "4 unread payloads"
        );
        b.read(usize::MAX);
        assert_eq!(
            b.receive(payload(4, Flags::empty(), b"a"), &opts),
            Ok(RxOutcome::Accepted)
        );
    }

    #[test]
    fn eof_circuit_start_and_edge_fin() {
        let opts = Options::default();
        let mut b = ReceiveBuffer::new();
        let mut start = payload(0, Flags::CIRCUIT_START, b"");
        start.headers.insert(
            payload_header::CAPABILITIES,
            Bytes::from_static(&[0, 0, 1, 0]),
        );
        b.receive(start, &opts).unwrap();
        assert!(!b.has_readable(), "CircuitStart is consumed");
        b.receive(payload(1, Flags::empty(), b"data"), &opts)
            .unwrap();
        b.receive(payload(2, Flags::EOF, b""), &opts).unwrap();
        assert!(b.ended());
        assert_eq!(read_all(&mut b), (b"data".to_vec(), true));
        assert_eq!(b.read(10), Some(Delivery::Fin), "Fin repeats");
        assert_eq!(
            b.receive(payload(3, Flags::empty(), b"late"), &opts),
            Ok(RxOutcome::Accepted)
        );
        assert_eq!(b.buffered(), 0);

        let mut b = ReceiveBuffer::new();
        let mut fin = payload(0, Flags::empty(), b"bye");
        fin.headers.insert(
            payload_header::EDGE_FLAGS,
            Bytes::from_static(&[1, 0, 0, 0]),
        );
        b.receive(fin, &opts).unwrap();
        match b.read(usize::MAX) {
            Some(Delivery::Data { data, headers }) => {
                assert_eq!(&data[..], b"bye");
                assert_eq!(edge_flags(&headers), Some(1));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(b.read(usize::MAX), Some(Delivery::Fin));
    }

    #[test]
    fn chunks_are_reassembled() {
        let opts = Options::default();
        let mut b = ReceiveBuffer::new();
        // 300 bytes total: uvarint 300 = ac 02.
        let first: Vec<u8> = [0xac, 0x02].into_iter().chain([b'a'; 100]).collect();
        let mut p0 = payload(0, Flags::CHUNK, b"");
        p0.data = Bytes::from(first);
        p0.headers.insert(
            payload_header::EDGE_FLAGS,
            Bytes::from_static(&[8, 0, 0, 0]),
        );
        b.receive(p0, &opts).unwrap();
        let mut p1 = payload(1, Flags::CHUNK, b"");
        p1.data = Bytes::from(vec![b'b'; 200]);
        b.receive(p1, &opts).unwrap();
        assert_eq!(b.buffered(), 300);
        match b.read(usize::MAX) {
            Some(Delivery::Data { data, headers }) => {
                assert_eq!(data.len(), 300);
                assert_eq!(edge_flags(&headers), Some(8));
            }
            other => panic!("unexpected {other:?}"),
        }
        // A single-piece chunk with its size prefix.
        let mut p2 = payload(2, Flags::CHUNK, b"");
        p2.data = Bytes::from_static(&[3, b'x', b'y', b'z']);
        b.receive(p2, &opts).unwrap();
        assert_eq!(read_all(&mut b), (b"xyz".to_vec(), false));
        // Overflow is a protocol error.
        let mut p3 = payload(3, Flags::CHUNK, b"");
        p3.data = Bytes::from_static(&[5, b'x']);
        b.receive(p3, &opts).unwrap();
        let mut p4 = payload(4, Flags::CHUNK, b"");
        p4.data = Bytes::from_static(b"toolong");
        assert_eq!(
            b.receive(p4, &opts),
            Err(ProtocolError::ChunkOverflow { size: 5 })
        );
    }

    #[test]
    fn uvarint_matches_go() {
        assert_eq!(read_uvarint(&[0]), Some((0, 1)));
        assert_eq!(read_uvarint(&[0xac, 0x02]), Some((300, 2)));
        assert_eq!(read_uvarint(&[0x80]), None);
        assert_eq!(
            read_uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
            Some((u64::MAX, 10))
        );
        assert_eq!(
            read_uvarint(&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02]),
            None
        );
    }
}
