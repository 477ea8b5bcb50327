//! The tokio driver of a tunnel: one task owns the TUN device and the
//! [`NetStack`](crate::stack::NetStack); each intercepted flow gets a task that dials its service and moves bytes over bounded channels;
//! service updates from every identity keep the intercept table, the DNS names and the routes
//! current. Services the identities may bind and that carry a `host.v1`/`host.v2` config are
//! hosted: each incoming Ziti connection is forwarded to the configured TCP address.
//!
//! Idle costs nothing: the driver sleeps until a packet, a flow's channel, a service event or a
//! stack timer wakes it.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use ziti_dns::{DnsConfig, DnsServer, DnsTable, Ipv4Cidr, RunningServer, Upstreams};
use ziti_sdk::context::DialOptions;
use ziti_sdk::services::{HostV1, Precedence, Protocol};
use ziti_sdk::{Service, ServiceEvent, ZitiContext, error_chain};

use crate::intercept::{InterceptTable, TableChange};
use crate::netlink::{Netlink, NetlinkError};
use crate::stack::{FlowId, NetStack, NewFlow, StackConfig};

/// Chunks in flight per direction per flow (each at most [`CHUNK`] bytes).
const FLOW_QUEUE: usize = 8;
/// Largest chunk moved between a flow's socket and its Ziti stream.
const CHUNK: usize = 32 * 1024;
/// Service events waiting for the driver at most.
const EVENT_QUEUE: usize = 256;
/// Packets read from the TUN per wake-up at most (fairness towards the other work).
const READ_BATCH: usize = 64;
/// UDP flows (client address, intercepted address) at once at most.
const MAX_UDP_FLOWS: usize = 1024;
/// Datagrams waiting per UDP flow at most; more are dropped, as UDP allows.
const UDP_QUEUE: usize = 64;
/// A UDP flow with no datagram either way for this long ends (and its Ziti connection closes).
const UDP_IDLE: Duration = Duration::from_secs(60);

/// A datagram from a service: (intercepted address it came from, client, payload).
type DatagramDown = (SocketAddr, SocketAddr, Bytes);

/// How a tunnel is set up.
#[derive(Debug, Clone)]
pub struct TunnelConfig {
    /// Name of the TUN device to create.
    pub tun_name: String,
    /// MTU of the TUN device.
    pub mtu: u16,
    /// Address pool for intercepted hostnames; its first address is the TUN's and the DNS
    /// server's.
    pub pool: Ipv4Cidr,
    /// Run the intercepting DNS server on the pool's first address, port 53.
    pub dns: bool,
    /// Where the DNS server forwards names it does not intercept.
    pub dns_upstreams: Upstreams,
    /// How often each identity's services are polled for changes.
    pub refresh_interval: Duration,
    /// Host the services the identities may bind.
    pub host: bool,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            tun_name: "ziti0".into(),
            mtu: 9000,
            pool: Ipv4Cidr::DEFAULT,
            dns: true,
            dns_upstreams: Upstreams::System,
            refresh_interval: ziti_sdk::services::DEFAULT_REFRESH_INTERVAL,
            host: true,
        }
    }
}

/// Why a tunnel could not start or stopped.
///
/// Each variant says what failed; `source()` says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TunnelError {
    /// The TUN device could not be created.
    #[error("cannot create TUN device {name} (needs CAP_NET_ADMIN and /dev/net/tun)")]
    Tun {
        /// Device name.
        name: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing the TUN failed.
    #[error("TUN device I/O failed")]
    TunIo(#[source] std::io::Error),
    /// Routing setup failed.
    #[error(transparent)]
    Netlink(#[from] NetlinkError),
    /// The DNS server could not start.
    #[error("cannot run the DNS server")]
    Dns(#[from] ziti_dns::ServerError),
    /// No identity to run with.
    #[error("no identities: give at least one identity file or a directory holding some")]
    NoIdentities,
}

/// One identity the tunnel runs with.
#[derive(Debug, Clone)]
pub struct TunnelIdentity {
    /// A name for logs (the file name).
    pub name: String,
    /// Its context.
    pub context: ZitiContext,
}

/// Bytes or an end, towards the client.
#[derive(Debug)]
enum Down {
    Data(Bytes),
    Fin,
    Abort,
}

/// The driver's end of one flow.
struct FlowPipe {
    up: Option<mpsc::Sender<Bytes>>,
    down: mpsc::Receiver<Down>,
    pending: Option<Bytes>,
    down_done: bool,
}

/// Runs a tunnel until `shutdown` completes. Creates the TUN device (in the calling thread's
/// network namespace), the DNS server and the routes; removes them on return.
pub async fn run(
    identities: Vec<TunnelIdentity>,
    config: TunnelConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), TunnelError> {
    if identities.is_empty() {
        return Err(TunnelError::NoIdentities);
    }
    let own_addr = config.pool.dns_addr();
    let tun = tun_rs::DeviceBuilder::new()
        .name(&config.tun_name)
        .ipv4(own_addr, config.pool.prefix(), None)
        .mtu(config.mtu)
        .build_async()
        .map_err(|source| TunnelError::Tun {
            name: config.tun_name.clone(),
            source,
        })?;
    let if_index = tun.if_index().map_err(TunnelError::TunIo)?;
    let netlink = Netlink::connect()?;
    tracing::info!(device = %config.tun_name, address = %own_addr, pool = %config.pool, "TUN device up");

    let dns_table = DnsTable::new(config.pool);
    let dns_server: Option<RunningServer> = if config.dns {
        let dns_config = DnsConfig {
            listen: SocketAddr::new(IpAddr::V4(own_addr), 53),
            pool: config.pool,
            upstreams: config.dns_upstreams.clone(),
            ..DnsConfig::default()
        };
        let server = DnsServer::bind(&dns_config, dns_table.clone()).await?;
        tracing::info!(listen = %server.local_addr(), "DNS server up");
        Some(server.spawn())
    } else {
        None
    };

    let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
    let (udp_down_tx, udp_down) = mpsc::channel(EVENT_QUEUE);
    let mut watchers = Vec::new();
    let mut hosts = Hosting::default();
    for (index, id) in identities.iter().enumerate() {
        let mut rx = id
            .context
            .controller()
            .watch_services(config.refresh_interval);
        let tx = events_tx.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send((index, ev)).await.is_err() {
                    break;
                }
            }
        }));
    }
    drop(events_tx);

    let mut driver = Driver {
        tun,
        if_index,
        netlink,
        stack: NetStack::new(
            StackConfig {
                address: own_addr,
                prefix: config.pool.prefix(),
                mtu: usize::from(config.mtu),
                ..StackConfig::default()
            },
            Instant::now(),
            rand::random(),
        ),
        table: InterceptTable::new(),
        owner: HashMap::new(),
        routes: BTreeSet::new(),
        dns_table,
        identities,
        flows: HashMap::new(),
        udp_flows: HashMap::new(),
        udp_down_tx,
        notify: Arc::new(Notify::new()),
        host_services: config.host,
    };
    let result = driver.run(events, udp_down, &mut hosts, shutdown).await;

    for w in watchers {
        w.abort();
    }
    hosts.stop_all();
    for (net, prefix) in std::mem::take(&mut driver.routes) {
        let _ = driver.netlink.remove_route(net, prefix, if_index).await;
    }
    if let Some(dns) = dns_server {
        dns.shutdown().await;
    }
    result
}

struct Driver {
    tun: tun_rs::AsyncDevice,
    if_index: u32,
    netlink: Netlink,
    stack: NetStack,
    table: InterceptTable,
    /// Which identity dials each intercepted service.
    owner: HashMap<String, usize>,
    routes: BTreeSet<(IpAddr, u8)>,
    dns_table: DnsTable,
    identities: Vec<TunnelIdentity>,
    flows: HashMap<FlowId, FlowPipe>,
    /// Datagrams towards each UDP flow's relay, keyed by (client, intercepted address).
    udp_flows: HashMap<(SocketAddr, SocketAddr), mpsc::Sender<Bytes>>,
    udp_down_tx: mpsc::Sender<DatagramDown>,
    notify: Arc<Notify>,
    host_services: bool,
}

impl Driver {
    async fn run(
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
            self.service_flows();
            self.stack.poll(now);
            self.flush_tun().await?;

            let delay = self
                .stack
                .poll_delay(Instant::now())
                .unwrap_or(Duration::from_secs(3600));
            let notified = self.notify.notified();
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
                _ = notified => {}
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
            self.stack.abort(flow.id);
            return;
        };
        let (up_tx, up_rx) = mpsc::channel(FLOW_QUEUE);
        let (down_tx, down_rx) = mpsc::channel(FLOW_QUEUE);
        self.flows.insert(
            flow.id,
            FlowPipe {
                up: Some(up_tx),
                down: down_rx,
                pending: None,
                down_done: false,
            },
        );
        let notify = self.notify.clone();
        tokio::spawn(relay_flow(ctx, service, opts, up_rx, down_tx, notify));
    }

    /// Moves bytes between every flow's socket and its channels; reaps finished flows.
    fn service_flows(&mut self) {
        let mut buf = [0u8; CHUNK];
        for id in self.stack.flow_ids() {
            let Some(pipe) = self.flows.get_mut(&id) else {
                // A flow whose service could not be matched: already aborted.
                if self.stack.is_closed(id) {
                    self.stack.remove(id);
                }
                continue;
            };
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

    async fn sync_names_and_routes(&mut self) {
        let names = self.table.hostnames();
        if let Err(e) = self.dns_table.set_names(&names) {
            tracing::warn!(error = %error_chain(&e), "cannot update the DNS names");
        }
        let wanted = self.table.ip_routes();
        for (net, prefix) in self.routes.difference(&wanted) {
            if let Err(e) = self
                .netlink
                .remove_route(*net, *prefix, self.if_index)
                .await
            {
                tracing::debug!(error = %error_chain(&e), "route removal");
            }
        }
        let mut installed = BTreeSet::new();
        for (net, prefix) in &wanted {
            if let IpAddr::V4(v4) = net
                && self.is_pool_address(*v4, *prefix)
            {
                continue; // already routed to the TUN by the pool's own prefix
            }
            match self.netlink.route_to(*net, *prefix, self.if_index).await {
                Ok(()) => {
                    installed.insert((*net, *prefix));
                }
                Err(e) => {
                    tracing::warn!(error = %error_chain(&e), "cannot route an intercepted address")
                }
            }
        }
        self.routes = installed;
    }

    fn is_pool_address(&self, ip: Ipv4Addr, prefix: u8) -> bool {
        let pool = self.dns_table.pool();
        prefix >= pool.prefix() && pool.contains(ip)
    }
}

/// Moves client bytes of flow `id` into its channel while both have some; `false` once the
/// channel or the socket can no longer carry any.
fn forward_up(stack: &mut NetStack, id: FlowId, tx: &mpsc::Sender<Bytes>, buf: &mut [u8]) -> bool {
    loop {
        let permit = match tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => return true,
            Err(mpsc::error::TrySendError::Closed(())) => return false,
        };
        match stack.recv(id, buf) {
            Ok(0) => return true,
            Ok(n) => {
                tracing::trace!(?id, n, "client -> service");
                permit.send(Bytes::copy_from_slice(&buf[..n]))
            }
            Err(_) => return false,
        }
    }
}

/// One flow: dial the service, then move bytes both ways until both directions end.
async fn relay_flow(
    ctx: ZitiContext,
    service: String,
    opts: DialOptions,
    mut up: mpsc::Receiver<Bytes>,
    down: mpsc::Sender<Down>,
    notify: Arc<Notify>,
) {
    // dial_with logs a failure with the service name and the reason.
    let stream = match ctx.dial_with(&service, &opts).await {
        Ok(s) => s,
        Err(_) => {
            let _ = down.send(Down::Abort).await;
            notify.notify_one();
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upload = async {
        while let Some(chunk) = up.recv().await {
            tracing::trace!(service, n = chunk.len(), "writing to the service");
            notify.notify_one(); // room in the channel again
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    };
    let download = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            let msg = if n == 0 {
                Down::Fin
            } else {
                Down::Data(Bytes::copy_from_slice(&buf[..n]))
            };
            let fin = matches!(msg, Down::Fin);
            if down.send(msg).await.is_err() {
                return Ok(());
            }
            notify.notify_one();
            if fin {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let (u, d) = tokio::join!(upload, download);
    if let Err(e) = u.and(d) {
        tracing::debug!(service, error = %error_chain(&e), "flow ended with an error");
        let _ = down.send(Down::Abort).await;
        notify.notify_one();
    }
}

/// One UDP flow: dial the service, then each datagram is one Data message each way, until the
/// flow is idle for [`UDP_IDLE`].
async fn relay_udp(
    ctx: ZitiContext,
    service: String,
    opts: DialOptions,
    (client, intercepted): (SocketAddr, SocketAddr),
    mut up: mpsc::Receiver<Bytes>,
    down: mpsc::Sender<DatagramDown>,
) {
    // dial_with logs a failure with the service name and the reason.
    let Ok(stream) = ctx.dial_with(&service, &opts).await else {
        return;
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            datagram = up.recv() => match datagram {
                Some(d) => {
                    if wr.write_all(&d).await.is_err() {
                        break;
                    }
                }
                None => break,
            },
            read = rd.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let reply = Bytes::copy_from_slice(&buf[..n]);
                    if down.send((intercepted, client, reply)).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    tracing::debug!(service, %client, "UDP flow ended");
}

/// The hosted services: one listener task per (identity, service, terminator).
#[derive(Default)]
struct Hosting {
    tasks: HashMap<(usize, String), HostedService>,
}

/// The terminators a service is hosted with and their listener tasks.
type HostedService = (Vec<HostV1>, Vec<JoinHandle<()>>);

impl Hosting {
    fn apply(&mut self, ctx: ZitiContext, index: usize, service: &Service) {
        let terminators = if service.permissions.bind {
            service.configs.host_terminators()
        } else {
            Vec::new()
        };
        let key = (index, service.name.clone());
        if let Some((current, _)) = self.tasks.get(&key)
            && *current == terminators
        {
            return;
        }
        self.stop(index, &service.name);
        if terminators.is_empty() {
            return;
        }
        let handles = terminators
            .iter()
            .filter_map(|t| {
                let target = host_target(t);
                if target.is_none() {
                    tracing::warn!(service = %service.name, "host config needs a fixed tcp address and port; not hosting it");
                }
                let (addr, port) = target?;
                Some(tokio::spawn(host_service(
                    ctx.clone(),
                    service.name.clone(),
                    t.clone(),
                    addr,
                    port,
                )))
            })
            .collect();
        self.tasks.insert(key, (terminators, handles));
    }

    fn stop(&mut self, index: usize, service: &str) {
        if let Some((_, handles)) = self.tasks.remove(&(index, service.to_string())) {
            for h in handles {
                h.abort();
            }
        }
    }

    fn stop_all(&mut self) {
        for (_, (_, handles)) in self.tasks.drain() {
            for h in handles {
                h.abort();
            }
        }
    }
}

/// The fixed TCP target of a terminator, if it has one.
fn host_target(t: &HostV1) -> Option<(String, u16)> {
    let tcp = matches!(t.protocol, Some(Protocol::Tcp) | None) && !t.forward_protocol;
    if !tcp || t.forward_address || t.forward_port {
        return None;
    }
    Some((t.address.clone()?, t.port?))
}

async fn host_service(ctx: ZitiContext, service: String, t: HostV1, addr: String, port: u16) {
    let lo = t.listen_options_or_default();
    let opts = ziti_sdk::context::ListenOptions {
        cost: lo.cost,
        precedence: match lo.precedence {
            Precedence::Default => ziti_sdk::edge::Precedence::Default,
            Precedence::Required => ziti_sdk::edge::Precedence::Required,
            Precedence::Failed => ziti_sdk::edge::Precedence::Failed,
        },
        identity: lo.identity.clone().filter(|i| !i.is_empty()),
    };
    let mut listener = match ctx.listen_with(&service, &opts).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(service, error = %error_chain(&e), "cannot host service");
            return;
        }
    };
    tracing::info!(service, target = %format!("{addr}:{port}"), "hosting");
    while let Some(mut stream) = listener.accept().await {
        let target = (addr.clone(), port);
        let service = service.clone();
        tokio::spawn(async move {
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut tcp) => {
                    let _ = tcp.set_nodelay(true);
                    if let Err(e) = tokio::io::copy_bidirectional(&mut stream, &mut tcp).await {
                        tracing::debug!(service, error = %error_chain(&e), "hosted connection ended with an error");
                    }
                }
                Err(e) => {
                    tracing::warn!(service, target = %format!("{}:{}", target.0, target.1), error = %error_chain(&e), "cannot reach the hosted server");
                }
            }
        });
    }
}
