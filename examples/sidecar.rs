//! One process, many network namespaces: a tunnel per namespace, each with its own identities.
//!
//! Each argument pairs a network namespace with a directory of identity files (`*.json`); every
//! namespace gets its own TUN device, routes and DNS server on the pool's first address, while
//! the controller and router connections stay in this process's own namespace. An identity file
//! named in several directories is loaded once and shared. Counters are logged periodically;
//! Ctrl-C (or SIGTERM) shuts every tunnel down.
//!
//! ```sh
//! ip netns add pod-1; ip netns add pod-2
//! sudo cargo run -p ziti-examples --example sidecar -- \
//!     /var/run/netns/pod-1=/etc/ziti/pod-1 /var/run/netns/pod-2=/etc/ziti/pod-2
//! ```

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ziti_sdk::ZitiContext;
use ziti_tunnel::tunnel::{TunnelBuilder, TunnelHandle, TunnelIdentity};

#[derive(Parser)]
struct Args {
    /// `NETNS_PATH=IDENTITY_DIR` pairs, e.g. `/var/run/netns/pod-1=/etc/ziti/pod-1`.
    #[arg(required = true, value_parser = parse_pair)]
    namespaces: Vec<(PathBuf, PathBuf)>,
    /// Name of the TUN device in each namespace.
    #[arg(long, default_value = "ziti0")]
    tun_name: String,
    /// Upstream resolver (IP:port) for names that are not intercepted; may be repeated.
    /// Default: the nameservers of this process's /etc/resolv.conf.
    #[arg(long)]
    dns_upstream: Vec<std::net::SocketAddr>,
    /// Seconds between two stats lines.
    #[arg(long, default_value_t = 30)]
    stats_every: u64,
    /// Do not host the services the identities may bind.
    #[arg(long)]
    no_host: bool,
}

fn parse_pair(s: &str) -> Result<(PathBuf, PathBuf), String> {
    let (netns, dir) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not NETNS_PATH=IDENTITY_DIR"))?;
    Ok((netns.into(), dir.into()))
}

/// The identities of one directory, each context loaded once per file across all directories.
async fn load_identities(
    dir: &Path,
    loaded: &mut HashMap<PathBuf, ZitiContext>,
) -> anyhow::Result<Vec<TunnelIdentity>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("reading identity directory {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "json") && p.is_file())
        .collect();
    files.sort();
    let mut identities = Vec::new();
    for file in files {
        let key = file.canonicalize().unwrap_or_else(|_| file.clone());
        let context = match loaded.get(&key) {
            Some(ctx) => ctx.clone(),
            None => {
                let ctx = ZitiContext::from_file(&file)
                    .await
                    .with_context(|| format!("loading identity {}", file.display()))?;
                loaded.insert(key, ctx.clone());
                ctx
            }
        };
        let name = file
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default();
        identities.push(TunnelIdentity { name, context });
    }
    anyhow::ensure!(!identities.is_empty(), "no identity in {}", dir.display());
    Ok(identities)
}

async fn shutdown_signal() {
    let Ok(mut term) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// One glibc malloc arena, as zt-tunnel has: many tunnels in one process, memory matters more
/// than allocator parallelism (`MALLOC_ARENA_MAX` overrides it).
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 1);
        }
    }
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(sidecar())
}

async fn sidecar() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let upstreams = match args.dns_upstream.is_empty() {
        true => ziti_dns::Upstreams::System,
        false => ziti_dns::Upstreams::List(args.dns_upstream.clone()),
    };

    let mut loaded = HashMap::new();
    let mut tunnels: Vec<TunnelHandle> = Vec::new();
    for (netns, dir) in &args.namespaces {
        let identities = load_identities(dir, &mut loaded).await?;
        let started = TunnelBuilder::new()
            .identities(identities)
            .netns_path(netns)
            .tun_name(&args.tun_name)
            .dns_upstreams(upstreams.clone())
            .host(!args.no_host)
            .start()
            .await
            .with_context(|| format!("starting the tunnel in {}", netns.display()));
        match started {
            Ok(tunnel) => tunnels.push(tunnel),
            Err(e) => {
                // Leave nothing half-done behind: stop the tunnels already running.
                for tunnel in tunnels {
                    let _ = tunnel.shutdown().await;
                }
                return Err(e);
            }
        }
    }
    tracing::info!(tunnels = tunnels.len(), "sidecar running; Ctrl-C stops it");

    let mut every = tokio::time::interval(Duration::from_secs(args.stats_every.max(1)));
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = every.tick() => {
                for t in &tunnels {
                    let s = t.stats();
                    tracing::info!(
                        netns = t.netns(),
                        running = !t.is_finished(),
                        tcp = s.tcp_connections,
                        udp = s.udp_flows,
                        identities = s.identities,
                        intercepted = s.intercepted_services,
                        hosted = s.hosted_services,
                        "stats"
                    );
                }
            }
            () = &mut stop => break,
        }
    }
    tracing::info!("shutting down");
    let mut failed = 0;
    for tunnel in tunnels {
        let netns = tunnel.netns().to_string();
        if let Err(e) = tunnel.shutdown().await {
            failed += 1;
            tracing::error!(%netns, error = %ziti_sdk::error_chain(&e), "tunnel ended with an error");
        }
    }
    anyhow::ensure!(failed == 0, "{failed} tunnel(s) ended with an error");
    Ok(())
}
