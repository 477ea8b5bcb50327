//! Hosts a service by forwarding every incoming connection to a local TCP address.
//!
//! ```sh
//! cargo run -p ziti-examples --example host_forward -- --identity web-host.json web 127.0.0.1:8080
//! ```

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Identity file (JSON) allowed to bind the service.
    #[arg(short, long)]
    identity: std::path::PathBuf,
    /// Service to host.
    service: String,
    /// Where to forward connections, e.g. 127.0.0.1:8080.
    target: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let args = Args::parse();
    let ctx = ziti_sdk::ZitiContext::from_file(&args.identity)
        .await
        .context("loading identity")?;
    let mut listener = ctx.listen(&args.service).await?;
    tracing::info!(service = %args.service, target = %args.target, "forwarding");
    while let Some(mut incoming) = listener.accept().await {
        let target = args.target.clone();
        tokio::spawn(async move {
            let who = incoming.peer().dialer_identity_name.clone();
            match tokio::net::TcpStream::connect(&target).await {
                Ok(mut tcp) => {
                    // 64 KiB reads: each write to a Ziti stream is one edge payload, and the
                    // router's cost is mostly per message (tokio's default is 8 KiB).
                    let r = tokio::io::copy_bidirectional_with_sizes(
                        &mut incoming,
                        &mut tcp,
                        64 * 1024,
                        64 * 1024,
                    )
                    .await;
                    tracing::info!(?who, result = ?r, "connection done");
                }
                Err(e) => tracing::warn!(%target, error = %e, "cannot reach target"),
            }
        });
    }
    Ok(())
}
