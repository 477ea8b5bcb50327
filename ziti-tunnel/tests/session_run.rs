//! `zt-tunnel` as a session runs it, against a real network in a namespace of its own:
//! - the sidecar's call with the binary swapped (`tunnel run --identity-dir DIR`) and the Go
//!   tunneler's flags, each with Go's meaning: `-v` (debug lines), `--log-formatter json`,
//!   `-d/--dnsSvcIpRange` (where answers come from), `-r/--resolver` (where the DNS server also
//!   listens), `--dnsUpstream` + `--dnsUnanswerable servfail`, `--svcPollRate`;
//! - the controller down when the tunnel starts and up 30 s later: the identity is retried
//!   ("failed to authenticate ... retrying in N s") and its services are intercepted within one
//!   poll interval, without a restart;
//! - an identity file dropped into the directory while running: its services work within
//!   10 s; the file removed: they are gone.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use testnet::{ChildGuard, TestNet, in_new_netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

const POLL: u64 = 5;

/// An echo server that prefixes its answers with `tag`.
async fn echo_server(tag: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                if let Ok(n) = s.read(&mut buf).await {
                    let mut answer = tag.as_bytes().to_vec();
                    answer.extend_from_slice(&buf[..n]);
                    let _ = s.write_all(&answer).await;
                }
            });
        }
    });
    port
}

/// One DNS query over UDP: the response code and the first A record.
async fn query(server: SocketAddr, name: &str) -> Option<(ResponseCode, Option<Ipv4Addr>)> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let mut msg = Message::query();
    msg.metadata.id = rand_id();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    sock.send_to(&msg.to_vec().ok()?, server).await.ok()?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    let a = reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    });
    Some((reply.metadata.response_code, a))
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        & 0xffff) as u16
}

/// Talks to `addr`: the answer, or why not.
async fn talk(addr: SocketAddr) -> Result<String, String> {
    let mut s = tokio::time::timeout(Duration::from_secs(8), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
    s.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(8), s.read(&mut buf))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| e.to_string())?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// How long until `name` resolves at our DNS server and answers `want`.
async fn reachable_within(
    dns: SocketAddr,
    name: &str,
    port: u16,
    want: &str,
    limit: Duration,
    log: &Path,
) -> Duration {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match query(dns, name).await {
            Some((ResponseCode::NoError, Some(ip))) => {
                match talk(SocketAddr::from((ip, port))).await {
                    Ok(a) if a == want => return start.elapsed(),
                    Ok(a) => last = format!("answer {a:?}"),
                    Err(e) => last = format!("error {e}"),
                }
            }
            other => last = format!("dns {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failures: Vec<String> = log_lines(log)
        .into_iter()
        .filter(|l| {
            l.contains("failed")
                || l.contains("WARN")
                || l.contains("ERROR")
                || l.contains("identity")
        })
        .collect();
    let failures = &failures[failures.len().saturating_sub(15)..];
    panic!(
        "{name}:{port} did not answer {want:?} within {limit:?}; last: {last}; log: {failures:#?}"
    );
}

fn service(net: &TestNet, name: &str, host: &str, port: u16, dialers: &str) {
    net.create_config(
        &format!("{name}-intercept"),
        "intercept.v1",
        &format!(r#"{{"protocols":["tcp"],"addresses":["{host}"],"portRanges":[{{"low":{port},"high":{port}}}]}}"#),
    )
    .unwrap();
    net.create_config(
        &format!("{name}-host"),
        "host.v1",
        &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#),
    )
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
        &[dialers],
    )
    .unwrap();
    net.create_service_policy(
        &format!("{name}-bind"),
        "Bind",
        &[&format!("@{name}")],
        &["#go-hosts"],
    )
    .unwrap();
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn the_sidecars_call_survives_a_late_controller_and_follows_the_identity_directory() {
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
    let port_a = echo_server("A:").await;
    let port_b = echo_server("B:").await;
    service(net, "svc-a", "a.session.test", port_a, "#clients-a");
    service(net, "svc-b", "b.session.test", port_b, "#clients-b");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("identities");
    std::fs::create_dir(&dir).unwrap();
    let host_id = tmp.path().join("host.json");
    net.enroll_identity("go-host", &["go-hosts"], &host_id)
        .unwrap();
    net.enroll_identity("client-a", &["clients-a"], &dir.join("client-a.json"))
        .unwrap();
    let spare = tmp.path().join("client-b.json");
    net.enroll_identity("client-b", &["clients-b"], &spare)
        .unwrap();
    net.adopt(net.spawn_go_tunnel("host", &host_id, &[]).unwrap());

    // The controller is down when the session starts.
    net.stop_controller().unwrap();
    let log = tmp.path().join("zt.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
    cmd.arg("--log-file")
        .arg(&log)
        .args(["tunnel", "run", "--identity-dir"])
        .arg(&dir)
        .args([
            "-v",
            "--log-formatter",
            "json",
            "--svcPollRate",
            &POLL.to_string(),
            "-d",
            "100.70.0.0/16",
            "-r",
            "udp://127.0.0.1:53",
            "--dnsUpstream",
            "udp://127.0.0.1:9",
            "--dnsUnanswerable",
            "servfail",
            "--no-ipv6",
        ]);
    let _zt = ChildGuard::spawn("zt-tunnel tunnel run", cmd, &tmp.path().join("zt.out")).unwrap();
    let dns = SocketAddr::from(([127, 0, 0, 1], 53));

    // The identity cannot authenticate: retried, and said so in the seeds' words.
    let start = Instant::now();
    while !log_lines(&log)
        .iter()
        .any(|l| l.contains("failed to authenticate client-a"))
    {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "no retry logged: {:?}",
            log_lines(&log)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // `-r`: the DNS server answers at 127.0.0.1:53 while no identity is in yet; a name that is
    // not intercepted, with a dead upstream, gets SERVFAIL (`--dnsUnanswerable servfail`).
    let mut unanswerable = None;
    for _ in 0..20 {
        unanswerable = query(dns, "nothing.example.").await;
        if unanswerable.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(
        unanswerable.map(|(rc, _)| rc),
        Some(ResponseCode::ServFail),
        "an unanswerable name gets SERVFAIL at the --resolver address"
    );

    tokio::time::sleep(Duration::from_secs(30).saturating_sub(start.elapsed())).await;
    net.start_controller().unwrap();
    let up = Instant::now();
    // Intercepted (the name answered from the -d range) within one poll interval: retries wait
    // at most half of it. One second of slack for a loaded machine's authentication.
    loop {
        if let Some((ResponseCode::NoError, Some(_))) = query(dns, "a.session.test.").await {
            break;
        }
        assert!(
            up.elapsed() < Duration::from_secs(POLL + 1),
            "not intercepted {:?} after the controller came back",
            up.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "intercepted {:?} after the controller came back",
        up.elapsed()
    );
    // Dials work once the router is back with the controller (its reconnect is its own).
    let took = reachable_within(
        dns,
        "a.session.test.",
        port_a,
        "A:ping",
        Duration::from_secs(120),
        &log,
    )
    .await;
    eprintln!("the service answered {took:?} later");
    let (_, ip) = query(dns, "a.session.test.").await.unwrap();
    let ip = ip.unwrap();
    assert_eq!(
        ip.octets()[..2],
        [100, 70],
        "answers come from the -d range: {ip}"
    );

    // The Go host binds svc-b again after the controller's restart in its own time; wait for
    // its terminator so the next step measures only ours.
    let since = Instant::now();
    loop {
        let out = net
            .ziti(&[
                "edge",
                "list",
                "terminators",
                "service.name=\"svc-b\"",
                "-j",
            ])
            .unwrap_or_default();
        let listed: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
        if listed["data"].as_array().is_some_and(|a| !a.is_empty()) {
            break;
        }
        assert!(
            since.elapsed() < Duration::from_secs(180),
            "the Go host never bound svc-b again"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // An identity file dropped into the directory: its services within 10 s.
    std::fs::copy(&spare, dir.join("client-b.json")).unwrap();
    let took = reachable_within(
        dns,
        "b.session.test.",
        port_b,
        "B:ping",
        Duration::from_secs(10),
        &log,
    )
    .await;
    eprintln!("a dropped-in identity's service answered after {took:?}");
    // Removed: its services are gone.
    std::fs::remove_file(dir.join("client-b.json")).unwrap();
    let gone = Instant::now();
    loop {
        let answer = query(dns, "b.session.test.").await;
        if matches!(answer, Some((_, None))) {
            break;
        }
        assert!(
            gone.elapsed() < Duration::from_secs(15),
            "b.session.test still answered: {answer:?}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // The first identity is untouched.
    assert_eq!(
        talk(SocketAddr::from((ip, port_a))).await.as_deref(),
        Ok("A:ping")
    );

    // `--log-formatter json` and `-v`: every line is a JSON object, and debug lines are there.
    let lines = log_lines(&log);
    assert!(!lines.is_empty());
    for l in &lines {
        let v: serde_json::Value =
            serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"));
        assert!(v.get("level").is_some(), "{l}");
    }
    assert!(
        lines.iter().any(|l| l.contains("\"level\":\"DEBUG\"")),
        "-v logs debug lines"
    );
    assert!(lines.iter().any(|l| l.contains("identity file removed")));
}
