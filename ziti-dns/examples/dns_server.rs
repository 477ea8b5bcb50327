//! A standalone intercepting DNS server, for load tests and manual poking.
//!
//! ```text
//! cargo run --release -p ziti-dns --example dns_server -- 127.0.0.1:5399 [upstream ...]
//! dig @127.0.0.1 -p 5399 svc1.ziti.example
//! ```
//! Intercepts `svc0.ziti.example` .. `svc999.ziti.example` and `*.corp.example`.
//! Runs on a single-threaded runtime so a load test measures one core.

use std::net::SocketAddr;

use anyhow::Context;
use ziti_dns::{DnsConfig, DnsServer, DnsTable, Upstreams};

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .init();
    let mut args = std::env::args().skip(1);
    let listen: SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:5399".into())
        .parse()
        .context("listen address")?;
    let upstreams = args
        .map(|a| a.parse().context("upstream address"))
        .collect::<anyhow::Result<Vec<SocketAddr>>>()?;
    let config = DnsConfig {
        listen,
        upstreams: Upstreams::List(upstreams),
        ..DnsConfig::default()
    };
    let table = DnsTable::new(config.pool);
    let names: Vec<String> = (0..1000)
        .map(|i| format!("svc{i}.ziti.example"))
        .chain(["*.corp.example".to_owned()])
        .collect();
    table.set_names(&names)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let server = DnsServer::bind(&config, table).await?;
        eprintln!("listening on {} (udp+tcp)", server.local_addr());
        tokio::select! {
            r = server.run() => r.context("server failed"),
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}
