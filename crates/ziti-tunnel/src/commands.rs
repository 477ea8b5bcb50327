//! The `zt-tunnel` subcommands that work on one identity: enroll, list services, dial.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, ValueEnum};
use tokio::io::AsyncWriteExt;
use ziti_sdk::enroll::{EnrollKeyType, EnrollOptions, enroll_to_file};
use ziti_sdk::services::{InterceptAddress, Service};
use ziti_sdk::{ContextOptions, Identity, ZitiContext};

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
        .with_context(|| format!("enrolling with {}", args.jwt.display()))?;
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
    let ctx = ZitiContext::from_file(&args.identity)
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

fn intercept_text(s: &Service) -> String {
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
