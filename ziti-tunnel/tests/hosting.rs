//! Hosting against a real network, both ways with the Go tunneler:
//! - the Go proxy dials a `host.v1` forward* service hosted by `zt-tunnel run --host-only` on
//!   two ports, each reaching its own server; a port outside `allowedPortRanges` is refused;
//!   100 MB arrive intact; a UDP service echoes datagrams;
//! - `zt-tunnel run` (TUN) dials a forward* service hosted by `ziti tunnel host`: the dial's app
//!   data carries the intercepted port, so each port reaches its own server, and a disallowed
//!   port is refused;
//! - `host.v2` with two terminators of different precedence: dials go to the preferred one;
//!   when its port check fails they move to the other, and back when it recovers.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testnet::{ChildGuard, TestNet, in_new_netns, unique_name};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// A TCP server that answers each connection with `tag`, then the SHA-256 (hex) of everything
/// it read until end-of-file.
async fn tagged_server(bind: &str, tag: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind(bind).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut hash = Sha256::new();
                let mut buf = vec![0u8; 64 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => hash.update(&buf[..n]),
                    }
                }
                let answer = format!("{tag} {}", hex::encode(hash.finalize()));
                let _ = s.write_all(answer.as_bytes()).await;
                let _ = s.shutdown().await;
            });
        }
    });
    (port, task)
}

async fn udp_echo(bind: &str) -> u16 {
    let socket = UdpSocket::bind(bind).await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let mut reply = b"echo:".to_vec();
            reply.extend_from_slice(&buf[..n]);
            let _ = socket.send_to(&reply, from).await;
        }
    });
    port
}

/// A free TCP port on 127.0.0.1 (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Sends `data`, half-closes, and reads the answer; `Err` if the connection fails.
async fn send_and_read(addr: SocketAddr, data: &[u8]) -> std::io::Result<String> {
    let mut s = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = s.split();
    let send = async {
        wr.write_all(data).await?;
        wr.shutdown().await
    };
    let mut answer = Vec::new();
    let (sent, read) = tokio::join!(send, rd.read_to_end(&mut answer));
    read?;
    sent?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

/// Retries until the answer starts with `tag` (the Go proxy and the terminators take a moment).
async fn answer_within(addr: SocketAddr, data: &[u8], tag: &str, limit: Duration) -> String {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match send_and_read(addr, data).await {
            Ok(a) if a.starts_with(tag) => return a,
            Ok(a) => last = format!("answer {a:?}"),
            Err(e) => last = format!("error {e}"),
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    panic!("{addr}: no answer starting with {tag:?} within {limit:?}; last: {last}");
}

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn zt_host_only(net: &TestNet, identity: &Path, log: &Path) -> ChildGuard {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
    cmd.args(["--log-file"])
        .arg(log)
        .args([
            "--log-level",
            "debug",
            "run",
            "--host-only",
            "--refresh",
            "2",
            "-i",
        ])
        .arg(identity);
    ChildGuard::spawn(
        "zt-tunnel run --host-only",
        cmd,
        &net.home().join(unique_name("zt-host.out")),
    )
    .unwrap()
}

fn log_contains_within(log: &Path, needle: &str, limit: Duration) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if std::fs::read_to_string(log).is_ok_and(|l| l.contains(needle)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    false
}

fn policies(net: &TestNet, service: &str, dialers: &str, binders: &str) {
    net.create_service_policy(
        &format!("{service}-dial"),
        "Dial",
        &[&format!("@{service}")],
        &[dialers],
    )
    .unwrap();
    net.create_service_policy(
        &format!("{service}-bind"),
        "Bind",
        &[&format!("@{service}")],
        &[binders],
    )
    .unwrap();
}

#[test]
fn go_proxy_dials_forwarded_ports_and_udp_hosted_by_zt_tunnel() {
    let net = TestNet::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // The Go proxies listen on 0.0.0.0:PORT (IPv4) and send the port as `dst_port`; the
        // servers listen on [::1] at the same ports, which IPv4 listeners do not collide with.
        let (port_a, _a) = tagged_server("[::1]:0", "A").await;
        let (port_b, _b) = tagged_server("[::1]:0", "B").await;
        let refused_port = free_port();
        let udp_port = udp_echo("127.0.0.2:0").await;
        let udp_proxy_port = free_port();

        let fwd = unique_name("fwd");
        let host = format!(
            r#"{{"forwardProtocol":true,"allowedProtocols":["tcp"],"address":"::1",
                "forwardPort":true,"allowedPortRanges":[{{"low":{port_a},"high":{port_a}}},{{"low":{port_b},"high":{port_b}}}]}}"#
        );
        net.create_config(&format!("{fwd}-host"), "host.v1", &host).unwrap();
        net.create_service(&fwd, &[&format!("{fwd}-host")], &[], false).unwrap();
        let udp = unique_name("udp");
        net.create_config(
            &format!("{udp}-host"),
            "host.v1",
            &format!(r#"{{"protocol":"udp","address":"127.0.0.2","port":{udp_port}}}"#),
        )
        .unwrap();
        net.create_service(&udp, &[&format!("{udp}-host")], &[], false).unwrap();
        let (clients, hosts) = (unique_name("fwd-clients"), unique_name("fwd-hosts"));
        policies(net, &fwd, &format!("#{clients}"), &format!("#{hosts}"));
        policies(net, &udp, &format!("#{clients}"), &format!("#{hosts}"));

        let dir = tempfile::tempdir().unwrap();
        let (host_id, client_id) = (dir.path().join("host.json"), dir.path().join("client.json"));
        net.enroll_identity(&unique_name("fwd-host"), &[&hosts], &host_id).unwrap();
        net.enroll_identity(&unique_name("fwd-client"), &[&clients], &client_id).unwrap();

        let log = dir.path().join("zt-host.log");
        let _host = zt_host_only(net, &host_id, &log);
        let mut proxies = Vec::new();
        for port in [port_a, port_b, refused_port] {
            proxies.push(net.spawn_go_tunnel("proxy", &client_id, &[&format!("{fwd}:{port}")]).unwrap());
        }
        proxies.push(
            net.spawn_go_tunnel("proxy", &client_id, &[&format!("{udp}:{udp_proxy_port}:udp")])
                .unwrap(),
        );

        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        let hello = b"hello";
        let a = answer_within(at(port_a), hello, "A", Duration::from_secs(90)).await;
        assert_eq!(a, format!("A {}", sha_hex(hello)));
        let b = answer_within(at(port_b), hello, "B", Duration::from_secs(30)).await;
        assert_eq!(b, format!("B {}", sha_hex(hello)));

        // 100 MB through the hosted service, intact.
        let big: Vec<u8> = (0..100 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
        let answer = send_and_read(at(port_a), &big).await.unwrap();
        assert_eq!(answer, format!("A {}", sha_hex(&big)), "100 MB through the hosted service");

        // A port outside allowedPortRanges: the dial is refused, with the reason in our log.
        let refused = send_and_read(at(refused_port), hello).await;
        assert!(
            refused.as_ref().map_or(true, |a| a.is_empty()),
            "a disallowed port must not reach a server: {refused:?}"
        );
        assert!(
            log_contains_within(
                &log,
                &format!("port {refused_port} is not in allowed port ranges"),
                Duration::from_secs(30)
            ),
            "the refusal is logged with its reason"
        );

        // UDP: datagrams echo through the hosted UDP service.
        let client = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let start = Instant::now();
        let mut buf = vec![0u8; 2048];
        let mut echoed = 0;
        while echoed < 5 && start.elapsed() < Duration::from_secs(60) {
            let msg = format!("datagram {echoed}");
            client.send_to(msg.as_bytes(), at(udp_proxy_port)).await.unwrap();
            if let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(1), client.recv_from(&mut buf)).await
            {
                let reply = String::from_utf8_lossy(&buf[..n]).into_owned();
                if reply.starts_with("echo:datagram") {
                    echoed += 1;
                }
            }
        }
        assert_eq!(echoed, 5, "UDP datagrams echo through the zt-tunnel-hosted service");
        drop(proxies);
    });
}

#[test]
fn host_v2_moves_to_the_other_terminator_while_the_preferred_one_fails_its_health_check() {
    let net = TestNet::shared();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let (port_a, server_a) = tagged_server("127.0.0.2:0", "A").await;
        let (port_b, _b) = tagged_server("127.0.0.2:0", "B").await;
        let svc = unique_name("hv2");
        let host = format!(
            r#"{{"terminators":[
                {{"protocol":"tcp","address":"127.0.0.2","port":{port_a},
                  "listenOptions":{{"precedence":"required"}},
                  "portChecks":[{{"address":"127.0.0.2:{port_a}","interval":"1s","timeout":"500ms",
                    "actions":[{{"trigger":"fail","action":"mark unhealthy"}},{{"trigger":"pass","action":"mark healthy"}}]}}]}},
                {{"protocol":"tcp","address":"127.0.0.2","port":{port_b},
                  "listenOptions":{{"precedence":"default"}}}}]}}"#
        );
        net.create_config(&format!("{svc}-host"), "host.v2", &host).unwrap();
        net.create_service(&svc, &[&format!("{svc}-host")], &[], false).unwrap();
        let (clients, hosts) = (unique_name("hv2-clients"), unique_name("hv2-hosts"));
        policies(net, &svc, &format!("#{clients}"), &format!("#{hosts}"));
        let dir = tempfile::tempdir().unwrap();
        let (host_id, client_id) = (dir.path().join("host.json"), dir.path().join("client.json"));
        net.enroll_identity(&unique_name("hv2-host"), &[&hosts], &host_id).unwrap();
        net.enroll_identity(&unique_name("hv2-client"), &[&clients], &client_id).unwrap();
        let log = dir.path().join("zt-host.log");
        let _host = zt_host_only(net, &host_id, &log);

        let ctx = ziti_sdk::ZitiContext::from_file(&client_id).await.unwrap();
        // Which terminator answers a dial now (None: the dial failed).
        let who = || {
            let ctx = ctx.clone();
            let svc = svc.clone();
            async move {
                let mut s = ctx.dial(&svc).await.ok()?;
                s.shutdown().await.ok()?;
                let mut answer = String::new();
                s.read_to_string(&mut answer).await.ok()?;
                answer.get(..1).map(str::to_string)
            }
        };
        let until = |want: &'static str, limit: Duration| {
            async move {
                let start = Instant::now();
                let mut seen = Vec::new();
                while start.elapsed() < limit {
                    let got = who().await;
                    if got.as_deref() == Some(want) {
                        return start.elapsed();
                    }
                    seen.push(got);
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                panic!("no dial reached {want} within {limit:?}: {seen:?}");
            }
        };
        until("A", Duration::from_secs(90)).await;
        // Both terminators are up: the required one takes every dial.
        for _ in 0..10 {
            assert_eq!(who().await.as_deref(), Some("A"), "the preferred terminator answers");
        }
        // A's server goes away: its check fails, precedence turns failed, dials go to B.
        server_a.abort();
        let _ = server_a.await;
        let moved = until("B", Duration::from_secs(30)).await;
        for _ in 0..5 {
            assert_eq!(who().await.as_deref(), Some("B"), "the failed terminator takes no dials");
        }
        // A comes back on the same port: the check passes and dials return to A.
        let listener = TcpListener::bind(("127.0.0.2", port_a)).await.unwrap();
        drop(listener);
        let (again, _a2) = tagged_server(&format!("127.0.0.2:{port_a}"), "A").await;
        assert_eq!(again, port_a);
        let back = until("A", Duration::from_secs(30)).await;
        eprintln!("moved to B after {moved:?}, back to A after {back:?}");
        assert!(
            log_contains_within(&log, "health checks changed the terminator", Duration::from_secs(5)),
            "the change is logged"
        );
    });
}

#[test]
fn zt_tunnel_dials_forwarded_ports_hosted_by_go() {
    in_new_netns(|| {
        let net = TestNet::start().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Three consecutive free ports: two allowed, one not.
            let (port_a, _a) = tagged_server("127.0.0.1:0", "A").await;
            let (port_b, _b) = tagged_server("127.0.0.1:0", "B").await;
            let refused_port = free_port();
            let (low, high) = (
                port_a.min(port_b).min(refused_port),
                port_a.max(port_b).max(refused_port),
            );
            let svc = "fwd-go";
            net.create_config(
                "fwd-go-intercept",
                "intercept.v1",
                &format!(
                    r#"{{"protocols":["tcp"],"addresses":["10.20.30.40"],"portRanges":[{{"low":{low},"high":{high}}}]}}"#
                ),
            )
            .unwrap();
            net.create_config(
                "fwd-go-host",
                "host.v1",
                &format!(
                    r#"{{"forwardProtocol":true,"allowedProtocols":["tcp"],"address":"127.0.0.1",
                        "forwardPort":true,"allowedPortRanges":[{{"low":{port_a},"high":{port_a}}},{{"low":{port_b},"high":{port_b}}}]}}"#
                ),
            )
            .unwrap();
            net.create_service(svc, &["fwd-go-intercept", "fwd-go-host"], &[], false)
                .unwrap();
            policies(&net, svc, "#clients", "#go-hosts");
            let dir = tempfile::tempdir().unwrap();
            let (host_id, client_id) = (dir.path().join("host.json"), dir.path().join("client.json"));
            net.enroll_identity("go-host", &["go-hosts"], &host_id).unwrap();
            net.enroll_identity("client", &["clients"], &client_id).unwrap();
            net.adopt(net.spawn_go_tunnel("host", &host_id, &[]).unwrap());

            let log = dir.path().join("zt.log");
            let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
            cmd.arg("--log-file")
                .arg(&log)
                .args(["--log-level", "debug", "run", "--no-dns", "--no-ipv6", "--refresh", "2", "-i"])
                .arg(&client_id);
            let _zt = ChildGuard::spawn("zt-tunnel run", cmd, &dir.path().join("zt.out")).unwrap();

            let at = |port| SocketAddr::from(([10, 20, 30, 40], port));
            let hello = b"through the TUN";
            let a = answer_within(at(port_a), hello, "A", Duration::from_secs(90)).await;
            assert_eq!(a, format!("A {}", sha_hex(hello)));
            let b = answer_within(at(port_b), hello, "B", Duration::from_secs(30)).await;
            assert_eq!(b, format!("B {}", sha_hex(hello)));
            // The Go host refuses the port its config does not allow; our SYN is answered with
            // a reset, and the failed dial is in our log with the service.
            let refused = send_and_read(at(refused_port), hello).await;
            assert!(
                refused.is_err() || refused.as_ref().is_ok_and(String::is_empty),
                "a disallowed port must not reach a server: {refused:?}"
            );
            assert!(
                log_contains_within(&log, "fwd-go", Duration::from_secs(10)),
                "the failed dial is logged with the service"
            );
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let failed: Vec<&str> = text.lines().filter(|l| l.contains("dial failed") && l.contains(svc)).collect();
            assert!(!failed.is_empty(), "the failed dial is logged with the service: {text}");
            eprintln!("zt-tunnel's failed dial: {failed:#?}");
            // The control: the Go proxy dialing the same port of the same Go host.
            let _proxy = net.spawn_go_tunnel("proxy", &client_id, &[&format!("{svc}:{refused_port}")]).unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await;
            let start = Instant::now();
            let control = send_and_read(SocketAddr::from(([127, 0, 0, 1], refused_port)), hello).await;
            eprintln!("Go proxy, same dial: {control:?} after {:?}", start.elapsed());
            assert!(
                control.is_err() || control.as_ref().is_ok_and(String::is_empty),
                "the Go proxy is refused too: {control:?}"
            );
        });
    });
}
