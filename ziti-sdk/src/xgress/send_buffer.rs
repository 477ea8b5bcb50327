//! The send half of an xgress endpoint: the window ("tx portal"), unacknowledged payloads and
//! their retransmission, modelled on sdk-golang `xgress/link_send_buffer.go`.
//!
//! * A payload is accepted while the window is open: our unacknowledged bytes do not exceed
//!   the window, and the peer's reported receive buffer **plus** our unacknowledged bytes do
//!   not exceed `tx_portal_max_size`. Go checks the two separately, so a Go sender keeps up to
//!   a whole window in flight towards a receiver that already holds `tx_portal_max_size`; a Go
//!   receiver drops those payloads (its buffer is full) and they are resent, shrinking the
//!   window. Counting what is in flight against the peer's room means a receiver that reports
//!   honestly never holds more than `tx_portal_max_size` from us, and nothing is dropped.
//!   When nothing is unacknowledged one payload is let through even if the peer's buffer is
//!   full: it probes the peer (Go: "let one payload in to reduce the chances of a stall").
//! * Every `tx_portal_increase_thresh` acknowledged payloads the window grows by the bytes
//!   acknowledged since the last shrink (Go's accumulator is never reset on growth); every
//!   `tx_portal_retx_thresh` retransmissions it shrinks by `tx_portal_retx_scale`.
//! * A payload unacknowledged for the retransmission timeout ([`RttEstimator`]) is queued again,
//!   with the Retransmit flag. Passes run at most every [`RETX_PASS_INTERVAL`], after each
//!   acknowledgement and on the timer.
//! * As in Go, a pass retransmits every overdue payload, also while the peer reports a full
//!   receive buffer: a full Go receiver still takes every payload that fills a gap below the
//!   highest sequence it has seen, and its buffer is then mostly out-of-order data waiting for
//!   exactly those payloads (resending only one per pass made uploads to Go hosts crawl at
//!   about 3 MiB/s; measured in BENCHMARKS.md).
//!
//! Timers: payloads are transmitted at non-decreasing `now`, so a FIFO of (sequence,
//! transmission) marks is ordered by deadline. Acknowledged or re-queued payloads leave stale
//! marks behind that are skipped; the front mark is kept live so [`SendBuffer::next_timeout`]
//! is O(1).

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::messages::{Acknowledgement, Flags, PayloadHeaders};
use super::options::Options;
use super::rtt::RttEstimator;

/// Least time between two retransmission passes (Go: `now - lastRetransmitTime > 64` ms).
pub(crate) const RETX_PASS_INTERVAL: Duration = Duration::from_millis(64);

#[derive(Debug, Clone)]
struct TxPayload {
    flags: Flags,
    headers: PayloadHeaders,
    data: Bytes,
    /// Which transmission this is (0 = not sent yet); matches a live [`SentMark`].
    generation: u64,
    sent_at: Option<Instant>,
    /// How many times it went out (an RTT sample is taken only from payloads sent once).
    transmissions: u8,
    retx_queued: bool,
}

#[derive(Debug, Clone, Copy)]
struct SentMark {
    seq: i32,
    generation: u64,
    sent_at: Instant,
}

/// A payload to put on the wire now.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) seq: i32,
    pub(crate) flags: Flags,
    pub(crate) headers: PayloadHeaders,
    pub(crate) data: Bytes,
}

/// What one acknowledgement did.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct AckSummary {
    pub(crate) acked: usize,
    pub(crate) duplicates: usize,
}

#[derive(Debug)]
pub(crate) struct SendBuffer {
    unacked: BTreeMap<i32, TxPayload>,
    unacked_bytes: u64,
    new_queue: VecDeque<i32>,
    retx_queue: VecDeque<i32>,
    sent_order: VecDeque<SentMark>,
    window: u32,
    remote_rx_size: u32,
    accumulator: u32,
    successful_acks: u32,
    duplicate_acks: u32,
    retransmits: u32,
    rtt: RttEstimator,
    last_retx_pass: Option<Instant>,
    next_generation: u64,
    total_retransmits: u64,
    total_duplicate_acks: u64,
}

impl SendBuffer {
    pub(crate) fn new(opts: &Options) -> Self {
        Self {
            unacked: BTreeMap::new(),
            unacked_bytes: 0,
            new_queue: VecDeque::new(),
            retx_queue: VecDeque::new(),
            sent_order: VecDeque::new(),
            window: opts.tx_portal_start_size,
            remote_rx_size: 0,
            accumulator: 0,
            successful_acks: 0,
            duplicate_acks: 0,
            retransmits: 0,
            rtt: RttEstimator::new(opts),
            last_retx_pass: None,
            next_generation: 1,
            total_retransmits: 0,
            total_duplicate_acks: 0,
        }
    }

    /// Window closed (Go `isBlocked`, with what is in flight counted against the peer's
    /// room), ignoring the empty-buffer probe exception.
    pub(crate) fn window_blocked(&self, opts: &Options) -> bool {
        let peer_holds = u64::from(self.remote_rx_size) + self.unacked_bytes;
        u64::from(opts.tx_portal_max_size) < peer_holds
            || u64::from(self.window) < self.unacked_bytes
    }

    /// Whether one more payload may be buffered now.
    pub(crate) fn accepts_payload(&self, opts: &Options) -> bool {
        if self.unacked.len() >= opts.max_tx_payloads {
            return false;
        }
        self.unacked_bytes == 0 || !self.window_blocked(opts)
    }

    /// Buffers a payload; it is transmitted by [`SendBuffer::next_transmit`].
    pub(crate) fn push(&mut self, seq: i32, flags: Flags, headers: PayloadHeaders, data: Bytes) {
        self.unacked_bytes += data.len() as u64;
        let old = self.unacked.insert(
            seq,
            TxPayload {
                flags,
                headers,
                data,
                generation: 0,
                sent_at: None,
                transmissions: 0,
                retx_queued: false,
            },
        );
        if let Some(old) = old {
            // Sequences are never reused; keep the byte count honest if it happened anyway.
            self.unacked_bytes = self.unacked_bytes.saturating_sub(old.data.len() as u64);
        }
        self.new_queue.push_back(seq);
    }

    /// The next payload to put on the wire: retransmissions first, then new payloads in
    /// sequence order. `allow_new` is false while a terminator waits for CircuitStart.
    pub(crate) fn next_transmit(&mut self, now: Instant, allow_new: bool) -> Option<Outgoing> {
        while let Some(seq) = self.retx_queue.pop_front() {
            let Some(p) = self.unacked.get_mut(&seq) else {
                continue;
            };
            if !p.retx_queued {
                continue;
            }
            p.retx_queued = false;
            p.flags |= Flags::RETRANSMIT;
            return Some(self.mark_sent(seq, now));
        }
        if !allow_new {
            return None;
        }
        while let Some(seq) = self.new_queue.pop_front() {
            if self.unacked.get(&seq).is_some_and(|p| p.generation == 0) {
                return Some(self.mark_sent(seq, now));
            }
        }
        None
    }

    fn mark_sent(&mut self, seq: i32, now: Instant) -> Outgoing {
        let generation = self.next_generation;
        self.next_generation += 1;
        let out = match self.unacked.get_mut(&seq) {
            Some(p) => {
                p.generation = generation;
                p.sent_at = Some(now);
                p.transmissions = p.transmissions.saturating_add(1);
                Outgoing {
                    seq,
                    flags: p.flags,
                    headers: p.headers.clone(),
                    data: p.data.clone(),
                }
            }
            // Callers only pass sequences they just found; an empty payload is harmless.
            None => Outgoing {
                seq,
                flags: Flags::empty(),
                headers: PayloadHeaders::new(),
                data: Bytes::new(),
            },
        };
        self.sent_order.push_back(SentMark {
            seq,
            generation,
            sent_at: now,
        });
        self.compact();
        out
    }

    /// Applies an acknowledgement received at `now` (`now_stamp` = our RTT clock then).
    pub(crate) fn on_ack(
        &mut self,
        ack: &Acknowledgement,
        now: Instant,
        now_stamp: u16,
        opts: &Options,
    ) -> AckSummary {
        let mut summary = AckSummary::default();
        let mut own_sample = None;
        for seq in &ack.sequences {
            if let Some(p) = self.unacked.remove(seq) {
                if p.transmissions == 1
                    && let Some(sent) = p.sent_at
                {
                    // Karn: only a payload sent once tells which transmission was answered.
                    own_sample = Some(now.saturating_duration_since(sent));
                }
                let size = u32::try_from(p.data.len()).unwrap_or(u32::MAX);
                self.unacked_bytes = self.unacked_bytes.saturating_sub(p.data.len() as u64);
                self.accumulator = self.accumulator.saturating_add(size);
                self.successful_acks += 1;
                summary.acked += 1;
                if self.successful_acks >= opts.tx_portal_increase_thresh {
                    self.successful_acks = 0;
                    let delta =
                        (f64::from(self.accumulator) * opts.tx_portal_increase_scale) as u32;
                    self.window = self
                        .window
                        .saturating_add(delta)
                        .min(opts.tx_portal_max_size);
                    self.rtt.on_good_acks(opts);
                }
            } else {
                summary.duplicates += 1;
                self.total_duplicate_acks += 1;
                self.duplicate_acks += 1;
                if self.duplicate_acks >= opts.tx_portal_dup_ack_thresh {
                    self.duplicate_acks = 0;
                    self.rtt.on_duplicate_acks();
                }
            }
        }
        self.remote_rx_size = ack.recv_buffer_size;
        match own_sample {
            // From our send to its acknowledgement: includes our own transmit queue and the
            // first hop, which the echoed stamp (a router's re-stamp) leaves out.
            Some(d) => self.rtt.on_measured(d, opts),
            None => self.rtt.on_sample(ack.rtt, now_stamp, opts),
        }
        self.prune();
        summary
    }

    /// One retransmission pass if one is due (Go `retransmit`).
    pub(crate) fn maybe_retransmit(&mut self, now: Instant, opts: &Options) {
        if self.unacked.is_empty() {
            return;
        }
        if let Some(last) = self.last_retx_pass
            && now.saturating_duration_since(last) < RETX_PASS_INTERVAL
        {
            return;
        }
        let timeout = self.rtt.retx_timeout();
        let mut due = Vec::new();
        while let Some(mark) = self.sent_order.front().copied() {
            if !self.is_live(&mark) {
                self.sent_order.pop_front();
                continue;
            }
            if now.saturating_duration_since(mark.sent_at) < timeout {
                break;
            }
            self.sent_order.pop_front();
            due.push(mark.seq);
        }
        // Go sends each pass in sequence order.
        due.sort_unstable();
        for seq in due {
            let Some(p) = self.unacked.get_mut(&seq) else {
                continue;
            };
            p.retx_queued = true;
            self.retx_queue.push_back(seq);
            self.total_retransmits += 1;
            self.retransmits += 1;
            if self.retransmits >= opts.tx_portal_retx_thresh {
                self.accumulator = 0;
                self.retransmits = 0;
                self.scale(opts.tx_portal_retx_scale, opts);
            }
        }
        self.last_retx_pass = Some(now);
        self.prune();
    }

    fn scale(&mut self, factor: f64, opts: &Options) {
        let scaled = (f64::from(self.window) * factor) as u32;
        self.window = if factor > 1.0 {
            scaled.min(opts.tx_portal_max_size)
        } else {
            scaled.max(opts.tx_portal_min_size)
        };
    }

    /// When [`SendBuffer::maybe_retransmit`] next has work.
    pub(crate) fn next_timeout(&self, _opts: &Options) -> Option<Instant> {
        let sent_at = self.sent_order.front()?.sent_at;
        let due = sent_at.checked_add(self.rtt.retx_timeout())?;
        let earliest = self
            .last_retx_pass
            .and_then(|l| l.checked_add(RETX_PASS_INTERVAL));
        Some(earliest.map_or(due, |e| e.max(due)))
    }

    fn is_live(&self, mark: &SentMark) -> bool {
        self.unacked
            .get(&mark.seq)
            .is_some_and(|p| p.generation == mark.generation && !p.retx_queued)
    }

    /// Restores the invariant that the front timer mark is live; drops all bookkeeping when
    /// nothing is unacknowledged.
    fn prune(&mut self) {
        if self.unacked.is_empty() {
            self.sent_order.clear();
            self.retx_queue.clear();
            self.new_queue.clear();
            return;
        }
        while let Some(mark) = self.sent_order.front() {
            if self.is_live(mark) {
                break;
            }
            self.sent_order.pop_front();
        }
    }

    /// Bounds the stale marks between live ones.
    fn compact(&mut self) {
        if self.sent_order.len() > 2 * self.unacked.len() + 64 {
            let unacked = &self.unacked;
            self.sent_order.retain(|m| {
                unacked
                    .get(&m.seq)
                    .is_some_and(|p| p.generation == m.generation && !p.retx_queued)
            });
        }
    }

    /// Drops everything (the send side is closed).
    pub(crate) fn clear(&mut self) {
        self.unacked.clear();
        self.unacked_bytes = 0;
        self.prune();
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.unacked.is_empty()
    }

    /// Only an EOF or CircuitEnd payload is left unacknowledged (Go `checkForClose` closes then
    /// too).
    pub(crate) fn only_end_left(&self) -> bool {
        self.unacked.len() == 1
            && self
                .unacked
                .values()
                .all(|p| p.flags.intersects(Flags::EOF | Flags::CIRCUIT_END))
    }

    pub(crate) fn window(&self) -> u32 {
        self.window
    }

    pub(crate) fn remote_rx_size(&self) -> u32 {
        self.remote_rx_size
    }

    pub(crate) fn unacked_bytes(&self) -> u64 {
        self.unacked_bytes
    }

    pub(crate) fn unacked_len(&self) -> usize {
        self.unacked.len()
    }

    pub(crate) fn total_retransmits(&self) -> u64 {
        self.total_retransmits
    }

    pub(crate) fn total_duplicate_acks(&self) -> u64 {
        self.total_duplicate_acks
    }

    pub(crate) fn rtt(&self) -> &RttEstimator {
        &self.rtt
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack(seqs: &[i32], rx: u32) -> Acknowledgement {
        Acknowledgement {
            circuit_id: "c".into(),
            flags: Flags::empty(),
            recv_buffer_size: rx,
            rtt: 0,
            sequences: seqs.to_vec(),
        }
    }

    fn data(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[test]
    fn window_blocks_and_probe_exception() {
        let opts = Options {
            tx_portal_start_size: 1000,
            ..Options::default()
        };
        let mut b = SendBuffer::new(&opts);
        assert!(b.accepts_payload(&opts));
        b.push(0, Flags::empty(), PayloadHeaders::new(), data(600));
        assert!(b.accepts_payload(&opts), "600 <= 1000");
        b.push(1, Flags::empty(), PayloadHeaders::new(), data(600));
        assert!(!b.accepts_payload(&opts), "1200 > 1000");
        let t = Instant::now();
        assert_eq!(b.next_transmit(t, true).map(|o| o.seq), Some(0));
        assert_eq!(b.next_transmit(t, true).map(|o| o.seq), Some(1));
        assert!(b.next_transmit(t, true).is_none());
        // The peer acknowledges both but reports a full buffer: blocked by the remote window,
        // yet one probe payload is allowed since nothing is in flight.
        b.on_ack(&ack(&[0, 1], 5 * 1024 * 1024), t, 1, &opts);
        assert!(b.window_blocked(&opts));
        assert!(b.accepts_payload(&opts));
        b.push(2, Flags::empty(), PayloadHeaders::new(), data(10));
        assert!(!b.accepts_payload(&opts));
        b.on_ack(&ack(&[], 0), t, 1, &opts);
        assert!(b.accepts_payload(&opts));
    }

    #[test]
    fn what_is_in_flight_counts_against_the_peers_room() {
        // Go would keep sending here (3 MiB reported <= 4 MiB, 1.5 MiB unacked <= window);
        // the receiver would then hold 4.5 MiB and drop what is over 4 MiB.
        let opts = Options::default();
        let mut b = SendBuffer::new(&opts);
        let t = Instant::now();
        b.push(0, Flags::empty(), PayloadHeaders::new(), data(1));
        assert!(b.next_transmit(t, true).is_some());
        b.on_ack(&ack(&[0], 3 * 1024 * 1024), t, 1, &opts);
        for seq in 1..=16 {
            assert!(
                b.accepts_payload(&opts),
                "payload {seq} fits the peer's 1 MiB of room"
            );
            b.push(seq, Flags::empty(), PayloadHeaders::new(), data(64 * 1024));
        }
        assert!(b.accepts_payload(&opts), "exactly 4 MiB: still open");
        b.push(17, Flags::empty(), PayloadHeaders::new(), data(1));
        assert!(
            !b.accepts_payload(&opts),
            "3 MiB held + 1 MiB and a byte in flight"
        );
        assert!(
            u64::from(b.window) > b.unacked_bytes,
            "the window alone would let it go"
        );
    }

    #[test]
    fn retransmits_after_timeout_in_sequence_order_and_shrinks_window() {
        let opts = Options {
            tx_portal_retx_thresh: 3,
            ..Options::default()
        };
        let mut b = SendBuffer::new(&opts);
        let t0 = Instant::now();
        for seq in 0..4 {
            b.push(seq, Flags::empty(), PayloadHeaders::new(), data(100));
        }
        for _ in 0..4 {
            assert!(b.next_transmit(t0, true).is_some());
        }
        assert_eq!(b.next_timeout(&opts), Some(t0 + Duration::from_millis(200)));
        // Acknowledged after 134 ms: our own sample, timeout 134 * 1.5 = 201 ms.
        b.on_ack(&ack(&[1], 0), t0 + Duration::from_millis(134), 1, &opts);
        b.maybe_retransmit(t0 + Duration::from_millis(199), &opts);
        assert!(b.next_transmit(t0, true).is_none());
        // The next pass may run 64 ms after the previous one.
        assert_eq!(b.next_timeout(&opts), Some(t0 + Duration::from_millis(263)));
        b.maybe_retransmit(t0 + Duration::from_millis(262), &opts);
        assert!(b.next_transmit(t0, true).is_none());
        b.maybe_retransmit(t0 + Duration::from_millis(263), &opts);
        let again: Vec<_> = std::iter::from_fn(|| b.next_transmit(t0, true)).collect();
        assert_eq!(
            again.iter().map(|o| o.seq).collect::<Vec<_>>(),
            vec![0, 2, 3]
        );
        assert!(again.iter().all(|o| o.flags.contains(Flags::RETRANSMIT)));
        assert_eq!(b.total_retransmits(), 3);
        assert_eq!(b.window(), 3 * 1024 * 1024, "shrunk by 0.75 after 3");
        // Acks for 0 and 1 again: 0 is new, 1 is a duplicate.
        let s = b.on_ack(&ack(&[0, 1], 0), t0 + Duration::from_millis(300), 1, &opts);
        assert_eq!((s.acked, s.duplicates), (1, 1));
    }

    #[test]
    fn retransmission_passes_are_spaced() {
        let opts = Options {
            retx_start: Duration::ZERO,
            ..Options::default()
        };
        let mut b = SendBuffer::new(&opts);
        let t0 = Instant::now();
        b.push(0, Flags::empty(), PayloadHeaders::new(), data(1));
        b.next_transmit(t0, true);
        b.maybe_retransmit(t0, &opts);
        assert!(b.next_transmit(t0, true).is_some());
        // Due immediately again, but not before the pass interval.
        assert_eq!(b.next_timeout(&opts), Some(t0 + RETX_PASS_INTERVAL));
        b.maybe_retransmit(t0 + Duration::from_millis(10), &opts);
        assert!(b.next_transmit(t0, true).is_none());
    }

    #[test]
    fn a_full_peer_still_gets_every_overdue_payload_in_one_pass() {
        // A full Go receiver keeps taking payloads that fill gaps, so all overdue payloads go
        // out again together (as Go does), not one per pass.
        let opts = Options::default();
        let mut b = SendBuffer::new(&opts);
        let t0 = Instant::now();
        for seq in 0..8 {
            b.push(seq, Flags::empty(), PayloadHeaders::new(), data(1000));
            b.next_transmit(t0, true);
        }
        b.on_ack(
            &ack(&[0, 1], opts.tx_portal_max_size + 1),
            t0 + Duration::from_millis(10),
            1,
            &opts,
        );
        let due = b.next_timeout(&opts).unwrap();
        assert!(due > t0);
        b.maybe_retransmit(due, &opts);
        let sent: Vec<i32> = std::iter::from_fn(|| b.next_transmit(due, true))
            .map(|o| o.seq)
            .collect();
        assert_eq!(sent, vec![2, 3, 4, 5, 6, 7]);
    }

    #[test]
    fn window_grows_with_accumulated_acks() {
        let opts = Options {
            tx_portal_start_size: 1000,
            tx_portal_increase_thresh: 2,
            ..Options::default()
        };
        let mut b = SendBuffer::new(&opts);
        let t0 = Instant::now();
        for seq in 0..4 {
            b.push(seq, Flags::empty(), PayloadHeaders::new(), data(100));
            b.next_transmit(t0, true);
        }
        b.on_ack(&ack(&[0, 1], 0), t0, 1, &opts);
        assert_eq!(b.window(), 1200);
        // The accumulator is not reset on growth (Go): +400.
        b.on_ack(&ack(&[2, 3], 0), t0, 1, &opts);
        assert_eq!(b.window(), 1600);
        assert!(b.is_empty());
        assert_eq!(b.next_timeout(&opts), None);
    }
}
