//! Setting up a tunnel: identities, options and the network namespace it serves.
//!
//! One process may run many tunnels, each in a network namespace of its own (a sidecar serving
//! the pods of a node, say). The TUN device, its addresses and routes, and the DNS server's
//! sockets are made inside the tunnel's namespace (see [`netns`](super::netns)); the
//! connections to the OpenZiti controller and routers stay in the caller's namespace, so one
//! identity's router links can serve any number of namespaces.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tracing::Instrument;
use ziti_dns::{DnsConfig, DnsServer, DnsTable, Ipv4Cidr, Ipv6Cidr, Upstreams};
use ziti_sdk::error_chain;

use super::driver::Driver;
use super::handle::{TunnelHandle, TunnelStats};
use super::hosting::Hosting;
use super::netns::{NetnsTarget, NetnsThread};
use super::{CONTROL_QUEUE, EVENT_QUEUE, TunnelConfig, TunnelError, TunnelIdentity};
use crate::netlink::Netlink;
use crate::stack::{NetStack, StackConfig};

/// Sets up a tunnel and starts it.
///
/// ```no_run
/// # async fn example(alice: ziti_sdk::ZitiContext) -> Result<(), ziti_tunnel::tunnel::TunnelError> {
/// use ziti_tunnel::tunnel::{TunnelBuilder, TunnelIdentity};
///
/// let tunnel = TunnelBuilder::new()
///     .identity(TunnelIdentity { name: "alice".into(), context: alice })
///     .netns_path("/var/run/netns/pod-1")
///     .start()
///     .await?;
/// println!("{:?}", tunnel.stats());
/// tunnel.shutdown().await?;
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Default)]
pub struct TunnelBuilder {
    identities: Vec<TunnelIdentity>,
    config: TunnelConfig,
    netns: NetnsTarget,
}

impl TunnelBuilder {
    /// A tunnel with [`TunnelConfig::default`], no identity yet, in the caller's namespace.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replaces every option with `config`.
    pub fn config(mut self, config: TunnelConfig) -> Self {
        self.config = config;
        self
    }

    /// Adds an identity.
    pub fn identity(mut self, identity: TunnelIdentity) -> Self {
        self.identities.push(identity);
        self
    }

    /// Adds identities.
    pub fn identities(mut self, identities: impl IntoIterator<Item = TunnelIdentity>) -> Self {
        self.identities.extend(identities);
        self
    }

    /// Runs the tunnel in the network namespace of this file: `/var/run/netns/NAME` (made by
    /// `ip netns add`) or `/proc/PID/ns/net`. Entering it needs `CAP_SYS_ADMIN`.
    pub fn netns_path(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = NetnsTarget::Path(path.into());
        self
    }

    /// Runs the tunnel in the network namespace of this open namespace file.
    pub fn netns_fd(mut self, fd: OwnedFd) -> Self {
        self.netns = NetnsTarget::Fd(fd);
        self
    }

    /// See [`TunnelConfig::tun_name`].
    pub fn tun_name(mut self, name: impl Into<String>) -> Self {
        self.config.tun_name = name.into();
        self
    }

    /// See [`TunnelConfig::mtu`].
    pub fn mtu(mut self, mtu: u16) -> Self {
        self.config.mtu = mtu;
        self
    }

    /// See [`TunnelConfig::pool`].
    pub fn pool(mut self, pool: Ipv4Cidr) -> Self {
        self.config.pool = pool;
        self
    }

    /// See [`TunnelConfig::ipv6_pool`].
    pub fn ipv6_pool(mut self, pool: Option<Ipv6Cidr>) -> Self {
        self.config.ipv6_pool = pool;
        self
    }

    /// See [`TunnelConfig::dns`].
    pub fn dns(mut self, on: bool) -> Self {
        self.config.dns = on;
        self
    }

    /// See [`TunnelConfig::dns_upstreams`].
    pub fn dns_upstreams(mut self, upstreams: Upstreams) -> Self {
        self.config.dns_upstreams = upstreams;
        self
    }

    /// See [`TunnelConfig::refresh_interval`].
    pub fn refresh_interval(mut self, interval: Duration) -> Self {
        self.config.refresh_interval = interval;
        self
    }

    /// See [`TunnelConfig::host`].
    pub fn host(mut self, on: bool) -> Self {
        self.config.host = on;
        self
    }

    /// See [`TunnelConfig::max_connections`].
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = max;
        self
    }

    /// See [`TunnelConfig::tcp_buffer`].
    pub fn tcp_buffer(mut self, bytes: usize) -> Self {
        self.config.tcp_buffer = bytes;
        self
    }

    /// Creates the TUN device, its addresses and the DNS server in the tunnel's namespace, and
    /// starts the tunnel on the current tokio runtime. It runs until
    /// [`TunnelHandle::shutdown`] (or until the handle is dropped).
    ///
    /// Identities may be added later ([`TunnelHandle::add_identity`]), so none is needed here.
    pub async fn start(self) -> Result<TunnelHandle, TunnelError> {
        let TunnelBuilder {
            identities,
            config,
            netns,
        } = self;
        let mut names = HashSet::new();
        if let Some(dup) = identities.iter().find(|i| !names.insert(i.name.as_str())) {
            return Err(TunnelError::DuplicateIdentity(dup.name.clone()));
        }
        let label = netns.label();
        let span = tracing::info_span!("tunnel", netns = %label, tun = %config.tun_name);
        let (thread, devices) = match netns {
            NetnsTarget::Current => (
                None,
                open_devices(config.clone())
                    .instrument(span.clone())
                    .await?,
            ),
            target => {
                let thread = NetnsThread::enter(target).await?;
                // The job polls `open_devices` on the namespace thread; what it spawns (the
                // netlink connection, the DNS forwarder) runs on this runtime.
                let runtime = tokio::runtime::Handle::current();
                let open = open_devices(config.clone()).instrument(span.clone());
                let devices = thread.run(move || runtime.block_on(open)).await??;
                (Some(thread), devices)
            }
        };
        let Devices {
            tun,
            if_index,
            netlink,
            ipv6_pool,
            dns_table,
            dns,
        } = devices;
        let tun = tun_rs::AsyncDevice::new(tun).map_err(TunnelError::TunIo)?;
        let dns: Vec<_> = dns
            .into_iter()
            .map(|server| {
                span.in_scope(|| tracing::info!(listen = %server.local_addr(), "DNS server up"));
                server.spawn()
            })
            .collect();
        let own_addr = config.pool.dns_addr();

        let (events_tx, events) = mpsc::channel(EVENT_QUEUE);
        let (udp_down_tx, udp_down) = mpsc::channel(EVENT_QUEUE);
        let (control_tx, control) = mpsc::channel(CONTROL_QUEUE);
        let (stats_tx, stats_rx) = watch::channel(TunnelStats::default());
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
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
            table: Default::default(),
            owner: Default::default(),
            routes: Default::default(),
            dns_table,
            identities: Default::default(),
            next_identity: 0,
            events_tx,
            refresh_interval: config.refresh_interval,
            flows: Default::default(),
            udp_flows: Default::default(),
            udp_down_tx,
            wake_tx,
            wake_rx,
            host_services: config.host,
            hosts: Hosting::new(thread),
            stats: stats_tx,
            published: TunnelStats::default(),
            counters: Default::default(),
        };
        span.in_scope(|| {
            identities
                .into_iter()
                .try_for_each(|identity| driver.add_identity(identity))
        })?;
        let task = tokio::spawn(
            async move {
                let shutdown = async {
                    // A dropped handle stops the tunnel as well.
                    let _ = stop_rx.await;
                };
                let result = driver.run(events, udp_down, control, shutdown).await;
                if let Err(e) = &result {
                    tracing::error!(error = %error_chain(e), "tunnel failed");
                }
                driver.stop().await;
                for server in dns {
                    server.shutdown().await;
                }
                // Dropping the driver closes the TUN device, which takes it out of the system.
                drop(driver);
                tracing::info!("tunnel stopped");
                result
            }
            .instrument(span),
        );
        Ok(TunnelHandle {
            control: control_tx,
            stats: stats_rx,
            stop: Some(stop_tx),
            task: Some(task),
            netns: label,
            tun_name: config.tun_name,
        })
    }
}

/// What a tunnel needs made inside its namespace.
struct Devices {
    tun: tun_rs::SyncDevice,
    if_index: u32,
    netlink: Netlink,
    /// The IPv6 pool, if the TUN device took its address.
    ipv6_pool: Option<Ipv6Cidr>,
    dns_table: DnsTable,
    /// The DNS servers: the pool address's, and the extra listen address's if any.
    dns: Vec<DnsServer>,
}

/// Creates the TUN device with its addresses, the netlink connection and the bound DNS server,
/// all in the calling thread's network namespace. Polled on the namespace thread when the
/// tunnel has one, so it must not wait on I/O: everything here completes at once.
async fn open_devices(config: TunnelConfig) -> Result<Devices, TunnelError> {
    let own_addr = config.pool.dns_addr();
    let tun = tun_rs::DeviceBuilder::new()
        .name(&config.tun_name)
        .ipv4(own_addr, config.pool.prefix(), None)
        .mtu(config.mtu)
        .build_sync()
        .map_err(|source| TunnelError::Tun {
            name: config.tun_name.clone(),
            source,
        })?;
    // Looked up by name, so in this namespace, before the device leaves this thread.
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
    let mut dns = Vec::new();
    if config.dns {
        let dns_config = DnsConfig {
            listen: SocketAddr::new(IpAddr::V4(own_addr), 53),
            pool: config.pool,
            ipv6_pool,
            upstreams: config.dns_upstreams.clone(),
            unanswerable: config.dns_unanswerable,
            ..DnsConfig::default()
        };
        dns.push(DnsServer::bind(&dns_config, dns_table.clone()).await?);
        if let Some((listen, required)) = config.dns_extra_listen {
            let extra = DnsConfig {
                listen,
                ..dns_config
            };
            match DnsServer::bind(&extra, dns_table.clone()).await {
                Ok(server) => dns.push(server),
                Err(e) if !required => {
                    tracing::warn!(%listen, error = %error_chain(&e), "the DNS server does not listen here too (the address is taken or missing)");
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
    Ok(Devices {
        tun,
        if_index,
        netlink,
        ipv6_pool,
        dns_table,
        dns,
    })
}
