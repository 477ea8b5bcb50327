//! One process serving three network namespaces with the library API (`TunnelBuilder`), against
//! a real OpenZiti network.
//!
//! The test thread first moves into a fresh network namespace (`unshare(CLONE_NEWNET)`, loopback
//! up) where the controller, the router and the test's own servers run; that is the sidecar's
//! "own" namespace. Three more namespaces are made by three threads that each unshare again and
//! stay alive to hold theirs (`/proc/self/task/TID/ns/net`) and to make the clients' sockets in
//! it. The host's network is never touched; every namespace disappears with the test.
//!
//! Proven here: identity A's tunnel in the first namespace reaches svc-a (by name through its own
//! DNS server on 100.64.0.1, and by IP through its own route) but not svc-b, and identity B's in
//! the second the reverse: the other's name does not resolve and its address is not routed; a
//! service hosted by B's tunnel connects to `127.0.0.1` of B's namespace, not of the caller's;
//! the counters follow a held connection; the third namespace starts with an identity without
//! services, gains svc-a when identity A is added and loses it (and closes the router channels
//! of its context there) when A is removed; shutting the third tunnel down removes its TUN
//! device and leaves the other two working; the extra memory per namespace is measured (VmRSS)
//! and bounded.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use testnet::TestNet;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, UdpSocket};
use ziti_sdk::ZitiContext;
use ziti_tunnel::tunnel::{TunnelBuilder, TunnelError, TunnelHandle, TunnelIdentity, TunnelStats};

const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 53);
const SVC_A_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
const SVC_B_IP: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 2);
/// Generous: the goal is at most 5 MiB per namespace; this catches a real regression only.
const RSS_BOUND_KIB: u64 = 16 * 1024;

/// Runs `body` on a thread that first enters a new network namespace with loopback up.
fn in_new_netns(body: impl FnOnce() + Send + 'static) {
    let thread = std::thread::spawn(move || {
        unshare_with_lo();
        body();
    });
    if let Err(panic) = thread.join() {
        std::panic::resume_unwind(panic);
    }
}

/// Moves the calling thread into a new network namespace and sets its loopback up.
fn unshare_with_lo() {
    // SAFETY: unshare only changes this thread's namespace membership.
    let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
    assert_eq!(
        rc,
        0,
        "unshare(CLONE_NEWNET): {}",
        std::io::Error::last_os_error()
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let nl = ziti_tunnel::netlink::Netlink::connect().unwrap();
        let lo = nl.link_index("lo").await.unwrap();
        nl.set_up(lo).await.unwrap();
    });
}

type Job = Box<dyn FnOnce() + Send>;

/// A network namespace of the test's own, held by a thread that lives in it and makes sockets
/// there (a socket stays in the namespace it was made in, whichever thread uses it later).
struct Namespace {
    name: &'static str,
    jobs: Option<std_mpsc::Sender<Job>>,
    path: PathBuf,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Namespace {
    fn new(name: &'static str) -> Self {
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let (tid_tx, tid_rx) = std_mpsc::channel();
        let thread = std::thread::spawn(move || {
            unshare_with_lo();
            // SAFETY: gettid has no preconditions.
            tid_tx.send(unsafe { libc::gettid() }).unwrap();
            while let Ok(job) = queue.recv() {
                job();
            }
        });
        let tid = tid_rx.recv().expect("namespace thread started");
        Namespace {
            name,
            jobs: Some(jobs),
            path: PathBuf::from(format!("/proc/self/task/{tid}/ns/net")),
            thread: Some(thread),
        }
    }

    /// Runs `f` on the namespace's thread (for making sockets: it must be quick).
    fn make<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std_mpsc::channel();
        self.jobs
            .as_ref()
            .unwrap()
            .send(Box::new(move || {
                let _ = tx.send(f());
            }))
            .unwrap();
        rx.recv().unwrap()
    }

    /// The namespace file, opened.
    fn fd(&self) -> OwnedFd {
        std::fs::File::open(&self.path).unwrap().into()
    }

    /// Whether a network interface of this name exists in the namespace.
    fn has_link(&self, name: &'static str) -> bool {
        self.make(move || {
            let name = std::ffi::CString::new(name).unwrap();
            // SAFETY: `name` is a valid NUL-terminated string for the duration of the call.
            unsafe { libc::if_nametoindex(name.as_ptr()) != 0 }
        })
    }

    /// Asks the namespace's DNS server (100.64.0.1) for `name`'s A record: `None` when no reply
    /// came, `Some(None)` for a reply without one.
    async fn lookup(&self, name: &str) -> Option<Option<Ipv4Addr>> {
        let std_sock = self.make(|| std::net::UdpSocket::bind("0.0.0.0:0")).ok()?;
        std_sock.set_nonblocking(true).ok()?;
        let sock = UdpSocket::from_std(std_sock).ok()?;
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
        Some(answer.answers.iter().find_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        }))
    }

    async fn resolve_within(&self, name: &str, limit: Duration) -> Ipv4Addr {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(Some(ip)) = self.lookup(name).await {
                return ip;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not resolve in namespace {}",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits until the namespace's DNS server answers `name` without an address.
    async fn unresolved_within(&self, name: &str, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            match self.lookup(name).await {
                Some(None) => return,
                other => assert!(
                    Instant::now() < deadline,
                    "{name} in namespace {}: {other:?}, not an answer without address",
                    self.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A TCP connection from inside the namespace.
    async fn connect(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpStream> {
        let socket = self.make(tokio::net::TcpSocket::new_v4)?;
        tokio::time::timeout(Duration::from_secs(20), socket.connect(addr))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
    }

    /// Sends a line from inside the namespace and reads the answer to end-of-file.
    async fn exchange(&self, addr: SocketAddr, line: &str) -> std::io::Result<String> {
        let stream = self.connect(addr).await?;
        talk(stream, line).await
    }

    /// Retries [`Namespace::exchange`] until an answer starts with `expect` (hosts and routes
    /// take a moment); an empty answer does not count.
    async fn exchange_within(&self, addr: SocketAddr, line: &str, expect: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let got = self.exchange(addr, line).await;
            match &got {
                Ok(answer) if !answer.is_empty() && answer.starts_with(expect) => {
                    return answer.clone();
                }
                _ => assert!(
                    Instant::now() < deadline,
                    "no answer {expect:?} from {addr} in namespace {}; last: {got:?}",
                    self.name
                ),
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// A connection to `addr` from inside the namespace fails.
    async fn unreachable(&self, addr: SocketAddr) {
        let outcome = self.exchange(addr, "hello?").await;
        assert!(
            matches!(outcome.as_deref(), Err(_) | Ok("")),
            "{addr} answered in namespace {}: {outcome:?}",
            self.name
        );
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Writes `line`, reads the answer to end-of-file (both bounded in time).
async fn talk(mut stream: tokio::net::TcpStream, line: &str) -> std::io::Result<String> {
    let limit = Duration::from_secs(30);
    let timed_out = || std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer");
    tokio::time::timeout(limit, stream.write_all(format!("{line}\n").as_bytes()))
        .await
        .map_err(|_| timed_out())??;
    let mut answer = String::new();
    tokio::time::timeout(limit, stream.read_to_string(&mut answer))
        .await
        .map_err(|_| timed_out())??;
    Ok(answer)
}

/// Answers one line with `"{who} says {line}"`, then closes.
async fn answer_line<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(who: &str, s: S) {
    let mut s = BufReader::new(s);
    let mut line = String::new();
    if s.read_line(&mut line).await.is_ok() {
        let answer = format!("{who} says {}", line.trim_end());
        let _ = s.get_mut().write_all(answer.as_bytes()).await;
        let _ = s.get_mut().shutdown().await;
    }
}

/// Serves [`answer_line`] on `listener`.
fn serve(who: &'static str, listener: TcpListener) {
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(answer_line(who, s));
        }
    });
}

/// Hosts `service` with the SDK in this process, answering with [`answer_line`].
async fn host_with_sdk(ctx: &ZitiContext, service: &'static str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut listener = loop {
        match ctx.listen(service).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(Instant::now() < deadline, "cannot host {service}: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            tokio::spawn(answer_line(service, stream));
        }
    });
}

/// The process's resident set, KiB.
fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status")
}

/// This process's established TCP connections to `port` in the calling thread's namespace:
/// its channels to the edge router listening there.
fn connections_to(port: u16) -> usize {
    let ours: std::collections::HashSet<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    ["/proc/thread-self/net/tcp", "/proc/thread-self/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .flat_map(|t| t.lines().skip(1).map(str::to_string).collect::<Vec<_>>())
        .filter(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let remote_port = f
                .get(2)
                .and_then(|r| r.rsplit(':').next())
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            remote_port == Some(port)
                && f.get(3) == Some(&"01")
                && f.get(9).is_some_and(|inode| ours.contains(*inode))
        })
        .count()
}

/// Waits until `tunnel`'s counters satisfy `ok`.
async fn stats_within(
    tunnel: &TunnelHandle,
    what: &str,
    ok: impl Fn(&TunnelStats) -> bool,
) -> TunnelStats {
    let mut rx = tunnel.watch_stats();
    let wait = rx.wait_for(|s| ok(s));
    match tokio::time::timeout(Duration::from_secs(60), wait).await {
        Ok(Ok(s)) => *s,
        _ => panic!(
            "{what}: stats of {} are {:?}",
            tunnel.netns(),
            tunnel.stats()
        ),
    }
}

fn service(net: &TestNet, name: &str, addresses: &[&str], host: Option<u16>, dialers: &str) {
    let addresses: Vec<String> = addresses.iter().map(|a| format!("{a:?}")).collect();
    net.create_config(
        &format!("{name}-intercept"),
        "intercept.v1",
        &format!(
            r#"{{"protocols":["tcp"],"addresses":[{}],"portRanges":[{{"low":80,"high":80}}]}}"#,
            addresses.join(",")
        ),
    )
    .unwrap();
    let mut configs = vec![format!("{name}-intercept")];
    if let Some(port) = host {
        net.create_config(
            &format!("{name}-host"),
            "host.v1",
            &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#),
        )
        .unwrap();
        configs.push(format!("{name}-host"));
    }
    let configs: Vec<&str> = configs.iter().map(String::as_str).collect();
    net.create_service(name, &configs, &[], false).unwrap();
    net.create_service_policy(
        &format!("{name}-dial"),
        "Dial",
        &[&format!("@{name}")],
        &[dialers],
    )
    .unwrap();
    net.create_service_policy(
        &format!("{name}-bind"),
        "Bind",
        &[&format!("@{name}")],
        &[&format!("#{name}-hosts")],
    )
    .unwrap();
}

async fn identity(net: &TestNet, dir: &Path, name: &str, attrs: &[&str]) -> TunnelIdentity {
    let jwt = net.create_identity(name, attrs).unwrap();
    let file = dir.join(format!("{name}.json"));
    net.cli_enroll(&jwt, &file, "EC").unwrap();
    TunnelIdentity {
        name: name.to_string(),
        context: ZitiContext::from_file(&file).await.unwrap(),
    }
}

fn builder(identities: Vec<TunnelIdentity>) -> TunnelBuilder {
    TunnelBuilder::new()
        .identities(identities)
        .refresh_interval(Duration::from_secs(1))
        // No upstream: names that are not intercepted get REFUSED at once.
        .dns_upstreams(ziti_dns::Upstreams::List(Vec::new()))
}

#[test]
fn one_process_serves_three_namespaces() {
    // As zt-tunnel does: one malloc arena, so that the figure is the tunnels' memory rather
    // than per-thread arenas' slack.
    // SAFETY: mallopt only sets an allocator parameter.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_test_writer()
        .try_init();
    in_new_netns(|| {
        let net = TestNet::start().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(&net));
    });
}

async fn scenario(net: &TestNet) {
    let ns1 = Namespace::new("ns1");
    let ns2 = Namespace::new("ns2");
    let ns3 = Namespace::new("ns3");

    // svc-h is hosted by B's tunnel at 127.0.0.1:PORT: a server there in B's namespace, and a
    // decoy on the same port in the caller's namespace, which must not be the one reached.
    let h_listener = ns2.make(|| {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    });
    let h_port = h_listener.local_addr().unwrap().port();
    serve("ns2", TcpListener::from_std(h_listener).unwrap());
    serve(
        "caller",
        TcpListener::bind(("127.0.0.1", h_port)).await.unwrap(),
    );

    let a_addr = SVC_A_IP.to_string();
    let b_addr = SVC_B_IP.to_string();
    service(
        net,
        "svc-a",
        &["svc-a.ziti.test", &a_addr],
        None,
        "#a-clients",
    );
    service(
        net,
        "svc-b",
        &["svc-b.ziti.test", &b_addr],
        None,
        "#b-clients",
    );
    service(
        net,
        "svc-h",
        &["svc-h.ziti.test"],
        Some(h_port),
        "#a-clients",
    );
    let ids = tempfile::tempdir().unwrap();
    let a = identity(net, ids.path(), "a", &["a-clients"]).await;
    let b = identity(net, ids.path(), "b", &["b-clients", "svc-h-hosts"]).await;
    let c = identity(net, ids.path(), "c", &[]).await;
    let server = identity(net, ids.path(), "server", &["svc-a-hosts", "svc-b-hosts"]).await;
    host_with_sdk(&server.context, "svc-a").await;
    host_with_sdk(&server.context, "svc-b").await;

    // Three tunnels, one process: by path, by open fd, by path.
    let rss_before = vm_rss_kib();
    let t1 = builder(vec![a.clone()])
        .netns_path(&ns1.path)
        .start()
        .await
        .unwrap();
    let t2 = builder(vec![b.clone()])
        .netns_fd(ns2.fd())
        .start()
        .await
        .unwrap();
    let t3 = builder(vec![c.clone()])
        .netns_path(&ns3.path)
        .start()
        .await
        .unwrap();
    assert!(ns1.has_link("ziti0") && ns2.has_link("ziti0") && ns3.has_link("ziti0"));

    // Each namespace resolves its own services through its own DNS server.
    let a_ip = ns1
        .resolve_within("svc-a.ziti.test", Duration::from_secs(60))
        .await;
    ns1.resolve_within("svc-h.ziti.test", Duration::from_secs(60))
        .await;
    let b_ip = ns2
        .resolve_within("svc-b.ziti.test", Duration::from_secs(60))
        .await;
    stats_within(&t1, "A's two services", |s| {
        s.identities == 1 && s.intercepted_services == 2
    })
    .await;
    stats_within(&t2, "B's service, hosting svc-h", |s| {
        s.identities == 1 && s.intercepted_services == 1 && s.hosted_services == 1
    })
    .await;
    stats_within(&t3, "C without services", |s| {
        s.identities == 1 && s.intercepted_services == 0
    })
    .await;
    let rss_started = vm_rss_kib();
    let per_namespace = rss_started.saturating_sub(rss_before) / 3;
    println!(
        "VmRSS {rss_before} KiB before, {rss_started} KiB with 3 tunnels up: {per_namespace} KiB per namespace"
    );
    assert!(
        per_namespace <= RSS_BOUND_KIB,
        "{per_namespace} KiB per namespace (bound {RSS_BOUND_KIB})"
    );

    // A reaches svc-a by name and by address, B svc-b.
    let answer = ns1
        .exchange_within((a_ip, 80).into(), "a by name", "svc-a")
        .await;
    assert_eq!(answer, "svc-a says a by name");
    ns1.exchange_within((SVC_A_IP, 80).into(), "a by ip", "svc-a says a by ip")
        .await;
    ns2.exchange_within((b_ip, 80).into(), "b by name", "svc-b says b by name")
        .await;
    ns2.exchange_within((SVC_B_IP, 80).into(), "b by ip", "svc-b says b by ip")
        .await;

    // B's tunnel hosts svc-h from inside B's namespace: its 127.0.0.1, not the caller's.
    let h_ip = ns1
        .resolve_within("svc-h.ziti.test", Duration::from_secs(5))
        .await;
    let answer = ns1.exchange_within((h_ip, 80).into(), "h", "").await;
    assert_eq!(answer, "ns2 says h", "hosted from B's namespace");

    // Neither reaches the other's service: no name, no route.
    ns1.unresolved_within("svc-b.ziti.test", Duration::from_secs(10))
        .await;
    ns2.unresolved_within("svc-a.ziti.test", Duration::from_secs(10))
        .await;
    ns2.unresolved_within("svc-h.ziti.test", Duration::from_secs(10))
        .await;
    ns1.unreachable((SVC_B_IP, 80).into()).await;
    ns2.unreachable((SVC_A_IP, 80).into()).await;
    ns3.unresolved_within("svc-a.ziti.test", Duration::from_secs(10))
        .await;
    ns3.unreachable((SVC_A_IP, 80).into()).await;

    // The counters follow a connection held open (the server answers only after a line).
    let held = ns1.connect((SVC_A_IP, 80).into()).await.unwrap();
    stats_within(&t1, "one TCP connection", |s| s.tcp_connections == 1).await;
    assert_eq!(
        talk(held, "held").await.unwrap(),
        "svc-a says held",
        "the held connection still works"
    );
    stats_within(&t1, "the connection gone", |s| s.tcp_connections == 0).await;

    // Identity A joins the third namespace: svc-a resolves and answers there too. It gets a
    // context of its own, as a sidecar loading A's file for this session would.
    let router_port = net.router().port;
    let channels_before_a3 = connections_to(router_port);
    let a3 = TunnelIdentity {
        name: "a".to_string(),
        context: ZitiContext::from_file(ids.path().join("a.json"))
            .await
            .unwrap(),
    };
    t3.add_identity(a3).await.unwrap();
    let dup = t3.add_identity(a.clone()).await;
    assert!(
        matches!(&dup, Err(TunnelError::DuplicateIdentity(n)) if n == "a"),
        "{dup:?}"
    );
    let a_ip3 = ns3
        .resolve_within("svc-a.ziti.test", Duration::from_secs(60))
        .await;
    ns3.exchange_within((a_ip3, 80).into(), "a from ns3", "svc-a says a from ns3")
        .await;
    ns3.exchange_within((SVC_A_IP, 80).into(), "ip from ns3", "svc-a says ip")
        .await;
    stats_within(&t3, "A added", |s| {
        s.identities == 2 && s.intercepted_services == 2
    })
    .await;
    let channels_with_a3 = connections_to(router_port);
    assert!(
        channels_with_a3 > channels_before_a3,
        "A's own context in the third tunnel opened router channels: {channels_before_a3} -> \
         {channels_with_a3}"
    );

    // ... and leaves it again: names and routes go at once.
    t3.remove_identity("a").await.unwrap();
    let missing = t3.remove_identity("a").await;
    assert!(
        matches!(&missing, Err(TunnelError::NoSuchIdentity(n)) if n == "a"),
        "{missing:?}"
    );
    ns3.unresolved_within("svc-a.ziti.test", Duration::from_secs(5))
        .await;
    ns3.unreachable((SVC_A_IP, 80).into()).await;
    let s3 = t3.stats();
    assert_eq!((s3.identities, s3.intercepted_services), (1, 0), "{s3:?}");
    // A's context in the third tunnel is gone with it: its router channels close once its
    // connections have ended.
    let deadline = Instant::now() + Duration::from_secs(20);
    while connections_to(router_port) > channels_before_a3 {
        assert!(
            Instant::now() < deadline,
            "identity A's router channels in the third tunnel stay open after its removal: \
             {channels_before_a3} before it was added, {channels_with_a3} with it, {} now",
            connections_to(router_port)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!(
        "router channels: {channels_before_a3} before A joined the third tunnel, \
         {channels_with_a3} with it, {} after its removal",
        connections_to(router_port)
    );

    let rss_used = vm_rss_kib();
    println!(
        "VmRSS {rss_used} KiB after the exchanges: {} KiB per namespace over the start",
        rss_used.saturating_sub(rss_before) / 3
    );

    // Shutting the third tunnel down takes its TUN device away and leaves the others working.
    t3.shutdown().await.unwrap();
    assert!(!ns3.has_link("ziti0"), "ns3's TUN device is gone");
    ns1.exchange_within((SVC_A_IP, 80).into(), "still", "svc-a says still")
        .await;
    ns2.exchange_within((SVC_B_IP, 80).into(), "still", "svc-b says still")
        .await;
    assert_eq!(
        ns1.exchange((h_ip, 80).into(), "h again").await.unwrap(),
        "ns2 says h again"
    );

    t1.shutdown().await.unwrap();
    t2.shutdown().await.unwrap();
    assert!(!ns1.has_link("ziti0") && !ns2.has_link("ziti0"));
}
