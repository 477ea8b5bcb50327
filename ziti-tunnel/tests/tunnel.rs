//! `zt-tunnel run` against a real OpenZiti network, inside a network namespace of its own.
//!
//! The test thread moves into a fresh network namespace (`unshare(CLONE_NEWNET)`) before it
//! starts anything, so the controller, the router, the Go tunneler, the local servers and
//! `zt-tunnel` with its TUN device all live there and the host's network is never touched; the
//! namespace disappears with the test.
//!
//! Proven here: a hostname intercept answered by our DNS and carried through the TUN to a service
//! hosted by the Go tunneler (20 MB each way, SHA-256 checked, client half-close); an IP intercept
//! routed through the TUN to a service that `zt-tunnel` itself hosts (host.v1); connect() to a
//! service without a host is refused (the SYN is held until the dial fails) and the failure is
//! logged with the service name and the reason; a service removed by policy stops resolving;
//! UDP datagrams to an intercepted address reach a UDP service hosted by the Go tunneler and the
//! answers come back datagram by datagram; `curl -6` reaches a service intercepted by an IPv6
//! address and one intercepted by hostname (AAAA from the IPv6 pool); no process outlives the
//! test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};
use sha2::{Digest, Sha256};
use testnet::{ChildGuard, TestNet, in_new_netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(100, 64, 0, 1)), 53);

/// Asks our DNS server for `name`'s A record: `None` when no reply came, `Some(None)` for a reply
/// without one. (Names that are not intercepted are forwarded to a dead upstream, so their
/// SERVFAIL comes after the forwarder's 2 s timeout.)
async fn lookup(name: &str) -> Option<Option<Ipv4Addr>> {
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
    Some(answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    }))
}

async fn resolve(name: &str) -> Option<Ipv4Addr> {
    lookup(name).await.flatten()
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

/// A TCP server: reads the request to end-of-file, then answers with `reply_len` bytes derived
/// from the request and closes. Reports the SHA-256 of each request it read.
async fn start_server(reply_len: usize) -> (u16, tokio::sync::mpsc::Receiver<String>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut hasher = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) => break,
                        Ok(n) => hasher.update(&buf[..n]),
                        Err(_) => return,
                    }
                }
                let digest = hex::encode(hasher.finalize());
                let reply = pattern(reply_len, &digest);
                if s.write_all(&reply).await.is_ok() {
                    let _ = s.shutdown().await;
                    let _ = tx.send(digest).await;
                }
            });
        }
    });
    (port, rx)
}

/// A minimal HTTP server on loopback: answers every request with `body`.
async fn start_http_server(body: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = Vec::new();
                let mut buf = [0u8; 4096];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => req.extend_from_slice(&buf[..n]),
                    }
                }
                let answer = format!(
                    "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    port
}

/// Asks our DNS server for `name`'s AAAA record.
async fn lookup_aaaa(name: &str) -> Option<std::net::Ipv6Addr> {
    let sock = UdpSocket::bind("0.0.0.0:0").await.ok()?;
    let mut msg = Message::query();
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::AAAA));
    msg.metadata.id = 0x6a6a;
    msg.metadata.recursion_desired = true;
    sock.send_to(&msg.to_vec().ok()?, DNS).await.ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::AAAA(a) => Some(a.0),
        _ => None,
    })
}

/// `curl -6` to `url` (retried until `limit`): the body it printed.
async fn curl6_within(url: &str, limit: Duration) -> String {
    let deadline = Instant::now() + limit;
    loop {
        let out = tokio::process::Command::new("curl")
            .args(["-6", "-sS", "--max-time", "20", url])
            .output()
            .await
            .expect("curl runs");
        if out.status.success() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        assert!(
            Instant::now() < deadline,
            "curl -6 {url} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A UDP server on loopback that answers each datagram with `echo:` + the datagram.
async fn start_udp_echo() -> u16 {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = sock.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 65536];
        while let Ok((n, from)) = sock.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = sock.send_to(&reply, from).await;
        }
    });
    port
}

/// Deterministic bytes seeded by `seed`.
fn pattern(len: usize, seed: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut block = Sha256::digest(seed.as_bytes());
    while out.len() < len {
        out.extend_from_slice(&block);
        block = Sha256::digest(block);
    }
    out.truncate(len);
    out
}

/// Sends `request`, half-closes, reads the reply to end-of-file; a stalled path (nothing for
/// 60 s, generous on a loaded machine) is an error rather than a hung suite.
async fn exchange(addr: SocketAddr, request: &[u8]) -> std::io::Result<Vec<u8>> {
    const STALL: Duration = Duration::from_secs(60);
    let stalled = || std::io::Error::new(std::io::ErrorKind::TimedOut, "no progress for 60 s");
    let s = tokio::time::timeout(STALL, TcpStream::connect(addr))
        .await
        .map_err(|_| stalled())??;
    let (mut rd, mut wr) = s.into_split();
    let req = request.to_vec();
    let writer = tokio::spawn(async move {
        for chunk in req.chunks(64 * 1024) {
            tokio::time::timeout(STALL, wr.write_all(chunk))
                .await
                .map_err(|_| stalled())??;
        }
        wr.shutdown().await
    });
    let mut reply = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::time::timeout(STALL, rd.read(&mut buf))
            .await
            .map_err(|_| stalled())??;
        if n == 0 {
            break;
        }
        reply.extend_from_slice(&buf[..n]);
    }
    writer.await.map_err(std::io::Error::other)??;
    Ok(reply)
}

/// Retries an exchange until it yields a reply of `len` bytes (hosts take a moment to bind).
async fn exchange_within(addr: SocketAddr, request: &[u8], len: usize, limit: Duration) -> Vec<u8> {
    let deadline = Instant::now() + limit;
    loop {
        match exchange(addr, request).await {
            Ok(reply) if reply.len() == len => return reply,
            other => {
                assert!(
                    Instant::now() < deadline,
                    "no complete exchange with {addr} in {limit:?}; last: {:?}",
                    other.map(|r| r.len())
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn intercept_json(addr: &str, port: u16) -> String {
    format!(
        r#"{{"protocols":["tcp"],"addresses":["{addr}"],"portRanges":[{{"low":{port},"high":{port}}}]}}"#
    )
}

fn host_json(port: u16) -> String {
    format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#)
}

/// A service with an intercept (and optionally a host config), dialable by `#clients` and
/// bindable by `#binders`.
fn service(net: &TestNet, name: &str, intercept: &str, host: Option<&str>, binders: &str) {
    net.create_config(&format!("{name}-intercept"), "intercept.v1", intercept)
        .unwrap();
    let mut configs = vec![format!("{name}-intercept")];
    if let Some(h) = host {
        net.create_config(&format!("{name}-host"), "host.v1", h)
            .unwrap();
        configs.push(format!("{name}-host"));
    }
    let configs: Vec<&str> = configs.iter().map(String::as_str).collect();
    net.create_service(name, &configs, &[], false).unwrap();
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

#[test]
fn run_intercepts_hostnames_and_ips_through_the_tun() {
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
    const BIG: usize = 20 * 1024 * 1024;
    let (web_port, mut web_requests) = start_server(BIG).await;
    let (ip_port, mut ip_requests) = start_server(1000).await;

    service(
        net,
        "web",
        &intercept_json("web.ziti.test", 80),
        Some(&host_json(web_port)),
        "#go-hosts",
    );
    service(
        net,
        "ipsvc",
        &intercept_json("192.0.2.10", 7000),
        Some(&host_json(ip_port)),
        "#rust-hosts",
    );
    service(
        net,
        "nohost",
        &intercept_json("nohost.ziti.test", 80),
        None,
        "#nobody",
    );
    service(
        net,
        "gone",
        &intercept_json("gone.ziti.test", 80),
        None,
        "#nobody",
    );
    // IPv6 (issue 9 point 6): one service intercepted by an IPv6 address, one by a hostname
    // answered with AAAA from the IPv6 pool, both hosted by zt-tunnel's host identity.
    let v6_port = start_http_server("hello over ipv6").await;
    service(
        net,
        "v6ip",
        &intercept_json("2001:db8::10", 7100),
        Some(&host_json(v6_port)),
        "#rust-hosts",
    );
    service(
        net,
        "v6name",
        &intercept_json("v6.ziti.test", 80),
        Some(&host_json(v6_port)),
        "#rust-hosts",
    );
    let udp_port = start_udp_echo().await;
    service(
        net,
        "udpsvc",
        r#"{"protocols":["udp"],"addresses":["192.0.2.20"],"portRanges":[{"low":5353,"high":5353}]}"#,
        Some(&format!(
            r#"{{"protocol":"udp","address":"127.0.0.1","port":{udp_port}}}"#
        )),
        "#go-hosts",
    );

    let ids = tempfile::tempdir().unwrap();
    enroll(
        net,
        "tun-client",
        &["clients", "gone-clients"],
        &ids.path().join("client.json"),
    );
    enroll(
        net,
        "tun-host",
        &["rust-hosts"],
        &ids.path().join("host.json"),
    );
    net.create_service_policy("gone-dial-2", "Dial", &["@gone"], &["#gone-clients"])
        .unwrap();
    let go_host = net.home().join("go-host.json");
    enroll(net, "go-host", &["go-hosts"], &go_host);
    let _go = net.spawn_go_tunnel("host", &go_host, &[]).unwrap();

    let log = net.home().join("zt-tunnel-session.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
    cmd.args(["--log-level", "info", "--log-file"])
        .arg(&log)
        .args(["run", "--identity-dir"])
        .arg(ids.path())
        .args([
            "--tun-name",
            "zt-test0",
            "--refresh",
            "1",
            "--dns-upstream",
            "127.0.0.1:9",
        ]);
    let mut tunnel =
        ChildGuard::spawn("zt-tunnel run", cmd, &net.home().join("zt-tunnel.out")).unwrap();

    // Hostname intercept: our DNS gives web.ziti.test a pool address; TCP to it crosses the TUN
    // and the smoltcp stack, is dialed over Ziti and reaches the Go tunneler's host.
    let web_ip = resolve_within("web.ziti.test", Duration::from_secs(60)).await;
    assert!(
        ziti_dns::Ipv4Cidr::DEFAULT.contains(web_ip),
        "{web_ip} is a pool address"
    );
    assert_ne!(web_ip, Ipv4Addr::new(100, 64, 0, 1));
    let request = pattern(BIG, "client request");
    let web = SocketAddr::from((web_ip, 80));
    let reply = exchange_within(web, &request, BIG, Duration::from_secs(60)).await;
    let request_digest = hex::encode(Sha256::digest(&request));
    let mut seen = Vec::new();
    while let Ok(d) = web_requests.try_recv() {
        seen.push(d);
    }
    assert!(
        seen.contains(&request_digest),
        "the server got the 20 MB request intact"
    );
    assert_eq!(
        reply,
        pattern(BIG, &request_digest),
        "the 20 MB reply arrived intact"
    );

    // IP intercept: routed into the TUN by zt-tunnel, hosted by zt-tunnel's host identity.
    let ip = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 10), 7000));
    let reply = exchange_within(ip, b"over an ip intercept", 1000, Duration::from_secs(60)).await;
    let digest = hex::encode(Sha256::digest(b"over an ip intercept"));
    assert_eq!(reply, pattern(1000, &digest));
    assert_eq!(ip_requests.recv().await.as_deref(), Some(digest.as_str()));

    // A service nobody hosts: the SYN is held while zt-tunnel dials, and the failed dial
    // answers it with RST, so connect() itself fails with "connection refused" (issue 9
    // point 5); the log names service and reason.
    let nohost_ip = resolve_within("nohost.ziti.test", Duration::from_secs(60)).await;
    let started = Instant::now();
    let r = tokio::time::timeout(
        Duration::from_secs(30),
        TcpStream::connect(SocketAddr::from((nohost_ip, 80))),
    )
    .await
    .expect("connect() answered, not left hanging");
    let refused = r.expect_err("no connection to a service nobody hosts");
    assert_eq!(
        refused.kind(),
        std::io::ErrorKind::ConnectionRefused,
        "{refused}"
    );
    println!(
        "connect() to an unhosted service refused after {:?}",
        started.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains("dial failed")
            && text.contains("nohost")
            && text.contains("no terminators")
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "failed dial not logged with service and reason:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // IPv6: curl -6 to an intercepted IPv6 address, and to the AAAA answer for a hostname.
    let body = curl6_within("http://[2001:db8::10]:7100/", Duration::from_secs(60)).await;
    assert_eq!(body, "hello over ipv6");
    let deadline = Instant::now() + Duration::from_secs(60);
    let v6 = loop {
        if let Some(a) = lookup_aaaa("v6.ziti.test").await {
            break a;
        }
        assert!(Instant::now() < deadline, "no AAAA for v6.ziti.test");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        v6.segments()[0] == 0xfd7a,
        "{v6} comes from the IPv6 pool fd7a:7a7a:7a7a::/64"
    );
    let body = curl6_within(&format!("http://[{v6}]/"), Duration::from_secs(60)).await;
    assert_eq!(body, "hello over ipv6");

    // Not intercepted: a SYN to a pool address nobody was given is refused at once.
    let stray = tokio::time::timeout(
        Duration::from_secs(30),
        TcpStream::connect(SocketAddr::from((Ipv4Addr::new(100, 64, 200, 200), 80))),
    )
    .await;
    assert!(
        matches!(stray, Ok(Err(_))),
        "unintercepted destinations are refused, not left unanswered: {stray:?}"
    );

    // UDP: datagrams to an intercepted address are carried one by one and answered.
    let udp = UdpSocket::bind("0.0.0.0:0").await.unwrap();
    let target = SocketAddr::from((Ipv4Addr::new(192, 0, 2, 20), 5353));
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let sent = udp.send_to(b"ping-0", target).await;
        if sent.is_ok()
            && let Ok(Ok((n, from))) =
                tokio::time::timeout(Duration::from_secs(1), udp.recv_from(&mut buf)).await
        {
            assert_eq!(from, target, "answers come from the intercepted address");
            assert_eq!(&buf[..n], b"echo:ping-0");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no UDP answer through the tunnel ({sent:?}):\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            net.ziti(&["edge", "list", "services", "-j"])
                .unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    for i in 1..=5 {
        let msg = format!("ping-{i}-{}", "x".repeat(i * 200));
        udp.send_to(msg.as_bytes(), target).await.unwrap();
        let (n, _) = tokio::time::timeout(Duration::from_secs(20), udp.recv_from(&mut buf))
            .await
            .expect("UDP answer in time")
            .unwrap();
        assert_eq!(
            &buf[..n],
            format!("echo:{msg}").as_bytes(),
            "datagram boundaries kept"
        );
    }

    // Policy change: the service disappears from DNS (zt-tunnel refreshes every second): a reply
    // without an address, not a lost query, proves it.
    resolve_within("gone.ziti.test", Duration::from_secs(60)).await;
    net.delete("service-policy", "gone-dial").unwrap();
    net.delete("service-policy", "gone-dial-2").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while lookup("gone.ziti.test").await != Some(None) {
        assert!(
            Instant::now() < deadline,
            "gone.ziti.test still resolves after losing access"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    assert!(
        tunnel.is_running(),
        "zt-tunnel still running:\n{}",
        tunnel.log_tail(30)
    );
    tunnel.kill();
}
