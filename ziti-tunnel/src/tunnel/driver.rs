//! The packet task: TUN in and out, the stack, new flows and the flows' channels.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use ziti_dns::DnsTable;
use ziti_sdk::context::DialOptions;
use ziti_sdk::services::Protocol;
use ziti_sdk::{ServiceEvent, ZitiContext, error_chain};

use super::hosting::Hosting;
use super::relay::{Down, FlowPipe, FlowWaker, forward_up, relay_flow, relay_udp};
use super::{
    CHUNK, DatagramDown, FLOW_QUEUE, MAX_UDP_FLOWS, READ_BATCH, TunnelError, TunnelIdentity,
    UDP_QUEUE,
};
use crate::intercept::{InterceptTable, TableChange};
use crate::netlink::Netlink;
use crate::stack::{FlowId, NetStack, NewFlow};

pub(super) struct Driver {
    pub(super) tun: tun_rs::AsyncDevice,
    pub(super) if_index: u32,
    pub(super) netlink: Netlink,
    pub(super) stack: NetStack,
    pub(super) table: InterceptTable,
    /// Which identity dials each intercepted service.
    pub(super) owner: HashMap<String, usize>,
    pub(super) routes: BTreeSet<(IpAddr, u8)>,
    pub(super) dns_table: DnsTable,
    pub(super) identities: Vec<TunnelIdentity>,
    pub(super) flows: HashMap<FlowId, FlowPipe>,
    /// Datagrams towards each UDP flow's relay, keyed by (client, intercepted address).
    pub(super) udp_flows: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Bytes>>,
    pub(super) udp_down_tx: mpsc::Sender<DatagramDown>,
    /// Flows whose relay has news (data, end, dial result); each id at most once at a time.
    pub(super) wake_tx: mpsc::UnboundedSender<FlowId>,
    pub(super) wake_rx: mpsc::UnboundedReceiver<FlowId>,
    pub(super) host_services: bool,
}

impl Driver {
    pub(super) async fn run(
        &mut self,
        mut events: mpsc::Receiver<(usize, ServiceEvent)>,
        mut udp_down: mpsc::Receiver<DatagramDown>,
        hosts: &mut Hosting,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), TunnelError> {
        tokio::pin!(shutdown);
        let mut packet = vec![0u8; 65536];
        let mut events_open = true;
        loop {
            let now = Instant::now();
            self.stack.poll(now);
            self.start_new_flows();
            self.relay_datagrams();
            // Only the flows something happened to: woken by their relay or by the stack.
            while let Ok(id) = self.wake_rx.try_recv() {
                self.service_flow(id);
            }
            while let Some(id) = self.stack.poll_ready() {
                self.service_flow(id);
            }
            self.stack.poll(now);
            self.flush_tun().await?;

            let delay = if self.stack.has_ready() {
                Duration::ZERO
            } else {
                self.stack
                    .poll_delay(Instant::now())
                    .unwrap_or(Duration::from_secs(3600))
            };
            tokio::select! {
                r = self.tun.recv(&mut packet) => {
                    let n = r.map_err(TunnelError::TunIo)?;
                    self.ingest(&packet[..n]);
                    for _ in 1..READ_BATCH {
                        match self.tun.try_recv(&mut packet) {
                            Ok(n) => self.ingest(&packet[..n]),
                            Err(_) => break,
                        }
                    }
                }
                Some(id) = self.wake_rx.recv() => self.service_flow(id),
                Some((from, to, payload)) = udp_down.recv() => {
                    if !self.stack.send_datagram(from, to, &payload) {
                        tracing::debug!(%from, %to, len = payload.len(), "dropped a UDP reply");
                    }
                }
                _ = tokio::time::sleep(delay) => {}
                ev = events.recv(), if events_open => match ev {
                    Some((index, ev)) => self.on_service_event(index, ev, hosts).await,
                    None => events_open = false,
                },
                _ = &mut shutdown => return Ok(()),
            }
        }
    }

    fn ingest(&mut self, packet: &[u8]) {
        let table = &self.table;
        let dns = &self.dns_table;
        self.stack
            .receive_packet(packet, Instant::now(), |proto, dst| {
                let name = dns.lookup_ip(dst.ip());
                table.find(proto, dst, name.as_deref()).is_some()
            });
    }

    async fn flush_tun(&mut self) -> Result<(), TunnelError> {
        while let Some(p) = self.stack.pop_transmit() {
            // A packet the kernel refuses (e.g. ENOBUFS under load) is dropped like on any
            // link; TCP retransmits it. Only a device that is gone ends the tunnel.
            if let Err(e) = self.tun.send(&p).await {
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::BrokenPipe
                ) || e.raw_os_error() == Some(libc::EBADFD)
                {
                    return Err(TunnelError::TunIo(e));
                }
                tracing::debug!(error = %error_chain(&e), "dropped a packet the TUN refused");
            }
        }
        Ok(())
    }

    fn start_new_flows(&mut self) {
        while let Some(flow) = self.stack.poll_new_flow() {
            self.start_flow(flow);
        }
    }

    /// Hands intercepted datagrams to their flows' relays, starting a relay for a new flow.
    fn relay_datagrams(&mut self) {
        while let Some(d) = self.stack.poll_datagram() {
            let key = (d.src, d.dst);
            let mut payload = Bytes::from(d.payload);
            if let Some(tx) = self.udp_flows.get(&key) {
                match tx.try_send(payload) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => continue,
                    Err(mpsc::error::TrySendError::Closed(p)) => {
                        // The relay went idle and ended: start a new one.
                        self.udp_flows.remove(&key);
                        payload = p;
                    }
                }
            }
            if self.udp_flows.len() >= MAX_UDP_FLOWS {
                self.udp_flows.retain(|_, tx| !tx.is_closed());
                if self.udp_flows.len() >= MAX_UDP_FLOWS {
                    continue;
                }
            }
            let Some((service, ctx, opts)) = self.dial_target(Protocol::Udp, d.dst) else {
                continue;
            };
            let (tx, rx) = mpsc::channel(UDP_QUEUE);
            if tx.try_send(payload).is_err() {
                continue;
            }
            self.udp_flows.insert(key, tx);
            tracing::debug!(service, src = %d.src, dst = %d.dst, "intercepted UDP");
            tokio::spawn(relay_udp(
                ctx,
                service,
                opts,
                (d.src, d.dst),
                rx,
                self.udp_down_tx.clone(),
            ));
        }
    }

    /// The service, identity and dial options for a flow to `dst`, if it is intercepted.
    fn dial_target(
        &self,
        protocol: Protocol,
        dst: SocketAddr,
    ) -> Option<(String, ZitiContext, DialOptions)> {
        let hostname = self.dns_table.lookup_ip(dst.ip());
        let intercept = self.table.find(protocol, dst, hostname.as_deref())?;
        let ctx = self
            .owner
            .get(&intercept.service)
            .and_then(|i| self.identities.get(*i))
            .map(|i| i.context.clone())?;
        let opts = DialOptions {
            identity: intercept.dial_identity_for(protocol, dst, hostname.as_deref()),
            timeout: Some(intercept.connect_timeout),
            ..DialOptions::default()
        };
        tracing::debug!(service = %intercept.service, %dst, host = ?hostname, ?protocol, "intercepted");
        Some((intercept.service.clone(), ctx, opts))
    }

    fn start_flow(&mut self, flow: NewFlow) {
        let Some((service, ctx, opts)) = self.dial_target(Protocol::Tcp, flow.dst) else {
            self.stack.refuse_flow(flow.id);
            return;
        };
        let (up_tx, up_rx) = mpsc::channel(FLOW_QUEUE);
        let (down_tx, down_rx) = mpsc::channel(FLOW_QUEUE);
        let waker = FlowWaker::new(flow.id, self.wake_tx.clone());
        self.flows.insert(
            flow.id,
            FlowPipe {
                up: Some(up_tx),
                down: down_rx,
                pending: None,
                down_done: false,
                dialed: false,
                waker: waker.clone(),
            },
        );
        // The SYN stays unanswered until the dial succeeds.
        tokio::spawn(relay_flow(ctx, service, opts, up_rx, down_tx, waker));
    }

    /// Moves bytes between one flow's socket and its channels; reaps it when finished.
    fn service_flow(&mut self, id: FlowId) {
        let mut buf = [0u8; CHUNK];
        let Some(pipe) = self.flows.get_mut(&id) else {
            // A flow whose service could not be matched: already refused.
            if self.stack.is_closed(id) {
                self.stack.remove(id);
            }
            return;
        };
        pipe.waker.clear();
        if !pipe.dialed {
            // Held SYN: only the dial's outcome matters.
            match pipe.down.try_recv() {
                Ok(Down::Dialed) => {
                    pipe.dialed = true;
                    if !self.stack.accept_flow(id) {
                        // The handshake expired while dialing: the client gave up.
                        self.flows.remove(&id);
                        return;
                    }
                }
                Ok(Down::Abort) | Err(mpsc::error::TryRecvError::Disconnected) => {
                    // The dial failed (logged with the service and the reason): RST the SYN,
                    // so the application's connect() is refused.
                    self.stack.refuse_flow(id);
                    self.flows.remove(&id);
                    return;
                }
                Ok(Down::Data(_) | Down::Fin) | Err(mpsc::error::TryRecvError::Empty) => {
                    if self.stack.endpoints(id).is_none() {
                        // Expired while held.
                        self.flows.remove(&id);
                    }
                    return;
                }
            }
        }
        // Client -> service, only as far as the channel has room (else the window closes).
        if let Some(tx) = &pipe.up
            && !forward_up(&mut self.stack, id, tx, &mut buf)
        {
            pipe.up = None;
        }
        if pipe.up.is_some() && self.stack.client_finished(id) {
            pipe.up = None; // end-of-stream for the relay: it half-closes the Ziti side
        }
        // Service -> client, only as far as the socket has room.
        while !pipe.down_done {
            if let Some(mut chunk) = pipe.pending.take() {
                match self.stack.send(id, &chunk) {
                    Ok(n) if n < chunk.len() => {
                        pipe.pending = Some(chunk.split_off(n));
                        break;
                    }
                    Ok(_) => {}
                    Err(_) => {
                        pipe.down_done = true;
                        break;
                    }
                }
            }
            if self.stack.send_capacity(id) == 0 {
                break;
            }
            match pipe.down.try_recv() {
                Ok(Down::Data(b)) => {
                    tracing::trace!(?id, n = b.len(), "service -> client");
                    pipe.pending = Some(b)
                }
                Ok(Down::Fin) => {
                    tracing::trace!(?id, "service finished sending");
                    self.stack.finish(id);
                    pipe.down_done = true;
                }
                Ok(Down::Dialed) => {}
                Ok(Down::Abort) | Err(mpsc::error::TryRecvError::Disconnected) => {
                    self.stack.abort(id);
                    pipe.down_done = true;
                }
                Err(mpsc::error::TryRecvError::Empty) => break,
            }
        }
        if self.stack.is_closed(id) {
            self.stack.remove(id);
            self.flows.remove(&id);
        }
    }

    async fn on_service_event(&mut self, index: usize, event: ServiceEvent, hosts: &mut Hosting) {
        let identity = self
            .identities
            .get(index)
            .map(|i| i.name.clone())
            .unwrap_or_default();
        let service = event.service().clone();
        match &event {
            ServiceEvent::Added(s) | ServiceEvent::Changed(s) => {
                tracing::info!(identity, service = %s.name, dial = s.permissions.dial, bind = s.permissions.bind, "service available");
                let owned_elsewhere = self.owner.get(&s.name).is_some_and(|owner| *owner != index);
                if !owned_elsewhere && self.table.apply_service(s) == TableChange::Changed {
                    if self.table.get(&s.name).is_some() {
                        self.owner.insert(s.name.clone(), index);
                    } else {
                        self.owner.remove(&s.name);
                    }
                    self.sync_names_and_routes().await;
                }
                if self.host_services
                    && let Some(ctx) = self.identities.get(index).map(|i| i.context.clone())
                {
                    hosts.apply(ctx, index, s);
                }
            }
            ServiceEvent::Removed(s) => {
                tracing::info!(identity, service = %s.name, "service no longer available");
                if self.owner.get(&s.name) == Some(&index) {
                    self.owner.remove(&s.name);
                    if self.table.remove(&s.name) == TableChange::Changed {
                        self.sync_names_and_routes().await;
                    }
                }
                hosts.stop(index, &service.name);
            }
        }
    }
}
