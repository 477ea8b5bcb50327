//! `flow_bench`: one stream, SDK flow control (xgress mode) vs legacy mode vs the Go SDK, in one
//! run on one throwaway local OpenZiti network (issue 8, point 6).
//!
//! ```sh
//! cargo build --release -p ziti-benches --bin flow_bench
//! target/release/flow_bench [--mib 512] [--runs 3] [--warmup-mib 16] [--only rust-xgress,go-legacy] [--no-netns]
//! ```
//!
//! Setup: a `testnet` network (controller + one edge router on loopback), two services hosted by
//! one `ziti tunnel host` (Go, default flags) that forwards to local TCP servers in this process:
//! a sink (reads to EOF and counts) and a source (reads an 8-byte little-endian length, writes that
//! many bytes, closes). Clients:
//!
//! * `rust-xgress`: our SDK, `ContextOptions { sdk_flow_control: true }`, `ctx.dial(service)`;
//! * `rust-legacy`: our SDK, `sdk_flow_control: false`;
//! * `go-xgress`: `ziti tunnel proxy sink:P source:Q --sdk-flow-control=true`, a local TCP
//!   client pushing through (or pulling from) the proxy port;
//! * `go-legacy`: the same with `--sdk-flow-control=false`.
//!
//! Each (client, direction) moves `--mib` MiB over one stream, `--runs` times, interleaved
//! (run 1 of every case, then run 2, ...). Timing, the same for every case:
//!
//! * upload: from the sink's `accept` (the circuit has reached the host) to the last byte the
//!   sink reads;
//! * download: from the source reading the length header (the circuit is up) to the client
//!   reading the last byte.
//!
//! CPU per GiB moved: for our SDK, this process's `getrusage(RUSAGE_SELF)` minus the CPU of the
//! thread running the local sink/source servers (so it counts the SDK, the TLS channel, and the
//! client loop feeding or draining the stream); for the Go proxy, `utime + stime` of the proxy
//! process from `/proc/<pid>/stat`. The edge router's and the Go host's CPU are given too.
//!
//! Isolation: the OpenZiti controller, router and Go proxies listen on all interfaces (the Go
//! proxy has no bind-address option). So, when run as root, the program first moves itself into
//! a private network namespace holding only `lo` (`unshare(CLONE_NEWNET)`), and every process it
//! starts inherits it: nothing is reachable from, or sent to, the host's networks. `--no-netns`
//! skips that (as a non-root user it is skipped with a warning). The `ziti` binary is obtained
//! before (from the cache, see the README). The network is torn down when the program ends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, bail};
use testnet::{ChildGuard, TestNet, unique_name};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use ziti_sdk::context::{ContextOptions, DialError, ZitiContext};
use ziti_sdk::identity::Identity;

const MIB: u64 = 1024 * 1024;
const CHUNK: usize = 64 * 1024;
/// A transfer that moves no byte for this long is reported as stalled.
const STALL: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Client {
    RustXgress,
    RustLegacy,
    GoXgress,
    GoLegacy,
}

impl Client {
    const ALL: [Client; 4] = [
        Client::RustXgress,
        Client::RustLegacy,
        Client::GoXgress,
        Client::GoLegacy,
    ];

    fn name(self) -> &'static str {
        match self {
            Client::RustXgress => "rust-xgress",
            Client::RustLegacy => "rust-legacy",
            Client::GoXgress => "go-xgress",
            Client::GoLegacy => "go-legacy",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Client::RustXgress => "our SDK, xgress (`sdk_flow_control: true`)",
            Client::RustLegacy => "our SDK, legacy (`sdk_flow_control: false`)",
            Client::GoXgress => "Go SDK proxy, `--sdk-flow-control=true`",
            Client::GoLegacy => "Go SDK proxy, `--sdk-flow-control=false`",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Dir {
    Up,
    Down,
}

impl Dir {
    fn name(self) -> &'static str {
        match self {
            Dir::Up => "upload",
            Dir::Down => "download",
        }
    }
}

struct Args {
    mib: u64,
    runs: usize,
    warmup_mib: u64,
    clients: Vec<Client>,
    netns: bool,
}

fn parse_args() -> Result<Args> {
    let mut args = Args {
        mib: 512,
        runs: 3,
        warmup_mib: 16,
        clients: Client::ALL.to_vec(),
        netns: true,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = |name: &str| it.next().ok_or_else(|| anyhow!("{name} needs a value"));
        match a.as_str() {
            "--mib" => args.mib = value("--mib")?.parse()?,
            "--runs" => args.runs = value("--runs")?.parse()?,
            "--warmup-mib" => args.warmup_mib = value("--warmup-mib")?.parse()?,
            "--only" => {
                let v = value("--only")?;
                args.clients = v
                    .split(',')
                    .map(|n| {
                        Client::ALL
                            .into_iter()
                            .find(|c| c.name() == n)
                            .ok_or_else(|| anyhow!("unknown client {n:?}"))
                    })
                    .collect::<Result<_>>()?;
            }
            "--no-netns" => args.netns = false,
            "-h" | "--help" => {
                println!(
                    "flow_bench [--mib N (512)] [--runs N (3)] [--warmup-mib N (16)] \
                     [--only rust-xgress,rust-legacy,go-xgress,go-legacy] [--no-netns]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.mib == 0 || args.runs == 0 {
        bail!("--mib and --runs must be positive");
    }
    Ok(args)
}

// ---------------------------------------------------------------------------------------------
// Isolation

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

// ---------------------------------------------------------------------------------------------
// CPU accounting

/// CPU seconds (user + system) of this whole process.
fn self_cpu() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 * 1e-6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// CPU seconds of one thread of this process (its CPU-time clock).
fn thread_cpu(clock: libc::clockid_t) -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec we pass.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// `utime + stime` of another process, in seconds (`/proc/<pid>/stat`, all its threads).
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
// Local servers behind the Go host (on their own thread, so their CPU can be subtracted)

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
    sink_reports: mpsc::UnboundedReceiver<SinkReport>,
    source_reports: mpsc::UnboundedReceiver<SourceReport>,
    cpu_clock: libc::clockid_t,
}

fn start_servers() -> Result<Servers> {
    let sink = std::net::TcpListener::bind("127.0.0.1:0")?;
    let source = std::net::TcpListener::bind("127.0.0.1:0")?;
    sink.set_nonblocking(true)?;
    source.set_nonblocking(true)?;
    let sink_port = sink.local_addr()?.port();
    let source_port = source.local_addr()?.port();
    let (sink_tx, sink_reports) = mpsc::unbounded_channel();
    let (source_tx, source_reports) = mpsc::unbounded_channel();
    let handle = std::thread::Builder::new()
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
                let (Ok(sink), Ok(source)) =
                    (TcpListener::from_std(sink), TcpListener::from_std(source))
                else {
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
    let mut clock: libc::clockid_t = 0;
    {
        use std::os::unix::thread::JoinHandleExt;
        // SAFETY: the thread is alive (it never returns while the listeners live) and we pass a
        // valid out-pointer.
        let rc = unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) };
        if rc != 0 {
            bail!("pthread_getcpuclockid: {rc}");
        }
    }
    // The thread lives as long as the process; detach it.
    drop(handle);
    Ok(Servers {
        sink_port,
        source_port,
        sink_reports,
        source_reports,
        cpu_clock: clock,
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

// ---------------------------------------------------------------------------------------------
// The network

struct Net {
    net: TestNet,
    sink_service: String,
    source_service: String,
    rust_identity: PathBuf,
    go_identity: [PathBuf; 2],
}

fn setup_network(sink_port: u16, source_port: u16) -> Result<(Net, ChildGuard)> {
    let net = TestNet::start().context("start the test network")?;
    let base = unique_name("flow");
    let clients = format!("{base}-clients");
    let hosts = format!("{base}-hosts");
    let mut services = Vec::new();
    for (what, port) in [("sink", sink_port), ("source", source_port)] {
        let name = format!("{base}-{what}");
        let cfg = format!("{name}-host");
        net.create_config(
            &cfg,
            "host.v1",
            &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#),
        )?;
        net.create_service(&name, &[&cfg], &[], false)?;
        services.push(name);
    }
    let roles: Vec<String> = services.iter().map(|s| format!("@{s}")).collect();
    let roles: Vec<&str> = roles.iter().map(String::as_str).collect();
    net.create_service_policy(
        &format!("{base}-dial"),
        "Dial",
        &roles,
        &[&format!("#{clients}")],
    )?;
    net.create_service_policy(
        &format!("{base}-bind"),
        "Bind",
        &roles,
        &[&format!("#{hosts}")],
    )?;
    let enroll = |who: &str, attr: &str| -> Result<PathBuf> {
        let id = format!("{base}-{who}");
        let jwt = net.create_identity(&id, &[attr])?;
        let out = net.home().join(format!("{id}.json"));
        net.cli_enroll(&jwt, &out, "EC")?;
        Ok(out)
    };
    let rust_identity = enroll("rust", &clients)?;
    let go_identity = [enroll("go-fc", &clients)?, enroll("go-legacy", &clients)?];
    let host_identity = enroll("host", &hosts)?;
    let host = net
        .spawn_go_tunnel("host", &host_identity, &[])
        .context("start ziti tunnel host")?;
    let [sink_service, source_service]: [String; 2] = services
        .try_into()
        .map_err(|_| anyhow!("two services expected"))?;
    Ok((
        Net {
            net,
            sink_service,
            source_service,
            rust_identity,
            go_identity,
        },
        host,
    ))
}

struct GoProxy {
    guard: ChildGuard,
    sink_port: u16,
    source_port: u16,
}

fn start_go_proxy(net: &Net, identity: &Path, flow_control: bool) -> Result<GoProxy> {
    let sink_port = testnet::process::free_port()?;
    let source_port = testnet::process::free_port()?;
    let guard = net.net.spawn_go_tunnel(
        "proxy",
        identity,
        &[
            &format!("{}:{sink_port}", net.sink_service),
            &format!("{}:{source_port}", net.source_service),
            &format!("--sdk-flow-control={flow_control}"),
        ],
    )?;
    Ok(GoProxy {
        guard,
        sink_port,
        source_port,
    })
}

async fn wait_tcp(port: u16) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
        if Instant::now() > deadline {
            bail!("nothing listens on 127.0.0.1:{port} after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// One transfer

struct Bench {
    servers: Servers,
    rust: BTreeMap<Client, ZitiContext>,
    net: Net,
    go: BTreeMap<Client, GoProxy>,
    host_pid: Option<u32>,
    router_pid: Option<u32>,
}

#[derive(Debug, Clone)]
struct Sample {
    secs: f64,
    client_cpu: Option<f64>,
    router_cpu: Option<f64>,
    host_cpu: Option<f64>,
}

impl Bench {
    /// CPU of the measured client so far: ours (process minus the servers' thread) or the proxy.
    fn client_cpu(&self, client: Client) -> Option<f64> {
        match client {
            Client::RustXgress | Client::RustLegacy => {
                Some(self_cpu() - thread_cpu(self.servers.cpu_clock))
            }
            Client::GoXgress | Client::GoLegacy => self
                .go
                .get(&client)
                .and_then(|p| p.guard.pid())
                .and_then(proc_cpu),
        }
    }

    async fn dial(&self, client: Client, service: &str) -> Result<ziti_sdk::EdgeStream> {
        let ctx = self
            .rust
            .get(&client)
            .ok_or_else(|| anyhow!("no context for {}", client.name()))?;
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match ctx.dial(service).await {
                Ok(s) => return Ok(s),
                Err(DialError::NoTerminators { .. }) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(anyhow!("dial {service}: {e}")),
            }
        }
    }

    fn drain_reports(&mut self) {
        while self.servers.sink_reports.try_recv().is_ok() {}
        while self.servers.source_reports.try_recv().is_ok() {}
    }

    /// The sink's report on the connection accepted after `since` (earlier ones are stray:
    /// the readiness probes of the proxy ports make the proxies dial too).
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

    async fn source_report(&mut self, len: u64) -> Result<SourceReport> {
        let r = tokio::time::timeout(STALL, self.servers.source_reports.recv())
            .await
            .map_err(|_| anyhow!("the source reported nothing"))?
            .ok_or_else(|| anyhow!("source gone"))?;
        if r.asked != len {
            bail!("source asked for {} bytes, expected {len}", r.asked);
        }
        Ok(r)
    }

    /// Moves `len` bytes over one stream; returns the seconds the data took.
    async fn transfer(&mut self, client: Client, dir: Dir, len: u64) -> Result<f64> {
        self.drain_reports();
        let since = Instant::now();
        match (client, dir) {
            (Client::RustXgress | Client::RustLegacy, Dir::Up) => {
                let service = self.net.sink_service.clone();
                let mut s = self.dial(client, &service).await?;
                pump(&mut s, len).await?;
                s.shutdown().await?;
                let r = self.sink_report(len, since).await?;
                drop(s);
                Ok((r.last_byte - r.accepted).as_secs_f64())
            }
            (Client::RustXgress | Client::RustLegacy, Dir::Down) => {
                let service = self.net.source_service.clone();
                let mut s = self.dial(client, &service).await?;
                s.write_all(&len.to_le_bytes()).await?;
                let end = read_n(&mut s, len).await?;
                let r = self.source_report(len).await?;
                let _ = s.shutdown().await;
                let _ = tokio::time::timeout(Duration::from_secs(10), drain(&mut s)).await;
                Ok((end - r.started).as_secs_f64())
            }
            (Client::GoXgress | Client::GoLegacy, dir) => {
                let proxy = self
                    .go
                    .get(&client)
                    .ok_or_else(|| anyhow!("no proxy for {}", client.name()))?;
                match dir {
                    Dir::Up => {
                        let mut tcp = TcpStream::connect(("127.0.0.1", proxy.sink_port)).await?;
                        tcp.set_nodelay(true)?;
                        pump(&mut tcp, len).await?;
                        tcp.shutdown().await?;
                        let r = self.sink_report(len, since).await?;
                        drop(tcp);
                        Ok((r.last_byte - r.accepted).as_secs_f64())
                    }
                    Dir::Down => {
                        let mut tcp = TcpStream::connect(("127.0.0.1", proxy.source_port)).await?;
                        tcp.set_nodelay(true)?;
                        tcp.write_all(&len.to_le_bytes()).await?;
                        let end = read_n(&mut tcp, len).await?;
                        let r = self.source_report(len).await?;
                        let _ = tcp.shutdown().await;
                        let _ =
                            tokio::time::timeout(Duration::from_secs(10), drain(&mut tcp)).await;
                        Ok((end - r.started).as_secs_f64())
                    }
                }
            }
        }
    }

    /// One measured transfer with CPU deltas.
    async fn measure(&mut self, client: Client, dir: Dir, len: u64) -> Result<Sample> {
        let c0 = self.client_cpu(client);
        let r0 = self.router_pid.and_then(proc_cpu);
        let h0 = self.host_pid.and_then(proc_cpu);
        let secs = self.transfer(client, dir, len).await?;
        let c1 = self.client_cpu(client);
        let r1 = self.router_pid.and_then(proc_cpu);
        let h1 = self.host_pid.and_then(proc_cpu);
        let delta = |a: Option<f64>, b: Option<f64>| Some(b? - a?);
        Ok(Sample {
            secs,
            client_cpu: delta(c0, c1),
            router_cpu: delta(r0, r1),
            host_cpu: delta(h0, h1),
        })
    }

    /// A small transfer that must succeed before measuring (channels up, proxy ready, host bound).
    async fn warm_up(&mut self, client: Client, dir: Dir, len: u64) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            match self.transfer(client, dir, len).await {
                Ok(_) => return Ok(()),
                Err(e) if Instant::now() < deadline => {
                    eprintln!(
                        "  warm-up {} {}: {e:#}; retrying",
                        client.name(),
                        dir.name()
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
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

fn cpu_per_gib(samples: &[Sample], pick: fn(&Sample) -> Option<f64>, len: u64) -> String {
    let mut v: Option<Vec<f64>> = samples
        .iter()
        .map(|s| pick(s).map(|c| c / (len as f64 / (1024.0 * MIB as f64))))
        .collect();
    match v.as_deref_mut() {
        Some(v) if !v.is_empty() => format!("{:.2}", median(v)),
        _ => "-".into(),
    }
}

fn table(
    results: &BTreeMap<(Client, Dir), Vec<Sample>>,
    failures: &BTreeMap<(Client, Dir), Vec<String>>,
    args: &Args,
) -> String {
    let len = args.mib * MIB;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| client | direction | MiB/s median | MiB/s range (n) | client CPU s/GiB | router CPU s/GiB | Go host CPU s/GiB |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for dir in [Dir::Up, Dir::Down] {
        for client in &args.clients {
            let key = (*client, dir);
            let samples = results.get(&key).map(Vec::as_slice).unwrap_or_default();
            let fails = failures.get(&key).map(Vec::len).unwrap_or_default();
            let mut rates: Vec<f64> = samples.iter().map(|s| args.mib as f64 / s.secs).collect();
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
            let _ = writeln!(
                out,
                "| {} | {} | {} | {} | {} | {} | {} |",
                client.label(),
                dir.name(),
                med,
                range,
                cpu_per_gib(samples, |s| s.client_cpu, len),
                cpu_per_gib(samples, |s| s.router_cpu, len),
                cpu_per_gib(samples, |s| s.host_cpu, len),
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
    let servers = start_servers()?;
    eprintln!("starting the test network (controller + router on loopback)...");
    let (net, host) = setup_network(servers.sink_port, servers.source_port)?;
    let router_pid = find_router_pid(net.net.home());
    let host_pid = host.pid();
    eprintln!(
        "network up: controller {}, router port {} (pid {:?}), Go host pid {:?}",
        net.net.ctrl_url(),
        net.net.router().port,
        router_pid,
        host_pid
    );

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("bench-sdk")
        .enable_all()
        .build()?;
    let result = rt.block_on(async {
        let mut go = BTreeMap::new();
        let mut rust = BTreeMap::new();
        for client in &args.clients {
            match client {
                Client::RustXgress | Client::RustLegacy => {
                    let options = ContextOptions {
                        sdk_flow_control: *client == Client::RustXgress,
                        ..Default::default()
                    };
                    let id = Identity::load(&net.rust_identity)?;
                    rust.insert(*client, ZitiContext::new(id, options).await?);
                }
                Client::GoXgress | Client::GoLegacy => {
                    let fc = *client == Client::GoXgress;
                    let id = &net.go_identity[usize::from(!fc)];
                    let p = start_go_proxy(&net, id, fc)?;
                    wait_tcp(p.sink_port).await?;
                    wait_tcp(p.source_port).await?;
                    eprintln!("{} proxy pid {:?}", client.name(), p.guard.pid());
                    go.insert(*client, p);
                }
            }
        }
        // The readiness probes made the proxies dial; let those circuits come and go.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let mut bench = Bench {
            servers,
            rust,
            net,
            go,
            host_pid,
            router_pid,
        };
        for client in args.clients.clone() {
            for dir in [Dir::Up, Dir::Down] {
                bench.warm_up(client, dir, args.warmup_mib * MIB).await?;
            }
        }
        eprintln!(
            "warm-up done; measuring {} MiB per transfer, {} runs, load {}",
            args.mib,
            args.runs,
            loadavg()
        );
        let mut results: BTreeMap<(Client, Dir), Vec<Sample>> = BTreeMap::new();
        let mut failures: BTreeMap<(Client, Dir), Vec<String>> = BTreeMap::new();
        for run in 1..=args.runs {
            for client in args.clients.clone() {
                for dir in [Dir::Up, Dir::Down] {
                    match bench.measure(client, dir, args.mib * MIB).await {
                        Ok(s) => {
                            eprintln!(
                                "run {run} {:<11} {:<8} {:>8.1} MiB/s  client cpu {:>6} s  router {:>6} s  host {:>6} s  load {}",
                                client.name(),
                                dir.name(),
                                args.mib as f64 / s.secs,
                                s.client_cpu.map_or("-".into(), |c| format!("{c:.2}")),
                                s.router_cpu.map_or("-".into(), |c| format!("{c:.2}")),
                                s.host_cpu.map_or("-".into(), |c| format!("{c:.2}")),
                                loadavg()
                            );
                            results.entry((client, dir)).or_default().push(s);
                        }
                        Err(e) => {
                            eprintln!("run {run} {} {}: FAILED: {e:#}", client.name(), dir.name());
                            failures
                                .entry((client, dir))
                                .or_default()
                                .push(format!("{e:#}"));
                        }
                    }
                }
            }
        }
        let go_logs: Vec<(Client, String)> = bench
            .go
            .iter()
            .map(|(c, p)| (*c, p.guard.log_tail(5)))
            .collect();
        Ok::<_, anyhow::Error>((results, failures, go_logs, bench))
    });
    let (results, failures, go_logs, bench) = result?;

    println!(
        "\n{} MiB per transfer, {} runs per case (interleaved), {isolation}, load average at the end {}\n",
        args.mib,
        args.runs,
        loadavg()
    );
    print!("{}", table(&results, &failures, &args));
    for ((client, dir), errs) in &failures {
        for e in errs {
            println!("\nfailure: {} {}: {e}", client.name(), dir.name());
        }
    }
    if !failures.is_empty() {
        for (client, log) in go_logs {
            println!("\nlast lines of the {} proxy log:\n{log}", client.name());
        }
    }
    // Close our contexts' channels before the network goes away, then tear it all down.
    drop(bench.rust);
    drop(bench.go);
    drop(rt);
    drop(host);
    drop(bench.net);
    Ok(())
}
