//! An HTTP GET through a service (HTTP/1.0, so the server closes when done).
//!
//! ```sh
//! cargo run -p ziti-examples --example http_get -- --identity alice.json web /index.html
//! ```

use anyhow::Context;
use clap::Parser;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
struct Args {
    /// Identity file (JSON).
    #[arg(short, long)]
    identity: std::path::PathBuf,
    /// Service to dial.
    service: String,
    /// Path to request.
    #[arg(default_value = "/")]
    path: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let ctx = ziti_sdk::ZitiContext::from_file(&args.identity)
        .await
        .context("loading identity")?;
    let mut stream = ctx.dial(&args.service).await?;
    let request = format!(
        "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: ziti-sdk-example\r\nConnection: close\r\n\r\n",
        args.path, args.service
    );
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    print!("{}", String::from_utf8_lossy(&response));
    Ok(())
}
