//! `tunnel_bench`: `zt-tunnel run` against the Go tunneler (`ziti tunnel proxy`, and
//! `ziti tunnel tproxy` where iptables exists), side by side on one throwaway local OpenZiti
//! network in one run (issue 9, points 7 and 3).
//!
//! ```sh
//! cargo build --release -p ziti-tunnel -p ziti-benches --bin zt-tunnel --bin tunnel_bench
//! target/release/tunnel_bench [--mib 256] [--runs 3] [--idle 1000] [--only zt,go-proxy,go-tproxy] [--host go|zt|router] [--idle-only] [--no-netns]
//! ```
//!
//! Setup, like `flow_bench`: a `testnet` network (controller + one edge router on loopback) and
//! three unencrypted services that forward to local TCP servers in this process: a sink (reads
//! to EOF and counts), a source (reads an 8-byte little-endian length, writes that many bytes,
//! closes) and an echo. One host serves them for every tunneler, chosen by `--host`:
//!
//! * `go` (default): `ziti tunnel host` (Go, default flags);
//! * `zt`: `zt-tunnel run --host-only` (the same binary as the measured `zt-tunnel run`);
//! * `router`: the edge router itself (its built-in tunneler in host mode, bound through a Bind
//!   policy naming the router's identity), so no host process and no second edge connection.
//!
//! The client is always a plain kernel TCP socket of this process; only the tunneler in
//! between changes:
//!
//! * `zt`: `zt-tunnel run --identity <id>` (default flags, its own TUN and DNS); the services
//!   carry `intercept.v1` configs for `sink.tunnel-bench.test:80` etc., resolved once through
//!   zt-tunnel's DNS (100.64.0.1), and the client connects to the address it answered;
//! * `go-proxy`: `ziti tunnel proxy sink:P source:Q echo:R` (default flags); the client connects
//!   to `127.0.0.1:P`;
//! * `go-tproxy`: `ziti tunnel tproxy` on a second set of services intercepting 192.0.2.101-103
//!   port 80; only when `iptables` works in the namespace (otherwise skipped with a note).
//!
//! Cases, each run `--runs` times, interleaved (run 1 of every case of every tunneler, then run
//! 2, ...), after a small warm-up transfer each way through each tunneler:
//!
//! * `upload`: one stream of `--mib` MiB, timed from the sink's `accept` (the circuit has reached
//!   the host) to the last byte the sink reads;
//! * `download`: one stream of `--mib` MiB, timed from the source reading the length header (the
//!   circuit is up) to the client reading the last byte;
//! * `8 x download`: eight simultaneous downloads of `--mib` MiB each (8 x `--mib` in all), timed
//!   from the first source reading its header to the last client byte;
//! * issue 9 point 3: `--idle` TCP connections are opened through the tunneler to the echo
//!   service (each makes one echo round trip) and held open, unused, while one upload and one
//!   download are measured as above; they are checked with one more round trip afterwards, then
//!   closed. The same upload and download are measured again just before the connections are
//!   opened, and the ratio printed is to those (per run and of the medians): on a shared
//!   2-core network a later run is often slower for every tunneler, so the ratio to the first
//!   cases of the run, minutes earlier, measured the drift as much as the idle connections.
//!
//! `--idle-only` measures only the point 3 cases (the pairs just before and with the idle
//! connections), for more runs of them in the same time.
//!
//! Reported per case: MiB/s (median and range), the tunneler's CPU seconds per GiB moved
//! (`utime + stime` of the zt-tunnel or Go tunneler process from `/proc/<pid>/stat`, all its
//! threads), the tunneler's peak RSS during the case (`VmHWM`, reset before each case through
//! `/proc/<pid>/clear_refs`), and the edge router's and the host's CPU per GiB (with
//! `--host router` the hosting is in the router's figure).
//!
//! Isolation: when run as root the program first moves itself into a private network namespace
//! holding only `lo` (`unshare(CLONE_NEWNET)`); every process it starts (controller, router, Go
//! tunnelers, zt-tunnel with its TUN device) inherits it, so no traffic leaves it and the host's
//! routes are untouched. `--no-netns` skips that. Every child is started through
//! `testnet::ChildGuard`: killed when its guard drops (also on error), and by the kernel
//! (`PR_SET_PDEATHSIG`) if this program dies.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use testnet::{ChildGuard, TestNet, unique_name};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

const MIB: u64 = 1024 * 1024;
const GIB: f64 = 1024.0 * 1024.0 * 1024.0;
const CHUNK: usize = 64 * 1024;
/// A transfer that moves no byte for this long is reported as stalled.
const STALL: Duration = Duration::from_secs(60);
/// Simultaneous streams of the multi-stream case.
const STREAMS: usize = 8;
/// Idle connections being opened at the same time (a burst of 1,000 circuits at once makes the
/// controller, not the tunneler, the bottleneck, and dials time out).
const IDLE_OPENING: usize = 50;
/// Anything that only has to happen eventually (services resolving, hosts binding).
const SETUP: Duration = Duration::from_secs(90);
/// zt-tunnel's DNS server (the first address of its default pool).
const ZT_DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 53);
/// Hostnames the zt-tunnel services intercept (port 80).
const ZT_HOSTS: [&str; 3] = [
    "sink.tunnel-bench.test",
    "source.tunnel-bench.test",
    "echo.tunnel-bench.test",
];
/// Addresses the tproxy services intercept (port 80): TEST-NET-1, nothing else routes them.
const TPROXY_IPS: [Ipv4Addr; 3] = [
    Ipv4Addr::new(192, 0, 2, 101),
    Ipv4Addr::new(192, 0, 2, 102),
    Ipv4Addr::new(192, 0, 2, 103),
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tunneler {
    Zt,
    GoProxy,
    GoTproxy,
}

/// What hosts the services (`--host`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Host {
    Go,
    Zt,
    Router,
}

impl Host {
    fn parse(v: &str) -> Result<Host> {
        match v {
            "go" => Ok(Host::Go),
            "zt" => Ok(Host::Zt),
            "router" => Ok(Host::Router),
            other => bail!("unknown host {other:?} (go, zt or router)"),
        }
    }

    fn label(self) -> &'static str {
        match self {
            Host::Go => "Go `ziti tunnel host`",
            Host::Zt => "`zt-tunnel run --host-only`",
            Host::Router => "the edge router (built-in tunneler, host mode)",
        }
    }
}

impl Tunneler {
    const ALL: [Tunneler; 3] = [Tunneler::Zt, Tunneler::GoProxy, Tunneler::GoTproxy];

    fn name(self) -> &'static str {
        match self {
            Tunneler::Zt => "zt",
            Tunneler::GoProxy => "go-proxy",
            Tunneler::GoTproxy => "go-tproxy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Tunneler::Zt => "`zt-tunnel run` (TUN)",
            Tunneler::GoProxy => "Go `ziti tunnel proxy`",
            Tunneler::GoTproxy => "Go `ziti tunnel tproxy`",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    Up,
    Down,
    Multi,
    /// Upload just before the idle connections are opened (the pair of `IdleUp`).
    BeforeIdleUp,
    /// Download just before the idle connections are opened (the pair of `IdleDown`).
    BeforeIdleDown,
    IdleUp,
    IdleDown,
}

impl Case {
    fn name(self, idle: usize) -> String {
        match self {
            Case::Up => "upload".into(),
            Case::Down => "download".into(),
            Case::Multi => format!("{STREAMS} x download"),
            Case::BeforeIdleUp => "upload, just before opening the idle conns".into(),
            Case::BeforeIdleDown => "download, just before opening the idle conns".into(),
            Case::IdleUp => format!("upload, {idle} idle conns"),
            Case::IdleDown => format!("download, {idle} idle conns"),
        }
    }
}

struct Args {
    mib: u64,
    runs: usize,
    warmup_mib: u64,
    idle: usize,
    tunnelers: Vec<Tunneler>,
    host: Host,
    idle_only: bool,
    netns: bool,
    zt_bin: Option<PathBuf>,
    zt_log_level: String,
    keep_logs: Option<PathBuf>,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        mib: 256,
        runs: 3,
        warmup_mib: 16,
        idle: 1000,
        tunnelers: Tunneler::ALL.to_vec(),
        host: Host::Go,
        idle_only: false,
        netns: true,
        zt_bin: None,
        zt_log_level: "info".into(),
        keep_logs: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match a.as_str() {
            "--mib" => args.mib = value("--mib")?.parse()?,
            "--runs" => args.runs = value("--runs")?.parse()?,
            "--warmup-mib" => args.warmup_mib = value("--warmup-mib")?.parse()?,
            "--idle" => args.idle = value("--idle")?.parse()?,
            "--zt-tunnel" => args.zt_bin = Some(value("--zt-tunnel")?.into()),
            "--zt-log-level" => args.zt_log_level = value("--zt-log-level")?,
            "--keep-logs" => args.keep_logs = Some(value("--keep-logs")?.into()),
            "--only" => {
                let v = value("--only")?;
                args.tunnelers = v
                    .split(',')
                    .map(|n| {
                        Tunneler::ALL
                            .into_iter()
                            .find(|t| t.name() == n)
                            .ok_or_else(|| anyhow!("unknown tunneler {n:?}"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--host" => args.host = Host::parse(&value("--host")?)?,
            "--idle-only" => args.idle_only = true,
            "--no-netns" => args.netns = false,
            "-h" | "--help" => {
                println!(
                    "tunnel_bench [--mib N (256)] [--runs N (3)] [--warmup-mib N (16)] \
                     [--idle N (1000; 0 skips the idle case)] [--only zt,go-proxy,go-tproxy] \
                     [--host go|zt|router (go)] [--idle-only] [--zt-tunnel PATH (default: zt-tunnel beside this program)] \
                     [--zt-log-level LEVEL (info)] [--keep-logs DIR] [--no-netns]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.idle_only && args.idle == 0 {
        bail!("--idle-only needs idle connections (--idle N, N > 0)");
    }
    if args.mib == 0 || args.runs == 0 || args.warmup_mib == 0 {
        bail!("--mib, --runs and --warmup-mib must be positive");
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// Isolation and limits

/// Moves this thread (and so every thread and process started from it later) into a new network
/// namespace, and brings its loopback interface up. Call before any other thread exists.
fn enter_private_netns() -> Result<()> {
    let threads = std::fs::read_dir("/proc/self/task").map_or(0, |d| d.count());
    if threads != 1 {
        bail!("{threads} threads before unshare: the others would stay in the host namespace");
    }
    // SAFETY: unshare has no memory-safety preconditions.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).context("unshare(CLONE_NEWNET)");
    }
    // SAFETY: a plain socket call; the fd is closed below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("socket");
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(b"lo") {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS / SIOCSIFFLAGS read and write the ifreq we own; the flags member of
    // the union is the one these requests use.
    let rc = unsafe {
        if libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut ifr) != 0 {
            -1
        } else {
            ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
            libc::ioctl(fd, libc::SIOCSIFFLAGS, &ifr)
        }
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the fd we opened.
    unsafe { libc::close(fd) };
    if rc != 0 {
        return Err(err).context("bring lo up in the new namespace");
    }
    Ok(())
}

/// Raises the open-file limit to its hard maximum: the idle case holds two sockets per
/// connection in this process (client and echo server).
fn raise_fd_limit() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit read and write the struct we own.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("getrlimit");
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit");
        }
    }
    Ok(lim.rlim_cur)
}

/// Whether iptables (with the mangle table the Go tproxy mode writes to) works here; the
/// reason when it does not.
fn iptables_usable() -> Result<(), String> {
    match Command::new("iptables")
        .args(["-t", "mangle", "-S"])
        .output()
    {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!(
            "`iptables -t mangle -S` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => Err(format!("no iptables command ({e})")),
    }
}

// ---------------------------------------------------------------------------------------------
// Process accounting

/// `utime + stime` of a process, in seconds (`/proc/<pid>/stat`, all its threads).
fn proc_cpu(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state).
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Some((utime + stime) / hz)
}

/// A `/proc/<pid>/status` field in KiB (`VmRSS:`, `VmHWM:`).
fn proc_kib(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

/// Resets a process's peak RSS (`VmHWM`) to its current RSS (needs root or the same user).
fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The edge router's pid: the process whose command line is `ziti router run <home>/router/...`.
fn find_router_pid(home: &Path) -> Option<u32> {
    let home = home.to_str()?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let args: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        let runs_router = args.windows(2).any(|w| w[0] == "router" && w[1] == "run");
        if runs_router && args.iter().any(|a| a.starts_with(home)) {
            return Some(pid);
        }
    }
    None
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

// ---------------------------------------------------------------------------------------------
// Local servers behind the host (on their own thread and runtime)

/// What the sink saw on one connection.
#[derive(Debug)]
struct SinkReport {
    accepted: Instant,
    last_byte: Instant,
    bytes: u64,
}

/// What the source did on one connection: when the length header arrived (the circuit is up).
#[derive(Debug)]
struct SourceReport {
    started: Instant,
    asked: u64,
}

struct Servers {
    sink_port: u16,
    source_port: u16,
    echo_port: u16,
    sink_reports: mpsc::UnboundedReceiver<SinkReport>,
    source_reports: mpsc::UnboundedReceiver<SourceReport>,
}

fn start_servers() -> Result<Servers> {
    let bind = || -> Result<(std::net::TcpListener, u16)> {
        let l = std::net::TcpListener::bind("127.0.0.1:0")?;
        l.set_nonblocking(true)?;
        let port = l.local_addr()?.port();
        Ok((l, port))
    };
    let (sink, sink_port) = bind()?;
    let (source, source_port) = bind()?;
    let (echo, echo_port) = bind()?;
    let (sink_tx, sink_reports) = mpsc::unbounded_channel();
    let (source_tx, source_reports) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("bench-servers".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("servers: runtime: {e}");
                    return;
                }
            };
            rt.block_on(async move {
                let (Ok(sink), Ok(source), Ok(echo)) = (
                    TcpListener::from_std(sink),
                    TcpListener::from_std(source),
                    TcpListener::from_std(echo),
                ) else {
                    eprintln!("servers: cannot register listeners");
                    return;
                };
                tokio::spawn(async move {
                    while let Ok((tcp, _)) = sink.accept().await {
                        let accepted = Instant::now();
                        let tx = sink_tx.clone();
                        tokio::spawn(async move {
                            let (bytes, last_byte) = drain(tcp).await;
                            let _ = tx.send(SinkReport {
                                accepted,
                                last_byte,
                                bytes,
                            });
                        });
                    }
                });
                tokio::spawn(async move {
                    while let Ok((tcp, _)) = echo.accept().await {
                        let _ = tcp.set_nodelay(true);
                        tokio::spawn(async move {
                            let (mut rd, mut wr) = tcp.into_split();
                            let _ = tokio::io::copy(&mut rd, &mut wr).await;
                            let _ = wr.shutdown().await;
                        });
                    }
                });
                while let Ok((mut tcp, _)) = source.accept().await {
                    let tx = source_tx.clone();
                    tokio::spawn(async move {
                        let mut hdr = [0u8; 8];
                        if tcp.read_exact(&mut hdr).await.is_err() {
                            return;
                        }
                        let started = Instant::now();
                        let asked = u64::from_le_bytes(hdr);
                        let _ = tx.send(SourceReport { started, asked });
                        let _ = pump(&mut tcp, asked).await;
                        let _ = tcp.shutdown().await;
                        // Wait for the client to close (so no RST cuts the tail off).
                        let mut buf = [0u8; 64];
                        let _ =
                            tokio::time::timeout(Duration::from_secs(30), tcp.read(&mut buf)).await;
                    });
                }
            });
        })?;
    Ok(Servers {
        sink_port,
        source_port,
        echo_port,
        sink_reports,
        source_reports,
    })
}

/// Reads to EOF (or error); returns the byte count and when the last byte arrived.
async fn drain(mut r: impl AsyncRead + Unpin) -> (u64, Instant) {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let mut last = Instant::now();
    loop {
        match tokio::time::timeout(STALL, r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return (total, last),
            Ok(Ok(n)) => {
                total += n as u64;
                last = Instant::now();
            }
        }
    }
}

/// Writes `len` bytes of a fixed pattern in [`CHUNK`] writes.
async fn pump(w: &mut (impl AsyncWrite + Unpin), len: u64) -> std::io::Result<()> {
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i * 7 + 13) as u8).collect();
    let mut left = len;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        tokio::time::timeout(STALL, w.write_all(&chunk[..n]))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "write stalled"))??;
        left -= n as u64;
    }
    Ok(())
}

/// Reads exactly `len` bytes; returns when the last one arrived.
async fn read_n(r: &mut (impl AsyncRead + Unpin), len: u64) -> Result<Instant> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    while total < len {
        let n = tokio::time::timeout(STALL, r.read(&mut buf))
            .await
            .map_err(|_| anyhow!("download stalled after {total} of {len} bytes"))??;
        if n == 0 {
            bail!("download ended after {total} of {len} bytes");
        }
        total += n as u64;
    }
    if total != len {
        bail!("download got {total} bytes, asked for {len}");
    }
    Ok(Instant::now())
}

/// One echo round trip of a short message; an answer missing for 20 s is an error.
async fn echo_round_trip(s: &mut TcpStream, i: usize) -> Result<()> {
    let msg = format!("idle connection {i:05}");
    s.write_all(msg.as_bytes()).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut back))
        .await
        .map_err(|_| anyhow!("no echo in 20 s"))??;
    if back != msg.as_bytes() {
        bail!("echo {i}: wrong bytes");
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The network

/// Names of one set of services.
#[derive(Debug, Clone)]
struct Services {
    sink: String,
    source: String,
    echo: String,
}

struct Net {
    net: TestNet,
    /// Dialed by zt-tunnel (hostname intercepts) and by the Go proxy.
    services: Services,
    zt_identity: PathBuf,
    proxy_identity: PathBuf,
    tproxy_identity: PathBuf,
}

fn intercept_json(addr: &str, port: u16, connect_timeout_seconds: u32) -> String {
    format!(
        r#"{{"protocols":["tcp"],"addresses":["{addr}"],"portRanges":[{{"low":{port},"high":{port}}}],"dialOptions":{{"connectTimeoutSeconds":{connect_timeout_seconds}}}}}"#
    )
}

/// Creates the sink, source and echo services with `intercepts` (one address each), dialable
/// by `#{clients}` and bindable by the identities `hosts` names (a role: `#attr` or `@name`).
fn create_services(
    net: &TestNet,
    base: &str,
    ports: [u16; 3],
    intercepts: [String; 3],
    clients: &str,
    hosts: &str,
) -> Result<Services> {
    let mut names = Vec::new();
    for ((what, port), addr) in ["sink", "source", "echo"]
        .into_iter()
        .zip(ports)
        .zip(intercepts)
    {
        let name = format!("{base}-{what}");
        net.create_config(
            &format!("{name}-host"),
            "host.v1",
            &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#),
        )?;
        // The echo service gets a long dial timeout: the idle connections are opened
        // `IDLE_OPENING` at a time on a busy machine.
        let timeout = if what == "echo" { 30 } else { 10 };
        net.create_config(
            &format!("{name}-intercept"),
            "intercept.v1",
            &intercept_json(&addr, 80, timeout),
        )?;
        net.create_service(
            &name,
            &[&format!("{name}-host"), &format!("{name}-intercept")],
            &[],
            false,
        )?;
        names.push(name);
    }
    let roles: Vec<String> = names.iter().map(|s| format!("@{s}")).collect();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    net.create_service_policy(
        &format!("{base}-dial"),
        "Dial",
        &roles,
        &[&format!("#{clients}")],
    )?;
    net.create_service_policy(&format!("{base}-bind"), "Bind", &roles, &[hosts])?;
    let [sink, source, echo]: [String; 3] = names
        .try_into()
        .map_err(|_| anyhow!("three services expected"))?;
    Ok(Services { sink, source, echo })
}

fn setup_network(
    servers: &Servers,
    with_tproxy: bool,
    host: Host,
    zt_bin: Option<&Path>,
) -> Result<(Net, Option<ChildGuard>)> {
    let net = TestNet::start().context("start the test network")?;
    let base = unique_name("tb");
    let clients = format!("{base}-clients");
    let tproxy_clients = format!("{base}-tproxy-clients");
    let host_attr = format!("{base}-hosts");
    let hosts = match host {
        Host::Router => format!("@{}", net.router().name),
        Host::Go | Host::Zt => format!("#{host_attr}"),
    };
    let ports = [servers.sink_port, servers.source_port, servers.echo_port];
    let services = create_services(
        &net,
        &base,
        ports,
        ZT_HOSTS.map(String::from),
        &clients,
        &hosts,
    )?;
    if with_tproxy {
        // The same servers again, intercepting IPs, dialable only by the tproxy identity.
        create_services(
            &net,
            &format!("{base}-tp"),
            ports,
            TPROXY_IPS.map(|ip| ip.to_string()),
            &tproxy_clients,
            &hosts,
        )?;
    }
    let enroll = |who: &str, attr: &str| -> Result<PathBuf> {
        let id = format!("{base}-{who}");
        let jwt = net.create_identity(&id, &[attr])?;
        let out = net.home().join(format!("{id}.json"));
        net.cli_enroll(&jwt, &out, "EC")?;
        Ok(out)
    };
    let zt_identity = enroll("zt", &clients)?;
    let proxy_identity = enroll("go-proxy", &clients)?;
    let tproxy_identity = if with_tproxy {
        enroll("go-tproxy", &tproxy_clients)?
    } else {
        PathBuf::new()
    };
    let host = match host {
        Host::Go => {
            let identity = enroll("host", &host_attr)?;
            let guard = net
                .spawn_go_tunnel("host", &identity, &[])
                .context("start ziti tunnel host")?;
            Some(guard)
        }
        Host::Zt => {
            let identity = enroll("host", &host_attr)?;
            let bin = zt_bin.ok_or_else(|| anyhow!("--host zt needs the zt-tunnel binary"))?;
            let home = net.home();
            let mut cmd = Command::new(bin);
            cmd.env_remove("RUST_LOG")
                .env_remove("ZT_LOG_LEVEL")
                .args(["--log-level", "info", "--log-file"])
                .arg(home.join("zt-tunnel-host.log"))
                .args(["run", "--host-only", "--identity"])
                .arg(&identity);
            let guard = ChildGuard::spawn("zt-tunnel host", cmd, &home.join("zt-tunnel-host.out"))
                .context("start zt-tunnel host")?;
            Some(guard)
        }
        Host::Router => None,
    };
    Ok((
        Net {
            net,
            services,
            zt_identity,
            proxy_identity,
            tproxy_identity,
        },
        host,
    ))
}

// ---------------------------------------------------------------------------------------------
// The tunnelers

/// Where the client connects to reach each service through one tunneler.
#[derive(Debug, Clone, Copy)]
struct Targets {
    sink: SocketAddr,
    source: SocketAddr,
    echo: SocketAddr,
}

struct Running {
    guard: ChildGuard,
    targets: Targets,
    /// The tunneler's log (zt-tunnel's `--log-file`, the Go tunneler's output).
    log: PathBuf,
}

impl Running {
    fn log_tail(&self, n: usize) -> String {
        tail(&self.log, n)
    }

    fn pid(&self) -> Result<u32> {
        self.guard
            .pid()
            .ok_or_else(|| anyhow!("the tunneler has no pid"))
    }
}

/// Asks zt-tunnel's DNS server for `name`'s A record.
async fn resolve(name: &str) -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    let mut msg = Message::query();
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    msg.metadata.id = 0x7b7b;
    msg.metadata.recursion_desired = true;
    sock.send_to(&msg.to_vec().ok()?, ZT_DNS).await.ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// The path of the zt-tunnel binary: `--zt-tunnel`, else the one beside this program.
fn zt_bin(args: &Args) -> Result<PathBuf> {
    let path = match &args.zt_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()?
            .parent()
            .ok_or_else(|| anyhow!("this program has no directory"))?
            .join("zt-tunnel"),
    };
    if !path.is_file() {
        bail!(
            "no zt-tunnel binary at {} (build it: cargo build --release -p ziti-tunnel, \
             or give --zt-tunnel PATH)",
            path.display()
        );
    }
    Ok(path)
}

async fn start_zt(net: &Net, bin: &Path, log_level: &str) -> Result<Running> {
    let home = net.net.home();
    let mut cmd = Command::new(bin);
    cmd.env_remove("RUST_LOG")
        .env_remove("ZT_LOG_LEVEL")
        .args(["--log-level", log_level])
        .arg("--log-file")
        .arg(home.join("zt-tunnel.log"))
        .args(["run", "--identity"])
        .arg(&net.zt_identity)
        .args(["--tun-name", "ztbench0", "--dns-upstream", "127.0.0.1:9"]);
    let mut guard = ChildGuard::spawn("zt-tunnel run", cmd, &home.join("zt-tunnel.out"))?;
    let mut ips = Vec::new();
    let deadline = Instant::now() + SETUP;
    for name in ZT_HOSTS {
        loop {
            if let Some(ip) = resolve(name).await {
                ips.push(ip);
                break;
            }
            if !guard.is_running() {
                bail!(
                    "zt-tunnel exited; last output:\n{}\nlog:\n{}",
                    guard.log_tail(20),
                    tail(&home.join("zt-tunnel.log"), 20)
                );
            }
            if Instant::now() > deadline {
                bail!(
                    "{name} did not resolve through zt-tunnel's DNS in {SETUP:?}; log:\n{}",
                    tail(&home.join("zt-tunnel.log"), 20)
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
    let at = |i: usize| SocketAddr::from((ips[i], 80));
    Ok(Running {
        guard,
        targets: Targets {
            sink: at(0),
            source: at(1),
            echo: at(2),
        },
        log: home.join("zt-tunnel.log"),
    })
}

async fn start_go_proxy(net: &Net) -> Result<Running> {
    let ports = [
        testnet::process::free_port()?,
        testnet::process::free_port()?,
        testnet::process::free_port()?,
    ];
    let s = &net.services;
    let guard = net.net.spawn_go_tunnel(
        "proxy",
        &net.proxy_identity,
        &[
            &format!("{}:{}", s.sink, ports[0]),
            &format!("{}:{}", s.source, ports[1]),
            &format!("{}:{}", s.echo, ports[2]),
        ],
    )?;
    let deadline = Instant::now() + SETUP;
    for port in ports {
        // A probe connection makes the proxy dial; the servers ignore it (no header, no bytes).
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!(
                    "the Go proxy does not listen on 127.0.0.1:{port}; log:\n{}",
                    guard.log_tail(20)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let at = |i: usize| SocketAddr::from((Ipv4Addr::LOCALHOST, ports[i]));
    let log = guard.log_path().to_path_buf();
    Ok(Running {
        guard,
        targets: Targets {
            sink: at(0),
            source: at(1),
            echo: at(2),
        },
        log,
    })
}

fn start_go_tproxy(net: &Net) -> Result<Running> {
    // Its DNS and hostname pool stay out of zt-tunnel's way (our services intercept IPs only;
    // zt-tunnel's DNS holds 127.0.0.1:53).
    let guard = net.net.spawn_go_tunnel(
        "tproxy",
        &net.tproxy_identity,
        &[
            "--resolver",
            "udp://127.0.0.2:53",
            "--dnsSvcIpRange",
            "198.18.0.1/16",
        ],
    )?;
    let at = |i: usize| SocketAddr::from((TPROXY_IPS[i], 80));
    let log = guard.log_path().to_path_buf();
    Ok(Running {
        guard,
        targets: Targets {
            sink: at(0),
            source: at(1),
            echo: at(2),
        },
        log,
    })
}

/// Copies the network's logs (controller, router, Go tunnelers, zt-tunnel) to `to` when
/// dropped: on success and on error, before the network's home is removed.
struct KeepLogs {
    from: PathBuf,
    to: Option<PathBuf>,
}

impl Drop for KeepLogs {
    fn drop(&mut self) {
        let Some(to) = &self.to else {
            return;
        };
        if let Err(e) = std::fs::create_dir_all(to) {
            eprintln!("--keep-logs {}: {e}", to.display());
            return;
        }
        let Ok(entries) = std::fs::read_dir(&self.from) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            let is_log = path.extension().is_some_and(|x| x == "log" || x == "out");
            if is_log && let Some(name) = path.file_name() {
                let _ = std::fs::copy(&path, to.join(name));
            }
        }
        eprintln!("logs copied to {}", to.display());
    }
}

fn tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

// ---------------------------------------------------------------------------------------------
// Transfers

struct Bench {
    servers: Servers,
    tunnelers: BTreeMap<Tunneler, Running>,
    router_pid: Option<u32>,
    host_pid: Option<u32>,
}

#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    bytes: u64,
    tunneler_cpu: Option<f64>,
    router_cpu: Option<f64>,
    host_cpu: Option<f64>,
    /// Peak RSS of the tunneler during the case, KiB.
    peak_rss: Option<u64>,
}

/// What one round of the idle case saw.
#[derive(Debug, Clone)]
struct IdleRound {
    opened: usize,
    failed: Vec<String>,
    open_secs: f64,
    rss_before: Option<u64>,
    rss_with: Option<u64>,
    /// RSS once they are closed and their circuits gone.
    rss_after: Option<u64>,
    alive_after: usize,
    /// CPU share (percent of one core) of the tunneler, the router and the host over
    /// `IDLE_CPU_WINDOW` with the idle connections open and nothing moving.
    idle_cpu: [Option<f64>; 3],
}

/// How long the processes' CPU use is sampled with only the idle connections open.
const IDLE_CPU_WINDOW: Duration = Duration::from_secs(5);

impl Bench {
    fn running(&self, t: Tunneler) -> Result<&Running> {
        self.tunnelers
            .get(&t)
            .ok_or_else(|| anyhow!("{} is not running", t.name()))
    }

    fn drain_reports(&mut self) {
        while self.servers.sink_reports.try_recv().is_ok() {}
        while self.servers.source_reports.try_recv().is_ok() {}
    }

    /// The sink's report on the connection accepted after `since` (earlier ones are stray: the
    /// Go proxy's readiness probes and failed warm-ups).
    async fn sink_report(&mut self, len: u64, since: Instant) -> Result<SinkReport> {
        let r = loop {
            let r = tokio::time::timeout(STALL * 2, self.servers.sink_reports.recv())
                .await
                .map_err(|_| anyhow!("the sink reported nothing"))?
                .ok_or_else(|| anyhow!("sink gone"))?;
            if r.accepted >= since {
                break r;
            }
        };
        if r.bytes != len {
            bail!("sink received {} of {len} bytes", r.bytes);
        }
        Ok(r)
    }

    /// One upload of `len` bytes; the seconds from the sink's accept to its last byte.
    async fn upload(&mut self, target: SocketAddr, len: u64) -> Result<f64> {
        self.drain_reports();
        let since = Instant::now();
        let mut tcp = tokio::time::timeout(STALL, TcpStream::connect(target))
            .await
            .map_err(|_| anyhow!("connect to {target} timed out"))??;
        tcp.set_nodelay(true)?;
        pump(&mut tcp, len).await?;
        tcp.shutdown().await?;
        let r = self.sink_report(len, since).await?;
        drop(tcp);
        Ok((r.last_byte - r.accepted).as_secs_f64())
    }

    /// `streams` simultaneous downloads of `len` bytes each; the seconds from the first source
    /// reading its header to the last byte any client reads.
    async fn download(&mut self, target: SocketAddr, len: u64, streams: usize) -> Result<f64> {
        self.drain_reports();
        let mut tasks = JoinSet::new();
        for _ in 0..streams {
            tasks.spawn(async move {
                let mut tcp = tokio::time::timeout(STALL, TcpStream::connect(target))
                    .await
                    .map_err(|_| anyhow!("connect to {target} timed out"))??;
                tcp.set_nodelay(true)?;
                tcp.write_all(&len.to_le_bytes()).await?;
                let end = read_n(&mut tcp, len).await?;
                let _ = tcp.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(10), drain(&mut tcp)).await;
                Ok::<_, anyhow::Error>(end)
            });
        }
        let mut last = None::<Instant>;
        let mut error = None;
        while let Some(r) = tasks.join_next().await {
            match r.map_err(anyhow::Error::from).and_then(|r| r) {
                Ok(end) => last = Some(last.map_or(end, |l| l.max(end))),
                Err(e) => {
                    error.get_or_insert(e);
                }
            }
        }
        if let Some(e) = error {
            return Err(e);
        }
        let mut first = None::<Instant>;
        for _ in 0..streams {
            let r =
                tokio::time::timeout(Duration::from_secs(5), self.servers.source_reports.recv())
                    .await
                    .map_err(|_| anyhow!("the source reported fewer than {streams} requests"))?
                    .ok_or_else(|| anyhow!("source gone"))?;
            if r.asked != len {
                bail!("source asked for {} bytes, expected {len}", r.asked);
            }
            first = Some(first.map_or(r.started, |f| f.min(r.started)));
        }
        let (Some(first), Some(last)) = (first, last) else {
            bail!("no stream");
        };
        Ok((last - first).as_secs_f64())
    }

    /// One measured case with the CPU and memory of the processes involved.
    async fn measure(&mut self, t: Tunneler, case: Case, len: u64) -> Result<Sample> {
        let run = self.running(t)?;
        let pid = run.pid()?;
        let targets = run.targets;
        let peak_ok = reset_peak_rss(pid);
        let c0 = proc_cpu(pid);
        let r0 = self.router_pid.and_then(proc_cpu);
        let h0 = self.host_pid.and_then(proc_cpu);
        let (secs, bytes) = match case {
            Case::Up | Case::BeforeIdleUp | Case::IdleUp => {
                (self.upload(targets.sink, len).await?, len)
            }
            Case::Down | Case::BeforeIdleDown | Case::IdleDown => {
                (self.download(targets.source, len, 1).await?, len)
            }
            Case::Multi => (
                self.download(targets.source, len, STREAMS).await?,
                len * STREAMS as u64,
            ),
        };
        let c1 = proc_cpu(pid);
        let r1 = self.router_pid.and_then(proc_cpu);
        let h1 = self.host_pid.and_then(proc_cpu);
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Ok(Sample {
            secs,
            bytes,
            tunneler_cpu: delta(c0, c1),
            router_cpu: delta(r0, r1),
            host_cpu: delta(h0, h1),
            peak_rss: if peak_ok {
                proc_kib(pid, "VmHWM:")
            } else {
                None
            },
        })
    }

    /// A small transfer each way (and an echo) that must succeed before measuring: DNS answered,
    /// intercepts installed, the host bound.
    async fn warm_up(&mut self, t: Tunneler, len: u64) -> Result<()> {
        let deadline = Instant::now() + SETUP;
        loop {
            let targets = self.running(t)?.targets;
            let attempt = async {
                self.upload(targets.sink, len).await.context("upload")?;
                self.download(targets.source, len, 1)
                    .await
                    .context("download")?;
                let mut echo = TcpStream::connect(targets.echo).await.context("echo")?;
                echo_round_trip(&mut echo, 0).await.context("echo")
            };
            match attempt.await {
                Ok(()) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "  warm-up {} ({:.0} s left): {e:#}; retrying",
                        t.name(),
                        (deadline - Instant::now()).as_secs_f64()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    let run = self.running(t)?;
                    return Err(e.context(format!(
                        "warm-up through {}; its log:\n{}",
                        t.name(),
                        run.log_tail(20)
                    )));
                }
            }
        }
    }
}

/// Opens `n` connections to the echo service through `target`, [`IDLE_OPENING`] at a time,
/// each making one round trip. Returns the open ones and the reasons of the failed ones.
async fn open_idle(target: SocketAddr, n: usize) -> (Vec<TcpStream>, Vec<String>) {
    let permits = Arc::new(Semaphore::new(IDLE_OPENING));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await?;
            let open = async {
                let mut s = TcpStream::connect(target).await?;
                s.set_nodelay(true)?;
                echo_round_trip(&mut s, i).await?;
                Ok::<_, anyhow::Error>(s)
            };
            tokio::time::timeout(Duration::from_secs(60), open)
                .await
                .map_err(|_| anyhow!("not open in 60 s"))?
        });
    }
    let mut open = Vec::with_capacity(n);
    let mut failed = Vec::new();
    while let Some(r) = tasks.join_next().await {
        match r.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(s) => open.push(s),
            Err(e) => failed.push(format!("{e:#}")),
        }
    }
    (open, failed)
}

/// One more round trip on each held connection; how many answered.
async fn check_idle(conns: Vec<TcpStream>) -> usize {
    let permits = Arc::new(Semaphore::new(IDLE_OPENING));
    let mut tasks = JoinSet::new();
    for (i, mut s) in conns.into_iter().enumerate() {
        let permits = permits.clone();
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await.ok()?;
            echo_round_trip(&mut s, i).await.ok()
        });
    }
    let mut alive = 0;
    while let Some(r) = tasks.join_next().await {
        if matches!(r, Ok(Some(()))) {
            alive += 1;
        }
    }
    alive
}

// ---------------------------------------------------------------------------------------------
// Report

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn rate(s: &Sample) -> f64 {
    s.bytes as f64 / MIB as f64 / s.secs
}

fn median_rate(samples: &[Sample]) -> Option<f64> {
    let mut v: Vec<f64> = samples.iter().map(rate).collect();
    (!v.is_empty()).then(|| median(&mut v))
}

fn cpu_per_gib(samples: &[Sample], pick: fn(&Sample) -> Option<f64>) -> String {
    let mut v: Option<Vec<f64>> = samples
        .iter()
        .map(|s| pick(s).map(|c| c / (s.bytes as f64 / GIB)))
        .collect();
    match v.as_deref_mut() {
        Some(v) if !v.is_empty() => format!("{:.2}", median(v)),
        _ => "-".into(),
    }
}

type Results = BTreeMap<(Tunneler, Case), Vec<Sample>>;
type Failures = BTreeMap<(Tunneler, Case), Vec<String>>;

fn table(results: &Results, failures: &Failures, tunnelers: &[Tunneler], idle: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| tunneler | case | MiB/s median | MiB/s range (n) | tunneler CPU s/GiB | tunneler peak RSS MiB (lowest - highest run) | router CPU s/GiB | host CPU s/GiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
    let mut cases = vec![Case::Up, Case::Down, Case::Multi];
    if idle > 0 {
        cases.extend([Case::IdleUp, Case::IdleDown]);
    }
    for case in cases {
        for t in tunnelers {
            let key = (*t, case);
            let samples = results.get(&key).map(Vec::as_slice).unwrap_or_default();
            let fails = failures.get(&key).map(Vec::len).unwrap_or_default();
            if samples.is_empty() && fails == 0 {
                // Not measured (`--idle-only`).
                continue;
            }
            let mut rates: Vec<f64> = samples.iter().map(rate).collect();
            let (med, range) = if rates.is_empty() {
                ("failed".to_string(), "-".to_string())
            } else {
                let m = median(&mut rates);
                (
                    format!("{m:.1}"),
                    format!(
                        "{:.1} - {:.1} ({}{})",
                        rates[0],
                        rates[rates.len() - 1],
                        rates.len(),
                        if fails > 0 {
                            format!(", {fails} failed")
                        } else {
                            String::new()
                        }
                    ),
                )
            };
            // Lowest and highest: a later run's peak includes what the tunneler kept of the
            // earlier cases' memory (the idle rounds' in particular).
            let peaks: Vec<u64> = samples.iter().filter_map(|s| s.peak_rss).collect();
            let peak = match (peaks.iter().min(), peaks.iter().max()) {
                (Some(lo), Some(hi)) => {
                    format!("{:.1} - {:.1}", *lo as f64 / 1024.0, *hi as f64 / 1024.0)
                }
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} |",
                t.label(),
                case.name(idle),
                med,
                range,
                cpu_per_gib(samples, |s| s.tunneler_cpu),
                peak,
                cpu_per_gib(samples, |s| s.router_cpu),
                cpu_per_gib(samples, |s| s.host_cpu),
            );
        }
    }
    out
}

fn idle_table(
    results: &Results,
    rounds: &BTreeMap<Tunneler, Vec<IdleRound>>,
    tunnelers: &[Tunneler],
    idle: usize,
) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| tunneler | direction | MiB/s just before (median) | MiB/s with {idle} idle (median) | ratio of medians | ratio per run | idle conns open / failed / alive after (per round) | time to open them, s | tunneler RSS before -> with them -> after closing, MiB (KiB per conn) | CPU with only them open, % of a core: tunneler / router / host (per round) |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|");
    for t in tunnelers {
        let Some(rounds) = rounds.get(t) else {
            continue;
        };
        let opened: Vec<String> = rounds
            .iter()
            .map(|r| format!("{}/{}/{}", r.opened, r.failed.len(), r.alive_after))
            .collect();
        let open_secs: Vec<String> = rounds
            .iter()
            .map(|r| format!("{:.1}", r.open_secs))
            .collect();
        let rss: Vec<String> = rounds
            .iter()
            .map(|r| match (r.rss_before, r.rss_with) {
                (Some(b), Some(w)) => format!(
                    "{:.1} -> {:.1} -> {} ({:.0})",
                    b as f64 / 1024.0,
                    w as f64 / 1024.0,
                    r.rss_after
                        .map_or("-".into(), |a| format!("{:.1}", a as f64 / 1024.0)),
                    (w as f64 - b as f64) / r.opened.max(1) as f64
                ),
                _ => "-".into(),
            })
            .collect();
        let idle_cpu: Vec<String> = rounds
            .iter()
            .map(|r| {
                r.idle_cpu
                    .iter()
                    .map(|v| v.map_or("-".into(), |v| format!("{v:.1}")))
                    .collect::<Vec<_>>()
                    .join(" / ")
            })
            .collect();
        for (plain, with) in [
            (Case::BeforeIdleUp, Case::IdleUp),
            (Case::BeforeIdleDown, Case::IdleDown),
        ] {
            let p = results.get(&(*t, plain)).and_then(|s| median_rate(s));
            let w = results.get(&(*t, with)).and_then(|s| median_rate(s));
            // Samples are pushed in run order; a failed run leaves the pairing unknown.
            let per_run = match (results.get(&(*t, plain)), results.get(&(*t, with))) {
                (Some(a), Some(b)) if a.len() == b.len() => a
                    .iter()
                    .zip(b)
                    .map(|(a, b)| format!("{:.2}", rate(b) / rate(a)))
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "-".into(),
            };
            let fmt = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1}"));
            let ratio = match (p, w) {
                (Some(p), Some(w)) if p > 0.0 => format!("{:.2}", w / p),
                _ => "-".into(),
            };
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                t.label(),
                if plain == Case::BeforeIdleUp {
                    "upload"
                } else {
                    "download"
                },
                fmt(p),
                fmt(w),
                ratio,
                per_run,
                opened.join(", "),
                open_secs.join(", "),
                rss.join(", "),
                idle_cpu.join(", "),
            );
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------

fn main() -> Result<()> {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .try_init();
    let args = parse_args()?;
    let zt = if args.tunnelers.contains(&Tunneler::Zt) {
        Some(zt_bin(&args)?)
    } else {
        None
    };
    // Before any thread exists: the binary (cached or built), then the private namespace.
    testnet::ziti_bin::obtain().context("obtain the ziti binary")?;
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let isolation = if args.netns && root {
        enter_private_netns()?;
        "private network namespace (lo only)"
    } else {
        if args.netns {
            eprintln!(
                "warning: not root, so no private network namespace: the OpenZiti processes \
                 listen on all interfaces of this host while the benchmark runs"
            );
        }
        "host network namespace"
    };
    eprintln!("isolation: {isolation}");
    let fds = raise_fd_limit()?;
    eprintln!("open-file limit {fds}");
    let load_start = loadavg();

    let mut notes = Vec::new();
    let mut tunnelers = args.tunnelers.clone();
    if tunnelers.contains(&Tunneler::GoTproxy)
        && let Err(why) = iptables_usable()
    {
        let note = format!("go-tproxy skipped: iptables is not usable in the namespace: {why}");
        eprintln!("{note}");
        notes.push(note);
        tunnelers.retain(|t| *t != Tunneler::GoTproxy);
    }
    if tunnelers.is_empty() {
        bail!("no tunneler left to measure");
    }

    let servers = start_servers()?;
    eprintln!("starting the test network (controller + router on loopback)...");
    let (net, host) = setup_network(
        &servers,
        tunnelers.contains(&Tunneler::GoTproxy),
        args.host,
        zt.as_deref(),
    )?;
    let keep_logs = KeepLogs {
        from: net.net.home().to_path_buf(),
        to: args.keep_logs.clone(),
    };
    let router_pid = find_router_pid(net.net.home());
    let host_pid = host.as_ref().and_then(|h| h.pid());
    eprintln!(
        "network up: controller {}, router port {} (pid {:?}), host: {} (pid {:?})",
        net.net.ctrl_url(),
        net.net.router().port,
        router_pid,
        args.host.label(),
        host_pid
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-client")
        .enable_all()
        .build()?;
    let outcome = rt.block_on(async {
        let mut bench = Bench {
            servers,
            tunnelers: BTreeMap::new(),
            router_pid,
            host_pid,
        };
        for t in &tunnelers {
            let running = match t {
                Tunneler::Zt => {
                    let bin = zt.as_deref().ok_or_else(|| anyhow!("no zt-tunnel binary"))?;
                    start_zt(&net, bin, &args.zt_log_level).await?
                }
                Tunneler::GoProxy => start_go_proxy(&net).await?,
                Tunneler::GoTproxy => start_go_tproxy(&net)?,
            };
            eprintln!(
                "{} pid {:?}: sink {}, source {}, echo {}",
                t.name(),
                running.guard.pid(),
                running.targets.sink,
                running.targets.source,
                running.targets.echo
            );
            bench.tunnelers.insert(*t, running);
        }
        // The Go proxy's readiness probes made it dial; let those circuits come and go.
        tokio::time::sleep(Duration::from_secs(2)).await;
        for t in &tunnelers {
            bench.warm_up(*t, args.warmup_mib * MIB).await?;
        }
        eprintln!(
            "warm-up done; {} MiB per stream, {} runs, {} idle connections, load {}",
            args.mib,
            args.runs,
            args.idle,
            loadavg()
        );
        let len = args.mib * MIB;
        let mut results = Results::new();
        let mut failures = Failures::new();
        let mut rounds: BTreeMap<Tunneler, Vec<IdleRound>> = BTreeMap::new();
        let record = |run: usize,
                          t: Tunneler,
                          case: Case,
                          r: Result<Sample>,
                          results: &mut Results,
                          failures: &mut Failures| match r {
            Ok(s) => {
                eprintln!(
                    "run {run} {:<9} {:<26} {:>7.1} MiB/s  tunneler cpu {:>6} s  peak rss {:>7} KiB  router {:>6} s  host {:>6} s  load {}",
                    t.name(),
                    case.name(args.idle),
                    rate(&s),
                    s.tunneler_cpu.map_or("-".into(), |c| format!("{c:.2}")),
                    s.peak_rss.map_or("-".into(), |k| k.to_string()),
                    s.router_cpu.map_or("-".into(), |c| format!("{c:.2}")),
                    s.host_cpu.map_or("-".into(), |c| format!("{c:.2}")),
                    loadavg()
                );
                results.entry((t, case)).or_default().push(s);
            }
            Err(e) => {
                eprintln!("run {run} {} {}: FAILED: {e:#}", t.name(), case.name(args.idle));
                failures.entry((t, case)).or_default().push(format!("{e:#}"));
            }
        };
        for run in 1..=args.runs {
            for t in &tunnelers {
                for case in [Case::Up, Case::Down, Case::Multi] {
                    if args.idle_only {
                        break;
                    }
                    let r = bench.measure(*t, case, len).await;
                    record(run, *t, case, r, &mut results, &mut failures);
                }
            }
            if args.idle == 0 {
                continue;
            }
            for t in &tunnelers {
                // The same streams without idle connections, right before them: the ratio of
                // point 3 compares measurements minutes apart otherwise, and on this shared
                // network a later run is often slower for every tunneler.
                for case in [Case::BeforeIdleUp, Case::BeforeIdleDown] {
                    let r = bench.measure(*t, case, len).await;
                    record(run, *t, case, r, &mut results, &mut failures);
                }
                let run_ = bench.running(*t)?;
                let (pid, echo) = (run_.pid()?, run_.targets.echo);
                let rss_before = proc_kib(pid, "VmRSS:");
                let started = Instant::now();
                let (conns, failed) = open_idle(echo, args.idle).await;
                let open_secs = started.elapsed().as_secs_f64();
                eprintln!(
                    "run {run} {}: {} idle connections open, {} failed, in {open_secs:.1} s{}",
                    t.name(),
                    conns.len(),
                    failed.len(),
                    failed
                        .first()
                        .map(|e| format!(" (first failure: {e})"))
                        .unwrap_or_default()
                );
                // Let the opening burst settle before measuring beside them.
                tokio::time::sleep(Duration::from_secs(3)).await;
                let rss_with = proc_kib(pid, "VmRSS:");
                // What the idle connections alone cost each process, nothing moving.
                let pids = [Some(pid), bench.router_pid, bench.host_pid];
                let before = pids.map(|p| p.and_then(proc_cpu));
                tokio::time::sleep(IDLE_CPU_WINDOW).await;
                let after = pids.map(|p| p.and_then(proc_cpu));
                let mut idle_cpu = [None; 3];
                for k in 0..3 {
                    if let (Some(b), Some(a)) = (before[k], after[k]) {
                        idle_cpu[k] = Some(100.0 * (a - b) / IDLE_CPU_WINDOW.as_secs_f64());
                    }
                }
                let pct = |v: Option<f64>| v.map_or("-".into(), |v| format!("{v:.1} %"));
                eprintln!(
                    "run {run} {}: CPU over {} s with only the idle connections open: tunneler {}, router {}, host {}",
                    t.name(),
                    IDLE_CPU_WINDOW.as_secs(),
                    pct(idle_cpu[0]),
                    pct(idle_cpu[1]),
                    pct(idle_cpu[2])
                );
                for case in [Case::IdleUp, Case::IdleDown] {
                    let r = bench.measure(*t, case, len).await;
                    record(run, *t, case, r, &mut results, &mut failures);
                }
                let opened = conns.len();
                let alive_after = check_idle(conns).await;
                eprintln!(
                    "run {run} {}: {alive_after} of {opened} idle connections still echo",
                    t.name()
                );
                rounds.entry(*t).or_default().push(IdleRound {
                    opened,
                    failed,
                    open_secs,
                    rss_before,
                    rss_with,
                    rss_after: None,
                    alive_after,
                    idle_cpu,
                });
                // The closed connections' circuits go away before the next measurement.
                tokio::time::sleep(Duration::from_secs(5)).await;
                if let Some(r) = rounds.get_mut(t).and_then(|r| r.last_mut()) {
                    r.rss_after = proc_kib(pid, "VmRSS:");
                }
            }
        }
        let logs: Vec<(Tunneler, String)> = bench
            .tunnelers
            .iter()
            .map(|(t, r)| (*t, r.log_tail(10)))
            .collect();
        Ok::<_, anyhow::Error>((results, failures, rounds, logs, bench))
    });
    let (results, failures, rounds, logs, bench) = outcome?;
    let load_end = loadavg();

    println!(
        "\n{} MiB per stream, {} runs per case (interleaved), {} idle connections, services \
         hosted by {}, {isolation}; load average at the start {load_start}, at the end {load_end}\n",
        args.mib,
        args.runs,
        args.idle,
        args.host.label()
    );
    print!("{}", table(&results, &failures, &tunnelers, args.idle));
    if args.idle > 0 {
        println!();
        print!("{}", idle_table(&results, &rounds, &tunnelers, args.idle));
    }
    for note in &notes {
        println!("\nnote: {note}");
    }
    for ((t, case), errs) in &failures {
        for e in errs {
            println!("\nfailure: {} {}: {e}", t.name(), case.name(args.idle));
        }
    }
    for (t, rs) in &rounds {
        for (i, r) in rs.iter().enumerate() {
            if let Some(e) = r.failed.first() {
                println!(
                    "\n{} idle round {}: {} connections failed to open; first: {e}",
                    t.name(),
                    i + 1,
                    r.failed.len()
                );
            }
        }
    }
    if !failures.is_empty() {
        for (t, log) in logs {
            println!("\nlast lines of the {} log:\n{log}", t.name());
        }
    }
    // Stop the tunnelers before the network goes away, then tear it all down.
    drop(bench);
    drop(rt);
    drop(host);
    drop(keep_logs);
    drop(net);
    Ok(())
}
