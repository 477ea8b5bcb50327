//! `zt-tunnel`: the OpenZiti tunneler binary.
//!
//! ```text
//! zt-tunnel enroll -j alice.jwt -i alice.json      # one-time JWT -> identity file (0600)
//! zt-tunnel services -i alice.json                 # what alice may dial/bind, with intercepts
//! zt-tunnel dial -i alice.json echo < req.txt      # stdin -> service -> stdout
//! zt-tunnel run --identity-dir /etc/ziti/identities  # TUN intercept + DNS + hosting
//! zt-tunnel doctor -i alice.json --service echo    # step-by-step check; exit 0 or 10+step
//! zt-tunnel status --socket /run/zt-tunnel/ziti0.sock  # what a running tunnel carries
//! ```

mod commands;
mod control;
mod doctor;
mod identity_source;
mod logging;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Pure-Rust OpenZiti tunneler.
#[derive(Debug, Parser)]
#[command(name = "zt-tunnel", version, about)]
struct Cli {
    /// Write logs to this file (appended, created 0600) instead of stderr.
    #[arg(long, global = true, env = "ZT_LOG_FILE")]
    log_file: Option<PathBuf>,
    /// Default log level (trace, debug, info, warn, error); RUST_LOG overrides.
    #[arg(long, global = true, default_value = "info", env = "ZT_LOG_LEVEL")]
    log_level: String,
    /// Debug logging; the same as `--log-level debug` (Go: `-v/--verbose`).
    #[arg(short = 'v', long, global = true)]
    verbose: bool,
    /// Log format: `text` (default) or `json` (`pretty` is text) (Go: `--log-formatter`).
    #[arg(long = "log-formatter", global = true, value_parser = ["json", "pretty", "text"])]
    log_formatter: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Enroll an identity with a one-time enrollment JWT.
    Enroll(commands::EnrollArgs),
    /// List the services an identity can dial or bind, with their intercept addresses.
    Services(commands::ServicesArgs),
    /// Dial a service: stdin goes to it, its answer to stdout (half-close at end of stdin).
    Dial(commands::DialArgs),
    /// Run the tunneler: intercept the identities' services through a TUN device, answer their
    /// names in DNS, and host the services they may bind.
    Run(commands::RunArgs),
    /// Check an identity step by step; the exit status names the first failing step.
    ///
    /// Steps: identity, controller, authentication, services, (service,) edge routers, (dial).
    /// One OK/FAIL line per step.
    Doctor(doctor::DoctorArgs),
    /// The Go tunneler's command tree, for callers that run `ziti tunnel run ...`: `tunnel run`
    /// is `run`, `tunnel host` is `run --host-only`.
    #[command(hide = true)]
    Tunnel {
        #[command(subcommand)]
        command: TunnelCommand,
    },
    /// Show what a running `zt-tunnel run --status-socket PATH` is doing: identities,
    /// services, routers, flows with their bytes, counters. `zt-tunnel status --log-level
    /// LEVEL` changes its log level instead.
    Status(control::StatusArgs),
}

/// `zt-tunnel tunnel ...`.
#[derive(Debug, Subcommand)]
enum TunnelCommand {
    /// As `zt-tunnel run`.
    Run(commands::RunArgs),
    /// As `zt-tunnel run --host-only`.
    Host(commands::RunArgs),
}

/// glibc malloc tuned for a tunnel holding many mostly idle connections:
///
/// * One arena for the whole process. glibc gives each thread that allocates under contention
///   its own arena, and memory freed in one arena is not reused by another; with the runtime's
///   worker threads moving buffers between them, a tunnel holding one unread connection grew
///   6160 KiB instead of 4644 KiB (measured by `ziti-tunnel/tests/tunnel_flow.rs`). Per-thread
///   caches still serve small allocations without the lock.
/// * Allocations of 64 KiB and more (each connection's two socket buffers) are their own
///   mappings. They are allocated zeroed, so a mapping's pages become resident only as data
///   passes through them, and they go back to the system when the connection closes. glibc's
///   default (a threshold that rises after the first such buffer is freed) put them on the
///   heap, where zeroing touched every page: 179 KiB of RSS per idle connection, kept after
///   the connections closed (measured by `benches/src/bin/tunnel_bench.rs`).
///
/// `MALLOC_ARENA_MAX` / `MALLOC_MMAP_THRESHOLD_` in the environment still override these.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
            unsafe {
                libc::mallopt(libc::M_ARENA_MAX, 1);
            }
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            unsafe {
                libc::mallopt(libc::M_MMAP_THRESHOLD, 64 * 1024);
            }
        }
    }
}

fn main() -> ExitCode {
    tune_malloc();
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    // `zt-tunnel status --log-level LEVEL`: the level is for the running tunnel.
    let tunnel_level = (matches.value_source("log_level") == Some(ValueSource::CommandLine))
        .then(|| cli.log_level.clone());
    let level = if cli.verbose {
        "debug"
    } else {
        cli.log_level.as_str()
    };
    let json = cli.log_formatter.as_deref() == Some("json");
    if let Err(e) = logging::init(level, cli.log_file.as_deref(), json) {
        eprintln!("zt-tunnel: {}", ziti_sdk::error_chain(&e));
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("zt-tunnel: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Enroll(args) => commands::enroll(args).await.map(|()| ExitCode::SUCCESS),
            Command::Services(args) => commands::services(args).await.map(|()| ExitCode::SUCCESS),
            Command::Dial(args) => commands::dial(args).await.map(|()| ExitCode::SUCCESS),
            Command::Run(args)
            | Command::Tunnel {
                command: TunnelCommand::Run(args),
            } => commands::run(args).await.map(|()| ExitCode::SUCCESS),
            Command::Tunnel {
                command: TunnelCommand::Host(args),
            } => commands::run(args.host_only())
                .await
                .map(|()| ExitCode::SUCCESS),
            // The doctor reports its own failures, one line per step, and picks the exit code.
            Command::Doctor(args) => Ok(ExitCode::from(doctor::run(args).await)),
            Command::Status(args) => control::status(args, tunnel_level.as_deref())
                .await
                .map(|()| ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("zt-tunnel: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parses(args: &[&str]) -> Cli {
        match Cli::try_parse_from(args) {
            Ok(cli) => cli,
            Err(e) => panic!("{args:?}: {e}"),
        }
    }

    /// Every flag of `ziti tunnel run` is accepted where the sidecar puts it, with the binary
    /// swapped (their meaning is shown against the real network by tests/session_run.rs).
    #[test]
    fn the_go_tunnelers_command_line_is_accepted() {
        let cli = parses(&["zt-tunnel", "tunnel", "run", "--identity-dir", "/ids"]);
        assert!(matches!(
            cli.command,
            Command::Tunnel {
                command: TunnelCommand::Run(_)
            }
        ));
        for flags in [
            &["id.json"][..],
            &["-i", "id.json"],
            &["--identity", "id.json"],
            &["--identity-dir", "/ids"],
            &["-v", "--identity-dir", "/ids"],
            &["--verbose", "--identity-dir", "/ids"],
            &["--svcPollRate", "10", "-I", "/ids"],
            &["-d", "100.64.0.1/10", "-I", "/ids"],
            &["--dnsSvcIpRange", "100.64.0.1/10", "-I", "/ids"],
            &[
                "--dnsUpstream",
                "udp://10.96.0.10:53,tcp://8.8.8.8:53",
                "-I",
                "/ids",
            ],
            &[
                "--dnsUpstream",
                "udp://10.96.0.10:53",
                "--dnsUpstream",
                "tcp://8.8.8.8:53",
                "-I",
                "/ids",
            ],
            &["--dnsUpstreamMode", "parallel", "-I", "/ids"],
            &["--dnsUnanswerable", "timeout", "-I", "/ids"],
            &["-r", "udp://127.0.0.1:53", "-I", "/ids"],
            &["--resolver", "udp://127.0.0.1:53", "-I", "/ids"],
            &["--log-formatter", "json", "-I", "/ids"],
            &[
                "--cli-agent=false",
                "--cli-agent-addr",
                "unix:/tmp/a.sock",
                "--cli-agent-alias",
                "x",
                "-I",
                "/ids",
            ],
            &[
                "--sdk-flow-control",
                "--default-connections",
                "2",
                "--control-connections",
                "1",
                "-I",
                "/ids",
            ],
        ] {
            let mut args = vec!["zt-tunnel", "tunnel", "run"];
            args.extend_from_slice(flags);
            parses(&args);
            let mut args = vec!["zt-tunnel", "run"];
            args.extend_from_slice(flags);
            parses(&args);
        }
        assert!(matches!(
            parses(&["zt-tunnel", "tunnel", "host", "-i", "id.json"]).command,
            Command::Tunnel {
                command: TunnelCommand::Host(_)
            }
        ));
        assert!(
            Cli::try_parse_from(["zt-tunnel", "run", "--dnsUnanswerable", "sometimes"]).is_err()
        );
    }
}
