//! A zcat-like dialer: stdin -> service, service -> stdout.
//!
//! ```sh
//! cargo run -p ziti-examples --example zcat -- --identity alice.json echo < request.txt
//! ```
//! When stdin ends the write side is half-closed, so the service sees end-of-file and can still
//! answer; the program exits when the service closes its side.

use anyhow::Context;
use clap::Parser;
use tokio::io::AsyncWriteExt;

#[derive(Parser)]
struct Args {
    /// Identity file (JSON).
    #[arg(short, long)]
    identity: std::path::PathBuf,
    /// Service to dial.
    service: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let ctx = ziti_sdk::ZitiContext::from_file(&args.identity)
        .await
        .context("loading identity")?;
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
    up.context("sending")?;
    down.context("receiving")?;
    Ok(())
}
