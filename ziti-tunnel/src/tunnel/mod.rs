//! The tokio driver of a tunnel: one task owns the TUN device and the
//! [`NetStack`](crate::stack::NetStack); each intercepted flow gets a task that dials its service and moves bytes over bounded channels;
//! service updates from every identity keep the intercept table, the DNS names and the routes
//! current. Services the identities may bind and that carry a `host.v1`/`host.v2` config are
//! hosted: each incoming Ziti connection is forwarded to the configured TCP address.
//!
//! Idle costs nothing: the driver sleeps until a packet, a flow's channel, a service event or a
//! stack timer wakes it.

use std::collections::{BTreeSet, HashMap};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use ziti_dns::{DnsConfig, DnsServer, DnsTable, Ipv4Cidr, Ipv6Cidr, RunningServer, Upstreams};
use ziti_sdk::{ZitiContext, error_chain};

use crate::intercept::InterceptTable;
use crate::netlink::{Netlink, NetlinkError};
use crate::stack::{NetStack, StackConfig};

mod driver;
mod hosting;
mod relay;
mod routes;

use driver::Driver;
use hosting::Hosting;

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
    /// IPv6 pool for intercepted hostnames (AAAA answers); its first address is the TUN's.
    /// `None`: IPv4 only. If the system refuses the address (IPv6 disabled), the tunnel runs
    /// IPv4 only and says so in the log.
    pub ipv6_pool: Option<Ipv6Cidr>,
    /// Run the intercepting DNS server on the pool's first address, port 53.
    pub dns: bool,
    /// Where the DNS server forwards names it does not intercept.
    pub dns_upstreams: Upstreams,
    /// How often each identity's services are polled for changes.
    pub refresh_interval: Duration,
    /// Host the services the identities may bind.
    pub host: bool,
    /// TCP connections through the tunnel at once at most; SYNs beyond are refused. Each
    /// costs at most twice [`TunnelConfig::tcp_buffer`] of socket memory, touched only as data
    /// passes.
    pub max_connections: usize,
    /// Receive and send buffer of each intercepted TCP connection, bytes.
    pub tcp_buffer: usize,
}

impl Default for TunnelConfig {
    fn default() -> Self {
        TunnelConfig {
            tun_name: "ziti0".into(),
            mtu: 9000,
            pool: Ipv4Cidr::DEFAULT,
            ipv6_pool: Some(Ipv6Cidr::DEFAULT),
            dns: true,
            dns_upstreams: Upstreams::System,
            refresh_interval: ziti_sdk::services::DEFAULT_REFRESH_INTERVAL,
            host: true,
            max_connections: StackConfig::default().max_flows,
            tcp_buffer: StackConfig::default().tcp_buffer,
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
    let ipv6_pool = config.ipv6_pool.filter(|p6| {
        match tun.add_address_v6(p6.dns_addr(), p6.prefix()) {
            Ok(()) => {
                tracing::info!(address = %p6.dns_addr(), pool = %p6, "TUN device has IPv6");
                true
            }
            Err(e) => {
                tracing::warn!(pool = %p6, error = %error_chain(&e), "cannot give the TUN device an IPv6 address; intercepting IPv4 only");
                false
            }
        }
    });

    let dns_table = match ipv6_pool {
        Some(p6) => DnsTable::with_ipv6_pool(config.pool, p6),
        None => DnsTable::new(config.pool),
    };
    let dns_server: Option<RunningServer> = if config.dns {
        let dns_config = DnsConfig {
            listen: SocketAddr::new(IpAddr::V4(own_addr), 53),
            pool: config.pool,
            ipv6_pool,
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

    let (wake_tx, wake_rx) = mpsc::unbounded_channel();
    let mut driver = Driver {
        tun,
        if_index,
        netlink,
        stack: NetStack::new(
            StackConfig {
                address: own_addr,
                prefix: config.pool.prefix(),
                ipv6: ipv6_pool.map(|p6| (p6.dns_addr(), p6.prefix())),
                max_flows: config.max_connections,
                tcp_buffer: config.tcp_buffer,
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
        wake_tx,
        wake_rx,
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
