//! [`Channel`]: one edge-router connection as a value (quinn-proto's `Connection` shape).
//!
//! The channel owns everything that happens on one router connection, without sockets, tasks,
//! clocks or OS randomness:
//!
//! * bytes in ([`Channel::handle_input`]) and bytes out ([`Channel::poll_transmit`]): TLS
//!   plaintext, so the shell only moves bytes between TLS and the channel;
//! * time in ([`Channel::handle_timeout`], every operation takes `now`) and the next deadline
//!   out ([`Channel::poll_timeout`]);
//! * application events out ([`Channel::poll_event`]): hello answered, dial and bind results,
//!   incoming dials, "connection N is readable", "there is room to write again", closed;
//! * the hello, request/reply matching, the one [`Sequencer`](crate::channel::Sequencer), the latency probe, UpdateToken,
//!   unknown-connection handling, and per connection an [`EdgeConn`] (FIN, close, end-to-end
//!   encryption) behind a bounded receive buffer.
//!
//! Randomness (kx key pairs, secretstream headers) comes from the seeded generator given to
//! [`Channel::new`], so a run can be replayed byte for byte.
//!
//! **A slow reader never stalls the channel.** Received data is queued per connection; the
//! channel never refuses input. In legacy data mode the router cannot be asked to slow down one
//! circuit, so a connection whose application stops reading may buffer at most
//! [`ChannelConfig::recv_window`] bytes before it is *overflowing*; an overflowing connection that
//! stays so for [`ChannelConfig::overflow_grace`], or reaches twice the window, is closed (the
//! router is told with StateClosed, the reader gets [`Recv::Closed`] with
//! [`ConnClosed::Overflow`], and the event is logged). Every other connection keeps moving.
//!
//! The tokio shell (`router::RouterConnection`) keeps the channel behind a mutex, runs one
//! driver task that feeds it TLS bytes and timeouts, and wakes exactly the streams that
//! [`Event::Readable`] / [`Event::Writable`] name.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rand::{Rng, RngCore, SeedableRng};

use super::{
    BindRequest, CloseReason, ConnError, ConnEvent, ConnIdAllocator, ConnState, ConnectRequest,
    ContentType, Dial, DialFailure, EdgeConn, Precedence, StateClosed, header,
};
use crate::channel::{
    self, FRAME_PREFIX_LEN, FrameDecoder, FrameError, HelloResult, Limits, Message, Sequencer,
};
use crate::e2ee::KeyPair;
use crate::xgress::{self, Circuit, Delivery, Originator, PayloadHeaders, XgMessage};

#[cfg(test)]
mod tests;

/// Tunables of one channel.
#[derive(Debug, Clone)]
pub struct ChannelConfig {
    /// Hello body: the router only logs it.
    pub label: String,
    /// Frame limits for what the router sends.
    pub limits: Limits,
    /// How long the router gets to answer the hello.
    pub hello_timeout: Duration,
    /// Latency probe period.
    pub probe_interval: Duration,
    /// A probe unanswered for this long, with nothing else received meanwhile, ends the channel.
    pub probe_timeout: Duration,
    /// Bytes a connection may hold for its application before it is overflowing.
    pub recv_window: usize,
    /// How long a connection may overflow before it is closed (legacy data mode).
    pub overflow_grace: Duration,
    /// Encoded bytes waiting for TLS beyond which [`Channel::send`] answers
    /// [`SendError::WouldBlock`].
    pub transmit_limit: usize,
    /// Largest plaintext carried by one Data message.
    pub max_data_body: usize,
    /// Ask for SDK xgress mode (header 1028) on dials and binds: per-circuit flow control, so a
    /// reader that stops slows only its own circuit. Connections the router does not confirm
    /// it for use legacy Data.
    pub sdk_flow_control: bool,
    /// Circuit tunables in SDK xgress mode.
    pub xgress: xgress::Options,
    /// Dials awaiting the router's answer at once; more wait their turn in order, and a
    /// dial's timeout starts when it is sent. A burst then costs the controller only circuits
    /// it can build in time, instead of all of them at once, most too late.
    pub max_dials_in_flight: usize,
    /// Dials that may wait for their turn before [`Channel::dial`] answers
    /// [`OpenError::TooManyDials`].
    pub max_queued_dials: usize,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            label: String::new(),
            limits: Limits::default(),
            hello_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(10),
            recv_window: 4 * 1024 * 1024,
            overflow_grace: Duration::from_secs(10),
            transmit_limit: 1024 * 1024,
            max_data_body: 32 * 1024,
            sdk_flow_control: true,
            xgress: xgress::Options::default(),
            max_dials_in_flight: 64,
            max_queued_dials: 16 * 1024,
        }
    }
}

/// Why the channel ended.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ChannelClosed {
    /// The router refused the hello (its text).
    #[error("the router refused the hello: {0}")]
    HelloRejected(String),
    /// No answer to the hello in time.
    #[error("the router did not answer the hello within {0:?}")]
    HelloTimeout(Duration),
    /// The router sent bytes that are not a channel frame.
    #[error("the router sent a malformed frame")]
    BadFrame(#[source] FrameError),
    /// A latency probe went unanswered and nothing else arrived.
    #[error("latency probe unanswered for {0:?} and nothing received")]
    ProbeTimeout(Duration),
    /// The router refused a refreshed token and closes the channel.
    #[error("the router refused the refreshed token: {0}")]
    TokenRefused(String),
    /// The transport ended (the shell tells the channel with [`Channel::transport_closed`]).
    #[error("{0}")]
    Transport(String),
    /// Closed locally.
    #[error("closed locally")]
    Local,
}

/// Why a dial or bind did not complete.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// The router refused the dial; the reason is classified.
    #[error("{0}")]
    Refused(DialFailure),
    /// The router refused the bind (its text).
    #[error("{0}")]
    BindRefused(String),
    /// The router did not answer in time.
    #[error("no answer within {0:?}")]
    TimedOut(Duration),
    /// The answer broke the protocol (e.g. an encrypted service answered without a key).
    #[error("protocol error")]
    Protocol(#[source] ConnError),
    /// The channel ended first.
    #[error("the router connection closed")]
    ChannelClosed,
    /// Too many dials already wait for this router connection.
    #[error("{0} dials already wait for this router connection; try again later")]
    TooManyDials(usize),
}

/// Why a connection ended without an orderly FIN from its peer.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnClosed {
    /// The peer (or the router on its behalf) closed the connection.
    #[error("closed by the peer: {0}")]
    ByPeer(String),
    /// The application stopped reading and the legacy-mode receive buffer overflowed.
    #[error(
        "closed: the application did not read {buffered} buffered bytes (window {window}) \
         for {grace:?}"
    )]
    Overflow {
        /// Bytes held when it was closed.
        buffered: usize,
        /// The window.
        window: usize,
        /// How long it overflowed.
        grace: Duration,
    },
    /// The peer broke the protocol on this connection.
    #[error("protocol error on the connection")]
    Protocol(#[source] ConnError),
    /// The channel ended.
    #[error("the router connection closed: {0}")]
    Channel(ChannelClosed),
}

/// What [`Channel::recv`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Recv {
    /// Bytes for the application (at most the `max` asked for).
    Data(Bytes),
    /// Nothing yet: wait for [`Event::Readable`].
    WouldBlock,
    /// The peer finished sending (FIN) and everything before it has been read.
    Fin,
    /// The connection ended; everything received before has been read.
    Closed(ConnClosed),
}

/// Why [`Channel::send`] took nothing.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// The transmit buffer is full: wait for [`Event::Writable`].
    #[error("the router connection's transmit buffer is full")]
    WouldBlock,
    /// The connection is not open for writing (unknown, closed or already half-closed).
    #[error("the connection is not open for writing")]
    NotWritable,
    /// The connection ended.
    #[error("the connection ended")]
    Closed(#[source] ConnClosed),
    /// Encryption or encoding failed.
    #[error("cannot send")]
    Conn(#[source] ConnError),
}

/// What a dial asks for.
#[derive(Debug, Clone, Default)]
pub struct DialParams {
    /// Dial session token.
    pub session_token: String,
    /// Set up end-to-end encryption (`encryptionRequired`).
    pub encrypted: bool,
    /// Dial this hosting identity's terminator.
    pub terminator_identity: Option<String>,
    /// Caller id forwarded to the host.
    pub caller_id: Option<String>,
    /// Application data forwarded to the host.
    pub app_data: Option<Bytes>,
    /// How long the router gets to answer.
    pub timeout: Duration,
}

/// What a bind asks for.
#[derive(Debug, Clone)]
pub struct BindParams {
    /// The Bind message fields (its conn id is chosen by the channel).
    pub request: BindRequest,
    /// How long the router gets to answer.
    pub timeout: Duration,
}

/// What the application learns from the channel.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Event {
    /// The router accepted the hello.
    Connected(Box<HelloResult>),
    /// The channel ended; every connection on it ended too.
    Closed(ChannelClosed),
    /// A dial completed.
    DialSucceeded {
        /// Its connection id.
        conn: u32,
        /// Fabric circuit id.
        circuit_id: Option<String>,
    },
    /// A dial failed; its connection id is free again.
    DialFailed {
        /// Its connection id.
        conn: u32,
        /// Why.
        error: OpenError,
    },
    /// A bind was accepted (the terminator follows, see [`Event::TerminatorEstablished`]).
    BindSucceeded {
        /// The bind's connection id.
        bind: u32,
    },
    /// A bind failed; its id is free again.
    BindFailed {
        /// The bind's connection id.
        bind: u32,
        /// Why.
        error: OpenError,
    },
    /// The router created the terminator of a bind.
    TerminatorEstablished {
        /// The bind.
        bind: u32,
    },
    /// The router ended a bind (its text); its id is free again.
    BindClosed {
        /// The bind.
        bind: u32,
        /// The router's reason.
        reason: String,
    },
    /// A dial arrived on a bind: answer with [`Channel::accept`] or [`Channel::reject`].
    IncomingDial {
        /// The bind.
        bind: u32,
        /// The dial, parsed.
        dial: Box<Dial>,
        /// The message itself (the answer must reply to it).
        request: Box<Message>,
    },
    /// Connection `conn` has something for [`Channel::recv`] (data, FIN or its end).
    Readable {
        /// The connection.
        conn: u32,
    },
    /// The transmit buffer has room again after a [`SendError::WouldBlock`].
    Writable,
    /// Connection `conn`'s circuit window opened again after a [`SendError::WouldBlock`].
    ConnWritable {
        /// The connection.
        conn: u32,
    },
    /// The answer to [`Channel::update_token`].
    TokenUpdated {
        /// `Err` with the router's text when refused.
        result: Result<(), String>,
    },
    /// A latency probe came back.
    Latency(Duration),
}

/// A Connect waiting for a place among the dials in flight.
#[derive(Debug)]
struct QueuedDial {
    conn: u32,
    msg: Message,
    timeout: Duration,
}

/// A request waiting for its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Hello,
    Dial { conn: u32, timeout: Duration },
    Bind { bind: u32, timeout: Duration },
    Probe { sent: Instant },
    UpdateToken,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingHello,
    Open,
    Closed,
}

/// One edge connection on the channel.
#[derive(Debug)]
struct Slot {
    edge: EdgeConn,
    kind: SlotKind,
    recv: VecDeque<Bytes>,
    buffered: usize,
    fin: bool,
    closed: Option<ConnClosed>,
    /// Since when the receive buffer is above the window (legacy overflow policy).
    overflow_since: Option<Instant>,
    /// When the application last took data (legacy overflow policy).
    last_read: Option<Instant>,
    /// SDK xgress mode: the circuit under this connection.
    xg: Option<Box<Circuit>>,
    /// The circuit's armed deadline (an entry of `Channel::xg_deadlines`).
    xg_deadline: Option<Instant>,
    /// The application closed the connection; the slot lives on until its circuit drained.
    closing: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotKind {
    /// Connect sent, waiting for StateConnected.
    Dialing,
    /// A stream (dialed or accepted).
    Stream,
    /// A bind (Bind sent or established).
    Bind,
}

/// Allocation for a frame whose prefix has not arrived whole: most control messages then fit
/// without a second allocation.
const MIN_FRAME_ALLOC: usize = 256;

/// One edge-router connection, sans IO. See the module documentation.
pub struct Channel {
    config: ChannelConfig,
    phase: Phase,
    decoder: FrameDecoder,
    inbuf: BytesMut,
    out: BytesMut,
    write_blocked: bool,
    seq: Sequencer,
    pending: HashMap<i32, Pending>,
    /// Request deadlines (deadline, sequence), earliest first.
    deadlines: BTreeSet<(Instant, i32)>,
    request_deadline: HashMap<i32, Instant>,
    slots: HashMap<u32, Slot>,
    ids: ConnIdAllocator,
    /// Overflow deadlines (deadline, conn), earliest first.
    overflow_deadlines: BTreeSet<(Instant, u32)>,
    /// Circuit deadlines (deadline, conn), earliest first (SDK xgress mode).
    xg_deadlines: BTreeSet<(Instant, u32)>,
    /// Circuit id -> connection (acknowledgements carry only the circuit id).
    circuits: HashMap<String, u32>,
    /// Wall clock at `clock_base`, in Unix milliseconds (xgress RTT stamps).
    unix_base_ms: u64,
    clock_base: Instant,
    /// Dials sent and not yet answered.
    dials_in_flight: usize,
    /// Dials waiting for a free place in flight, oldest first.
    dial_queue: VecDeque<QueuedDial>,
    events: VecDeque<Event>,
    rng: rand::rngs::StdRng,
    hello: Option<HelloResult>,
    latency: Option<Duration>,
    next_probe: Option<Instant>,
    probe_seq: Option<i32>,
    last_input: Instant,
    closed: Option<ChannelClosed>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("phase", &self.phase)
            .field("connections", &self.slots.len())
            .field("pending", &self.pending.len())
            .field("transmit", &self.out.len())
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// A channel that starts by sending the hello with `token` (API session or OIDC access
    /// token). `seed` drives every random choice (key pairs, stream headers); `unix_ms` is the
    /// wall clock at `now` (xgress RTT stamps are Unix milliseconds).
    pub fn new(config: ChannelConfig, token: &str, now: Instant, seed: u64, unix_ms: u64) -> Self {
        let mut ch = Channel {
            decoder: FrameDecoder::new(config.limits),
            phase: Phase::AwaitingHello,
            inbuf: BytesMut::new(),
            out: BytesMut::with_capacity(64 * 1024),
            write_blocked: false,
            seq: Sequencer::new(),
            pending: HashMap::new(),
            deadlines: BTreeSet::new(),
            request_deadline: HashMap::new(),
            slots: HashMap::new(),
            ids: ConnIdAllocator::new(),
            overflow_deadlines: BTreeSet::new(),
            xg_deadlines: BTreeSet::new(),
            circuits: HashMap::new(),
            unix_base_ms: unix_ms,
            clock_base: now,
            dials_in_flight: 0,
            dial_queue: VecDeque::new(),
            events: VecDeque::new(),
            rng: rand::rngs::StdRng::seed_from_u64(seed),
            hello: None,
            latency: None,
            next_probe: None,
            probe_seq: None,
            last_input: now,
            closed: None,
            config,
        };
        let hello = channel::hello(token, &ch.config.label);
        // The hello keeps its fixed sequence (-1); its answer replies to -1.
        ch.pending.insert(hello.sequence, Pending::Hello);
        ch.arm(hello.sequence, now + ch.config.hello_timeout);
        ch.encode(&hello);
        ch
    }

    /// The router's hello answer, once connected.
    pub fn hello(&self) -> Option<&HelloResult> {
        self.hello.as_ref()
    }

    /// The last measured round trip.
    pub fn latency(&self) -> Option<Duration> {
        self.latency
    }

    /// Why the channel ended, once it has.
    pub fn closed(&self) -> Option<&ChannelClosed> {
        self.closed.as_ref()
    }

    /// `true` once the hello was answered and until the channel ends.
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open
    }

    /// Connections and binds open on this channel.
    pub fn connection_count(&self) -> usize {
        self.slots.len()
    }

    /// Bytes buffered for connection `conn`'s application.
    pub fn buffered(&self, conn: u32) -> usize {
        self.slots.get(&conn).map_or(0, |s| s.buffered)
    }

    // ---------------------------------------------------------------- bytes and time

    /// Feeds bytes read from TLS. Never refuses input: what the application has not read is
    /// queued per connection (see the module documentation for the bound).
    pub fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if self.phase == Phase::Closed {
            return;
        }
        self.last_input = now;
        let mut rest = bytes;
        loop {
            // `inbuf` holds at most the one frame being assembled, in an allocation sized for
            // it: a body queued for a slow reader then pins its own frame and nothing else.
            let view: &[u8] = if self.inbuf.is_empty() {
                rest
            } else {
                &self.inbuf
            };
            let need = match self.decoder.frame_len(view) {
                Ok(n) => n,
                Err(e) => {
                    self.close_channel(ChannelClosed::BadFrame(e));
                    return;
                }
            };
            if self.inbuf.len() >= need {
                match self.decoder.decode(&mut self.inbuf) {
                    Ok(Some(msg)) => {
                        self.handle_message(now, msg);
                        if self.phase == Phase::Closed {
                            return;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => {
                        self.close_channel(ChannelClosed::BadFrame(e));
                        return;
                    }
                }
            }
            if rest.is_empty() {
                return;
            }
            if self.inbuf.capacity() < need {
                // Until the prefix shows the frame's length, room for most whole messages.
                let size = if need > FRAME_PREFIX_LEN {
                    need
                } else {
                    MIN_FRAME_ALLOC
                };
                let mut fresh = BytesMut::with_capacity(size);
                fresh.extend_from_slice(&self.inbuf);
                self.inbuf = fresh;
            }
            let take = need.saturating_sub(self.inbuf.len()).min(rest.len()).max(1);
            let (now_bytes, later) = rest.split_at(take.min(rest.len()));
            self.inbuf.extend_from_slice(now_bytes);
            rest = later;
        }
    }

    /// Encoded bytes to write to TLS, at most `max` at a time, or `None` when there are none.
    pub fn poll_transmit(&mut self, max: usize) -> Option<Bytes> {
        if self.out.is_empty() || max == 0 {
            return None;
        }
        let n = self.out.len().min(max);
        let chunk = self.out.split_to(n).freeze();
        if self.write_blocked && self.out.len() <= self.config.transmit_limit / 2 {
            self.write_blocked = false;
            self.events.push_back(Event::Writable);
        }
        Some(chunk)
    }

    /// Bytes waiting for TLS.
    pub fn transmit_len(&self) -> usize {
        self.out.len()
    }

    /// When [`Channel::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.phase == Phase::Closed {
            return None;
        }
        [
            self.deadlines.first().map(|(t, _)| *t),
            self.overflow_deadlines.first().map(|(t, _)| *t),
            self.xg_deadlines.first().map(|(t, _)| *t),
            self.next_probe,
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Runs whatever is due at `now`: request timeouts, the latency probe, the overflow policy.
    pub fn handle_timeout(&mut self, now: Instant) {
        while let Some(&(at, seq)) = self.deadlines.first() {
            if at > now {
                break;
            }
            self.deadlines.remove(&(at, seq));
            self.request_deadline.remove(&seq);
            if let Some(p) = self.pending.remove(&seq) {
                self.request_timed_out(now, seq, p);
            }
            if self.phase == Phase::Closed {
                return;
            }
        }
        while let Some(&(at, conn)) = self.overflow_deadlines.first() {
            if at > now {
                break;
            }
            self.overflow_deadlines.remove(&(at, conn));
            self.overflow_expired(now, conn);
        }
        while let Some(&(at, conn)) = self.xg_deadlines.first() {
            if at > now {
                break;
            }
            self.xg_deadlines.remove(&(at, conn));
            if let Some(slot) = self.slots.get_mut(&conn) {
                slot.xg_deadline = None;
                if let Some(c) = slot.xg.as_mut() {
                    c.handle_timeout(now);
                }
            }
            self.pump(now, conn);
        }
        if let Some(at) = self.next_probe
            && at <= now
            && self.phase == Phase::Open
        {
            self.next_probe = Some(now + self.config.probe_interval);
            if self.probe_seq.is_none() {
                let mut probe = channel::latency_probe(now_nanos(now, self.last_input));
                let seq = self.seq.stamp(&mut probe);
                self.probe_seq = Some(seq);
                self.pending.insert(seq, Pending::Probe { sent: now });
                self.arm(seq, now + self.config.probe_timeout);
                self.encode(&probe);
            }
        }
    }

    /// The transport under the channel ended (`why` says how); every connection ends.
    pub fn transport_closed(&mut self, why: &str) {
        self.close_channel(ChannelClosed::Transport(why.to_string()));
    }

    /// Closes the channel locally.
    pub fn close(&mut self) {
        self.close_channel(ChannelClosed::Local);
    }

    /// The next application event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    // ---------------------------------------------------------------- operations

    /// Pushes a refreshed OIDC access token (answer: [`Event::TokenUpdated`]).
    pub fn update_token(&mut self, now: Instant, token: &str) {
        if self.phase != Phase::Open {
            return;
        }
        let mut msg = super::update_token(token);
        let seq = self.seq.stamp(&mut msg);
        self.pending.insert(seq, Pending::UpdateToken);
        self.arm(seq, now + Duration::from_secs(10));
        self.encode(&msg);
    }

    /// Starts a dial; its outcome is [`Event::DialSucceeded`] or [`Event::DialFailed`] for the
    /// returned connection id. At most [`ChannelConfig::max_dials_in_flight`] Connects await
    /// the router at once; later dials wait their turn in order, and each one's timeout runs
    /// from when it is sent.
    pub fn dial(&mut self, now: Instant, params: &DialParams) -> Result<u32, OpenError> {
        if self.phase != Phase::Open {
            return Err(OpenError::ChannelClosed);
        }
        let conn = self
            .ids
            .allocate()
            .ok_or_else(|| OpenError::BindRefused("every connection id is in use".into()))?;
        let keypair = params.encrypted.then(|| self.keypair());
        let header = self.stream_header();
        let edge = EdgeConn::dial_with(conn, keypair, header);
        let mut req = ConnectRequest {
            public_key: edge.public_key(),
            ..ConnectRequest::new(conn, params.session_token.clone())
        };
        req.terminator_identity = params.terminator_identity.clone();
        req.caller_id = params.caller_id.clone();
        req.app_data = params.app_data.clone();
        let mut msg = super::connect(&req);
        if self.config.sdk_flow_control {
            msg.headers.put_bool(header::USE_XGRESS_TO_SDK, true);
        }
        if self.dials_in_flight >= self.config.max_dials_in_flight {
            if self.dial_queue.len() >= self.config.max_queued_dials {
                self.ids.release(conn);
                return Err(OpenError::TooManyDials(self.dial_queue.len()));
            }
            self.slots.insert(conn, Slot::new(edge, SlotKind::Dialing));
            self.dial_queue.push_back(QueuedDial {
                conn,
                msg,
                timeout: params.timeout,
            });
            return Ok(conn);
        }
        self.slots.insert(conn, Slot::new(edge, SlotKind::Dialing));
        self.send_dial(now, conn, msg, params.timeout);
        Ok(conn)
    }

    /// Dials sent and not yet answered, and dials waiting for their turn.
    pub fn dials_pending(&self) -> (usize, usize) {
        (self.dials_in_flight, self.dial_queue.len())
    }

    /// Starts a bind; its outcome is [`Event::BindSucceeded`] or [`Event::BindFailed`].
    pub fn bind(&mut self, now: Instant, params: &BindParams) -> Result<u32, OpenError> {
        if self.phase != Phase::Open {
            return Err(OpenError::ChannelClosed);
        }
        let bind = self
            .ids
            .allocate()
            .ok_or_else(|| OpenError::BindRefused("every connection id is in use".into()))?;
        let mut req = params.request.clone();
        req.conn_id = bind;
        let mut msg = super::bind(&req);
        if self.config.sdk_flow_control {
            msg.headers.put_bool(header::USE_XGRESS_TO_SDK, true);
        }
        let seq = self.seq.stamp(&mut msg);
        let edge = EdgeConn::dial_with(bind, None, [0; crate::e2ee::HEADER_BYTES]);
        self.slots.insert(bind, Slot::new(edge, SlotKind::Bind));
        self.pending.insert(
            seq,
            Pending::Bind {
                bind,
                timeout: params.timeout,
            },
        );
        self.arm(seq, now + params.timeout);
        self.encode(&msg);
        Ok(bind)
    }

    /// Removes a bind's terminator and forgets the bind.
    pub fn unbind(&mut self, bind: u32, session_token: &str) {
        if self.slots.remove(&bind).is_some() {
            self.ids.release(bind);
            if self.phase == Phase::Open {
                let mut m = super::unbind(bind, session_token);
                self.seq.stamp(&mut m);
                self.encode(&m);
                let mut m = super::state_closed(bind, "unbind");
                self.seq.stamp(&mut m);
                self.encode(&m);
            }
        }
    }

    /// Changes a bind's terminator cost and/or precedence (UpdateBind; no reply).
    pub fn update_bind(
        &mut self,
        bind: u32,
        session_token: &str,
        cost: Option<u16>,
        precedence: Option<Precedence>,
    ) {
        if self.phase == Phase::Open && self.slots.contains_key(&bind) {
            let mut m = super::update_bind(bind, session_token, cost, precedence);
            self.seq.stamp(&mut m);
            self.encode(&m);
        }
    }

    /// Accepts an incoming dial: the connection id is the router's (header 1012), answered
    /// with DialSuccess and, for encrypted services, our stream header. `host_key` is the bind's
    /// key pair when the service is encrypted.
    pub fn accept(
        &mut self,
        now: Instant,
        bind: u32,
        request: &Message,
        host_key: Option<&KeyPair>,
    ) -> Result<u32, OpenError> {
        if self.phase != Phase::Open {
            return Err(OpenError::ChannelClosed);
        }
        let dial = Dial::parse(request).map_err(|e| OpenError::Protocol(ConnError::Edge(e)))?;
        let Some(conn) = dial.new_conn_id else {
            self.reject(bind, request, "no router-provided connection id");
            return Err(OpenError::BindRefused(
                "dial without a router-provided connection id".into(),
            ));
        };
        let header = self.stream_header();
        let edge = match EdgeConn::accept_with(conn, host_key, dial.peer_key.as_ref(), header) {
            Ok(e) => e,
            Err(e) => {
                self.reject(bind, request, "did not receive a usable peer crypto key");
                return Err(OpenError::Protocol(e));
            }
        };
        let mut reply = super::dial_success(request, bind, conn, None);
        self.seq.stamp(&mut reply);
        self.encode(&reply);
        let mut slot = Slot::new(edge, SlotKind::Stream);
        if request.headers.flag(header::USE_XGRESS_TO_SDK)
            && let Some(circuit_id) = dial.circuit_id.clone()
        {
            let c = Circuit::new(
                circuit_id.clone(),
                conn,
                Originator::Terminator,
                self.config.xgress,
                now,
                self.unix_ms(now),
            );
            slot.xg = Some(Box::new(c));
            self.circuits.insert(circuit_id, conn);
        }
        self.slots.insert(conn, slot);
        self.flush_edge(now, conn);
        self.pump(now, conn);
        Ok(conn)
    }

    /// Rejects an incoming dial with DialFailed.
    pub fn reject(&mut self, bind: u32, request: &Message, reason: &str) {
        if self.phase != Phase::Open {
            return;
        }
        let mut m = super::dial_failed(request, bind, reason);
        self.seq.stamp(&mut m);
        self.encode(&m);
    }

    /// Sends application bytes on `conn`: takes at most one Data message's worth
    /// ([`ChannelConfig::max_data_body`]) and returns how many it took.
    pub fn send(&mut self, now: Instant, conn: u32, data: &[u8]) -> Result<usize, SendError> {
        if data.is_empty() {
            return Ok(0);
        }
        if self.out.len() >= self.config.transmit_limit {
            self.write_blocked = true;
            return Err(SendError::WouldBlock);
        }
        let max = self.config.max_data_body;
        let slot = self.slots.get_mut(&conn).ok_or(SendError::NotWritable)?;
        if let Some(c) = &slot.closed {
            return Err(SendError::Closed(c.clone()));
        }
        if slot.kind != SlotKind::Stream || slot.closing {
            return Err(SendError::NotWritable);
        }
        if let Some(c) = slot.xg.as_mut()
            && !c.poll_writable()
        {
            return Err(SendError::WouldBlock);
        }
        let n = data.len().min(max);
        let msg = slot.edge.send(&data[..n]).map_err(|e| match e {
            ConnError::InvalidState(_) => SendError::NotWritable,
            other => SendError::Conn(other),
        })?;
        self.transmit_data(now, conn, msg)?;
        Ok(n)
    }

    /// `true` when [`Channel::send`] would take bytes now (room in the transmit buffer).
    pub fn can_send(&self) -> bool {
        self.out.len() < self.config.transmit_limit
    }

    /// Half-closes `conn` (FIN): the peer reads end-of-file, may still answer.
    pub fn close_write(&mut self, now: Instant, conn: u32) -> Result<(), SendError> {
        let slot = self.slots.get_mut(&conn).ok_or(SendError::NotWritable)?;
        if let Some(c) = &slot.closed {
            return Err(SendError::Closed(c.clone()));
        }
        if matches!(
            slot.edge.state(),
            ConnState::LocalFinSent | ConnState::Closed
        ) {
            return Ok(());
        }
        let msg = slot.edge.close_write().map_err(|e| match e {
            ConnError::InvalidState(_) => SendError::NotWritable,
            other => SendError::Conn(other),
        })?;
        match slot.xg.as_mut() {
            Some(c) => {
                c.finish(now);
                self.pump(now, conn);
            }
            None => {
                let mut msg = msg;
                self.seq.stamp(&mut msg);
                self.encode(&msg);
            }
        }
        Ok(())
    }

    /// Takes up to `max` bytes received on `conn`.
    pub fn recv(&mut self, now: Instant, conn: u32, max: usize) -> Recv {
        let window = self.config.recv_window;
        let grace = self.config.overflow_grace;
        if self
            .slots
            .get(&conn)
            .is_some_and(|s| s.recv.is_empty() && s.xg.is_some())
        {
            self.pull(now, conn);
        }
        let Some(slot) = self.slots.get_mut(&conn) else {
            return Recv::Closed(
                self.closed
                    .clone()
                    .map(ConnClosed::Channel)
                    .unwrap_or(ConnClosed::ByPeer("unknown connection".into())),
            );
        };
        if let Some(front) = slot.recv.front_mut() {
            let chunk = if front.len() <= max {
                slot.recv.pop_front().unwrap_or_default()
            } else {
                front.split_to(max)
            };
            slot.buffered -= chunk.len();
            slot.last_read = Some(now);
            if let Some(since) = slot.overflow_since
                && slot.buffered <= window
            {
                slot.overflow_since = None;
                self.overflow_deadlines.remove(&(since + grace, conn));
            }
            return Recv::Data(chunk);
        }
        if let Some(c) = &slot.closed {
            return Recv::Closed(c.clone());
        }
        if slot.fin {
            return Recv::Fin;
        }
        Recv::WouldBlock
    }

    /// Closes `conn` (StateClosed to the router unless the peer closed it first, or the
    /// circuit's own close in SDK xgress mode) and forgets it.
    pub fn close_conn(&mut self, now: Instant, conn: u32, reason: &str) {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        if slot.kind == SlotKind::Dialing
            && let Some(i) = self.dial_queue.iter().position(|q| q.conn == conn)
        {
            // Never sent: the router knows nothing of it.
            self.dial_queue.remove(i);
            self.slots.remove(&conn);
            self.ids.release(conn);
            return;
        }
        if let Some(since) = slot.overflow_since.take() {
            self.overflow_deadlines
                .remove(&(since + self.config.overflow_grace, conn));
        }
        if let Some(c) = slot.xg.as_mut() {
            // The circuit says goodbye itself (EOF / CircuitEnd, then Close); keep it until
            // it has drained.
            slot.closing = true;
            slot.recv.clear();
            slot.buffered = 0;
            c.close(now);
            self.pump(now, conn);
            return;
        }
        let Some(mut slot) = self.slots.remove(&conn) else {
            return;
        };
        self.ids.release(conn);
        let peer_closed = matches!(slot.closed, Some(ConnClosed::ByPeer(_)));
        if !peer_closed && self.phase == Phase::Open && slot.kind != SlotKind::Bind {
            let mut m = slot.edge.close(reason);
            self.seq.stamp(&mut m);
            self.encode(&m);
        }
    }

    /// Connections in SDK xgress mode (for tests and status).
    pub fn is_xgress(&self, conn: u32) -> bool {
        self.slots.get(&conn).is_some_and(|s| s.xg.is_some())
    }

    // ---------------------------------------------------------------- internals

    fn unix_ms(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.clock_base).as_millis();
        self.unix_base_ms
            .saturating_add(u64::try_from(since).unwrap_or(u64::MAX))
    }

    /// Sends an edge Data message of `conn`: as is in legacy mode, as a circuit payload (body
    /// plus the edge flags) in SDK xgress mode.
    fn transmit_data(
        &mut self,
        now: Instant,
        conn: u32,
        mut msg: Message,
    ) -> Result<(), SendError> {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return Err(SendError::NotWritable);
        };
        let Some(c) = slot.xg.as_mut() else {
            self.seq.stamp(&mut msg);
            self.encode(&msg);
            return Ok(());
        };
        let mut headers = PayloadHeaders::new();
        if let Some(flags) = msg.headers.get_u32(header::FLAGS)
            && flags != 0
        {
            headers.insert(
                xgress::messages::payload_header::EDGE_FLAGS,
                Bytes::copy_from_slice(&flags.to_le_bytes()),
            );
        }
        let sent = c.send_payload(msg.body, headers);
        self.pump(now, conn);
        match sent {
            Ok(()) => Ok(()),
            Err(xgress::SendError::Blocked) => Err(SendError::WouldBlock),
            Err(_) => Err(SendError::NotWritable),
        }
    }

    /// Sends what the edge connection itself must send (the end-to-end encryption header).
    fn flush_edge(&mut self, now: Instant, conn: u32) {
        let mut pending = Vec::new();
        if let Some(slot) = self.slots.get_mut(&conn) {
            while let Some(m) = slot.edge.poll_transmit() {
                pending.push(m);
            }
        }
        for m in pending {
            let _ = self.transmit_data(now, conn, m);
        }
    }

    /// After anything happened to `conn`'s circuit: transmits what it queued, reacts to its
    /// events, re-arms its deadline and forgets it once it has drained.
    fn pump(&mut self, now: Instant, conn: u32) {
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        let Some(c) = slot.xg.as_mut() else {
            return;
        };
        let mut readable = false;
        let mut writable = false;
        let mut ended = false;
        loop {
            while let Some(mut m) = c.poll_transmit(now) {
                self.seq.stamp(&mut m);
                if let Err(e) = m.encode(&mut self.out) {
                    tracing::warn!(error = %e, "cannot encode an xgress message; dropped");
                }
            }
            let Some(ev) = c.poll_event() else { break };
            match ev {
                xgress::Event::Readable => readable = true,
                xgress::Event::Writable | xgress::Event::SendClosed => writable = true,
                xgress::Event::Closed => ended = true,
            }
        }
        let next = c.poll_timeout();
        let drained = c.is_closed() && c.is_drained();
        if slot.xg_deadline != next {
            if let Some(old) = slot.xg_deadline.take() {
                self.xg_deadlines.remove(&(old, conn));
            }
            if let Some(at) = next {
                self.xg_deadlines.insert((at, conn));
                slot.xg_deadline = Some(at);
            }
        }
        if slot.closing {
            if drained || ended && next.is_none() {
                self.forget(conn);
            }
            return;
        }
        if ended && slot.closed.is_none() && !slot.fin {
            readable = true;
        }
        if readable {
            if slot.recv.is_empty() {
                self.pull(now, conn);
            }
            self.events.push_back(Event::Readable { conn });
        }
        if writable {
            self.events.push_back(Event::ConnWritable { conn });
        }
    }

    /// Moves a little of the circuit's in-order data into the connection's queue (through the
    /// edge layer, which decrypts), keeping the rest in the circuit so that its receive buffer
    /// (what the peer's window sees) is what the application has not read.
    fn pull(&mut self, now: Instant, conn: u32) {
        const PULL: usize = 64 * 1024;
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        let Some(c) = slot.xg.as_mut() else {
            return;
        };
        let mut failed = None;
        while slot.buffered < PULL && !slot.fin && slot.closed.is_none() {
            let Some(d) = c.read(usize::MAX) else { break };
            let (body, flags) = match d {
                Delivery::Data { data, headers } => {
                    (data, xgress::edge_flags(&headers).unwrap_or(0))
                }
                Delivery::Fin => {
                    slot.fin = true;
                    break;
                }
            };
            let msg = super::data(conn, body, flags);
            match slot.edge.handle(&msg) {
                Ok(events) => {
                    for ev in events {
                        match ev {
                            ConnEvent::Data(b) => {
                                slot.buffered += b.len();
                                slot.recv.push_back(b);
                            }
                            ConnEvent::Fin => slot.fin = true,
                            ConnEvent::Closed(_) | ConnEvent::Connected { .. } => {}
                        }
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failed {
            slot.closed = Some(ConnClosed::Protocol(e));
            c.close(now);
        }
        // Reading may have queued a window update.
        self.pump_transmit_only(now, conn);
    }

    fn pump_transmit_only(&mut self, now: Instant, conn: u32) {
        let Some(c) = self.slots.get_mut(&conn).and_then(|s| s.xg.as_mut()) else {
            return;
        };
        while let Some(mut m) = c.poll_transmit(now) {
            self.seq.stamp(&mut m);
            if let Err(e) = m.encode(&mut self.out) {
                tracing::warn!(error = %e, "cannot encode an xgress message; dropped");
            }
        }
    }

    /// Drops a connection's slot for good.
    fn forget(&mut self, conn: u32) {
        if let Some(slot) = self.slots.remove(&conn) {
            if let Some(at) = slot.xg_deadline {
                self.xg_deadlines.remove(&(at, conn));
            }
            if let Some(c) = slot.xg {
                let st = c.stats();
                tracing::debug!(
                    conn,
                    circuit = c.circuit_id(),
                    retransmits = st.retransmits,
                    duplicate_acks = st.duplicate_acks,
                    duplicate_payloads = st.duplicate_payloads,
                    dropped_payloads = st.dropped_payloads,
                    recovered_payloads = st.recovered_payloads,
                    rtt = ?st.rtt,
                    "circuit ended"
                );
                self.circuits.remove(c.circuit_id());
            }
            if let Some(since) = slot.overflow_since {
                self.overflow_deadlines
                    .remove(&(since + self.config.overflow_grace, conn));
            }
            self.ids.release(conn);
        }
    }

    /// An xgress message (1100..=1103) from the router: to its circuit, found by connection id
    /// or circuit id.
    fn on_xgress(&mut self, now: Instant, msg: Message) {
        let by_conn = msg
            .headers
            .get_u32(header::CONN_ID)
            .filter(|id| self.slots.get(id).is_some_and(|s| s.xg.is_some()));
        let conn = by_conn.or_else(|| match XgMessage::decode(&msg) {
            Ok(m) => self.circuits.get(m.circuit_id()).copied(),
            Err(_) => None,
        });
        let Some(conn) = conn else {
            tracing::trace!(
                content_type = msg.content_type,
                "xgress message for no known circuit"
            );
            return;
        };
        let Some(c) = self.slots.get_mut(&conn).and_then(|s| s.xg.as_mut()) else {
            return;
        };
        // The body is a slice of its frame's own allocation (see `handle_input`), so a payload
        // the application has not read pins only itself: no copy needed.
        if let Err(e) = c.handle_message(now, &msg) {
            tracing::debug!(conn, error = %crate::error_report::error_chain(&e), "xgress message refused");
        }
        self.pump(now, conn);
    }

    fn keypair(&mut self) -> KeyPair {
        let mut sk = [0u8; 32];
        self.rng.fill_bytes(&mut sk);
        KeyPair::from_secret_bytes(sk)
    }

    fn stream_header(&mut self) -> [u8; crate::e2ee::HEADER_BYTES] {
        let mut h = [0u8; crate::e2ee::HEADER_BYTES];
        self.rng.fill(&mut h[..]);
        h
    }

    fn send_dial(&mut self, now: Instant, conn: u32, mut msg: Message, timeout: Duration) {
        let seq = self.seq.stamp(&mut msg);
        self.pending.insert(seq, Pending::Dial { conn, timeout });
        self.arm(seq, now + timeout);
        self.encode(&msg);
        self.dials_in_flight += 1;
    }

    /// A dial in flight was answered or gave up: the next waiting dial goes out.
    fn dial_done(&mut self, now: Instant) {
        self.dials_in_flight = self.dials_in_flight.saturating_sub(1);
        while self.dials_in_flight < self.config.max_dials_in_flight
            && self.phase == Phase::Open
            && let Some(q) = self.dial_queue.pop_front()
        {
            if self
                .slots
                .get(&q.conn)
                .is_some_and(|s| s.kind == SlotKind::Dialing)
            {
                self.send_dial(now, q.conn, q.msg, q.timeout);
            }
        }
    }

    fn encode(&mut self, msg: &Message) {
        if let Err(e) = msg.encode(&mut self.out) {
            // Only our own oversized messages can fail to encode; drop them loudly.
            tracing::warn!(error = %e, content_type = msg.content_type, "cannot encode a message; dropped");
        }
    }

    fn arm(&mut self, seq: i32, at: Instant) {
        if let Some(old) = self.request_deadline.insert(seq, at) {
            self.deadlines.remove(&(old, seq));
        }
        self.deadlines.insert((at, seq));
    }

    fn disarm(&mut self, seq: i32) {
        if let Some(at) = self.request_deadline.remove(&seq) {
            self.deadlines.remove(&(at, seq));
        }
    }

    fn close_channel(&mut self, why: ChannelClosed) {
        if self.phase == Phase::Closed {
            return;
        }
        self.phase = Phase::Closed;
        self.closed = Some(why.clone());
        for (seq, p) in std::mem::take(&mut self.pending) {
            self.disarm(seq);
            match p {
                Pending::Dial { conn, .. } => {
                    self.slots.remove(&conn);
                    self.events.push_back(Event::DialFailed {
                        conn,
                        error: OpenError::ChannelClosed,
                    });
                }
                Pending::Bind { bind, .. } => {
                    self.slots.remove(&bind);
                    self.events.push_back(Event::BindFailed {
                        bind,
                        error: OpenError::ChannelClosed,
                    });
                }
                _ => {}
            }
        }
        self.dials_in_flight = 0;
        for q in std::mem::take(&mut self.dial_queue) {
            self.slots.remove(&q.conn);
            self.events.push_back(Event::DialFailed {
                conn: q.conn,
                error: OpenError::ChannelClosed,
            });
        }
        let mut ids: Vec<u32> = self.slots.keys().copied().collect();
        ids.sort_unstable();
        for id in ids {
            if let Some(slot) = self.slots.get_mut(&id) {
                if slot.closed.is_none() {
                    slot.closed = Some(ConnClosed::Channel(why.clone()));
                }
                if slot.kind == SlotKind::Bind {
                    self.events.push_back(Event::BindClosed {
                        bind: id,
                        reason: why.to_string(),
                    });
                } else {
                    self.events.push_back(Event::Readable { conn: id });
                }
            }
        }
        for slot in self.slots.values_mut() {
            if let Some(c) = slot.xg.as_mut() {
                c.abort(self.last_input);
            }
        }
        self.xg_deadlines.clear();
        self.overflow_deadlines.clear();
        self.next_probe = None;
        if self.write_blocked {
            self.write_blocked = false;
            self.events.push_back(Event::Writable);
        }
        self.events.push_back(Event::Closed(why));
    }

    fn request_timed_out(&mut self, now: Instant, seq: i32, p: Pending) {
        match p {
            Pending::Hello => {
                self.close_channel(ChannelClosed::HelloTimeout(self.config.hello_timeout))
            }
            Pending::Dial { conn, timeout } => {
                if let Some(mut slot) = self.slots.remove(&conn) {
                    // The router may still build the circuit; tell it we gave up.
                    let mut m = slot.edge.close("dial timed out");
                    self.seq.stamp(&mut m);
                    self.encode(&m);
                }
                self.ids.release(conn);
                self.events.push_back(Event::DialFailed {
                    conn,
                    error: OpenError::TimedOut(timeout),
                });
                self.dial_done(now);
            }
            Pending::Bind { bind, timeout } => {
                self.slots.remove(&bind);
                self.ids.release(bind);
                self.events.push_back(Event::BindFailed {
                    bind,
                    error: OpenError::TimedOut(timeout),
                });
            }
            Pending::Probe { sent } => {
                self.probe_seq = None;
                if self.last_input <= sent {
                    self.close_channel(ChannelClosed::ProbeTimeout(self.config.probe_timeout));
                }
            }
            Pending::UpdateToken => {
                let _ = seq;
                self.events.push_back(Event::TokenUpdated {
                    result: Err("no answer to the token update".into()),
                });
            }
        }
    }

    fn handle_message(&mut self, now: Instant, msg: Message) {
        if self.phase == Phase::AwaitingHello {
            // The hello's answer replies to sequence -1, which reads as "not a reply": the
            // first message decides.
            if let Some(p) = self.pending.remove(&channel::HELLO_SEQUENCE) {
                self.disarm(channel::HELLO_SEQUENCE);
                self.handle_reply(now, p, msg);
            }
            return;
        }
        if let Some(seq) = msg.reply_for()
            && let Some(p) = self.pending.remove(&seq)
        {
            self.disarm(seq);
            self.handle_reply(now, p, msg);
            return;
        }
        if XgMessage::is_xgress(msg.content_type) {
            self.on_xgress(now, msg);
            return;
        }
        let ct = ContentType::from_i32(msg.content_type);
        let conn = msg.headers.get_u32(header::CONN_ID);
        match (ct, conn) {
            (Some(ContentType::Dial), Some(bind)) => self.on_dial(bind, msg),
            (Some(ContentType::BindSuccess), Some(bind)) => {
                if self
                    .slots
                    .get(&bind)
                    .is_some_and(|s| s.kind == SlotKind::Bind)
                {
                    self.events.push_back(Event::TerminatorEstablished { bind });
                }
            }
            (Some(ContentType::UpdateTokenFailure), _) => {
                let text = String::from_utf8_lossy(&msg.body).into_owned();
                self.events.push_back(Event::TokenUpdated {
                    result: Err(text.clone()),
                });
                self.close_channel(ChannelClosed::TokenRefused(text));
            }
            (
                Some(ContentType::Data | ContentType::StateClosed | ContentType::StateConnected),
                Some(id),
            ) => self.on_conn_message(now, id, msg),
            _ => tracing::trace!(
                content_type = msg.content_type,
                "ignoring a message nobody waits for"
            ),
        }
    }

    fn handle_reply(&mut self, now: Instant, p: Pending, msg: Message) {
        match p {
            Pending::Hello => match HelloResult::parse(&msg) {
                Some(h) if h.success => {
                    self.phase = Phase::Open;
                    self.next_probe = Some(now + self.config.probe_interval);
                    self.hello = Some(h.clone());
                    self.events.push_back(Event::Connected(Box::new(h)));
                }
                Some(h) => self.close_channel(ChannelClosed::HelloRejected(h.message)),
                None => self.close_channel(ChannelClosed::HelloRejected(format!(
                    "expected a hello answer, got content type {}",
                    msg.content_type
                ))),
            },
            Pending::Probe { sent } => {
                self.probe_seq = None;
                let rtt = now.saturating_duration_since(sent);
                self.latency = Some(rtt);
                self.events.push_back(Event::Latency(rtt));
            }
            Pending::UpdateToken => {
                let result = if msg.content_type == ContentType::UpdateTokenSuccess as i32 {
                    Ok(())
                } else {
                    Err(String::from_utf8_lossy(&msg.body).into_owned())
                };
                let refused = result.as_ref().err().cloned();
                self.events.push_back(Event::TokenUpdated { result });
                if let Some(text) = refused
                    && msg.content_type == ContentType::UpdateTokenFailure as i32
                {
                    self.close_channel(ChannelClosed::TokenRefused(text));
                }
            }
            Pending::Bind { bind, .. } => {
                if ContentType::from_i32(msg.content_type) == Some(ContentType::StateConnected) {
                    self.events.push_back(Event::BindSucceeded { bind });
                } else {
                    self.slots.remove(&bind);
                    self.ids.release(bind);
                    let text = String::from_utf8_lossy(&msg.body).into_owned();
                    self.events.push_back(Event::BindFailed {
                        bind,
                        error: OpenError::BindRefused(if text.is_empty() {
                            format!("unexpected answer (content type {})", msg.content_type)
                        } else {
                            text
                        }),
                    });
                }
            }
            Pending::Dial { conn, .. } => {
                self.on_dial_reply(now, conn, msg);
                self.dial_done(now);
            }
        }
    }

    fn on_dial_reply(&mut self, now: Instant, conn: u32, msg: Message) {
        let unix_ms = self.unix_ms(now);
        let Some(slot) = self.slots.get_mut(&conn) else {
            return;
        };
        let fail = |error| Event::DialFailed { conn, error };
        let events = match slot.edge.handle(&msg) {
            Ok(ev) => ev,
            Err(e) => {
                // E.g. an encrypted service answered without the host's key: never continue
                // in clear.
                let mut m = slot.edge.close("dial failed");
                self.slots.remove(&conn);
                self.ids.release(conn);
                self.seq.stamp(&mut m);
                self.encode(&m);
                self.events.push_back(fail(OpenError::Protocol(e)));
                return;
            }
        };
        let mut circuit = None;
        for ev in events {
            match ev {
                ConnEvent::Connected { circuit_id, .. } => circuit = circuit_id,
                ConnEvent::Closed(CloseReason::DialFailed(f)) => {
                    self.slots.remove(&conn);
                    self.ids.release(conn);
                    self.events.push_back(fail(OpenError::Refused(f)));
                    return;
                }
                ConnEvent::Closed(CloseReason::ClosedByPeer { reason, .. }) => {
                    self.slots.remove(&conn);
                    self.ids.release(conn);
                    self.events
                        .push_back(fail(OpenError::Refused(DialFailure::classify(&reason))));
                    return;
                }
                ConnEvent::Data(_) | ConnEvent::Fin => {}
            }
        }
        if slot.edge.state() != ConnState::Connected {
            self.slots.remove(&conn);
            self.ids.release(conn);
            self.events
                .push_back(fail(OpenError::Refused(DialFailure::classify(&format!(
                    "unexpected answer to Connect (content type {})",
                    msg.content_type
                )))));
            return;
        }
        slot.kind = SlotKind::Stream;
        if msg.headers.flag(header::USE_XGRESS_TO_SDK)
            && let Some(circuit_id) = circuit.clone()
        {
            let c = Circuit::new(
                circuit_id.clone(),
                conn,
                Originator::Initiator,
                self.config.xgress,
                now,
                unix_ms,
            );
            slot.xg = Some(Box::new(c));
            self.circuits.insert(circuit_id, conn);
        }
        self.flush_edge(now, conn);
        // The initiator's CircuitStart releases the far end's data.
        self.pump(now, conn);
        self.events.push_back(Event::DialSucceeded {
            conn,
            circuit_id: circuit,
        });
    }

    fn on_dial(&mut self, bind: u32, msg: Message) {
        if !self
            .slots
            .get(&bind)
            .is_some_and(|s| s.kind == SlotKind::Bind)
        {
            let mut m = super::dial_failed(&msg, bind, "no such bind");
            self.seq.stamp(&mut m);
            self.encode(&m);
            return;
        }
        match Dial::parse(&msg) {
            Ok(dial) => self.events.push_back(Event::IncomingDial {
                bind,
                dial: Box::new(dial),
                request: Box::new(msg),
            }),
            Err(e) => {
                let mut m = super::dial_failed(&msg, bind, &format!("malformed dial: {e}"));
                self.seq.stamp(&mut m);
                self.encode(&m);
            }
        }
    }

    fn on_conn_message(&mut self, now: Instant, id: u32, msg: Message) {
        let window = self.config.recv_window;
        let grace = self.config.overflow_grace;
        let Some(slot) = self.slots.get_mut(&id) else {
            if msg.content_type == ContentType::Data as i32 {
                // Data for a connection we no longer know: tell the router to drop it.
                let mut m = super::state_closed(id, "connection closed");
                self.seq.stamp(&mut m);
                self.encode(&m);
            }
            return;
        };
        if slot.kind == SlotKind::Bind {
            if msg.content_type == ContentType::StateClosed as i32 {
                let reason = StateClosed::parse(&msg)
                    .map(|s| s.reason)
                    .unwrap_or_default();
                self.slots.remove(&id);
                self.ids.release(id);
                self.events.push_back(Event::BindClosed {
                    bind: id,
                    reason: if reason.is_empty() {
                        "binding closed by the router".into()
                    } else {
                        reason
                    },
                });
            }
            return;
        }
        if let Some(c) = slot.xg.as_mut() {
            // SDK xgress mode: data comes as circuit payloads; the router's StateClosed means
            // the circuit is gone on its side.
            if msg.content_type == ContentType::StateClosed as i32 {
                c.handle_router_closed(now);
                self.pump(now, id);
            }
            return;
        }
        if slot.closed.is_some() {
            return;
        }
        let events = match slot.edge.handle(&msg) {
            Ok(ev) => ev,
            Err(e) => {
                slot.closed = Some(ConnClosed::Protocol(e));
                let mut m = slot.edge.close("protocol error");
                self.seq.stamp(&mut m);
                self.encode(&m);
                self.events.push_back(Event::Readable { conn: id });
                return;
            }
        };
        let mut readable = false;
        for ev in events {
            match ev {
                ConnEvent::Data(b) => {
                    slot.buffered += b.len();
                    slot.recv.push_back(b);
                    readable = true;
                }
                ConnEvent::Fin => {
                    slot.fin = true;
                    readable = true;
                }
                ConnEvent::Closed(reason) => {
                    let text = match reason {
                        CloseReason::DialFailed(f) => f.to_string(),
                        CloseReason::ClosedByPeer { reason, .. } => reason,
                    };
                    slot.closed = Some(ConnClosed::ByPeer(text));
                    readable = true;
                }
                ConnEvent::Connected { .. } => {}
            }
        }
        let mut overflow_now = false;
        if slot.buffered > window && slot.closed.is_none() {
            if slot.buffered > 2 * window {
                overflow_now = true;
            } else if slot.overflow_since.is_none() {
                slot.overflow_since = Some(now);
                self.overflow_deadlines.insert((now + grace, id));
            }
        }
        if readable {
            self.events.push_back(Event::Readable { conn: id });
        }
        if overflow_now {
            self.overflow_expired(now, id);
        }
    }

    /// The overflow policy (legacy data mode): a connection still above its window after the
    /// grace period, whose application has not read anything during it, or one at twice the
    /// window whatever its reader does, is closed and what it buffered is dropped.
    fn overflow_expired(&mut self, now: Instant, id: u32) {
        let window = self.config.recv_window;
        let grace = self.config.overflow_grace;
        let Some(slot) = self.slots.get_mut(&id) else {
            return;
        };
        if let Some(since) = slot.overflow_since.take() {
            self.overflow_deadlines.remove(&(since + grace, id));
        }
        if slot.buffered <= window || slot.closed.is_some() {
            return;
        }
        let reading = slot.last_read.is_some_and(|t| t + grace > now);
        if reading && slot.buffered <= 2 * window {
            // Slow but reading: give it another grace period.
            slot.overflow_since = Some(now);
            self.overflow_deadlines.insert((now + grace, id));
            return;
        }
        let buffered = slot.buffered;
        tracing::warn!(
            conn = id,
            buffered,
            window,
            "closing a connection whose application stopped reading (legacy data mode cannot \
             slow one circuit down)"
        );
        slot.recv.clear();
        slot.buffered = 0;
        slot.closed = Some(ConnClosed::Overflow {
            buffered,
            window,
            grace,
        });
        let mut m = slot.edge.close("receive buffer overflow");
        self.seq.stamp(&mut m);
        self.encode(&m);
        self.events.push_back(Event::Readable { conn: id });
    }
}

impl Slot {
    fn new(edge: EdgeConn, kind: SlotKind) -> Self {
        Slot {
            edge,
            kind,
            recv: VecDeque::new(),
            buffered: 0,
            fin: false,
            closed: None,
            overflow_since: None,
            last_read: None,
            xg: None,
            xg_deadline: None,
            closing: false,
        }
    }
}

/// A latency-probe timestamp: only its echo matters, so any monotonic value works.
fn now_nanos(now: Instant, reference: Instant) -> u64 {
    now.saturating_duration_since(reference)
        .as_nanos()
        .min(u128::from(u64::MAX)) as u64
}

/// Fuzz entry point: drives a [`Channel`] with operations, router messages and raw bytes
/// chosen by `data` (legacy Data and xgress content types alike), with time moving in
/// data-chosen steps. Must never panic.
#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub fn fuzz_channel(data: &[u8]) {
    use crate::channel::content_type;

    const TYPES: [i32; 16] = [
        content_type::RESULT,
        ContentType::StateConnected as i32,
        ContentType::StateClosed as i32,
        ContentType::Data as i32,
        ContentType::Dial as i32,
        ContentType::BindSuccess as i32,
        ContentType::UpdateTokenSuccess as i32,
        ContentType::UpdateTokenFailure as i32,
        1100,
        1101,
        1102,
        1103,
        ContentType::Connect as i32,
        content_type::LATENCY,
        60800,
        12345,
    ];
    let start = Instant::now();
    let mut now = start;
    let config = ChannelConfig {
        recv_window: 4096,
        transmit_limit: 8192,
        overflow_grace: Duration::from_millis(50),
        ..ChannelConfig::default()
    };
    let mut ch = Channel::new(config, "token", now, 1, 1_700_000_000_000);
    let mut sent_seqs: Vec<i32> = vec![channel::HELLO_SEQUENCE];
    let mut conns: Vec<u32> = Vec::new();
    let mut decoder = FrameDecoder::new(Limits::default());
    let mut out = BytesMut::new();
    let mut input = data;
    while let Some((&op, rest)) = input.split_first() {
        input = rest;
        let arg = |input: &mut &[u8]| -> u8 {
            match input.split_first() {
                Some((&b, r)) => {
                    *input = r;
                    b
                }
                None => 0,
            }
        };
        match op % 12 {
            0 => {
                // Raw bytes: the next length-prefixed slice.
                let len = usize::from(arg(&mut input)).min(input.len());
                let (raw, rest) = input.split_at(len);
                input = rest;
                ch.handle_input(now, raw);
            }
            1..=3 => {
                // A router message addressed to something we know.
                let ct = TYPES[usize::from(arg(&mut input)) % TYPES.len()];
                let len = usize::from(arg(&mut input) % 64).min(input.len());
                let (body, rest) = input.split_at(len);
                input = rest;
                let mut m = Message::new(ct, Bytes::copy_from_slice(body));
                let pick = usize::from(arg(&mut input));
                if let Some(&seq) = sent_seqs.get(pick % sent_seqs.len().max(1))
                    && pick % 3 == 0
                {
                    m.headers.put_i32(channel::REPLY_FOR, seq);
                }
                if !conns.is_empty() {
                    m.headers
                        .put_u32(header::CONN_ID, conns[pick % conns.len()]);
                }
                let flags = arg(&mut input);
                if flags & 1 != 0 {
                    m.headers.put_u32(header::FLAGS, u32::from(flags >> 1));
                }
                if flags & 0x80 != 0 {
                    m.headers
                        .put_u32(header::ROUTER_PROVIDED_CONN_ID, u32::from(flags));
                    m.headers.put_bool(channel::RESULT_SUCCESS, true);
                }
                if let Ok(bytes) = m.to_bytes() {
                    ch.handle_input(now, &bytes);
                }
            }
            4 => {
                let params = DialParams {
                    session_token: "t".into(),
                    encrypted: arg(&mut input) & 1 == 1,
                    timeout: Duration::from_millis(u64::from(arg(&mut input)) * 10),
                    ..DialParams::default()
                };
                if let Ok(id) = ch.dial(now, &params) {
                    conns.push(id);
                }
            }
            5 => {
                let params = BindParams {
                    request: BindRequest::new(0, "t"),
                    timeout: Duration::from_millis(u64::from(arg(&mut input)) * 10),
                };
                if let Ok(id) = ch.bind(now, &params) {
                    conns.push(id);
                }
            }
            6 => {
                if let Some(&id) = conns.get(usize::from(arg(&mut input)) % conns.len().max(1)) {
                    let len = usize::from(arg(&mut input)) * 64;
                    let _ = ch.send(now, id, &vec![7u8; len]);
                }
            }
            7 => {
                if let Some(&id) = conns.get(usize::from(arg(&mut input)) % conns.len().max(1)) {
                    let _ = ch.recv(now, id, usize::from(arg(&mut input)) + 1);
                }
            }
            8 => {
                if let Some(&id) = conns.get(usize::from(arg(&mut input)) % conns.len().max(1)) {
                    match arg(&mut input) % 3 {
                        0 => {
                            let _ = ch.close_write(now, id);
                        }
                        1 => ch.close_conn(now, id, "fuzz"),
                        _ => ch.unbind(id, "t"),
                    }
                }
            }
            9 => {
                now += Duration::from_millis(u64::from(arg(&mut input)) * 100);
                ch.handle_timeout(now);
            }
            10 => ch.update_token(now, "new"),
            _ => {
                if arg(&mut input) == 0 {
                    ch.transport_closed("fuzz");
                }
            }
        }
        while let Some(ev) = ch.poll_event() {
            match ev {
                Event::IncomingDial { bind, request, .. } => {
                    let key = KeyPair::from_secret_bytes([9; 32]);
                    let host = (bind % 2 == 0).then_some(&key);
                    if let Ok(id) = ch.accept(now, bind, &request, host) {
                        conns.push(id);
                    }
                }
                Event::DialSucceeded { conn, .. } => {
                    let _ = ch.send(now, conn, b"hello");
                }
                _ => {}
            }
        }
        while let Some(b) = ch.poll_transmit(4096) {
            out.extend_from_slice(&b);
        }
        // Everything we transmit must be well-formed.
        while let Ok(Some(m)) = decoder.decode(&mut out) {
            if sent_seqs.len() < 64 {
                sent_seqs.push(m.sequence);
            }
        }
        assert!(
            ch.poll_timeout().is_none_or(|t| t >= start),
            "deadline in the past of the start"
        );
    }
}
