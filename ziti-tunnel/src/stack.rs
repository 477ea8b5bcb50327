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
//! smoltcp cannot listen on every address and port, so each TCP SYN that the caller's classifier
//! accepts gets its own socket, listening on exactly the SYN's destination (smoltcp runs in
//! "any IP" mode). SYNs it refuses, and segments of unknown flows, are answered with RST by
//! smoltcp itself, so a client fails fast. Everything is bounded: the number of flows, each
//! flow's buffers, and the queues of packets in and out.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::ChecksumCapabilities;
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{
    HardwareAddress, IpAddress, IpCidr, IpListenEndpoint, IpProtocol, Ipv4Packet, Ipv4Repr,
    TcpPacket, UdpPacket, UdpRepr,
};
use ziti_sdk::services::Protocol;

/// Limits and addresses of a [`NetStack`].
#[derive(Debug, Clone)]
pub struct StackConfig {
    /// The stack's own address and prefix (the TUN network). Replies to the kernel leave from the
    /// intercepted destination addresses; this one only anchors routing.
    pub address: Ipv4Addr,
    /// Prefix length of [`StackConfig::address`].
    pub prefix: u8,
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
            mtu: 9000,
            // 2048 flows x 2 x 128 KiB bounds the stack's socket memory at 512 MiB.
            tcp_buffer: 128 * 1024,
            max_flows: 2048,
            max_rx_queue: 1024,
            max_tx_queue: 1024,
            handshake_timeout: Duration::from_secs(20),
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

struct FlowEntry {
    handle: SocketHandle,
    src: SocketAddr,
    dst: SocketAddr,
    created: Instant,
}

/// The smoltcp interface, its sockets and the packet queues.
pub struct NetStack {
    config: StackConfig,
    epoch: Instant,
    iface: Interface,
    sockets: SocketSet<'static>,
    device: QueueDevice,
    flows: HashMap<FlowId, FlowEntry>,
    by_tuple: HashMap<(SocketAddr, SocketAddr), FlowId>,
    next_id: u64,
    new_flows: VecDeque<NewFlow>,
    datagrams: VecDeque<Datagram>,
}

impl std::fmt::Debug for NetStack {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NetStack")
            .field("flows", &self.flows.len())
            .field("rx_queue", &self.device.rx.len())
            .field("tx_queue", &self.device.tx.len())
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
            // One address: the vector has room for it.
            let _ = addrs.push(IpCidr::new(IpAddress::Ipv4(own), config.prefix));
        });
        // Capacity for one default route always exists.
        let _ = iface.routes_mut().add_default_ipv4_route(own);
        iface.set_any_ip(true);
        NetStack {
            config,
            epoch: now,
            iface,
            sockets: SocketSet::new(Vec::new()),
            device,
            flows: HashMap::new(),
            by_tuple: HashMap::new(),
            next_id: 1,
            new_flows: VecDeque::new(),
            datagrams: VecDeque::new(),
        }
    }

    /// Feeds one IP packet read from the TUN. A TCP SYN to a destination for which `accept`
    /// returns `true` opens a new flow (reported by [`NetStack::poll_new_flow`]). Malformed
    /// packets are dropped.
    pub fn receive_packet(
        &mut self,
        packet: &[u8],
        now: Instant,
        mut accept: impl FnMut(Protocol, SocketAddr) -> bool,
    ) {
        if packet.len() > self.config.mtu || self.device.rx.len() >= self.config.max_rx_queue {
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
        if let Some((src, dst)) = tcp_syn(packet)
            && !self.by_tuple.contains_key(&(src, dst))
            && self.flows.len() < self.config.max_flows
            && accept(Protocol::Tcp, dst)
        {
            self.open_flow(src, dst, now);
        }
        self.device.rx.push_back(packet.to_vec());
    }

    fn open_flow(&mut self, src: SocketAddr, dst: SocketAddr, now: Instant) {
        let IpAddr::V4(dst_ip) = dst.ip() else {
            return;
        };
        let buf = self.config.tcp_buffer;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buf]),
            tcp::SocketBuffer::new(vec![0; buf]),
        );
        socket.set_nagle_enabled(false);
        socket.set_ack_delay(None);
        socket.set_congestion_control(tcp::CongestionControl::Cubic);
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_secs(60)));
        socket.set_timeout(Some(smoltcp::time::Duration::from_micros(
            u64::try_from(self.config.idle_timeout.as_micros()).unwrap_or(u64::MAX),
        )));
        let endpoint = IpListenEndpoint {
            addr: Some(IpAddress::Ipv4(dst_ip)),
            port: dst.port(),
        };
        if socket.listen(endpoint).is_err() {
            return;
        }
        let handle = self.sockets.add(socket);
        let id = FlowId(self.next_id);
        self.next_id += 1;
        self.flows.insert(
            id,
            FlowEntry {
                handle,
                src,
                dst,
                created: now,
            },
        );
        self.by_tuple.insert((src, dst), id);
        self.new_flows.push_back(NewFlow { id, src, dst });
    }

    /// The next flow opened since the last call.
    pub fn poll_new_flow(&mut self) -> Option<NewFlow> {
        self.new_flows.pop_front()
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

    /// Runs the stack: processes queued packets, timers and socket output. Returns `true` when
    /// some socket may have changed state.
    pub fn poll(&mut self, now: Instant) -> bool {
        // Expire first, so that the resets go out in this very poll.
        self.expire_handshakes(now);
        let t = smol_now(self.epoch, now);
        matches!(
            self.iface.poll(t, &mut self.device, &mut self.sockets),
            smoltcp::iface::PollResult::SocketStateChanged
        )
    }

    fn expire_handshakes(&mut self, now: Instant) {
        let limit = self.config.handshake_timeout;
        let stale: Vec<FlowId> = self
            .flows
            .iter()
            .filter(|(_, f)| {
                now.saturating_duration_since(f.created) > limit
                    && matches!(
                        self.sockets.get::<tcp::Socket>(f.handle).state(),
                        tcp::State::Listen | tcp::State::SynReceived
                    )
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stale {
            if let Some(f) = self.flows.get(&id) {
                self.sockets.get_mut::<tcp::Socket>(f.handle).abort();
            }
        }
    }

    /// How long the caller may wait before the next [`NetStack::poll`] if nothing arrives;
    /// `None`: no timer is pending.
    pub fn poll_delay(&mut self, now: Instant) -> Option<Duration> {
        let t = smol_now(self.epoch, now);
        let timers = self
            .iface
            .poll_delay(t, &self.sockets)
            .map(|d| Duration::from_micros(d.total_micros()));
        // Flows waiting for their handshake expire on our own clock.
        let handshake = self
            .flows
            .values()
            .filter(|f| {
                matches!(
                    self.sockets.get::<tcp::Socket>(f.handle).state(),
                    tcp::State::Listen | tcp::State::SynReceived
                )
            })
            .map(|f| {
                (f.created + self.config.handshake_timeout).saturating_duration_since(now)
                    + Duration::from_millis(1)
            })
            .min();
        match (timers, handshake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The next packet to write to the TUN.
    pub fn pop_transmit(&mut self) -> Option<Vec<u8>> {
        self.device.tx.pop_front()
    }

    /// Packets waiting to be written to the TUN.
    pub fn transmit_queue_len(&self) -> usize {
        self.device.tx.len()
    }

    /// Ids of every flow.
    pub fn flow_ids(&self) -> Vec<FlowId> {
        let mut ids: Vec<FlowId> = self.flows.keys().copied().collect();
        ids.sort();
        ids
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
        Ok(self.sockets.get::<tcp::Socket>(f.handle))
    }

    fn socket_mut(&mut self, id: FlowId) -> Result<&mut tcp::Socket<'static>, FlowError> {
        let f = self.flows.get(&id).ok_or(FlowError::Unknown)?;
        Ok(self.sockets.get_mut::<tcp::Socket>(f.handle))
    }

    /// Bytes from the client, into `buf`; `Ok(0)` when none are buffered.
    pub fn recv(&mut self, id: FlowId, buf: &mut [u8]) -> Result<usize, FlowError> {
        let s = self.socket_mut(id)?;
        if !s.can_recv() {
            return Ok(0);
        }
        s.recv_slice(buf).map_err(|_| FlowError::NotOpen)
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
        let s = self.socket_mut(id)?;
        if !s.may_send() {
            return if matches!(s.state(), tcp::State::Listen | tcp::State::SynReceived) {
                Ok(0)
            } else {
                Err(FlowError::NotOpen)
            };
        }
        s.send_slice(data).map_err(|_| FlowError::NotOpen)
    }

    /// Half-closes towards the client (FIN after the queued bytes).
    pub fn finish(&mut self, id: FlowId) {
        if let Ok(s) = self.socket_mut(id) {
            s.close();
        }
    }

    /// Resets the flow (RST to the client).
    pub fn abort(&mut self, id: FlowId) {
        if let Ok(s) = self.socket_mut(id) {
            s.abort();
        }
    }

    /// `true` once the flow is over in both directions (closed, reset or in TIME-WAIT) and the
    /// stack owes the client nothing more (an abort's RST goes out at the next poll, so an
    /// aborted flow counts as closed only after that).
    pub fn is_closed(&self, id: FlowId) -> bool {
        self.socket(id).map_or(true, |s| match s.state() {
            tcp::State::TimeWait => true,
            tcp::State::Closed => s.remote_endpoint().is_none(),
            _ => false,
        })
    }

    /// Forgets a flow and frees its socket.
    pub fn remove(&mut self, id: FlowId) {
        if let Some(f) = self.flows.remove(&id) {
            self.by_tuple.remove(&(f.src, f.dst));
            self.sockets.remove(f.handle);
        }
    }
}

fn smol_now(epoch: Instant, now: Instant) -> smoltcp::time::Instant {
    let micros = now.saturating_duration_since(epoch).as_micros();
    smoltcp::time::Instant::from_micros(i64::try_from(micros).unwrap_or(i64::MAX))
}

/// Source and destination of an IPv4 TCP SYN (without ACK), if `packet` is one.
pub fn tcp_syn(packet: &[u8]) -> Option<(SocketAddr, SocketAddr)> {
    let ip = Ipv4Packet::new_checked(packet).ok()?;
    if ip.next_header() != IpProtocol::Tcp || ip.frag_offset() != 0 || ip.more_frags() {
        return None;
    }
    let tcp = TcpPacket::new_checked(ip.payload()).ok()?;
    if !tcp.syn() || tcp.ack() || tcp.rst() {
        return None;
    }
    let src = SocketAddr::new(IpAddr::V4(ip.src_addr()), tcp.src_port());
    let dst = SocketAddr::new(IpAddr::V4(ip.dst_addr()), tcp.dst_port());
    Some((src, dst))
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
