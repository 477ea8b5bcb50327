//! The userspace TCP/IP stack between the TUN device and Ziti: smoltcp behind a packet-queue
//! device. Sans-IO: IP packets go in with [`receive_packet`], packets to write to the TUN come
//! out of [`pop_transmit`], and flow data moves through [`recv`] / [`send`]. The caller owns the
//! clock and every socket.
//!
//! [`receive_packet`]: crate::stack::NetStack::receive_packet
//! [`pop_transmit`]: crate::stack::NetStack::pop_transmit
//! [`recv`]: crate::stack::NetStack::recv
//! [`send`]: crate::stack::NetStack::send
//!
//! **Work proportional to what happened, not to what is open.** Each flow has its own smoltcp
//! socket set holding its one socket. A packet is demultiplexed by its 4-tuple to its flow
//! (one hash lookup) before smoltcp sees it, and [`NetStack::poll`](crate::stack::NetStack::poll) runs smoltcp only for the
//! flows that received packets, were written to or read from, or whose timer is due (a timer
//! set ordered by deadline). Flows whose state may have changed are reported once each through
//! [`NetStack::poll_ready`](crate::stack::NetStack::poll_ready), so the caller services those and no others.
//!
//! **A SYN is held until the caller knows the service answers.** A SYN the classifier accepts
//! opens a flow (reported by [`NetStack::poll_new_flow`](crate::stack::NetStack::poll_new_flow)) but nothing is answered: the caller
//! dials, then [`NetStack::accept_flow`](crate::stack::NetStack::accept_flow) lets the handshake complete (SYN-ACK), or
//! [`NetStack::refuse_flow`](crate::stack::NetStack::refuse_flow) answers the SYN with RST, so the application's `connect()` fails
//! with "connection refused" instead of a connection that is reset after it was accepted.
//! Retransmitted SYNs of a held flow are absorbed.
//!
//! smoltcp runs in "any IP" mode, so each socket listens on exactly its SYN's destination.
//! SYNs the classifier refuses, and segments of unknown flows, go to smoltcp with no socket,
//! which answers RST (TCP) or ICMP unreachable (UDP), so a client fails fast. Everything is
//! bounded: the number of flows, each flow's buffers and held packets, and the queues of
//! packets in and out.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr,
    Ipv6Packet, TcpPacket, UdpPacket, UdpRepr,
};
use ziti_sdk::services::Protocol;

use flow_socket::FlowSocket;

mod flow_socket;

/// Limits and addresses of a [`NetStack`].
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The stack's own address and prefix (the TUN network). Replies to the kernel leave from the
    /// intercepted destination addresses; this one only anchors routing.
    pub address: Ipv4Addr,
    /// Prefix length of [`StackConfig::address`].
    pub prefix: u8,
    /// The stack's IPv6 address and prefix, if the TUN is dual-stack.
    pub ipv6: Option<(Ipv6Addr, u8)>,
    /// Largest IP packet in either direction (the TUN MTU).
    pub mtu: usize,
    /// Receive and send buffer of each TCP flow, bytes (window scaling above 64 KiB).
    pub tcp_buffer: usize,
    /// Flows (sockets) at most; SYNs beyond are refused with RST.
    pub max_flows: usize,
    /// Packets queued towards smoltcp at most; more are dropped (TCP retransmits).
    pub max_rx_queue: usize,
    /// Packets queued towards the TUN at most; smoltcp holds back when it is full.
    pub max_tx_queue: usize,
    /// A flow still waiting for its handshake after this long is dropped.
    pub handshake_timeout: Duration,
    /// A SYN held for a dial that has not answered after this long is refused (RST). The dial's
    /// own timeout normally ends it first; this only bounds a dial that never reports.
    pub hold_timeout: Duration,
    /// An established flow with no traffic from the client (not even keep-alive answers) for
    /// this long is aborted.
    pub idle_timeout: Duration,
    /// Intercepted UDP datagrams waiting for the caller at most; more are dropped.
    pub max_udp_queue: usize,
}

impl Default for StackConfig {
    fn default() -> Self {
        StackConfig {
            address: Ipv4Addr::new(100, 64, 0, 1),
            prefix: 10,
            ipv6: None,
            mtu: 9000,
            // Socket memory is bounded by max_flows x 2 x tcp_buffer; the buffers are allocated
            // zeroed, so pages a connection never filled are never touched.
            tcp_buffer: 128 * 1024,
            max_flows: 65_536,
            max_rx_queue: 1024,
            max_tx_queue: 1024,
            handshake_timeout: Duration::from_secs(20),
            // Past the kernel's own SYN retries (about 127 s): the client has given up by then.
            hold_timeout: Duration::from_secs(130),
            idle_timeout: Duration::from_secs(2 * 60 * 60),
            max_udp_queue: 1024,
        }
    }
}

/// A TCP flow through the stack, numbered in order of arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowId(u64);

/// A flow the classifier accepted: the caller should dial its service now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlow {
    /// The flow.
    pub id: FlowId,
    /// The client (source) address.
    pub src: SocketAddr,
    /// The intercepted destination.
    pub dst: SocketAddr,
}

/// An intercepted UDP datagram from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Datagram {
    /// The client.
    pub src: SocketAddr,
    /// The intercepted destination.
    pub dst: SocketAddr,
    /// The payload.
    pub payload: Vec<u8>,
}

/// Errors of flow operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FlowError {
    /// The flow is gone (closed and removed, or never existed).
    #[error("unknown flow")]
    Unknown,
    /// The connection was reset or is no longer open for this operation.
    #[error("flow not open")]
    NotOpen,
}

/// Packets a held flow keeps at most (retransmitted SYNs replace each other, so this only
/// bounds a client that sends more before the handshake).
const HELD_PACKETS: usize = 4;
/// Packets waiting for one flow's next poll at most; more are dropped (TCP retransmits). Their
/// bytes are bounded too, by twice the flow's TCP buffer plus one packet: a client that keeps
/// to the window never has more in flight, and at a 64 KiB MTU 256 packets would be 16 MiB.
const FLOW_INBOX: usize = 256;
/// A flow whose buffers are empty and have been for this long gives their pages back.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// SYN received; waiting for [`NetStack::accept_flow`] or [`NetStack::refuse_flow`].
    Held,
    /// Handed to smoltcp.
    Open,
}

struct Flow {
    /// This flow's own socket (in a socket set of its own) and its buffer memory.
    socket: FlowSocket,
    src: SocketAddr,
    dst: SocketAddr,
    created: Instant,
    /// When the handshake was let through ([`NetStack::accept_flow`]).
    opened: Instant,
    phase: Phase,
    /// Packets for this flow, waiting for its next poll.
    inbox: VecDeque<Vec<u8>>,
    /// Bytes in `inbox`.
    inbox_bytes: usize,
    /// Its entry in [`NetStack::timers`].
    timer: Option<Instant>,
    /// In [`NetStack::dirty`].
    dirty: bool,
    /// In [`NetStack::ready`].
    ready: bool,
    /// One past the highest sequence number the client has sent (data, SYN or FIN).
    client_end: Option<u32>,
    /// The acknowledgement number of the latest segment sent to the client.
    acked: Option<u32>,
    /// Data went through the buffers since their pages were last released.
    touched: bool,
    /// When data last went through the buffers.
    last_data: Instant,
}

impl Flow {
    /// Everything the client sent is acknowledged, so no segment waits out of order in the
    /// receive buffer (smoltcp stores those there, past the data it counts).
    fn nothing_out_of_order(&self) -> bool {
        match (self.client_end, self.acked) {
            (None, _) => true,
            (Some(end), Some(ack)) => seq_at_or_after(ack, end),
            (Some(_), None) => false,
        }
    }

    /// Data went through the buffers at `now`.
    fn touch(&mut self, now: Instant) {
        self.touched = true;
        self.last_data = self.last_data.max(now);
    }
}

/// `a` is `b` or later in sequence space.
fn seq_at_or_after(a: u32, b: u32) -> bool {
    // Serial-number arithmetic: at most half the space apart.
    a.wrapping_sub(b) < 1 << 31
}

/// The smoltcp interface, the flows and the packet queues.
pub struct NetStack {
    config: StackConfig,
    epoch: Instant,
    iface: Interface,
    device: QueueDevice,
    /// An empty socket set: polling smoltcp with it answers strays with RST / ICMP.
    no_sockets: SocketSet<'static>,
    /// Packets for no flow.
    strays: VecDeque<Vec<u8>>,
    flows: HashMap<FlowId, Flow>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), FlowId>,
    /// Flows to run through smoltcp at the next poll.
    dirty: Vec<FlowId>,
    /// (deadline, flow): smoltcp timers and handshake expiry, earliest first.
    timers: BTreeSet<(Instant, FlowId)>,
    /// Flows whose state may have changed since the caller last looked.
    ready: VecDeque<FlowId>,
    next_id: u64,
    new_flows: VecDeque<NewFlow>,
    datagrams: VecDeque<Datagram>,
    /// The latest time the caller gave (for operations that take none).
    last_poll: Instant,
}

impl std::fmt::Debug for NetStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetStack")
            .field("flows", &self.flows.len())
            .field("tx_queue", &self.device.tx.len())
            .field("timers", &self.timers.len())
            .finish_non_exhaustive()
    }
}

impl NetStack {
    /// A stack with no flows. `seed` randomises initial sequence numbers; give a fresh random
    /// value per process.
    pub fn new(config: StackConfig, now: Instant, seed: u64) -> Self {
        let mut device = QueueDevice {
            rx: VecDeque::new(),
            tx: VecDeque::new(),
            mtu: config.mtu,
            max_tx: config.max_tx_queue,
        };
        let mut iface_config = Config::new(HardwareAddress::Ip);
        iface_config.random_seed = seed;
        let mut iface = Interface::new(iface_config, &mut device, smol_now(now, now));
        let own = config.address;
        iface.update_ip_addrs(|addrs| {
            // Two addresses at most: the vector has room for them.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(own), config.prefix));
            if let Some((v6, prefix)) = config.ipv6 {
                let _ = addrs.push(IpCidr::new(IpAddress::Ipv6(v6), prefix));
            }
        });
        // Capacity for the default routes always exists.
        let _ = iface.routes_mut().add_default_ipv4_route(own);
        if let Some((v6, _)) = config.ipv6 {
            let _ = iface.routes_mut().add_default_ipv6_route(v6);
        }
        iface.set_any_ip(true);
        NetStack {
            config,
            epoch: now,
            iface,
            device,
            no_sockets: SocketSet::new(Vec::new()),
            strays: VecDeque::new(),
            flows: HashMap::new(),
            by_tuple: HashMap::new(),
            dirty: Vec::new(),
            timers: BTreeSet::new(),
            ready: VecDeque::new(),
            next_id: 1,
            new_flows: VecDeque::new(),
            datagrams: VecDeque::new(),
            last_poll: now,
        }
    }

    /// Feeds one IP packet read from the TUN. A TCP SYN to a destination for which `accept`
    /// returns `true` opens a held flow (reported by [`NetStack::poll_new_flow`]). Malformed
    /// packets are dropped.
    pub fn receive_packet(
        &mut self,
        packet: &[u8],
        now: Instant,
        mut accept: impl FnMut(Protocol, SocketAddr) -> bool,
    ) {
        if packet.len() > self.config.mtu {
            return;
        }
        // Intercepted UDP bypasses smoltcp: the caller relays each datagram. Other UDP goes to
        // smoltcp, which answers with ICMP port unreachable.
        if let Some(datagram) = udp_datagram(packet)
            && accept(Protocol::Udp, datagram.dst)
        {
            if self.datagrams.len() < self.config.max_udp_queue {
                self.datagrams.push_back(datagram);
            }
            return;
        }
        let Some(seg) = tcp_segment(packet) else {
            self.stray(packet);
            return;
        };
        let tuple = (seg.src, seg.dst);
        let existing = self.by_tuple.get(&tuple).copied();
        if let Some(old) = existing
            && seg.is_syn()
            && self.client_left(old)
        {
            self.supersede(old);
        }
        let id = match self.by_tuple.get(&tuple) {
            Some(id) => *id,
            None => {
                let opened = seg.is_syn()
                    && self.flows.len() < self.config.max_flows
                    && accept(Protocol::Tcp, seg.dst)
                    && self.open_flow(seg.src, seg.dst, now);
                if !opened {
                    self.stray(packet);
                    return;
                }
                match self.by_tuple.get(&tuple) {
                    Some(id) => *id,
                    None => return,
                }
            }
        };
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        if seg.len > 0 {
            let end = seg.seq.wrapping_add(seg.len);
            if flow.client_end.is_none_or(|e| seq_at_or_after(end, e)) {
                flow.client_end = Some(end);
            }
        }
        if seg.payload > 0 {
            flow.touch(now);
        }
        match flow.phase {
            Phase::Held => {
                if seg.is_syn() {
                    // A retransmitted SYN: keep the newest only.
                    flow.inbox
                        .retain(|p| tcp_segment(p).is_none_or(|s| !s.is_syn()));
                }
                if flow.inbox.len() < HELD_PACKETS {
                    flow.inbox.push_back(packet.to_vec());
                }
                flow.inbox_bytes = flow.inbox.iter().map(Vec::len).sum();
            }
            Phase::Open => {
                let byte_limit = 2 * self.config.tcp_buffer + self.config.mtu;
                if flow.inbox.len() < FLOW_INBOX && flow.inbox_bytes + packet.len() <= byte_limit {
                    flow.inbox_bytes += packet.len();
                    flow.inbox.push_back(packet.to_vec());
                    mark(&mut self.dirty, id, flow);
                }
            }
        }
    }

    /// The client is done with flow `id`: it sent FIN, so a SYN from its addresses cannot
    /// belong to that connection. (The flow may linger while the service has not finished its
    /// side; meanwhile the client's kernel, after its own FIN-WAIT-2 timeout, may reuse the
    /// port.)
    fn client_left(&self, id: FlowId) -> bool {
        self.flows.get(&id).is_some_and(|f| {
            f.phase == Phase::Open
                && matches!(
                    f.socket.get().state(),
                    tcp::State::CloseWait
                        | tcp::State::LastAck
                        | tcp::State::Closing
                        | tcp::State::TimeWait
                        | tcp::State::Closed
                )
        })
    }

    /// A new connection starts on the addresses of flow `old`, which the client has left
    /// ([`client_left`](Self::client_left)): `old` is reset (its RST cannot hurt the new
    /// connection: a client in SYN-SENT drops a RST that does not acknowledge its SYN) and
    /// reported ready, so the caller ends its service side; the addresses are free for a new
    /// flow. Without this the new SYN reached the old socket, which ignored it, and the
    /// client's connect() hung for as long as the old flow lingered.
    fn supersede(&mut self, old: FlowId) {
        let Some(flow) = self.flows.get_mut(&old) else {
            return;
        };
        tracing::debug!(src = %flow.src, dst = %flow.dst, "new SYN on the addresses of a connection the client had closed: that flow is reset");
        self.by_tuple.remove(&(flow.src, flow.dst));
        flow.socket.get_mut().abort();
        mark(&mut self.dirty, old, flow);
    }

    fn stray(&mut self, packet: &[u8]) {
        if self.strays.len() < self.config.max_rx_queue {
            self.strays.push_back(packet.to_vec());
        }
    }

    fn open_flow(&mut self, src: SocketAddr, dst: SocketAddr, now: Instant) -> bool {
        let addr = match dst.ip() {
            IpAddr::V4(v4) => IpAddress::Ipv4(v4),
            IpAddr::V6(v6) => IpAddress::Ipv6(v6),
        };
        let Some(mut flow_socket) = FlowSocket::new(self.config.tcp_buffer) else {
            tracing::warn!(%src, %dst, "no memory for the connection's buffers; refused");
            return false;
        };
        let socket = flow_socket.get_mut();
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(60)));
        socket.set_timeout(Some(smoltcp::time::Duration::from_micros(
            u64::try_from(self.config.idle_timeout.as_micros()).unwrap_or(u64::MAX),
        )));
        let endpoint = IpListenEndpoint {
            addr: Some(addr),
            port: dst.port(),
        };
        if socket.listen(endpoint).is_err() {
            return false;
        }
        let id = FlowId(self.next_id);
        self.next_id += 1;
        let expires = now + self.config.hold_timeout;
        self.flows.insert(
            id,
            Flow {
                socket: flow_socket,
                src,
                dst,
                created: now,
                opened: now,
                phase: Phase::Held,
                inbox: VecDeque::new(),
                inbox_bytes: 0,
                timer: Some(expires),
                dirty: false,
                ready: false,
                client_end: None,
                acked: None,
                touched: false,
                last_data: now,
            },
        );
        self.timers.insert((expires, id));
        self.by_tuple.insert((src, dst), id);
        self.new_flows.push_back(NewFlow { id, src, dst });
        true
    }

    /// The next flow opened since the last call. Its SYN is held: answer it with
    /// [`NetStack::accept_flow`] or [`NetStack::refuse_flow`].
    pub fn poll_new_flow(&mut self) -> Option<NewFlow> {
        self.new_flows.pop_front()
    }

    /// Completes a held flow's handshake (SYN-ACK at the next [`NetStack::poll`]). `false`
    /// if the flow is gone (its handshake expired while the caller dialed).
    pub fn accept_flow(&mut self, id: FlowId) -> bool {
        let Some(flow) = self.flows.get_mut(&id) else {
            return false;
        };
        if flow.phase == Phase::Held {
            flow.phase = Phase::Open;
            flow.opened = self.last_poll.max(flow.created);
            mark(&mut self.dirty, id, flow);
        }
        true
    }

    /// Refuses a held flow: its SYN is answered with RST and the flow is forgotten. An
    /// accepted flow is aborted instead.
    pub fn refuse_flow(&mut self, id: FlowId) {
        let held = self.flows.get(&id).map(|f| f.phase) == Some(Phase::Held);
        if !held {
            self.abort(id);
            return;
        }
        if let Some(flow) = self.remove_entry(id) {
            // With no socket listening, smoltcp answers each held SYN with RST.
            for p in flow.inbox {
                if self.strays.len() < self.config.max_rx_queue {
                    self.strays.push_back(p);
                }
            }
        }
    }

    /// The next flow whose state may have changed (data to read, room to write, closed, or
    /// gone because its held SYN expired): each such flow once, however many times it
    /// changed. An id may name a flow that is gone by now; the caller then drops its side.
    pub fn poll_ready(&mut self) -> Option<FlowId> {
        let id = self.ready.pop_front()?;
        if let Some(flow) = self.flows.get_mut(&id) {
            flow.ready = false;
        }
        Some(id)
    }

    /// `true` when [`NetStack::poll_ready`] has something.
    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The next intercepted UDP datagram.
    pub fn poll_datagram(&mut self) -> Option<Datagram> {
        self.datagrams.pop_front()
    }

    /// Queues a UDP datagram from `from` (an intercepted address) to the client `to`, as an
    /// IPv4 packet for the TUN. Returns `false` (and drops it, as UDP may) when it cannot be
    /// sent: IPv6, too large for the MTU, or the transmit queue is full.
    pub fn send_datagram(&mut self, from: SocketAddr, to: SocketAddr, payload: &[u8]) -> bool {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (from.ip(), to.ip()) else {
            return false;
        };
        let udp = UdpRepr {
            src_port: from.port(),
            dst_port: to.port(),
        };
        let udp_len = udp.header_len() + payload.len();
        let ip = Ipv4Repr {
            src_addr: src,
            dst_addr: dst,
            next_header: IpProtocol::Udp,
            payload_len: udp_len,
            hop_limit: 64,
        };
        let total = ip.buffer_len() + udp_len;
        if total > self.config.mtu || self.device.tx.len() >= self.config.max_tx_queue {
            return false;
        }
        let caps = ChecksumCapabilities::default();
        let mut buf = vec![0u8; total];
        let mut packet = Ipv4Packet::new_unchecked(&mut buf[..]);
        ip.emit(&mut packet, &caps);
        udp.emit(
            &mut UdpPacket::new_unchecked(packet.payload_mut()),
            &IpAddress::Ipv4(src),
            &IpAddress::Ipv4(dst),
            payload.len(),
            |b| b.copy_from_slice(payload),
            &caps,
        );
        self.device.tx.push_back(buf);
        true
    }

    /// Runs smoltcp for the flows that need it: those that received packets or were used
    /// since the last poll, and those whose timer is due; answers stray packets. Returns
    /// `true` when some flow became ready ([`NetStack::poll_ready`]).
    pub fn poll(&mut self, now: Instant) -> bool {
        self.last_poll = self.last_poll.max(now);
        let t = smol_now(self.epoch, now);
        let ready_before = self.ready.len();
        while !self.strays.is_empty() && self.device.tx.len() < self.config.max_tx_queue {
            let take = self.strays.len().min(64);
            self.device.rx.extend(self.strays.drain(..take));
            self.iface.poll(t, &mut self.device, &mut self.no_sockets);
            // Whatever smoltcp could not take (transmit queue full) waits for the next poll.
            while let Some(p) = self.device.rx.pop_back() {
                self.strays.push_front(p);
            }
        }
        while let Some(&(at, id)) = self.timers.first() {
            if at > now {
                break;
            }
            self.timers.remove(&(at, id));
            if let Some(flow) = self.flows.get_mut(&id) {
                flow.timer = None;
                mark(&mut self.dirty, id, flow);
            }
        }
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            self.poll_flow(id, now, t);
        }
        self.ready.len() > ready_before
    }

    fn poll_flow(&mut self, id: FlowId, now: Instant, t: smoltcp::time::Instant) {
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        flow.dirty = false;
        if flow.phase == Phase::Held {
            // Only the handshake timer runs for a held flow.
            if now.saturating_duration_since(flow.created) >= self.config.handshake_timeout {
                tracing::debug!(src = %flow.src, dst = %flow.dst, "held SYN expired");
                self.refuse_flow(id);
                push_ready(&mut self.ready, &mut self.flows, id);
            } else {
                let at = flow.created + self.config.handshake_timeout;
                set_timer(&mut self.timers, id, flow, Some(at));
            }
            return;
        }
        let handshaking = matches!(
            flow.socket.get().state(),
            tcp::State::Listen | tcp::State::SynReceived
        );
        if handshaking
            && now.saturating_duration_since(flow.created) > self.config.handshake_timeout
        {
            flow.socket.get_mut().abort();
        }
        if self.device.tx.len() >= self.config.max_tx_queue {
            // No room to answer: try again at the next poll.
            mark(&mut self.dirty, id, flow);
            return;
        }
        self.device.rx.extend(flow.inbox.drain(..));
        flow.inbox_bytes = 0;
        let sent_before = self.device.tx.len();
        self.iface.poll(t, &mut self.device, flow.socket.set_mut());
        // What this flow has acknowledged so far: the latest of its segments just queued.
        if let Some(ack) = self
            .device
            .tx
            .range(sent_before..)
            .rev()
            .find_map(|p| tcp_segment(p).filter(|s| s.ack).map(|s| s.ack_number))
        {
            flow.acked = Some(ack);
        }
        // Packets smoltcp did not take (the transmit queue filled up) stay this flow's.
        while let Some(p) = self.device.rx.pop_back() {
            flow.inbox_bytes += p.len();
            flow.inbox.push_front(p);
        }
        if !flow.inbox.is_empty() {
            mark(&mut self.dirty, id, flow);
        }
        let socket_timer = self
            .iface
            .poll_at(t, flow.socket.set())
            .map(|at| self.epoch + Duration::from_micros(at.total_micros().max(0) as u64));
        let socket = flow.socket.get();
        let handshake_timer =
            matches!(socket.state(), tcp::State::Listen | tcp::State::SynReceived)
                .then(|| flow.opened + self.config.handshake_timeout + Duration::from_millis(1));
        let release_timer = self.release_pages_if_quiet(id, now);
        let Some(flow) = self.flows.get_mut(&id) else {
            return;
        };
        let next = [socket_timer, handshake_timer, release_timer]
            .into_iter()
            .flatten()
            .min();
        set_timer(&mut self.timers, id, flow, next);
        push_ready(&mut self.ready, &mut self.flows, id);
    }

    /// Gives a flow's buffer pages back once its buffers have been empty, with nothing out of
    /// order, for [`RELEASE_AFTER`]; returns when to look again, if that time has not come.
    fn release_pages_if_quiet(&mut self, id: FlowId, now: Instant) -> Option<Instant> {
        let flow = self.flows.get_mut(&id)?;
        let socket = flow.socket.get();
        let quiet = flow.touched
            && socket.recv_queue() == 0
            && socket.send_queue() == 0
            && flow.nothing_out_of_order();
        if !quiet {
            return None;
        }
        let at = flow.last_data + RELEASE_AFTER;
        if now < at {
            return Some(at);
        }
        if flow.socket.release_pages() {
            flow.touched = false;
        }
        if flow.inbox.is_empty() {
            // Nor is the packet queue of its last burst kept.
            flow.inbox = VecDeque::new();
        }
        None
    }

    /// How long the caller may wait before the next [`NetStack::poll`] if nothing arrives;
    /// `None`: no timer is pending. Zero when some flow or stray packet waits for a poll.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        if !self.dirty.is_empty() || !self.strays.is_empty() {
            return Some(Duration::ZERO);
        }
        self.timers
            .first()
            .map(|(at, _)| at.saturating_duration_since(now))
    }

    /// The next packet to write to the TUN.
    pub fn pop_transmit(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    /// Packets waiting to be written to the TUN.
    pub fn transmit_queue_len(&self) -> usize {
        self.device.tx.len()
    }

    /// Ids of every flow (for tests and diagnostics: O(flows)).
    pub fn flow_ids(&self) -> Vec<FlowId> {
        let mut ids: Vec<FlowId> = self.flows.keys().copied().collect();
        ids.sort();
        ids
    }

    /// Pages of a flow's buffers that hold memory now (tests).
    #[cfg(test)]
    fn resident_buffer_pages(&self, id: FlowId) -> Option<usize> {
        self.flows.get(&id).map(|f| f.socket.resident_pages())
    }

    /// Number of flows.
    pub fn flow_count(&self) -> usize {
        self.flows.len()
    }

    /// Client and destination of a flow.
    pub fn endpoints(&self, id: FlowId) -> Option<(SocketAddr, SocketAddr)> {
        self.flows.get(&id).map(|f| (f.src, f.dst))
    }

    fn socket(&self, id: FlowId) -> Result<&tcp::Socket<'static>, FlowError> {
        let f = self.flows.get(&id).ok_or(FlowError::Unknown)?;
        Ok(f.socket.get())
    }

    /// The socket of `id`, marked for the next poll (using it may owe the client a segment).
    fn socket_mut(&mut self, id: FlowId) -> Result<&mut tcp::Socket<'static>, FlowError> {
        let f = self.flows.get_mut(&id).ok_or(FlowError::Unknown)?;
        if f.phase == Phase::Open {
            mark(&mut self.dirty, id, f);
        }
        Ok(f.socket.get_mut())
    }

    /// Bytes from the client, into `buf`; `Ok(0)` when none are buffered.
    pub fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, FlowError> {
        if !self.socket(id)?.can_recv() {
            return Ok(0);
        }
        let s = self.socket_mut(id)?;
        s.recv_slice(buf).map_err(|_| FlowError::NotOpen)
    }

    /// Hands `take` the client's buffered bytes (those contiguous in the socket's buffer);
    /// it returns how many it consumed and a result. `Ok(None)` when none are buffered, so
    /// `take` is called only with data.
    pub fn recv_with<R>(
        &mut self,
        id: FlowId,
        take: impl FnOnce(&[u8]) -> (usize, R),
    ) -> Result<Option<R>, FlowError> {
        if !self.socket(id)?.can_recv() {
            return Ok(None);
        }
        let s = self.socket_mut(id)?;
        s.recv(|data| {
            let (n, r) = take(data);
            (n.min(data.len()), r)
        })
        .map(Some)
        .map_err(|_| FlowError::NotOpen)
    }

    /// `true` once the client has sent FIN and every byte before it was read.
    pub fn client_finished(&self, id: FlowId) -> bool {
        self.socket(id).map_or(true, |s| {
            !s.can_recv()
                && matches!(
                    s.state(),
                    tcp::State::CloseWait
                        | tcp::State::LastAck
                        | tcp::State::Closing
                        | tcp::State::TimeWait
                        | tcp::State::Closed
                )
        })
    }

    /// Room for more bytes towards the client.
    pub fn send_capacity(&self, id: FlowId) -> usize {
        self.socket(id).map_or(0, |s| {
            if s.may_send() {
                s.send_capacity() - s.send_queue()
            } else {
                0
            }
        })
    }

    /// `true` while the client can still be sent data or is still being connected.
    pub fn may_send(&self, id: FlowId) -> bool {
        self.socket(id).is_ok_and(|s| {
            s.may_send() || matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived)
        })
    }

    /// Queues bytes towards the client; returns how many fit.
    pub fn send(&mut self, id: FlowId, data: &[u8]) -> Result<usize, FlowError> {
        let s = self.socket(id)?;
        if !s.may_send() {
            return if matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived) {
                Ok(0)
            } else {
                Err(FlowError::NotOpen)
            };
        }
        let now = self.last_poll;
        let f = self.flows.get_mut(&id).ok_or(FlowError::Unknown)?;
        let n = f
            .socket
            .get_mut()
            .send_slice(data)
            .map_err(|_| FlowError::NotOpen)?;
        if n > 0 {
            f.touch(now);
        }
        if f.phase == Phase::Open {
            mark(&mut self.dirty, id, f);
        }
        Ok(n)
    }

    /// Half-closes towards the client (FIN after the queued bytes).
    pub fn finish(&mut self, id: FlowId) {
        if let Ok(s) = self.socket_mut(id) {
            s.close();
        }
    }

    /// Resets the flow (RST to the client; a held flow's SYN is refused).
    pub fn abort(&mut self, id: FlowId) {
        if self.flows.get(&id).map(|f| f.phase) == Some(Phase::Held) {
            self.refuse_flow(id);
            return;
        }
        if let Ok(s) = self.socket_mut(id) {
            s.abort();
        }
    }

    /// `true` once the flow is over in both directions (closed, reset or in TIME-WAIT) and the
    /// stack owes the client nothing more (an abort's RST goes out at the next poll, so an
    /// aborted flow counts as closed only after that). A refused or unknown flow is closed.
    pub fn is_closed(&self, id: FlowId) -> bool {
        let Some(f) = self.flows.get(&id) else {
            return true;
        };
        if f.phase == Phase::Held {
            return false;
        }
        let s = f.socket.get();
        match s.state() {
            tcp::State::TimeWait => true,
            tcp::State::Closed => s.remote_endpoint().is_none() && !f.dirty,
            _ => false,
        }
    }

    /// Forgets a flow and frees its socket.
    pub fn remove(&mut self, id: FlowId) {
        self.remove_entry(id);
    }

    fn remove_entry(&mut self, id: FlowId) -> Option<Flow> {
        let flow = self.flows.remove(&id)?;
        let tuple = (flow.src, flow.dst);
        // A superseded flow's addresses may belong to a newer flow by now.
        if self.by_tuple.get(&tuple) == Some(&id) {
            self.by_tuple.remove(&tuple);
        }
        if let Some(at) = flow.timer {
            self.timers.remove(&(at, id));
        }
        // Stale entries in `dirty` and `ready` are skipped when met.
        Some(flow)
    }
}

/// Queues `id` for the next poll (once).
fn mark(dirty: &mut Vec<FlowId>, id: FlowId, flow: &mut Flow) {
    if !flow.dirty {
        flow.dirty = true;
        dirty.push(id);
    }
}

fn push_ready(ready: &mut VecDeque<FlowId>, flows: &mut HashMap<FlowId, Flow>, id: FlowId) {
    match flows.get_mut(&id) {
        Some(f) if !f.ready => {
            f.ready = true;
            ready.push_back(id);
        }
        Some(_) => {}
        // Refused and gone: report it once so the caller can drop its side.
        None => ready.push_back(id),
    }
}

fn set_timer(
    timers: &mut BTreeSet<(Instant, FlowId)>,
    id: FlowId,
    flow: &mut Flow,
    at: Option<Instant>,
) {
    if flow.timer == at {
        return;
    }
    if let Some(old) = flow.timer.take() {
        timers.remove(&(old, id));
    }
    if let Some(at) = at {
        timers.insert((at, id));
        flow.timer = Some(at);
    }
}

fn smol_now(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// The addresses and flags of a TCP segment (IPv4 or IPv6, unfragmented).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Segment {
    src: SocketAddr,
    dst: SocketAddr,
    syn: bool,
    ack: bool,
    rst: bool,
    /// Sequence number.
    seq: u32,
    /// Acknowledgement number (meaningful with `ack`).
    ack_number: u32,
    /// Bytes of payload.
    payload: u32,
    /// Sequence space taken: payload plus one each for SYN and FIN.
    len: u32,
}

impl Segment {
    /// A connection request: SYN without ACK or RST.
    fn is_syn(&self) -> bool {
        self.syn && !self.ack && !self.rst
    }
}

fn tcp_segment(packet: &[u8]) -> Option<Segment> {
    let (src_ip, dst_ip, payload): (IpAddr, IpAddr, &[u8]) = match packet.first()? >> 4 {
        4 => {
            let ip = Ipv4Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 || ip.more_frags() {
                return None;
            }
            let payload = packet.get(ip.header_len() as usize..usize::from(ip.total_len()))?;
            (ip.src_addr().into(), ip.dst_addr().into(), payload)
        }
        6 => {
            let ip = Ipv6Packet::new_checked(packet).ok()?;
            if ip.next_header() != IpProtocol::Tcp {
                return None;
            }
            let payload = packet.get(40..40 + usize::from(ip.payload_len()))?;
            (ip.src_addr().into(), ip.dst_addr().into(), payload)
        }
        _ => return None,
    };
    let tcp = TcpPacket::new_checked(payload).ok()?;
    let data = u32::try_from(payload.len().saturating_sub(usize::from(tcp.header_len()))).ok()?;
    Some(Segment {
        src: SocketAddr::new(src_ip, tcp.src_port()),
        dst: SocketAddr::new(dst_ip, tcp.dst_port()),
        syn: tcp.syn(),
        ack: tcp.ack(),
        rst: tcp.rst(),
        seq: tcp.seq_number().0 as u32,
        ack_number: tcp.ack_number().0 as u32,
        payload: data,
        len: data + u32::from(tcp.syn()) + u32::from(tcp.fin()),
    })
}

/// Source and destination of a TCP SYN (without ACK or RST), IPv4 or IPv6, if `packet` is one.
pub fn tcp_syn(packet: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let seg = tcp_segment(packet)?;
    seg.is_syn().then_some((seg.src, seg.dst))
}

/// The datagram in `packet`, if it is a well-formed, unfragmented IPv4 UDP packet.
pub fn udp_datagram(packet: &[u8]) -> Option<Datagram> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.next_header() != IpProtocol::Udp || ip.frag_offset() != 0 || ip.more_frags() {
        return None;
    }
    let caps = ChecksumCapabilities::default();
    Ipv4Repr::parse(&ip, &caps).ok()?;
    let (src_ip, dst_ip) = (ip.src_addr(), ip.dst_addr());
    let udp = UdpPacket::new_checked(ip.payload()).ok()?;
    UdpRepr::parse(
        &udp,
        &IpAddress::Ipv4(src_ip),
        &IpAddress::Ipv4(dst_ip),
        &caps,
    )
    .ok()?;
    Some(Datagram {
        src: SocketAddr::new(IpAddr::V4(src_ip), udp.src_port()),
        dst: SocketAddr::new(IpAddr::V4(dst_ip), udp.dst_port()),
        payload: udp.payload().to_vec(),
    })
}

/// A device made of two packet queues.
struct QueueDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    mtu: usize,
    max_tx: usize,
}

struct RxToken(Vec<u8>);
struct TxToken<'a>(&'a mut VecDeque<Vec<u8>>);

impl phy::RxToken for RxToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut buf = vec![0; len];
        let r = f(&mut buf);
        self.0.push_back(buf);
        r
    }
}

impl Device for QueueDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(
        &mut self,
        _timestamp: smoltcp::time::Instant,
    ) -> Option<(Self::RxToken<'_>, Self::TxToken<'_>)> {
        // A received packet may need an answer; only take it when there is room for one.
        if self.tx.len() >= self.max_tx {
            return None;
        }
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken(&mut self.tx)))
    }

    fn transmit(&mut self, _timestamp: smoltcp::time::Instant) -> Option<Self::TxToken<'_>> {
        if self.tx.len() >= self.max_tx {
            return None;
        }
        Some(TxToken(&mut self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        caps
    }
}

#[cfg(test)]
mod tests;
