//! The `zt-tunnel` subcommands that work on one identity: enroll, list services, dial.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::io::AsyncWriteExt;
use ziti_sdk::enroll::{EnrollKeyType, EnrollOptions, enroll_to_file};
use ziti_sdk::services::{InterceptAddress, Service};
use ziti_sdk::{ContextOptions, Identity, ZitiContext, error_chain};

/// Key algorithm for a new identity.
#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum KeyAlg {
    /// ECDSA P-256 (default).
    Ec,
    /// ECDSA P-384.
    Ec384,
    /// RSA 2048.
    Rsa,
    /// RSA 4096.
    Rsa4096,
}

/// `zt-tunnel enroll`.
#[derive(Debug, Args)]
pub struct EnrollArgs {
    /// The one-time enrollment JWT (file).
    #[arg(short = 'j', long = "jwt")]
    jwt: PathBuf,
    /// Where to write the identity JSON (mode 0600).
    #[arg(short = 'i', long = "identity")]
    identity: PathBuf,
    /// Key algorithm.
    #[arg(long, value_enum, default_value = "ec")]
    key_alg: KeyAlg,
    /// Shorthand for `--key-alg rsa`.
    #[arg(long, conflicts_with = "key_alg")]
    rsa: bool,
}

/// `zt-tunnel services`.
#[derive(Debug, Args)]
pub struct ServicesArgs {
    /// Identity file (JSON).
    #[arg(short = 'i', long = "identity")]
    identity: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `zt-tunnel dial`.
#[derive(Debug, Args)]
pub struct DialArgs {
    /// Identity file (JSON).
    #[arg(short = 'i', long = "identity")]
    identity: PathBuf,
    /// Service to dial; stdin is sent to it and its answer written to stdout.
    service: String,
}

/// Enrolls and writes the identity file.
pub async fn enroll(args: EnrollArgs) -> anyhow::Result<()> {
    let jwt = std::fs::read_to_string(&args.jwt)
        .with_context(|| format!("reading enrollment token {}", args.jwt.display()))?;
    let key_type = match (args.rsa, args.key_alg) {
        (true, _) | (_, KeyAlg::Rsa) => EnrollKeyType::Rsa2048,
        (_, KeyAlg::Ec) => EnrollKeyType::EcP256,
        (_, KeyAlg::Ec384) => EnrollKeyType::EcP384,
        (_, KeyAlg::Rsa4096) => EnrollKeyType::Rsa4096,
    };
    let opts = EnrollOptions {
        key_type,
        ..EnrollOptions::default()
    };
    let identity = enroll_to_file(jwt.trim(), opts, &args.identity)
        .await
        .with_context(|| format!("failed to enroll with {}", args.jwt.display()))?;
    tracing::info!(identity = %identity.name(), file = %args.identity.display(), "enrolled");
    println!(
        "enrolled {} -> {}",
        identity.name(),
        args.identity.display()
    );
    Ok(())
}

/// Lists the identity's services with permissions and intercepts.
pub async fn services(args: ServicesArgs) -> anyhow::Result<()> {
    let identity = Identity::load(&args.identity)
        .with_context(|| format!("loading identity {}", args.identity.display()))?;
    let ctx = ZitiContext::new(identity, ContextOptions::default()).await?;
    let mut services = ctx.controller().services().await?;
    services.sort_by(|a, b| a.name.cmp(&b.name));
    if args.json {
        let rows: Vec<serde_json::Value> = services.iter().map(service_json).collect();
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    println!("{:<28} {:<10} {:<5} INTERCEPT", "SERVICE", "ACCESS", "E2EE");
    for s in &services {
        println!(
            "{:<28} {:<10} {:<5} {}",
            s.name,
            access(s),
            if s.encryption_required { "yes" } else { "no" },
            intercept_text(s)
        );
    }
    println!("{} service(s)", services.len());
    Ok(())
}

/// stdin -> service -> stdout, with half-close when stdin ends.
pub async fn dial(args: DialArgs) -> anyhow::Result<()> {
    let identity = Identity::load(&args.identity)
        .with_context(|| format!("loading identity {}", args.identity.display()))?;
    // One stream: spreading dials over extra router channels would only open them for nothing.
    let options = ContextOptions {
        dial_channels: 1,
        ..ContextOptions::default()
    };
    let ctx = ZitiContext::new(identity, options)
        .await
        .with_context(|| format!("loading identity {}", args.identity.display()))?;
    let stream = ctx.dial(&args.service).await?;
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upload = async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut wr).await?;
        wr.shutdown().await
    };
    let download = async {
        let mut out = tokio::io::stdout();
        tokio::io::copy(&mut rd, &mut out).await?;
        out.flush().await
    };
    let (up, down) = tokio::join!(upload, download);
    up.context("sending to the service")?;
    down.context("receiving from the service")?;
    Ok(())
}

fn access(s: &Service) -> &'static str {
    match (s.permissions.dial, s.permissions.bind) {
        (true, true) => "dial,bind",
        (true, false) => "dial",
        (false, true) => "bind",
        (false, false) => "-",
    }
}

/// An intercept config in one line: `addresses [ports] protocols` (`-` without one).
pub(crate) fn intercept_text(s: &Service) -> String {
    let Some(i) = s.configs.intercept() else {
        return "-".into();
    };
    let addrs: Vec<String> = i.addresses.iter().map(address_text).collect();
    let ports: Vec<String> = i
        .port_ranges
        .iter()
        .map(|p| {
            if p.low == p.high {
                p.low.to_string()
            } else {
                format!("{}-{}", p.low, p.high)
            }
        })
        .collect();
    let protos: Vec<String> = i
        .protocols
        .iter()
        .map(|p| format!("{p:?}").to_lowercase())
        .collect();
    format!(
        "{} [{}] {}",
        addrs.join(","),
        ports.join(","),
        protos.join("/")
    )
}

fn address_text(a: &InterceptAddress) -> String {
    match a {
        InterceptAddress::Ip(ip) => ip.to_string(),
        InterceptAddress::Cidr(ip, len) => format!("{ip}/{len}"),
        InterceptAddress::Hostname(h) => h.clone(),
        InterceptAddress::Wildcard(d) => format!("*.{d}"),
    }
}

fn service_json(s: &Service) -> serde_json::Value {
    serde_json::json!({
        "name": s.name,
        "id": s.id,
        "dial": s.permissions.dial,
        "bind": s.permissions.bind,
        "encryptionRequired": s.encryption_required,
        "intercept": s.configs.intercept().map(|i| serde_json::json!({
            "addresses": i.addresses.iter().map(address_text).collect::<Vec<_>>(),
            "ports": i.port_ranges.iter().map(|p| [p.low, p.high]).collect::<Vec<_>>(),
            "protocols": i.protocols.iter().map(|p| format!("{p:?}").to_lowercase()).collect::<Vec<_>>(),
        })),
        "hosts": s.configs.host_terminators().len(),
    })
}

/// `zt-tunnel run` (also `zt-tunnel tunnel run`, the Go tunneler's `ziti tunnel run` with the
/// binary swapped). Go's flag names work with Go's meaning; ours are kept beside them.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// An identity file (as `ziti tunnel run <config>`); same as `--identity`.
    #[arg(value_name = "IDENTITY")]
    identity_file: Option<PathBuf>,
    /// Load every identity (`*.json`) in this directory, and follow files added, changed or
    /// removed while running.
    #[arg(long = "identity-dir", short = 'I')]
    identity_dir: Option<PathBuf>,
    /// An identity file; may be repeated.
    #[arg(short = 'i', long = "identity")]
    identity: Vec<PathBuf>,
    /// Name of the TUN device to create.
    #[arg(long, default_value = "ziti0")]
    tun_name: String,
    /// MTU of the TUN device.
    #[arg(long, default_value_t = ziti_tunnel::tunnel::DEFAULT_MTU)]
    mtu: u16,
    /// Pool for intercepted hostnames; its first address is the TUN's and the DNS server's
    /// (Go: `-d/--dnsSvcIpRange`).
    #[arg(
        short = 'd',
        long = "dns-ip-range",
        alias = "dnsSvcIpRange",
        default_value = "100.64.0.0/10"
    )]
    dns_ip_range: String,
    /// IPv6 pool for intercepted hostnames (AAAA answers); its first address is the TUN's.
    #[arg(long = "dns-ipv6-range", default_value = "fd7a:7a7a:7a7a::/64")]
    dns_ipv6_range: String,
    /// Intercept IPv4 only: no IPv6 address on the TUN and no AAAA answers.
    #[arg(long)]
    no_ipv6: bool,
    /// Upstream resolvers for names that are not intercepted: `IP`, `IP:port`,
    /// `udp://IP:port` or `tcp://IP:port`; repeat or comma-separate (Go: `--dnsUpstream`).
    /// Default: the nameservers of /etc/resolv.conf.
    #[arg(long = "dns-upstream", alias = "dnsUpstream", value_delimiter = ',')]
    dns_upstream: Vec<String>,
    /// How several upstreams are asked (Go: `--dnsUpstreamMode`): zt-tunnel asks them one at a
    /// time in order (`failover`/`serial`); `parallel` and `random` are accepted and served
    /// the same way.
    #[arg(long = "dnsUpstreamMode", value_parser = ["parallel", "serial", "failover", "random"])]
    dns_upstream_mode: Option<String>,
    /// What a query gets when its name is not intercepted and no upstream answers it:
    /// `refused`, `servfail` or `timeout` (no answer) (Go: `--dnsUnanswerable`). Default:
    /// REFUSED without upstreams, SERVFAIL when they failed.
    #[arg(long = "dnsUnanswerable", alias = "dns-unanswerable")]
    dns_unanswerable: Option<ziti_dns::Unanswerable>,
    /// Where the DNS server also listens, besides the pool's first address (Go:
    /// `-r/--resolver`, default `udp://127.0.0.1:53`). A default address that is taken is
    /// skipped with a warning; one given here must work. `none`: only the pool address.
    #[arg(short = 'r', long = "resolver")]
    resolver: Option<String>,
    /// Do not run the intercepting DNS server.
    #[arg(long)]
    no_dns: bool,
    /// Do not host the services the identities may bind.
    #[arg(long, conflicts_with = "host_only")]
    no_host: bool,
    /// Only host the services the identities may bind: no TUN device, no DNS server, no
    /// intercepts, no privileges needed (like `ziti tunnel host`).
    #[arg(long)]
    host_only: bool,
    /// TCP connections through the tunnel at once at most; more are refused.
    #[arg(long, default_value_t = 65_536)]
    max_connections: usize,
    /// Receive and send buffer of each intercepted TCP connection, KiB.
    #[arg(long, default_value_t = 128)]
    tcp_buffer_kib: usize,
    /// Seconds between checks for service changes (Go: `--svcPollRate`).
    #[arg(long, alias = "svcPollRate", default_value_t = 15)]
    refresh: u64,
    /// Run the TUN device, routes and DNS server in this network namespace
    /// (`/var/run/netns/NAME` or `/proc/PID/ns/net`); controller and router connections stay
    /// in zt-tunnel's own. Default: zt-tunnel's own namespace.
    #[arg(long)]
    netns: Option<PathBuf>,
    /// Accepted for `ziti tunnel run` compatibility; zt-tunnel has no CLI agent (use
    /// `zt-tunnel status`).
    #[arg(long = "cli-agent", hide = true, num_args = 0..=1, default_missing_value = "true")]
    _cli_agent: Option<bool>,
    /// Accepted for compatibility; no effect.
    #[arg(long = "cli-agent-addr", hide = true)]
    _cli_agent_addr: Option<String>,
    /// Accepted for compatibility; no effect.
    #[arg(long = "cli-agent-alias", hide = true)]
    _cli_agent_alias: Option<String>,
    /// Accepted for compatibility: zt-tunnel always uses SDK flow control where the router
    /// offers it.
    #[arg(long = "sdk-flow-control", hide = true, num_args = 0..=1, default_missing_value = "true")]
    _sdk_flow_control: Option<bool>,
    /// Accepted for compatibility; no effect.
    #[arg(long = "default-connections", hide = true)]
    _default_connections: Option<u8>,
    /// Accepted for compatibility; no effect.
    #[arg(long = "control-connections", hide = true)]
    _control_connections: Option<u8>,
    /// Serve `zt-tunnel status` and log level changes on this Unix socket (mode 0600, removed
    /// on exit), e.g. `/run/zt-tunnel/<tun-name>.sock`. Default: none.
    #[arg(long, value_name = "PATH", conflicts_with = "host_only")]
    status_socket: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464. Default: none.
    #[arg(long, value_name = "ADDR", conflicts_with = "host_only")]
    metrics: Option<std::net::SocketAddr>,
}

impl RunArgs {
    /// The same arguments in host-only mode (`ziti tunnel host`).
    pub fn host_only(mut self) -> Self {
        self.host_only = true;
        self.no_host = false;
        self
    }
}

/// Where `-r/--resolver` puts the DNS server by default, as the Go tunneler does.
const GO_RESOLVER: &str = "udp://127.0.0.1:53";

/// Runs the tunneler until SIGINT or SIGTERM.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    use crate::identity_source::IdentitySource;
    use ziti_tunnel::tunnel::IdentityChange;
    use ziti_tunnel::tunnel::{TunnelBuilder, TunnelConfig};

    let mut files = args.identity.clone();
    files.extend(args.identity_file.clone());
    if files.is_empty() && args.identity_dir.is_none() {
        anyhow::bail!(
            "failed to start ziti tunnel: no identity; give --identity FILE, a file argument or --identity-dir DIR"
        );
    }
    if let Some(dir) = &args.identity_dir
        && !dir.is_dir()
    {
        anyhow::bail!(
            "failed to start ziti tunnel: identity directory {} does not exist",
            dir.display()
        );
    }
    if let Some(mode) = &args.dns_upstream_mode
        && (mode == "parallel" || mode == "random")
    {
        tracing::info!(mode, "upstream resolvers are asked one at a time, in order");
    }
    let refresh = std::time::Duration::from_secs(args.refresh.max(1));
    let source = IdentitySource {
        files,
        dir: args.identity_dir.clone(),
        // Half the poll interval (at most 30 s): an identity whose controller comes back is in
        // within one interval, counting its first service fetch.
        retry_cap: (refresh / 2).min(std::time::Duration::from_secs(30)),
    };
    let shutdown = async {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    if args.host_only {
        let (tx, changes) = tokio::sync::mpsc::channel(64);
        let watcher = source.spawn(tx);
        let outcome = ziti_tunnel::tunnel::host_only(changes, refresh, shutdown).await;
        watcher.abort();
        outcome.context("failed to start ziti tunnel")?;
        return Ok(());
    }
    let pool: ziti_dns::Ipv4Cidr = args
        .dns_ip_range
        .parse()
        .with_context(|| format!("--dnsSvcIpRange {}", args.dns_ip_range))?;
    let ipv6_pool: Option<ziti_dns::Ipv6Cidr> = if args.no_ipv6 {
        None
    } else {
        Some(
            args.dns_ipv6_range
                .parse()
                .with_context(|| format!("--dns-ipv6-range {}", args.dns_ipv6_range))?,
        )
    };
    let dns_upstreams = if args.dns_upstream.is_empty() {
        ziti_dns::Upstreams::System
    } else {
        ziti_dns::Upstreams::List(
            args.dns_upstream
                .iter()
                .filter(|u| !u.trim().is_empty())
                .map(|u| parse_upstream(u))
                .collect::<anyhow::Result<Vec<_>>>()?,
        )
    };
    let (resolver, resolver_required) = match args.resolver.as_deref() {
        Some("none") => (None, false),
        Some(r) => (Some(parse_resolver(r)?), true),
        None => (Some(parse_resolver(GO_RESOLVER)?), false),
    };
    let config = TunnelConfig {
        tun_name: args.tun_name,
        mtu: args.mtu,
        pool,
        ipv6_pool,
        dns: !args.no_dns,
        dns_upstreams,
        dns_unanswerable: args.dns_unanswerable,
        dns_extra_listen: resolver.map(|addr| (addr, resolver_required)),
        refresh_interval: refresh,
        host: !args.no_host,
        max_connections: args.max_connections.max(1),
        tcp_buffer: args.tcp_buffer_kib.clamp(4, 16 * 1024) * 1024,
    };
    let mut builder = TunnelBuilder::new().config(config);
    if let Some(netns) = args.netns {
        builder = builder.netns_path(netns);
    }
    let listeners = crate::control::bind(args.status_socket.as_deref(), args.metrics)
        .await
        .context("failed to start ziti tunnel")?;
    let mut tunnel = builder
        .start()
        .await
        .context("failed to start ziti tunnel")?;
    let _serving = listeners.serve(tunnel.monitor());
    let (tx, mut changes) = tokio::sync::mpsc::channel(64);
    let watcher = source.spawn(tx);
    tokio::pin!(shutdown);
    let ended = loop {
        tokio::select! {
            () = &mut shutdown => break None,
            outcome = tunnel.wait() => break Some(outcome),
            change = changes.recv() => match change {
                Some(IdentityChange::Add(identity)) => {
                    let name = identity.name.clone();
                    if let Err(e) = tunnel.add_identity(identity).await {
                        tracing::error!(identity = %name, error = %error_chain(&e), "cannot add identity");
                    }
                }
                // Not there yet (never authenticated) is fine.
                Some(IdentityChange::Remove(name)) if tunnel.remove_identity(&name).await.is_ok() => {
                    tracing::info!(identity = %name, "identity removed");
                }
                Some(IdentityChange::Remove(_)) => {}
                None => {}
            },
        }
    };
    watcher.abort();
    match ended {
        Some(outcome) => outcome?,
        None => tunnel.shutdown().await?,
    }
    Ok(())
}

/// `udp://IP:port` (or `IP:port`, `IP`) where the DNS server listens.
fn parse_resolver(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    let rest = s
        .strip_prefix("udp://")
        .or_else(|| s.strip_prefix("tcp://"))
        .unwrap_or(s);
    if let Ok(a) = rest.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = rest
        .parse()
        .with_context(|| format!("--resolver {s:?} is not udp://IP:port"))?;
    Ok(std::net::SocketAddr::new(ip, 53))
}

fn parse_upstream(s: &str) -> anyhow::Result<std::net::SocketAddr> {
    // UDP first, TCP after a truncated answer, whichever scheme is given.
    let s = s.trim();
    let s = s
        .strip_prefix("udp://")
        .or_else(|| s.strip_prefix("tcp://"))
        .unwrap_or(s);
    if let Ok(a) = s.parse::<std::net::SocketAddr>() {
        return Ok(a);
    }
    let ip: std::net::IpAddr = s
        .parse()
        .with_context(|| format!("DNS upstream {s:?} is not an IP or IP:port"))?;
    Ok(std::net::SocketAddr::new(ip, 53))
}
