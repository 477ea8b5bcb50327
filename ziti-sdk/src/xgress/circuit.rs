//! [`Circuit`]: one SDK-side xgress endpoint (sdk-golang `xgress/xgress.go`, driven the way
//! `ziti/edge/network/conn_xgress.go` drives it), as a sans-IO state machine.
//!
//! Lifecycle, as in Go:
//!
//! * The initiator (dialing side) sends CircuitStart (sequence 0, capabilities header) at once.
//!   The terminator (hosting side) holds its payloads until CircuitStart arrives, answers it
//!   with its own capabilities, and closes if none comes within `circuit_start_timeout`.
//! * [`Circuit::finish`] half-closes: an EOF payload if the peer announced
//!   [`capability::EOF`], else the legacy edge FIN (payload header 0x10 = 1), as
//!   `edgeConnXgress.CloseWrite` does. The send side then closes once everything is
//!   acknowledged and `close_linger` has passed, or after `max_close_wait`.
//! * [`Circuit::close`] is the application dropping the connection (Go `PeerClosed`): unread
//!   data is discarded, WriteFailed tells the peer to stop sending if it had not finished, and
//!   the send side ends with EOF (or CircuitEnd for a peer without EOF support).
//! * A WriteFailed payload from the peer closes our send side at once; EOF, CircuitEnd or an
//!   edge FIN end our receive side in order.
//! * When both sides are done the circuit is closed: a CircuitEnd payload (not retransmitted)
//!   and a Close (1103) message go out, and [`Event::Closed`] is raised.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::channel::Message;

use super::error::{CircuitError, SendError};
use super::events::{Event, Stats};
use super::messages::{
    Acknowledgement, CloseCircuit, Control, ControlType, Flags, Originator, Payload,
    PayloadHeaders, XgMessage, capability, content_type, control_header, decode_capabilities,
    encode_capabilities, header, payload_header,
};
use super::options::Options;
use super::receive_buffer::{Delivery, ReceiveBuffer, RxOutcome};
use super::rtt::RttClock;
use super::send_buffer::SendBuffer;

/// Most sequences in one acknowledgement we send (Go sends one per acknowledgement; the
/// receivers loop over any number).
const ACK_BATCH: usize = 256;
/// Most sequences waiting to be acknowledged; beyond it a payload goes unacknowledged and the
/// peer's retransmission is acknowledged instead.
const MAX_PENDING_ACKS: usize = 16 * 1024;
/// Most control answers waiting to be sent.
const MAX_PENDING_CONTROL: usize = 16;
/// Receive-buffer size above which a read that halves it sends a window update
/// (Go `releasePayloadChunk`).
const WINDOW_UPDATE_MIN: u32 = 10_000;
/// Hop type we answer trace routes with (Go answers "sdk/golang").
const TRACE_HOP_TYPE: &str = "sdk/rust";
/// Go arms the CircuitStart timeout only above this (`Xgress.Start`).
const MIN_START_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TxState {
    Open,
    /// Half closed: waits for the buffer to drain (Go `closeWhenEmpty`).
    Finishing {
        since: Instant,
    },
    Closed,
}

#[derive(Debug)]
enum Final {
    CircuitEnd(i32),
    Close,
}

#[derive(Debug, Default)]
struct PendingAcks {
    seqs: VecDeque<i32>,
    /// RTT stamp of the oldest payload waiting for this acknowledgement that had one.
    rtt: u16,
    /// When the oldest sequence in `seqs` arrived.
    since: Option<Instant>,
    /// Payload bytes the sequences in `seqs` carried.
    bytes: u64,
    /// Its delay ran out at a `handle_timeout`: a regular acknowledgement waits for the next
    /// `poll_transmit`, and no timer is needed for it.
    due: bool,
    /// Send at once, with no RTT sample (a duplicate, a payload with flags, a closing
    /// application, a buffer past a Go sender's stop): do not wait for `ack_delay`.
    urgent: bool,
    window_update: bool,
    last_size_sent: u32,
}

/// One end of one circuit in SDK xgress mode: windowed, acknowledged, retransmitted payloads.
///
/// Feed it with [`handle_message`](Circuit::handle_message) (xgress messages for this circuit),
/// [`handle_timeout`](Circuit::handle_timeout) and
/// [`handle_router_closed`](Circuit::handle_router_closed); take work from
/// [`poll_transmit`](Circuit::poll_transmit), [`poll_timeout`](Circuit::poll_timeout) and
/// [`poll_event`](Circuit::poll_event); the application uses [`send`](Circuit::send),
/// [`read`](Circuit::read), [`finish`](Circuit::finish) and [`close`](Circuit::close).
/// Nothing here reads a clock: every method that needs the time takes `now`.
#[derive(Debug)]
pub struct Circuit {
    opts: Options,
    circuit_id: String,
    conn_id: u32,
    originator: Originator,
    clock: RttClock,
    started: bool,
    start_deadline: Option<Instant>,
    peer_caps: u32,
    /// `None` once all sequences are used.
    next_seq: Option<i32>,
    send: SendBuffer,
    recv: ReceiveBuffer,
    tx: TxState,
    /// The application will read nothing more (it read Fin, or closed).
    rx_done: bool,
    /// Retransmitted payloads that were new to us.
    recovered: u64,
    closed: bool,
    acks: PendingAcks,
    control_out: VecDeque<Message>,
    final_out: VecDeque<Final>,
    events: VecDeque<Event>,
    send_blocked: bool,
}

impl Circuit {
    /// A circuit endpoint. `circuit_id` comes from header 1026 of StateConnected (dial) or Dial
    /// (host); `conn_id` is the edge connection id put on outgoing payloads and
    /// acknowledgements. An initiator queues CircuitStart right away.
    ///
    /// `unix_ms` is the wall-clock Unix time in milliseconds at `now` (read once by the shell,
    /// e.g. from `SystemTime::now()`). RTT stamps must be Unix milliseconds, as in Go, because
    /// routers re-stamp the payloads they forward with their own clocks; all later times come
    /// from the `now` arguments.
    pub fn new(
        circuit_id: impl Into<String>,
        conn_id: u32,
        originator: Originator,
        options: Options,
        now: Instant,
        unix_ms: u64,
    ) -> Self {
        let mut c = Circuit {
            opts: options,
            circuit_id: circuit_id.into(),
            conn_id,
            originator,
            clock: RttClock::new(now, unix_ms),
            started: originator == Originator::Initiator,
            start_deadline: None,
            peer_caps: 0,
            next_seq: Some(0),
            send: SendBuffer::new(&options),
            recv: ReceiveBuffer::new(),
            tx: TxState::Open,
            rx_done: false,
            closed: false,
            recovered: 0,
            acks: PendingAcks::default(),
            control_out: VecDeque::new(),
            final_out: VecDeque::new(),
            events: VecDeque::new(),
            send_blocked: false,
        };
        match originator {
            Originator::Initiator => {
                let mut caps = PayloadHeaders::new();
                caps.insert(
                    payload_header::CAPABILITIES,
                    encode_capabilities(capability::EOF),
                );
                c.queue_internal(Flags::CIRCUIT_START, caps);
            }
            Originator::Terminator => {
                if options.circuit_start_timeout > MIN_START_TIMEOUT {
                    c.start_deadline = now.checked_add(options.circuit_start_timeout);
                }
            }
        }
        c
    }

    // ---- identity and state ----

    /// The circuit id.
    pub fn circuit_id(&self) -> &str {
        &self.circuit_id
    }

    /// The edge connection id.
    pub fn conn_id(&self) -> u32 {
        self.conn_id
    }

    /// Which end this is.
    pub fn originator(&self) -> Originator {
        self.originator
    }

    /// `false` only for a terminator still waiting for CircuitStart (its payloads are held).
    pub fn is_started(&self) -> bool {
        self.started
    }

    /// The peer announced [`capability::EOF`], so [`Circuit::finish`] sends the EOF flag rather
    /// than the legacy edge FIN.
    pub fn peer_supports_eof(&self) -> bool {
        self.peer_caps & capability::EOF != 0
    }

    /// Both sides are done ([`Event::Closed`] was raised).
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Closed and every final message taken: the circuit can be dropped.
    pub fn is_drained(&self) -> bool {
        self.closed
            && self.final_out.is_empty()
            && self.control_out.is_empty()
            && self.acks.seqs.is_empty()
            && !self.acks.window_update
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            window: self.send.window(),
            unacked_bytes: self.send.unacked_bytes(),
            unacked_payloads: self.send.unacked_len(),
            peer_recv_buffer: self.send.remote_rx_size(),
            recv_buffered: self.recv.buffered(),
            rtt: self.send.rtt().rtt(),
            retransmit_timeout: self.send.rtt().retx_timeout(),
            retransmit_scale: self.send.rtt().retx_scale(),
            retransmits: self.send.total_retransmits(),
            duplicate_acks: self.send.total_duplicate_acks(),
            duplicate_payloads: self.recv.duplicates(),
            dropped_payloads: self.recv.dropped(),
            recovered_payloads: self.recovered,
        }
    }

    // ---- application: sending ----

    /// `true` if [`Circuit::send`] would return [`SendError::Blocked`] now.
    pub fn is_blocked(&self) -> bool {
        self.tx == TxState::Open && !self.send.accepts_payload(&self.opts)
    }

    /// Like [`Circuit::is_blocked`], and when blocked also asks for [`Event::Writable`] once
    /// the window opens (as a refused [`Circuit::send`] does). For shells that must not hand
    /// data over before they know it is taken (encryption advances with every payload).
    pub fn poll_writable(&mut self) -> bool {
        if self.is_blocked() {
            self.send_blocked = true;
            false
        } else {
            true
        }
    }

    /// Queues up to `max_payload_size` bytes of `data` as one payload and returns how many
    /// were taken (0 for empty `data`). A payload is accepted while the window is open (it
    /// may overshoot the window by one payload, as in Go).
    pub fn send(&mut self, data: Bytes) -> Result<usize, SendError> {
        self.check_sendable()?;
        if data.is_empty() {
            return Ok(0);
        }
        let n = data.len().min(self.opts.max_payload_size.max(1));
        self.push_app(data.slice(..n), PayloadHeaders::new())?;
        Ok(n)
    }

    /// Queues exactly one payload with per-payload `headers` (e.g. edge flags at
    /// [`payload_header::EDGE_FLAGS`]). A payload with neither data nor headers is skipped.
    pub fn send_payload(&mut self, data: Bytes, headers: PayloadHeaders) -> Result<(), SendError> {
        self.check_sendable()?;
        if data.len() > self.opts.max_payload_size {
            return Err(SendError::TooLarge {
                len: data.len(),
                max: self.opts.max_payload_size,
            });
        }
        if data.is_empty() && headers.is_empty() {
            return Ok(());
        }
        self.push_app(data, headers)
    }

    fn check_sendable(&self) -> Result<(), SendError> {
        if self.tx == TxState::Open {
            Ok(())
        } else {
            Err(SendError::Closed)
        }
    }

    fn push_app(&mut self, data: Bytes, headers: PayloadHeaders) -> Result<(), SendError> {
        if !self.send.accepts_payload(&self.opts) {
            self.send_blocked = true;
            return Err(SendError::Blocked);
        }
        let seq = self.next_sequence().ok_or(SendError::SequenceExhausted)?;
        self.send.push(seq, self.originator.flag(), headers, data);
        Ok(())
    }

    /// Half close: we send no more data; reading continues. Idempotent.
    pub fn finish(&mut self, now: Instant) {
        if self.tx != TxState::Open || self.closed {
            return;
        }
        if self.peer_supports_eof() {
            self.queue_internal(Flags::EOF, PayloadHeaders::new());
        } else {
            let mut h = PayloadHeaders::new();
            h.insert(
                payload_header::EDGE_FLAGS,
                Bytes::copy_from_slice(&EDGE_FIN.to_le_bytes()),
            );
            self.queue_internal(Flags::empty(), h);
        }
        self.tx = TxState::Finishing { since: now };
    }

    /// The application dropped the connection: discard unread data, tell the peer to stop
    /// sending (WriteFailed) unless it had finished, end our send side (EOF, or CircuitEnd for a
    /// peer without EOF support) and close once it drains.
    pub fn close(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        // Nothing more will be read: acknowledge what is waiting now, not after the delay.
        if !self.acks.seqs.is_empty() {
            self.acks.urgent = true;
        }
        if !self.rx_done {
            let peer_finished = self.recv.ended();
            self.recv.discard_all();
            self.rx_done = true;
            if !peer_finished && self.tx != TxState::Closed {
                self.queue_internal(Flags::WRITE_FAILED, PayloadHeaders::new());
            }
        }
        if self.tx == TxState::Open {
            let end = if self.peer_supports_eof() {
                Flags::EOF
            } else {
                Flags::CIRCUIT_END
            };
            self.queue_internal(end, PayloadHeaders::new());
            self.tx = TxState::Finishing { since: now };
        }
        self.maybe_full_close();
    }

    /// Closes at once (channel gone, fatal error): nothing more is sent or delivered except the
    /// final CircuitEnd and Close messages.
    pub fn abort(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        self.send.clear();
        self.tx = TxState::Closed;
        self.recv.discard_all();
        self.rx_done = true;
        self.maybe_full_close();
    }

    // ---- application: receiving ----

    /// Takes up to `max` bytes (at least 1) of the next payload in order, or
    /// [`Delivery::Fin`] at the end of the stream; `None` if nothing is readable yet.
    /// `usize::MAX` yields whole payloads (needed to split an edge MULTIPART_MSG body).
    /// Reading is what empties the receive buffer we report, so a slow reader slows the peer.
    pub fn read(&mut self, max: usize) -> Option<Delivery> {
        if self.rx_done {
            return Some(Delivery::Fin);
        }
        let d = self.recv.read(max)?;
        match d {
            Delivery::Fin => {
                self.rx_done = true;
                self.maybe_full_close();
            }
            Delivery::Data { .. } => {
                let size = self.reported_recv_size();
                let last = self.acks.last_size_sent;
                // Halved (Go), or back under the size at which a Go sender stops: tell it
                // now, while we still hold enough to read until its payloads arrive.
                let stop = self.opts.tx_portal_max_size;
                if (last > WINDOW_UPDATE_MIN && last / 2 > size) || (last > stop && size <= stop) {
                    self.acks.window_update = true;
                }
            }
        }
        Some(d)
    }

    /// The receive-buffer size our acknowledgements report: the bytes held times
    /// [`Options::rx_report_multiplier`](super::Options::rx_report_multiplier).
    fn reported_recv_size(&self) -> u32 {
        let scale = u64::from(self.opts.rx_report_multiplier.max(1));
        saturating_u32(self.recv.buffered().saturating_mul(scale))
    }

    /// Bytes received and not yet read.
    pub fn recv_buffered(&self) -> u64 {
        self.recv.buffered()
    }

    // ---- network side ----

    /// Handles one xgress message for this circuit (content types 1100..=1103; the shell
    /// dispatches on header 1000).
    pub fn handle_message(&mut self, now: Instant, msg: &Message) -> Result<(), CircuitError> {
        if self.closed {
            return Ok(());
        }
        let xg = match XgMessage::decode(msg) {
            Ok(xg) => xg,
            Err(e) => {
                if matches!(
                    msg.content_type,
                    content_type::PAYLOAD | content_type::ACKNOWLEDGEMENT
                ) {
                    self.abort(now);
                }
                return Err(e.into());
            }
        };
        if xg.circuit_id() != self.circuit_id {
            return Err(CircuitError::WrongCircuit {
                expected: self.circuit_id.clone(),
                got: xg.circuit_id().to_owned(),
            });
        }
        match xg {
            XgMessage::Payload(p) => self.on_payload(now, p),
            XgMessage::Acknowledgement(a) => {
                self.on_ack(now, &a);
                Ok(())
            }
            XgMessage::Control(c) => {
                self.on_control(&c);
                Ok(())
            }
            XgMessage::Close(_) => {
                // Only the SDK sends Close; if one arrives, the circuit is gone.
                self.send.clear();
                self.tx = TxState::Closed;
                self.recv.discard_all();
                self.rx_done = true;
                self.closed = true;
                self.push_event(Event::Closed);
                Ok(())
            }
        }
    }

    fn on_payload(&mut self, now: Instant, p: Payload) -> Result<(), CircuitError> {
        if p.flags.originator() == self.originator {
            // Our own payload came back (Go: "ouroboros"): drop it.
            return Ok(());
        }
        let peer_caps = p
            .headers
            .get(&payload_header::CAPABILITIES)
            .and_then(|v| decode_capabilities(v));
        if let Some(caps) = peer_caps {
            self.peer_caps |= caps;
        }
        if p.flags.contains(Flags::CIRCUIT_START) && !self.started {
            self.started = true;
            self.start_deadline = None;
            if peer_caps.is_some() && self.tx != TxState::Closed {
                let mut caps = PayloadHeaders::new();
                caps.insert(
                    payload_header::CAPABILITIES,
                    encode_capabilities(capability::EOF),
                );
                self.queue_internal(Flags::empty(), caps);
            }
        }
        if p.flags.contains(Flags::WRITE_FAILED) && self.tx != TxState::Closed {
            // The peer cannot deliver anything more: stop sending (Go closes the send buffer).
            let was_open = self.tx == TxState::Open;
            self.send.clear();
            self.tx = TxState::Closed;
            if was_open {
                self.push_event(Event::SendClosed);
            }
        }
        let seq = p.sequence;
        let rtt = p.rtt;
        let len = p.data.len() as u64;
        // Anything but first-time plain data (start, end, EOF, write failed, a retransmission)
        // is acknowledged at once: the peer's close is not held up by our acknowledgement
        // delay, and a retransmission means the peer is already waiting for it.
        let resent = p.flags.contains(Flags::RETRANSMIT);
        let plain = !p.flags.intersects(
            Flags::CIRCUIT_START
                | Flags::CIRCUIT_END
                | Flags::RETRANSMIT
                | Flags::EOF
                | Flags::WRITE_FAILED,
        );
        let had_readable = self.recv.has_readable() || self.rx_done;
        match self.recv.receive(p, &self.opts) {
            Ok(outcome @ (RxOutcome::Accepted | RxOutcome::Duplicate)) => {
                if resent && outcome == RxOutcome::Accepted {
                    self.recovered += 1;
                }
                if self.acks.seqs.len() < MAX_PENDING_ACKS {
                    self.acks.seqs.push_back(seq);
                    self.acks.since.get_or_insert(now);
                    self.acks.bytes += len;
                    // A duplicate means the peer's timer beat our acknowledgement: answer
                    // at once, or it resends more.
                    if outcome == RxOutcome::Duplicate || !plain {
                        self.acks.urgent = true;
                    }
                    // One acknowledgement covers every payload since the last one; echo
                    // the oldest stamp, so the sender's round trip includes the time a
                    // payload waited for it (Go acknowledges each payload at once; echoing
                    // the newest made a router time out payloads we held and resend them).
                    // Karn: a resent or duplicate payload's stamp is not echoed; its fresh
                    // stamp would tell the sender its round trip is shorter than it is.
                    if rtt != 0 && self.acks.rtt == 0 && !resent && outcome == RxOutcome::Accepted {
                        self.acks.rtt = rtt;
                    }
                }
            }
            Ok(RxOutcome::Dropped) => {}
            Err(e) => {
                self.abort(now);
                return Err(e.into());
            }
        }
        // Past the size at which a Go sender stops: tell it now, not after the delay.
        let stop = self.opts.tx_portal_max_size;
        if !self.acks.seqs.is_empty()
            && self.acks.last_size_sent <= stop
            && self.reported_recv_size() > stop
        {
            self.acks.urgent = true;
        }
        if !had_readable && self.recv.has_readable() {
            self.push_event(Event::Readable);
        }
        self.maybe_full_close();
        Ok(())
    }

    fn on_ack(&mut self, now: Instant, ack: &Acknowledgement) {
        if self.tx == TxState::Closed {
            return;
        }
        self.send
            .on_ack(ack, now, self.clock.stamp(now), &self.opts);
        self.send.maybe_retransmit(now, &self.opts);
        self.check_close(now);
        self.update_writable();
    }

    fn on_control(&mut self, c: &Control) {
        if c.control_type != ControlType::TraceRoute
            || self.control_out.len() >= MAX_PENDING_CONTROL
        {
            return;
        }
        // Go `handleTraceRouteControl`: answer with our hop, and turn the router's correlation
        // value back into ReplyFor so the dialer's request completes.
        let mut msg = c.trace_response(TRACE_HOP_TYPE, "").to_message();
        msg.headers.put_u32(header::CONN_ID, self.conn_id);
        if let Some(v) = c.headers.get_u32(control_header::USER_VAL) {
            msg.headers.put_u32(crate::channel::REPLY_FOR, v);
        }
        self.control_out.push_back(msg);
    }

    /// The router sent StateClosed for this connection (circuit unrouted): sending stops at
    /// once; what was received in order stays readable, then [`Delivery::Fin`]. The circuit
    /// closes when the application has read that far (or calls [`Circuit::close`]).
    pub fn handle_router_closed(&mut self, _now: Instant) {
        if self.closed {
            return;
        }
        if self.tx == TxState::Open {
            self.push_event(Event::SendClosed);
        }
        self.send.clear();
        self.tx = TxState::Closed;
        if !self.rx_done {
            let had = self.recv.has_readable();
            self.recv.close_input();
            if !had {
                self.push_event(Event::Readable);
            }
        }
        self.maybe_full_close();
    }

    /// The next message to send on the router channel (the channel driver assigns its channel
    /// sequence). Call until `None` after every other call.
    pub fn poll_transmit(&mut self, now: Instant) -> Option<Message> {
        if let Some(m) = self.control_out.pop_front() {
            return Some(m);
        }
        if let Some(ack) = self.take_ack(now) {
            return Some(ack.to_message(Some(self.conn_id)));
        }
        if self.tx != TxState::Closed
            && let Some(o) = self.send.next_transmit(now, self.started)
        {
            let p = Payload {
                circuit_id: self.circuit_id.clone(),
                flags: o.flags,
                rtt: self.clock.stamp(now),
                sequence: o.seq,
                headers: o.headers,
                data: o.data,
            };
            return Some(p.to_message(Some(self.conn_id)));
        }
        match self.final_out.pop_front()? {
            Final::CircuitEnd(seq) => {
                let p = Payload {
                    circuit_id: self.circuit_id.clone(),
                    flags: Flags::CIRCUIT_END | self.originator.flag(),
                    rtt: self.clock.stamp(now),
                    sequence: seq,
                    headers: PayloadHeaders::new(),
                    data: Bytes::new(),
                };
                Some(p.to_message(Some(self.conn_id)))
            }
            Final::Close => Some(
                CloseCircuit {
                    circuit_id: self.circuit_id.clone(),
                }
                .to_message(),
            ),
        }
    }

    /// When the pending acknowledgement must go out at the latest (`None`: nothing pending).
    fn ack_deadline(&self) -> Option<Instant> {
        if self.acks.due {
            return None;
        }
        let since = self.acks.since?;
        since.checked_add(self.opts.ack_delay).or(Some(since))
    }

    /// The acknowledgement to send now, if one is due.
    ///
    /// * `ack_bytes` or [`ACK_BATCH`] payloads waiting, or the oldest waiting `ack_delay`: an
    ///   acknowledgement echoing the oldest waiting payload's stamp, so the peer's RTT includes
    ///   the delay it is answered with and its retransmission timeout stays above it.
    /// * A duplicate or a payload that starts or ends something: at once, with no RTT sample
    ///   (an early acknowledgement would tell the peer the round trip is shorter than the delay
    ///   its other payloads wait).
    /// * A window update alone (Go `SendEmptyAck`): no sequences, no sample.
    fn take_ack(&mut self, now: Instant) -> Option<Acknowledgement> {
        let waiting = !self.acks.seqs.is_empty();
        let regular = waiting
            && (self.closed
                || self.acks.due
                || self.acks.seqs.len() >= ACK_BATCH
                || self.acks.bytes >= u64::from(self.opts.ack_bytes)
                || self.ack_deadline().is_some_and(|at| now >= at));
        let early = waiting && self.acks.urgent && !regular;
        if !regular && !early && !self.acks.window_update {
            return None;
        }
        let (sequences, rtt) = if regular || early {
            let n = self.acks.seqs.len().min(ACK_BATCH);
            let sequences: Vec<i32> = self.acks.seqs.drain(..n).collect();
            let rtt = if regular { self.acks.rtt } else { 0 };
            // What is left (over a batch) arrived later than the stamp held: no sample for it.
            self.acks.rtt = 0;
            if self.acks.seqs.is_empty() {
                self.acks.since = None;
                self.acks.bytes = 0;
                self.acks.urgent = false;
                self.acks.due = false;
            }
            (sequences, rtt)
        } else {
            (Vec::new(), 0)
        };
        let size = self.reported_recv_size();
        self.acks.last_size_sent = size;
        self.acks.window_update = false;
        Some(Acknowledgement {
            circuit_id: self.circuit_id.clone(),
            flags: self.originator.flag(),
            recv_buffer_size: size,
            rtt,
            sequences,
        })
    }

    /// When [`Circuit::handle_timeout`] should next be called; `None` = no timer.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let mut next: Option<Instant> = None;
        let mut consider = |t: Option<Instant>| {
            if let Some(t) = t {
                next = Some(next.map_or(t, |n| n.min(t)));
            }
        };
        if self.tx != TxState::Closed {
            consider(self.send.next_timeout(&self.opts));
        }
        consider(self.ack_deadline());
        if let TxState::Finishing { since } = self.tx {
            let wait = if self.send.is_empty() || self.send.only_end_left() {
                self.opts.close_linger.min(self.opts.max_close_wait)
            } else {
                self.opts.max_close_wait
            };
            consider(since.checked_add(wait));
        }
        if !self.started {
            consider(self.start_deadline);
        }
        next
    }

    /// Runs the timers due at `now`: retransmissions, the close of a drained send side, the
    /// terminator's CircuitStart timeout.
    pub fn handle_timeout(&mut self, now: Instant) {
        if self.closed {
            return;
        }
        if !self.started && self.start_deadline.is_some_and(|d| now >= d) {
            self.abort(now);
            return;
        }
        if self.tx != TxState::Closed {
            self.send.maybe_retransmit(now, &self.opts);
        }
        if self.ack_deadline().is_some_and(|at| now >= at) {
            self.acks.due = true;
        }
        self.check_close(now);
        self.update_writable();
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---- internals ----

    fn next_sequence(&mut self) -> Option<i32> {
        let seq = self.next_seq?;
        self.next_seq = seq.checked_add(1);
        Some(seq)
    }

    /// Queues a control payload (no data) past the window, as Go's internal payloads are.
    fn queue_internal(&mut self, flags: Flags, headers: PayloadHeaders) {
        if let Some(seq) = self.next_sequence() {
            self.send
                .push(seq, flags | self.originator.flag(), headers, Bytes::new());
        }
    }

    /// Go `checkForClose`.
    fn check_close(&mut self, now: Instant) {
        let TxState::Finishing { since } = self.tx else {
            return;
        };
        let waited = now.saturating_duration_since(since);
        let drained = self.send.is_empty() || self.send.only_end_left();
        if (drained && waited >= self.opts.close_linger) || waited >= self.opts.max_close_wait {
            self.send.clear();
            self.tx = TxState::Closed;
            self.maybe_full_close();
        }
    }

    /// Go `Close` once both halves are done: CircuitEnd (sent directly, not retransmitted) and
    /// Close (1103) for the router.
    fn maybe_full_close(&mut self) {
        if self.closed || self.tx != TxState::Closed || !self.rx_done {
            return;
        }
        self.closed = true;
        if let Some(seq) = self.next_sequence() {
            self.final_out.push_back(Final::CircuitEnd(seq));
        }
        self.final_out.push_back(Final::Close);
        self.push_event(Event::Closed);
    }

    fn update_writable(&mut self) {
        if self.send_blocked && self.tx == TxState::Open && self.send.accepts_payload(&self.opts) {
            self.send_blocked = false;
            self.push_event(Event::Writable);
        }
    }

    fn push_event(&mut self, e: Event) {
        if !self.events.contains(&e) {
            self.events.push_back(e);
        }
    }
}

/// Edge FIN bit (`crate::edge::flags::FIN`), the legacy half close.
const EDGE_FIN: u32 = 1;

fn saturating_u32(v: u64) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}
