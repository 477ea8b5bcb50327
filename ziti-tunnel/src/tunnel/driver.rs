//! The packet task: TUN in and out, the stack, new flows and the flows' channels; identities
//! and their service events; requests from the [`TunnelHandle`](super::TunnelHandle).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use ziti_dns::DnsTable;
use ziti_sdk::context::DialOptions;
use ziti_sdk::services::Protocol;
use ziti_sdk::{Service, ServiceEvent, ZitiContext, error_chain};

use super::handle::{Control, TunnelStats};
use super::hosting::Hosting;
use super::relay::{FlowPipe, dial_flow, relay_udp};
use super::status::{
    Counters, FlowStatus, IdentityStatus, InterceptStatus, RouterStatus, ServiceStatus,
    TunnelStatus,
};
use super::{
    DatagramDown, MAX_UDP_FLOWS, READ_BATCH, TunnelError, TunnelIdentity, UDP_PRUNE, UDP_QUEUE,
};
use crate::app_data::FlowAddrs;
use crate::intercept::{InterceptTable, TableChange};
use crate::netlink::Netlink;
use crate::stack::{FlowId, NetStack, NewFlow};

/// A service event of the identity with this key.
pub(super) type IdentityEvent = (usize, ServiceEvent);

/// An identity of the running tunnel.
pub(super) struct Member {
    identity: TunnelIdentity,
    /// Forwards its service events to the driver; aborting it stops the controller polls.
    watcher: JoinHandle<()>,
    /// Its services as last reported, so another identity can take over an intercept when this
    /// one loses it.
    services: HashMap<String, Service>,
}

pub(super) struct Driver {
    pub(super) tun: tun_rs::AsyncDevice,
    pub(super) if_index: u32,
    pub(super) netlink: Netlink,
    pub(super) stack: NetStack,
    pub(super) table: InterceptTable,
    /// Which identity (key in `identities`) dials each intercepted service.
    pub(super) owner: HashMap<String, usize>,
    pub(super) routes: BTreeSet<(IpAddr, u8)>,
    pub(super) dns_table: DnsTable,
    /// The identities by key; keys are never reused, so events still queued from a removed
    /// identity find no one.
    pub(super) identities: BTreeMap<usize, Member>,
    pub(super) next_identity: usize,
    /// For the service watchers of identities added later.
    pub(super) events_tx: mpsc::Sender<IdentityEvent>,
    pub(super) refresh_interval: Duration,
    pub(super) flows: HashMap<FlowId, FlowPipe>,
    /// Datagrams towards each UDP flow's relay, keyed by (client, intercepted address).
    pub(super) udp_flows: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Bytes>>,
    pub(super) udp_down_tx: mpsc::Sender<DatagramDown>,
    /// Flows whose relay has news (data, end, dial result); each id at most once at a time.
    pub(super) wake_tx: mpsc::UnboundedSender<FlowId>,
    pub(super) wake_rx: mpsc::UnboundedReceiver<FlowId>,
    pub(super) host_services: bool,
    pub(super) hosts: Hosting,
    /// The counters as last published.
    pub(super) stats: watch::Sender<TunnelStats>,
    pub(super) published: TunnelStats,
    /// Bytes and dial outcomes since start, shared with the relays.
    pub(super) counters: Arc<Counters>,
}

impl Driver {
    pub(super) async fn run(
        &mut self,
        mut events: mpsc::Receiver<IdentityEvent>,
        mut udp_down: mpsc::Receiver<DatagramDown>,
        mut control: mpsc::Receiver<Control>,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<(), TunnelError> {
        tokio::pin!(shutdown);
        let mut packet = vec![0u8; 65536];
        let mut next_prune = Instant::now() + UDP_PRUNE;
        loop {
            let now = Instant::now();
            if now >= next_prune {
                // Relays end by themselves when idle; their entries go here, not one by one.
                self.udp_flows.retain(|_, tx| !tx.is_closed());
                next_prune = now + UDP_PRUNE;
            }
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
            self.publish_stats();

            let delay = if self.stack.has_ready() {
                Duration::ZERO
            } else {
                let now = Instant::now();
                let stack = self
                    .stack
                    .poll_delay(now)
                    .unwrap_or(Duration::from_secs(3600));
                match self.udp_flows.is_empty() {
                    true => stack,
                    false => stack.min(next_prune.saturating_duration_since(now)),
                }
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
                // Never closed: the driver holds a sender for identities added later.
                Some((index, ev)) = events.recv() => self.on_service_event(index, ev).await,
                Some(request) = control.recv() => self.on_control(request).await,
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
            let Some((service, ctx, opts)) = self.dial_target(Protocol::Udp, d.src, d.dst) else {
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
                self.counters.clone(),
            ));
        }
    }

    /// The service, identity and dial options (with the flow's app data) for a flow from
    /// `src` to `dst`, if it is intercepted.
    fn dial_target(
        &self,
        protocol: Protocol,
        src: SocketAddr,
        dst: SocketAddr,
    ) -> Option<(String, ZitiContext, DialOptions)> {
        let hostname = self.dns_table.lookup_ip(dst.ip());
        let intercept = self.table.find(protocol, dst, hostname.as_deref())?;
        let ctx = self
            .owner
            .get(&intercept.service)
            .and_then(|i| self.identities.get(i))
            .map(|m| m.identity.context.clone())?;
        let flow = FlowAddrs {
            protocol,
            src,
            dst,
            hostname,
        };
        let opts = DialOptions {
            identity: intercept.dial_identity_for(&flow),
            timeout: Some(intercept.connect_timeout),
            app_data: Some(intercept.app_data_for(&flow).to_json()),
            ..DialOptions::default()
        };
        tracing::debug!(service = %intercept.service, %dst, host = ?flow.hostname, ?protocol, "intercepted");
        Some((intercept.service.clone(), ctx, opts))
    }

    fn start_flow(&mut self, flow: NewFlow) {
        let Some((service, ctx, opts)) = self.dial_target(Protocol::Tcp, flow.src, flow.dst) else {
            tracing::debug!(src = %flow.src, dst = %flow.dst, "no intercept matches; connection refused");
            self.stack.refuse_flow(flow.id);
            return;
        };
        let (pipe, dialed, waker) = FlowPipe::new(&flow, service.clone(), self.wake_tx.clone());
        self.flows.insert(flow.id, pipe);
        // The SYN stays unanswered until the dial succeeds.
        tokio::spawn(dial_flow(
            ctx,
            service,
            opts,
            dialed,
            waker,
            self.counters.clone(),
        ));
    }

    /// Moves bytes between one flow's socket and its stream; reaps it when finished.
    fn service_flow(&mut self, id: FlowId) {
        let Some(pipe) = self.flows.get_mut(&id) else {
            // A flow whose service could not be matched: already refused.
            if self.stack.is_closed(id) {
                self.stack.remove(id);
            }
            return;
        };
        if !pipe.relay(&mut self.stack, id, &self.counters) {
            if self.stack.is_closed(id) {
                self.stack.remove(id);
            }
            // Dropping the pipe closes its stream (or, while dialing, the dial's answer).
            self.flows.remove(&id);
        }
    }

    async fn on_service_event(&mut self, index: usize, event: ServiceEvent) {
        // Events still queued from an identity removed since are dropped here.
        let Some(member) = self.identities.get_mut(&index) else {
            return;
        };
        let identity = member.identity.name.clone();
        let ctx = member.identity.context.clone();
        match &event {
            ServiceEvent::Added(s) | ServiceEvent::Changed(s) => {
                tracing::info!(identity, service = %s.name, dial = s.permissions.dial, bind = s.permissions.bind, "service available");
                member.services.insert(s.name.clone(), s.clone());
                if self.claim(index, s) {
                    self.sync_names_and_routes().await;
                }
                if self.host_services {
                    self.hosts.apply(ctx, index, s);
                }
            }
            ServiceEvent::Removed(s) => {
                tracing::info!(identity, service = %s.name, "service no longer available");
                member.services.remove(&s.name);
                if self.release(index, &s.name) {
                    self.sync_names_and_routes().await;
                }
                self.hosts.stop(index, &s.name);
            }
        }
    }

    /// Puts `service` as identity `index` sees it into the intercept table, unless another
    /// identity owns its intercept. `true` if the table changed.
    fn claim(&mut self, index: usize, service: &Service) -> bool {
        if self.owner.get(&service.name).is_some_and(|o| *o != index) {
            return false;
        }
        let changed = self.table.apply_service(service) == TableChange::Changed;
        if self.table.get(&service.name).is_some() {
            self.owner.insert(service.name.clone(), index);
            return changed;
        }
        // No intercept or no dial permission any more: maybe another identity has them.
        match self.owner.remove(&service.name) {
            Some(_) => self.hand_over(&service.name) || changed,
            None => changed,
        }
    }

    /// Identity `index` no longer intercepts `service`; another identity that may dial it takes
    /// it over. `true` if the table changed.
    fn release(&mut self, index: usize, service: &str) -> bool {
        if self.owner.get(service) != Some(&index) {
            return false;
        }
        self.owner.remove(service);
        let removed = self.table.remove(service) == TableChange::Changed;
        // The owner's entry is gone from the table, so `hand_over` looks only at the others.
        self.hand_over(service) || removed
    }

    /// Gives an unowned `service` to the first identity that has an intercept for it.
    fn hand_over(&mut self, service: &str) -> bool {
        let candidates: Vec<(usize, Service)> = self
            .identities
            .iter()
            .filter_map(|(i, m)| m.services.get(service).map(|s| (*i, s.clone())))
            .collect();
        for (index, s) in candidates {
            if self.owner.contains_key(service) {
                break;
            }
            let changed = self.table.apply_service(&s) == TableChange::Changed;
            if self.table.get(service).is_some() {
                self.owner.insert(service.to_string(), index);
                return changed;
            }
        }
        false
    }

    /// Starts watching a new identity's services.
    pub(super) fn add_identity(&mut self, identity: TunnelIdentity) -> Result<(), TunnelError> {
        if self
            .identities
            .values()
            .any(|m| m.identity.name == identity.name)
        {
            return Err(TunnelError::DuplicateIdentity(identity.name));
        }
        let index = self.next_identity;
        self.next_identity += 1;
        let watcher = super::watch_identity(
            index,
            &identity.context,
            self.refresh_interval,
            self.events_tx.clone(),
        );
        tracing::info!(identity = %identity.name, "identity added");
        self.identities.insert(
            index,
            Member {
                identity,
                watcher,
                services: HashMap::new(),
            },
        );
        Ok(())
    }

    /// Stops using an identity: its intercepts go (or pass to another identity), its hosting
    /// stops. Its flows already open run on until they end.
    async fn remove_identity(&mut self, name: &str) -> Result<(), TunnelError> {
        let index = self
            .identities
            .iter()
            .find(|(_, m)| m.identity.name == name)
            .map(|(i, _)| *i)
            .ok_or_else(|| TunnelError::NoSuchIdentity(name.to_string()))?;
        if let Some(member) = self.identities.remove(&index) {
            member.watcher.abort();
        }
        self.hosts.stop_identity(index);
        let owned: Vec<String> = self
            .owner
            .iter()
            .filter(|(_, o)| **o == index)
            .map(|(s, _)| s.clone())
            .collect();
        let mut changed = false;
        for service in owned {
            changed |= self.release(index, &service);
        }
        if changed {
            self.sync_names_and_routes().await;
        }
        tracing::info!(identity = %name, "identity removed");
        Ok(())
    }

    async fn on_control(&mut self, request: Control) {
        match request {
            Control::AddIdentity(identity, reply) => {
                let _ = reply.send(self.add_identity(identity));
            }
            Control::RemoveIdentity(name, reply) => {
                let _ = reply.send(self.remove_identity(&name).await);
            }
            Control::Status(reply) => {
                let _ = reply.send(self.status());
            }
        }
    }

    /// Describes the tunnel (on request: walks the identities, their services and the flows).
    fn status(&self) -> TunnelStatus {
        let mut identities = Vec::new();
        let mut services = Vec::new();
        let mut routers = Vec::new();
        for (index, member) in &self.identities {
            let name = &member.identity.name;
            let ctx = &member.identity.context;
            let authenticated = ctx.controller().token_watch().borrow().is_some();
            identities.push(IdentityStatus {
                name: name.clone(),
                auth: match authenticated {
                    true => "authenticated".into(),
                    false => "not authenticated".into(),
                },
                controller: ctx.controller().api_url().to_string(),
                controllers: ctx
                    .controller()
                    .controllers()
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                services: member.services.len(),
            });
            for s in member.services.values() {
                let intercepted = self.owner.get(&s.name) == Some(index);
                services.push(ServiceStatus {
                    name: s.name.clone(),
                    identity: name.clone(),
                    dial: s.permissions.dial,
                    bind: s.permissions.bind,
                    intercept: match intercepted {
                        true => s.configs.intercept().as_ref().map(InterceptStatus::of),
                        false => None,
                    },
                    hosting: self.hosts.state(*index, &s.name),
                });
            }
            for r in ctx.routers().connected() {
                routers.push(RouterStatus {
                    identity: name.clone(),
                    name: r.name().to_string(),
                    url: r.url().to_string(),
                    connected: !r.is_closed(),
                    latency_ms: r.latency().map(|d| d.as_secs_f64() * 1000.0),
                    connections: r.connection_count(),
                });
            }
        }
        services.sort_by(|a, b| (&a.name, &a.identity).cmp(&(&b.name, &b.identity)));
        routers.sort_by(|a, b| (&a.identity, &a.name).cmp(&(&b.identity, &b.name)));
        let mut flows: Vec<FlowStatus> = self
            .flows
            .values()
            .map(|p| FlowStatus {
                client: p.client,
                intercepted: p.intercepted,
                service: p.service.clone(),
                established: p.is_dialed(),
                bytes_up: p.bytes_up,
                bytes_down: p.bytes_down,
            })
            .collect();
        flows.sort_by_key(|f| (f.intercepted, f.client));
        let mut totals = self.counters.snapshot();
        totals.tcp_flows = self.flows.len();
        totals.udp_flows = self.udp_flows.len();
        TunnelStatus {
            identities,
            services,
            routers,
            flows,
            udp_flows: self.udp_flows.len(),
            totals,
        }
    }

    /// Publishes the counters if one changed (a few length reads per loop turn).
    fn publish_stats(&mut self) {
        let now = TunnelStats {
            tcp_connections: self.flows.len(),
            udp_flows: self.udp_flows.len(),
            identities: self.identities.len(),
            intercepted_services: self.owner.len(),
            hosted_services: self.hosts.len(),
        };
        if now != self.published {
            self.published = now;
            self.stats.send_replace(now);
        }
    }

    /// Undoes what the tunnel did to the system, but the TUN device (closed when the driver is
    /// dropped): stops watching and hosting, removes the routes.
    pub(super) async fn stop(&mut self) {
        for member in self.identities.values() {
            member.watcher.abort();
        }
        self.hosts.stop_all();
        for (net, prefix) in std::mem::take(&mut self.routes) {
            let _ = self.netlink.remove_route(net, prefix, self.if_index).await;
        }
        self.stats.send_replace(TunnelStats::default());
    }
}
