//! Issue 8 acceptance through `zt-tunnel run`: a connection nobody reads stops only its own
//! circuit, a service that answers and closes gives the client end-of-file promptly, and a burst
//! of simultaneous connections all carry data. Kernel TCP clients, a TUN, our DNS, a real
//! OpenZiti network.
//!
//! Like `tunnel.rs`, the test thread first moves into a fresh network namespace
//! (`unshare(CLONE_NEWNET)`), so the controller, the router, the Go tunneler, the local servers
//! and `zt-tunnel` with its TUN device all live there and the host's network is never touched.
//!
//! One `#[test]` runs the three scenarios one after the other against one network and one
//! `zt-tunnel`: `testnet` forks every child from one spawner thread, created by the first spawn,
//! so a second test thread in a namespace of its own would still get its children in the first
//! one's namespace. The scenarios cannot overlap either: the burst opens 1,000 flows of 256 KiB
//! of socket buffers each in `zt-tunnel`, which would swamp the memory bound measured while a
//! connection is left unread; the answer-and-close check runs first, before the baseline.
//!
//! Only measured (printed): the burst to a Go-hosted service through zt-tunnel, and the control,
//! the same burst through the Go tunneler's proxy (`ziti tunnel proxy`) instead of zt-tunnel.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use testnet::{ChildGuard, TestNet, in_new_netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 53);
/// How long the unread connection is held open beside the echoes.
const HOLD: Duration = Duration::from_secs(120);
/// Connections in each burst.
const BURST: usize = 1000;
/// Dial timeout (seconds) of the services the bursts go to. The default, 5 s, is not enough
/// here: each connection is a circuit the controller creates, and on 2 loaded cores shared with
/// the controller, the router and the Go tunneler the last of 1,000 simultaneous ones come
/// 5-7 s after the first (the Go tunneler's proxy, the control, does worse).
const BURST_DIAL_TIMEOUT: u32 = 30;
/// Generous limit for anything that only has to happen eventually on a loaded machine.
const SETUP: Duration = Duration::from_secs(90);

/// Acceptance checks that failed: collected so that one run reports every scenario, asserted
/// empty at the end. (Setup steps still fail at once.)
#[derive(Debug, Default)]
struct Failures(Vec<String>);

impl Failures {
    fn check(&mut self, ok: bool, what: impl FnOnce() -> String) {
        if !ok {
            let what = what();
            println!("FAILED: {what}");
            self.0.push(what);
        }
    }
}

/// Asks our DNS server for `name`'s A record.
async fn resolve(name: &str) -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    let mut msg = Message::query();
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    msg.metadata.id = 0x5a5a;
    msg.metadata.recursion_desired = true;
    sock.send_to(&msg.to_vec().ok()?, DNS).await.ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

async fn resolve_within(name: &str, limit: Duration) -> Ipv4Addr {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(ip) = resolve(name).await {
            return ip;
        }
        assert!(
            Instant::now() < deadline,
            "{name} did not resolve through zt-tunnel's DNS"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// A TCP server that writes forever to whoever connects.
async fn endless_source() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    port
}

/// A TCP echo server (half-closes after the client does).
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    port
}

/// A TCP server that reads a request, answers `reply` and closes.
async fn answer_and_close(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(reply).await;
                // Dropping the socket closes it: FIN to the Go host.
            });
        }
    });
    port
}

/// An `intercept.v1` config for TCP to `addr:port`, with a dial timeout when given.
fn intercept_json(addr: &str, port: u16, connect_timeout_seconds: Option<u32>) -> String {
    let dial_options = connect_timeout_seconds
        .map(|t| format!(r#","dialOptions":{{"connectTimeoutSeconds":{t}}}"#))
        .unwrap_or_default();
    format!(
        r#"{{"protocols":["tcp"],"addresses":["{addr}"],"portRanges":[{{"low":{port},"high":{port}}}]{dial_options}}}"#
    )
}

fn host_json(port: u16) -> String {
    format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#)
}

/// A service with an intercept and a host config, dialable by `#clients` and bindable by
/// `binders`.
fn service(net: &TestNet, name: &str, intercept: &str, host: &str, binders: &str) {
    net.create_config(&format!("{name}-intercept"), "intercept.v1", intercept)
        .unwrap();
    net.create_config(&format!("{name}-host"), "host.v1", host)
        .unwrap();
    net.create_service(
        name,
        &[&format!("{name}-intercept"), &format!("{name}-host")],
        &[],
        false,
    )
    .unwrap();
    net.create_service_policy(
        &format!("{name}-dial"),
        "Dial",
        &[&format!("@{name}")],
        &["#clients"],
    )
    .unwrap();
    net.create_service_policy(
        &format!("{name}-bind"),
        "Bind",
        &[&format!("@{name}")],
        &[binders],
    )
    .unwrap();
}

fn enroll(net: &TestNet, name: &str, attrs: &[&str], out: &Path) {
    net.enroll_identity(name, attrs, out).unwrap();
}

/// Resident memory of a process, bytes: all of it, anonymous (heap and stacks), file-backed
/// (code and data of the binary and its libraries, paged in as first used).
#[derive(Debug, Clone, Copy)]
struct Rss {
    total: u64,
    anon: u64,
    file: u64,
}

impl Rss {
    /// From `/proc/<pid>/status`.
    fn of(pid: u32) -> Rss {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.split_whitespace().next())
                .and_then(|v| v.parse::<u64>().ok())
                .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
                * 1024
        };
        Rss {
            total: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
        }
    }
}

impl std::fmt::Display for Rss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} KiB (anon {} KiB, file {} KiB)",
            self.total / 1024,
            self.anon / 1024,
            self.file / 1024
        )
    }
}

/// Bytes waiting, unread, in a kernel socket's receive queue.
fn unread_bytes(tcp: &TcpStream) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer, which is valid for the call.
    let rc = unsafe { libc::ioctl(tcp.as_raw_fd(), libc::FIONREAD, &mut n) };
    assert_eq!(rc, 0, "FIONREAD: {}", std::io::Error::last_os_error());
    usize::try_from(n).unwrap_or_default()
}

/// Connects and makes one echo round trip; retried while the service is not yet hosted (the
/// tunnel resets a connection whose dial fails).
async fn connect_echo_within(addr: SocketAddr, limit: Duration) -> TcpStream {
    let deadline = Instant::now() + limit;
    loop {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            echo_round_trip(&mut s, 0).await?;
            Ok::<_, std::io::Error>(s)
        };
        match tokio::time::timeout(Duration::from_secs(20), attempt).await {
            Ok(Ok(s)) => return s,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no echo through the tunnel from {addr} in {limit:?}: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

/// One echo round trip; an answer missing for 10 s is an error.
async fn echo_round_trip(s: &mut TcpStream, i: u32) -> std::io::Result<Duration> {
    let msg = format!("round trip {i:04}");
    let started = Instant::now();
    s.write_all(msg.as_bytes()).await?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no echo in 10 s"))??;
    if back != msg.as_bytes() {
        return Err(std::io::Error::other(format!("echo {i}: wrong bytes")));
    }
    Ok(started.elapsed())
}

/// Issue 8 through `zt-tunnel run`. Last run here (idle 2-core machine, one malloc arena as the
/// binary sets it): answer to end-of-file 6-15 µs; worst of 100 echoes beside an unread
/// connection 47 ms; a new connection 28 ms; zt-tunnel grew 4644 KiB over 2 minutes (limit 6400;
/// 6160 with glibc's default arenas); 1,000/1,000 connections to a zt-tunnel-hosted service
/// and to a Go-hosted one.
#[test]
fn flows_through_zt_tunnel_run_stay_independent() {
    in_new_netns(|| {
        let net = TestNet::start().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenarios(&net));
    });
}

/// Addresses of the intercepted services.
struct Targets {
    flood: SocketAddr,
    echo: SocketAddr,
    answer: SocketAddr,
    own_echo: SocketAddr,
}

async fn scenarios(net: &TestNet) {
    let flood_port = endless_source().await;
    let echo_port = echo_server().await;
    let answer_port = answer_and_close(b"the answer").await;
    service(
        net,
        "flood",
        &intercept_json("flood.ziti.test", 80, None),
        &host_json(flood_port),
        "#go-hosts",
    );
    service(
        net,
        "echo",
        &intercept_json("echo.ziti.test", 80, Some(BURST_DIAL_TIMEOUT)),
        &host_json(echo_port),
        "#go-hosts",
    );
    service(
        net,
        "answer",
        &intercept_json("answer.ziti.test", 80, None),
        &host_json(answer_port),
        "#go-hosts",
    );
    service(
        net,
        "ownecho",
        &intercept_json("192.0.2.40", 7000, Some(BURST_DIAL_TIMEOUT)),
        &host_json(echo_port),
        "#rust-hosts",
    );

    let ids = tempfile::tempdir().unwrap();
    enroll(
        net,
        "tun-client",
        &["clients"],
        &ids.path().join("client.json"),
    );
    enroll(
        net,
        "tun-host",
        &["rust-hosts"],
        &ids.path().join("host.json"),
    );
    let go_host = net.home().join("go-host.json");
    enroll(net, "go-host", &["go-hosts"], &go_host);
    let _go = net.spawn_go_tunnel("host", &go_host, &[]).unwrap();

    let log = net.home().join("zt-tunnel-session.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
    cmd.args([
        "--log-level",
        "info,ziti_tunnel::tunnel=debug",
        "--log-file",
    ])
    .arg(&log)
    .args(["run", "--identity-dir"])
    .arg(ids.path())
    .args([
        "--tun-name",
        "zt-flow0",
        "--refresh",
        "1",
        "--dns-upstream",
        "127.0.0.1:9",
    ]);
    let mut tunnel =
        ChildGuard::spawn("zt-tunnel run", cmd, &net.home().join("zt-tunnel.out")).unwrap();
    let pid = tunnel.pid().unwrap();

    let targets = Targets {
        flood: SocketAddr::from((resolve_within("flood.ziti.test", SETUP).await, 80)),
        echo: SocketAddr::from((resolve_within("echo.ziti.test", SETUP).await, 80)),
        answer: SocketAddr::from((resolve_within("answer.ziti.test", SETUP).await, 80)),
        own_echo: SocketAddr::from((Ipv4Addr::new(192, 0, 2, 40), 7000)),
    };

    let mut failures = Failures::default();
    answer_then_end_of_file(&targets, &mut failures).await;
    unread_connection_beside_echoes(&targets, pid, &mut failures).await;
    bursts(
        net,
        &targets,
        &ids.path().join("client.json"),
        &log,
        &mut failures,
    )
    .await;

    assert!(
        tunnel.is_running(),
        "zt-tunnel still running:\n{}",
        tunnel.log_tail(30)
    );
    tunnel.kill();
    assert!(
        failures.0.is_empty(),
        "{} acceptance check(s) failed:\n{}",
        failures.0.len(),
        failures.0.join("\n")
    );
}

/// What one answer-and-close exchange saw: the answer, and the time from its first byte to
/// end-of-file.
async fn answer_exchange(addr: SocketAddr) -> std::io::Result<(Vec<u8>, Duration)> {
    let mut s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    s.write_all(b"question").await?;
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut answered = None;
    loop {
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
            .await
            .map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("no end-of-file within 10 s; got {got:?}"),
                )
            })??;
        if n == 0 {
            let eof = Instant::now();
            let gap = answered.map(|a| eof - a).unwrap_or_default();
            return Ok((got, gap));
        }
        answered.get_or_insert_with(Instant::now);
        got.extend_from_slice(&buf[..n]);
    }
}

/// 2: a Go-hosted service that answers and closes: the kernel client sees the answer and then
/// end-of-file within 100 ms.
async fn answer_then_end_of_file(t: &Targets, failures: &mut Failures) {
    // Until the Go tunneler binds, the tunnel resets the connection (no terminator).
    let deadline = Instant::now() + SETUP;
    loop {
        match answer_exchange(t.answer).await {
            Ok((got, _)) if got == b"the answer" => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no answer through the tunnel: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut gaps = Vec::new();
    for _ in 0..5 {
        let (got, gap) = answer_exchange(t.answer).await.unwrap();
        assert_eq!(got, b"the answer");
        gaps.push(gap);
    }
    println!("answer-and-close through zt-tunnel: answer to end-of-file {gaps:?}");
    let worst = gaps.iter().max().copied().unwrap_or_default();
    failures.check(worst < Duration::from_millis(100), || {
        format!("answer-and-close: end-of-file {worst:?} after the answer (limit 100 ms)")
    });
}

/// 1: connection A reads from an endless Go-hosted source and is never read; B, on the same
/// router connection of zt-tunnel's identity, makes 100 echo round trips; a new connection
/// succeeds within 1 s; `HOLD` later B still echoes and zt-tunnel grew by at most A's share.
async fn unread_connection_beside_echoes(t: &Targets, pid: u32, failures: &mut Failures) {
    // The source is hosted: a probe reads from it (and goes away) before the baseline.
    let deadline = Instant::now() + SETUP;
    loop {
        let probe = async {
            let mut s = TcpStream::connect(t.flood).await?;
            let mut buf = vec![0u8; 64 * 1024];
            let mut total = 0;
            while total < 256 * 1024 {
                match s.read(&mut buf).await? {
                    0 => return Err(std::io::Error::other("end-of-file from the source")),
                    n => total += n,
                }
            }
            Ok::<_, std::io::Error>(())
        };
        match tokio::time::timeout(Duration::from_secs(20), probe).await {
            Ok(Ok(())) => break,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "the endless source is not reachable through the tunnel: {other:?}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
    let mut b = connect_echo_within(t.echo, SETUP).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = Rss::of(pid);

    let a = TcpStream::connect(t.flood).await.unwrap();
    // Let the flood fill every buffer on A's path, then check it did arrive.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let queued = unread_bytes(&a);
    println!(
        "unread connection A: {} KiB waiting in its kernel socket",
        queued / 1024
    );
    assert!(queued > 0, "the flood reached A");

    let mut worst = Duration::ZERO;
    for i in 1..=100 {
        let rtt = echo_round_trip(&mut b, i)
            .await
            .unwrap_or_else(|e| panic!("echo {i} beside the unread connection: {e}"));
        worst = worst.max(rtt);
    }
    println!("100 echo round trips through zt-tunnel beside an unread flood: worst {worst:?}");
    failures.check(worst < Duration::from_millis(250), || {
        format!("an echo took {worst:?} while another connection was not read (limit 250 ms)")
    });

    let started = Instant::now();
    let mut c = tokio::time::timeout(Duration::from_secs(10), async {
        let mut c = TcpStream::connect(t.echo).await?;
        c.set_nodelay(true)?;
        echo_round_trip(&mut c, 0).await?;
        Ok::<_, std::io::Error>(c)
    })
    .await
    .expect("a new connection within 10 s")
    .expect("a new connection beside the flood");
    let connect_time = started.elapsed();
    println!("new connection + first echo beside the flood: {connect_time:?}");
    failures.check(connect_time < Duration::from_secs(1), || {
        format!("a new connection beside the flood: connect + first echo took {connect_time:?} (limit 1 s)")
    });

    let held = Instant::now();
    while held.elapsed() < HOLD {
        tokio::time::sleep(Duration::from_secs(20).min(HOLD - held.elapsed())).await;
        println!(
            "  {:>3} s into the hold: zt-tunnel RSS {}",
            held.elapsed().as_secs(),
            Rss::of(pid)
        );
    }
    let late = echo_round_trip(&mut b, 101)
        .await
        .unwrap_or_else(|e| panic!("B no longer echoes after {HOLD:?}: {e}"));
    echo_round_trip(&mut c, 1)
        .await
        .unwrap_or_else(|e| panic!("the new connection no longer echoes: {e}"));
    println!("after {HOLD:?} beside the unread flood, B echoes in {late:?}");
    let after = Rss::of(pid);

    let stack = ziti_tunnel::stack::StackConfig::default();
    let window = ziti_sdk::edge::ChannelConfig::default().recv_window as u64;
    // A's window in the SDK, 2 MiB of slack, and A's smoltcp socket (receive + send buffer).
    let allowed = window + 2 * 1024 * 1024 + 2 * stack.tcp_buffer as u64;
    let grown = after.total.saturating_sub(baseline.total);
    println!(
        "zt-tunnel RSS: {baseline} before A, {after} after {HOLD:?}: grew {} KiB (anon {} KiB, file {} KiB; allowed {} KiB)",
        grown / 1024,
        (after.anon as i64 - baseline.anon as i64) / 1024,
        (after.file as i64 - baseline.file as i64) / 1024,
        allowed / 1024
    );
    failures.check(grown <= allowed, || {
        format!("zt-tunnel RSS grew {grown} bytes with one unread connection (allowed {allowed})")
    });

    // A was only paused: reading it now drains far more than every buffer on its path held.
    const DRAIN: usize = 64 * 1024 * 1024;
    let mut a = a;
    let started = Instant::now();
    let drained = tokio::time::timeout(Duration::from_secs(60), async {
        let mut buf = vec![0u8; 256 * 1024];
        let mut total = 0;
        while total < DRAIN {
            match a.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => total += n,
            }
        }
        total
    })
    .await
    .unwrap_or(0);
    println!(
        "A resumed: read {} MiB in {:?}",
        drained / (1024 * 1024),
        started.elapsed()
    );
    failures.check(drained >= DRAIN, || {
        format!("the unread connection did not resume after {HOLD:?}: read {drained} bytes")
    });
}

/// Why one burst connection failed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum BurstFailure {
    Connect(String),
    Io(String),
    TimedOut,
    WrongData,
}

/// What a burst saw: each connection's time from the start to its echo, and the failures.
struct BurstResult {
    took: Duration,
    connects: Vec<Duration>,
    times: Vec<Duration>,
    failures: Vec<BurstFailure>,
}

impl BurstResult {
    fn succeeded(&self) -> usize {
        self.times.len()
    }

    /// Successes, duration, percentiles of the successful connections' times, failures by kind.
    fn summary(&self) -> String {
        let mut connects = self.connects.clone();
        connects.sort();
        let mut times = self.times.clone();
        times.sort();
        let pct = |times: &[Duration], p: usize| {
            times
                .get((times.len() * p / 100).min(times.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        let mut kinds: std::collections::BTreeMap<&BurstFailure, usize> = Default::default();
        for f in &self.failures {
            *kinds.entry(f).or_default() += 1;
        }
        format!(
            "{} of {BURST} succeeded in {:?} (TCP connect: p50 {:?}, max {:?}; start to echo: p50 {:?}, p90 {:?}, max {:?}); failures {kinds:?}",
            self.succeeded(),
            self.took,
            pct(&connects, 50),
            connects.last().copied().unwrap_or_default(),
            pct(&times, 50),
            pct(&times, 90),
            times.last().copied().unwrap_or_default(),
        )
    }
}

/// `BURST` simultaneous connections to `addr`, each sending its own message and reading the
/// echo.
async fn burst(addr: SocketAddr) -> BurstResult {
    let start = std::sync::Arc::new(tokio::sync::Barrier::new(BURST));
    let tasks: Vec<_> = (0..BURST)
        .map(|i| {
            let start = start.clone();
            tokio::spawn(async move {
                start.wait().await;
                let started = Instant::now();
                let run = async {
                    let mut s = TcpStream::connect(addr)
                        .await
                        .map_err(|e| BurstFailure::Connect(e.kind().to_string()))?;
                    let connected = started.elapsed();
                    let msg = format!("connection {i} says hello {}", "x".repeat(i % 97));
                    let io = |e: std::io::Error| BurstFailure::Io(e.kind().to_string());
                    s.write_all(msg.as_bytes()).await.map_err(io)?;
                    let mut back = vec![0u8; msg.len()];
                    s.read_exact(&mut back).await.map_err(io)?;
                    if back != msg.as_bytes() {
                        return Err(BurstFailure::WrongData);
                    }
                    Ok((connected, started.elapsed()))
                };
                tokio::time::timeout(Duration::from_secs(120), run)
                    .await
                    .unwrap_or(Err(BurstFailure::TimedOut))
            })
        })
        .collect();
    let started = Instant::now();
    let mut result = BurstResult {
        took: Duration::ZERO,
        connects: Vec::new(),
        times: Vec::new(),
        failures: Vec::new(),
    };
    for t in tasks {
        match t.await.unwrap() {
            Ok((connected, time)) => {
                result.connects.push(connected);
                result.times.push(time);
            }
            Err(e) => result.failures.push(e),
        }
    }
    result.took = started.elapsed();
    result
}

/// zt-tunnel's warnings, errors and flows that ended with an error, counted by text
/// (timestamps cut off).
fn warnings(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let mut counts: std::collections::BTreeMap<String, usize> = Default::default();
    for line in text.lines().filter(|l| {
        l.contains(" WARN ") || l.contains(" ERROR ") || l.contains("ended with an error")
    }) {
        let key = line
            .split_once(' ')
            .map_or(line, |(_, rest)| rest.trim_start());
        *counts.entry(key.chars().take(200).collect()).or_default() += 1;
    }
    counts
        .iter()
        .map(|(line, n)| format!("{n} x {line}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// 3: `BURST` simultaneous connections through the tunnel to a service zt-tunnel hosts all
/// carry their echo. Measured only: the same burst to a Go-hosted service, and, as the control,
/// to the service zt-tunnel hosts through the Go tunneler's proxy instead of zt-tunnel.
async fn bursts(
    net: &TestNet,
    t: &Targets,
    client_identity: &Path,
    log: &Path,
    failures: &mut Failures,
) {
    drop(connect_echo_within(t.own_echo, SETUP).await);
    let before = warnings(log);
    let own = burst(t.own_echo).await;
    println!(
        "burst through zt-tunnel to a service zt-tunnel hosts: {}",
        own.summary()
    );
    let own_warnings = warnings(log);

    // Let the flows of the first burst drain before the next.
    tokio::time::sleep(Duration::from_secs(5)).await;
    drop(connect_echo_within(t.echo, SETUP).await);
    let go_hosted = burst(t.echo).await;
    println!(
        "burst through zt-tunnel to a Go-hosted service (measured only): {}",
        go_hosted.summary()
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    let port = testnet::process::free_port().unwrap();
    let _proxy = net
        .spawn_go_tunnel("proxy", client_identity, &[&format!("ownecho:{port}")])
        .unwrap();
    let proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    drop(connect_echo_within(proxy, SETUP).await);
    let control = burst(proxy).await;
    println!(
        "control: burst through the Go proxy to the service zt-tunnel hosts (measured only): {}",
        control.summary()
    );

    failures.check(own.failures.is_empty(), || {
        format!(
            "burst to the service zt-tunnel hosts: {}\nzt-tunnel warnings before the burst:\n{before}\nafter it:\n{own_warnings}",
            own.summary()
        )
    });
}
