//! What a [`Circuit`] reports to its shell besides messages: application events and counters.
//!
//! [`Circuit`]: crate::xgress::Circuit

use std::time::Duration;

/// Something the application side should react to; see
/// [`Circuit::poll_event`](crate::xgress::Circuit::poll_event).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Data or the end of the stream became readable with `Circuit::read`.
    Readable,
    /// `Circuit::send` returned [`SendError::Blocked`](crate::xgress::SendError::Blocked)
    /// earlier and would now accept data.
    Writable,
    /// The send side closed without a local `Circuit::finish` (the peer reported WriteFailed,
    /// or the router closed the connection): sends now fail.
    SendClosed,
    /// Both sides are done. Drain `Circuit::poll_transmit` (CircuitEnd and Close are queued),
    /// then drop the circuit.
    Closed,
}

/// A snapshot of a circuit's counters, for inspection and tests.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stats {
    /// Send window in bytes.
    pub window: u32,
    /// Bytes sent (or queued) and not yet acknowledged.
    pub unacked_bytes: u64,
    /// Payloads sent (or queued) and not yet acknowledged.
    pub unacked_payloads: usize,
    /// The peer's last reported receive-buffer size.
    pub peer_recv_buffer: u32,
    /// Bytes received and not yet read by the application (what we report).
    pub recv_buffered: u64,
    /// Smoothed RTT, once measured.
    pub rtt: Option<Duration>,
    /// Current retransmission timeout.
    pub retransmit_timeout: Duration,
    /// Current multiplier from RTT to retransmission timeout (grows with duplicate
    /// acknowledgements, shrinks back with good ones).
    pub retransmit_scale: f64,
    /// Payloads retransmitted so far.
    pub retransmits: u64,
    /// Acknowledgements for payloads no longer unacknowledged.
    pub duplicate_acks: u64,
    /// Payloads received more than once.
    pub duplicate_payloads: u64,
    /// Payloads dropped for lack of buffer space.
    pub dropped_payloads: u64,
    /// Payloads received with the retransmit flag that were new to us (the first copy was
    /// lost on the way).
    pub recovered_payloads: u64,
}
