//! Tuning of one xgress endpoint. Defaults are the Go SDK's `xgress.DefaultOptions()`
//! (sdk-golang `xgress/options.go`), which is what the Go SDK uses for its circuits; the last
//! group of fields are local memory bounds Go does not have.

use std::time::Duration;

/// Options of a [`Circuit`](super::Circuit).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Options {
    /// Initial send window ("tx portal") in bytes. Go: 4 MiB.
    pub tx_portal_start_size: u32,
    /// Smallest the window shrinks to after retransmissions. Go: 16 KiB.
    pub tx_portal_min_size: u32,
    /// Largest the window grows to; also the peer receive-buffer size above which sending
    /// stops. Go: 4 MiB.
    pub tx_portal_max_size: u32,
    /// Every this many acknowledged payloads the window grows. Go: 28.
    pub tx_portal_increase_thresh: u32,
    /// The window grows by the acknowledged bytes times this. Go: 1.0.
    pub tx_portal_increase_scale: f64,
    /// Every this many retransmissions the window shrinks. Go: 64.
    pub tx_portal_retx_thresh: u32,
    /// ... by this factor. Go: 0.75.
    pub tx_portal_retx_scale: f64,
    /// Every this many duplicate acknowledgements the retransmit multiplier grows by 0.2.
    /// Go: 64. (Go's `TxPortalDupAckScale`, 0.9, is never read by Go and is not modelled.)
    pub tx_portal_dup_ack_thresh: u32,
    /// Bytes we buffer for our application before dropping new, unacknowledged payloads.
    /// Go: 4 MiB.
    pub rx_buffer_size: u32,
    /// Retransmission timeout before the first RTT sample. Go: 200 ms.
    pub retx_start: Duration,
    /// Retransmission timeout = smoothed RTT times this (adapted by acks). Go: 1.5.
    pub retx_scale: f64,
    /// ... plus this. Go: 0.
    pub retx_add: Duration,
    /// ... capped here (zero = no cap). Go: 10 s.
    pub retx_max: Duration,
    /// One RTT sample may be at most this many times the previous estimate (0 = no cap). Go: 4.
    pub max_rtt_scale: u16,
    /// After a half close, the send side closes at the latest this long after, acknowledged or
    /// not. Go: 30 s.
    pub max_close_wait: Duration,
    /// After a half close, the send side closes this long after all its payloads are
    /// acknowledged (late duplicates are still acknowledged meanwhile). Go: 5 s, hard-coded
    /// in `link_send_buffer.go` `checkForClose`.
    pub close_linger: Duration,
    /// A terminator that gets no CircuitStart this long after creation closes. Go: 3 min
    /// (`CircuitStartTimeout`; Go applies it only when above 1 s, so does this).
    pub circuit_start_timeout: Duration,

    // ---- local bounds (not in Go) ----
    /// Largest payload [`Circuit::send`](super::Circuit::send) creates, in bytes. Go's
    /// default (MTU 0) makes one payload per application write, whatever its size.
    pub max_payload_size: usize,
    /// Most payloads buffered on the receive side (out-of-order plus unread). Zero-length
    /// payloads cost no bytes, so the byte bound alone would not limit memory. Payloads over
    /// the bound are dropped unacknowledged and retransmitted by the peer later.
    pub max_rx_payloads: usize,
    /// Most unacknowledged payloads on the send side; [`Circuit::send`](super::Circuit::send)
    /// is blocked beyond it.
    pub max_tx_payloads: usize,
    /// Our receive buffer is reported to the peer multiplied by this (at least 1). A Go
    /// sender stops only once the reported size exceeds its `tx_portal_max_size`, and what it
    /// sent before it saw that still arrives, up to a whole send window; at 1 (Go) those
    /// payloads meet a full buffer and are dropped and resent, shrinking the peer's window.
    /// At 4 (ours) a Go peer with Go's 4 MiB portal stops when we hold 1 MiB, leaving 3 MiB
    /// for what is already on the way; while the application keeps up we hold little and
    /// the peer's window alone limits what is in flight. Memory is bounded by
    /// `rx_buffer_size` either way.
    pub rx_report_multiplier: u32,
    /// Longest an acknowledgement waits, so one covers several payloads (zero: each payload
    /// is acknowledged at once, as Go does; QUIC's default `max_ack_delay` is also 25 ms).
    /// It echoes the RTT stamp of the oldest payload it covers, so the peer's round trip
    /// includes this wait. Why: a Go sender resends, every 64 ms, whatever is older than 1.5
    /// times its smoothed RTT in whole milliseconds. Acknowledged at once on a fast path that
    /// is 0-1 ms, and a receiver descheduled for a moment gets most of a window resent
    /// (480-720 of 4,096 payloads per 256 MiB download in flow_bench, against 0-230 with
    /// 25 ms). Duplicates, retransmissions, payloads that start or end something, a closing
    /// circuit and a buffer past a Go sender's stop are acknowledged at once, with no RTT
    /// sample (Karn).
    pub ack_delay: Duration,
    /// An acknowledgement goes out at once when the payloads waiting for it carry this many
    /// bytes.
    pub ack_bytes: u32,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            tx_portal_start_size: 4 * 1024 * 1024,
            tx_portal_min_size: 16 * 1024,
            tx_portal_max_size: 4 * 1024 * 1024,
            tx_portal_increase_thresh: 28,
            tx_portal_increase_scale: 1.0,
            tx_portal_retx_thresh: 64,
            tx_portal_retx_scale: 0.75,
            tx_portal_dup_ack_thresh: 64,
            rx_buffer_size: 4 * 1024 * 1024,
            retx_start: Duration::from_millis(200),
            retx_scale: 1.5,
            retx_add: Duration::ZERO,
            retx_max: Duration::from_secs(10),
            max_rtt_scale: 4,
            max_close_wait: Duration::from_secs(30),
            close_linger: Duration::from_secs(5),
            circuit_start_timeout: Duration::from_secs(180),
            max_payload_size: 64 * 1024,
            max_rx_payloads: 65536,
            max_tx_payloads: 65536,
            rx_report_multiplier: 4,
            ack_delay: Duration::from_millis(25),
            ack_bytes: 1024 * 1024,
        }
    }
}
