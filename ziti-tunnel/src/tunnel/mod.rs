//! The tokio driver of a tunnel: one task owns the TUN device and the
//! [`NetStack`](crate::stack::NetStack); each intercepted flow gets a task that dials its service and moves bytes over bounded channels;
//! service updates from every identity keep the intercept table, the DNS names and the routes
//! current. Services the identities may bind and that carry a `host.v1`/`host.v2` config are
//! hosted: each incoming Ziti connection goes to the TCP or UDP server its config and the
//! dialer's app data name. [`host_only`](crate::tunnel::host_only()) hosts without a TUN device and without privileges.
//!
//! Idle costs nothing: the driver sleeps until a packet, a flow's channel, a service event, a
//! request from its [`TunnelHandle`](crate::tunnel::TunnelHandle) or a stack timer wakes it.
//!
//! [`TunnelBuilder`](crate::tunnel::TunnelBuilder) starts a tunnel in any network namespace, so
//! one process can serve many; [`run`](crate::tunnel::run) runs one in the caller's namespace
//! until a future completes.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use ziti_dns::{Ipv4Cidr, Ipv6Cidr, Unanswerable, Upstreams};
use ziti_sdk::ZitiContext;

use crate::netlink::NetlinkError;
use crate::stack::StackConfig;

mod builder;
mod driver;
mod handle;
mod host_only;
mod hosted_tcp;
mod hosting;
mod netns;
mod relay;
mod routes;
mod status;

pub use builder::TunnelBuilder;
pub use handle::{TunnelHandle, TunnelMonitor, TunnelStats};
pub use host_only::host_only;
pub use status::{
    DialCounts, DialOutcome, FlowStatus, HostingStatus, IdentityStatus, InterceptStatus,
    RouterStatus, ServiceStatus, TunnelStatus, TunnelTotals,
};

/// Largest chunk moved between a flow's socket and its Ziti stream.
const CHUNK: usize = 32 * 1024;
/// Service events waiting for the driver at most.
const EVENT_QUEUE: usize = 256;
/// Requests from the handle waiting for the driver at most.
const CONTROL_QUEUE: usize = 16;
/// Packets read from the TUN per wake-up at most (fairness towards the other work).
const READ_BATCH: usize = 64;
/// UDP flows (client address, intercepted address) at once at most.
const MAX_UDP_FLOWS: usize = 1024;
/// Datagrams waiting per UDP flow at most; more are dropped, as UDP allows.
const UDP_QUEUE: usize = 64;
/// A UDP flow with no datagram either way for this long ends (and its Ziti connection closes).
const UDP_IDLE: Duration = Duration::from_secs(60);
/// How often flows whose relay ended are dropped from the UDP flow table (and its count).
const UDP_PRUNE: Duration = Duration::from_secs(5);

/// A datagram from a service: (intercepted address it came from, client, payload).
type DatagramDown = (SocketAddr, SocketAddr, Bytes);

/// The TUN device's MTU unless configured: large, so one packet carries what one read from the
/// application's socket gives (the kernel and smoltcp segment nothing on this virtual link;
/// measured in BENCHMARKS.md: 65000 against 9000 cut the CPU per GiB downloaded by a fifth).
pub const DEFAULT_MTU: u16 = 65000;

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
    /// What queries no upstream answers get (`None`: REFUSED without upstreams, SERVFAIL
    /// when they failed).
    pub dns_unanswerable: Option<Unanswerable>,
    /// A second address the DNS server listens on (the Go tunneler's `--resolver`, such as
    /// `127.0.0.1:53`), and whether the tunnel must fail when it cannot (`false`: a warning).
    pub dns_extra_listen: Option<(SocketAddr, bool)>,
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
            mtu: DEFAULT_MTU,
            pool: Ipv4Cidr::DEFAULT,
            ipv6_pool: Some(Ipv6Cidr::DEFAULT),
            dns: true,
            dns_upstreams: Upstreams::System,
            dns_unanswerable: None,
            dns_extra_listen: None,
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
    /// The network namespace could not be opened or entered.
    #[error(
        "cannot enter network namespace {netns} (needs CAP_SYS_ADMIN and a namespace file such as /var/run/netns/NAME or /proc/PID/ns/net)"
    )]
    Netns {
        /// The namespace as given (a path, or `fd N`).
        netns: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Two identities of the tunnel would have the same name.
    #[error("the tunnel has an identity named {0:?} already")]
    DuplicateIdentity(String),
    /// No identity of the tunnel has this name.
    #[error("the tunnel has no identity named {0:?}")]
    NoSuchIdentity(String),
    /// The tunnel is not running any more.
    #[error("the tunnel has stopped")]
    Stopped,
    /// The tunnel's task ended abnormally (it panicked, or its runtime shut down).
    #[error("the tunnel's task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// Forwards the service events of identity `index` to `events` until either side ends.
fn watch_identity(
    index: usize,
    context: &ZitiContext,
    refresh_interval: Duration,
    events: tokio::sync::mpsc::Sender<(usize, ziti_sdk::ServiceEvent)>,
) -> tokio::task::JoinHandle<()> {
    let mut rx = context.controller().watch_services(refresh_interval);
    tokio::spawn(async move {
        while let Some(ev) = rx.recv().await {
            if events.send((index, ev)).await.is_err() {
                break;
            }
        }
    })
}

/// An identity joining or leaving a running tunnel or host-only run.
#[derive(Debug)]
pub enum IdentityChange {
    /// Use this identity (it has authenticated).
    Add(TunnelIdentity),
    /// Stop using the identity of this name.
    Remove(String),
}

/// One identity the tunnel runs with.
#[derive(Debug, Clone)]
pub struct TunnelIdentity {
    /// A name for logs (the file name).
    pub name: String,
    /// Its context.
    pub context: ZitiContext,
}

/// Runs a tunnel in the caller's network namespace until `shutdown` completes (or the tunnel
/// fails). Creates the TUN device, the DNS server and the routes; removes them on return.
///
/// A thin wrapper over [`TunnelBuilder`]; unlike the builder it wants at least one identity.
pub async fn run(
    identities: Vec<TunnelIdentity>,
    config: TunnelConfig,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), TunnelError> {
    if identities.is_empty() {
        return Err(TunnelError::NoIdentities);
    }
    let mut tunnel = TunnelBuilder::new()
        .config(config)
        .identities(identities)
        .start()
        .await?;
    let ended = tokio::select! {
        () = shutdown => None,
        outcome = tunnel.wait() => Some(outcome),
    };
    match ended {
        Some(outcome) => outcome,
        None => tunnel.shutdown().await,
    }
}
