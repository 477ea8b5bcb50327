//! The control surface of `zt-tunnel run` against a real OpenZiti network, in a network
//! namespace of its own: `--status-socket` answered by `zt-tunnel status` and `--metrics`
//! answered over HTTP, while a flow through the TUN is open.
//!
//! Proven here: the status shows the identity authenticated, its connected router, the
//! intercepted service (hosted by the Go tunneler) with its intercept, and the open flow with
//! at least the bytes that went through it each way; `/metrics` shows the same bytes, the open
//! flow and the successful dial; a dial to a service nobody hosts counts as `no_terminators`;
//! the router's latency appears once its channel has probed it; `zt-tunnel status --log-level
//! debug` turns on debug lines in the running tunnel's log file, where there were none before;
//! the socket is mode 0600, refuses bad and overlong requests, and is removed when the tunnel
//! exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use testnet::{ChildGuard, TestNet};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixStream};

const BIN: &str = env!("CARGO_BIN_EXE_zt-tunnel");
const ECHO: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 20, 30, 41)), 7441);
const NOHOST: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::new(10, 20, 30, 42)), 7442);
const PAYLOAD: usize = 100 * 1024;
/// Generous: the machine may be busy with other tests.
const SETUP: Duration = Duration::from_secs(180);

#[test]
fn status_socket_and_metrics_describe_a_running_tunnel() {
    testnet::in_new_netns(|| {
        let net = TestNet::start().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(&net));
    });
}

/// A TCP echo server on loopback.
async fn start_echo() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    port
}

fn service(net: &TestNet, name: &str, addr: SocketAddr, host: Option<u16>) {
    let intercept = format!(
        r#"{{"protocols":["tcp"],"addresses":["{}"],"portRanges":[{{"low":{p},"high":{p}}}]}}"#,
        addr.ip(),
        p = addr.port()
    );
    net.create_config(&format!("{name}-intercept"), "intercept.v1", &intercept)
        .unwrap();
    let mut configs = vec![format!("{name}-intercept")];
    if let Some(port) = host {
        let host = format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#);
        net.create_config(&format!("{name}-host"), "host.v1", &host)
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
    if host.is_some() {
        net.create_service_policy(
            &format!("{name}-bind"),
            "Bind",
            &[&format!("@{name}")],
            &["#go-hosts"],
        )
        .unwrap();
    }
}

/// `zt-tunnel status ARGS`: (success, stdout, stderr).
async fn zt_status(args: &[&str]) -> (bool, String, String) {
    let out = tokio::process::Command::new(BIN)
        .arg("status")
        .args(args)
        .output()
        .await
        .expect("zt-tunnel status runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn status_json(socket: &Path) -> serde_json::Value {
    let (ok, out, err) = zt_status(&["--socket", socket.to_str().unwrap(), "--json"]).await;
    assert!(ok, "zt-tunnel status --json failed: {err}");
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"))
}

/// `GET /metrics`: the body.
async fn metrics(port: u16) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(30), s.read_to_string(&mut answer))
        .await
        .expect("metrics answered in time")
        .unwrap();
    let (head, body) = answer.split_once("\r\n\r\n").expect("an HTTP answer");
    assert!(head.starts_with("HTTP/1.1 200 "), "{head}");
    assert!(head.contains("text/plain; version=0.0.4"), "{head}");
    body.to_string()
}

/// The value of the series `name` (with its labels, e.g. `zt_bytes_total{direction="up"}`).
fn series(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// Connects through the TUN to `addr`, retrying while the service is not yet there.
async fn connect_within(addr: SocketAddr, limit: Duration, log: &Path) -> TcpStream {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout(Duration::from_secs(30), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => return s,
            other => assert!(
                Instant::now() < deadline,
                "no connection to {addr}: {other:?}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One raw request line on the status socket: the answer line.
async fn raw_request(socket: &Path, line: &[u8]) -> serde_json::Value {
    let stream = UnixStream::connect(socket).await.unwrap();
    let (rd, mut wr) = stream.into_split();
    wr.write_all(line).await.unwrap();
    let mut answer = String::new();
    tokio::time::timeout(
        Duration::from_secs(30),
        BufReader::new(rd).read_line(&mut answer),
    )
    .await
    .expect("answered in time")
    .unwrap();
    serde_json::from_str(answer.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {answer}"))
}

async fn scenario(net: &TestNet) {
    let echo_port = start_echo().await;
    service(net, "echo", ECHO, Some(echo_port));
    service(net, "nohost", NOHOST, None);

    let dir = tempfile::tempdir().unwrap();
    let client = dir.path().join("client.json");
    net.enroll_identity("st-client", &["clients"], &client)
        .unwrap();
    let go_host = net.home().join("go-host.json");
    net.enroll_identity("st-go-host", &["go-hosts"], &go_host)
        .unwrap();
    let _go = net.spawn_go_tunnel("host", &go_host, &[]).unwrap();

    let socket = dir.path().join("run").join("zt-st0.sock");
    let metrics_port = testnet::process::free_port().unwrap();
    let log = net.home().join("zt-tunnel-status.log");
    let mut cmd = Command::new(BIN);
    cmd.env_remove("RUST_LOG")
        .args(["--log-level", "info", "--log-file"])
        .arg(&log)
        .args(["run", "--no-dns", "--no-ipv6", "--refresh", "2", "-i"])
        .arg(&client)
        .args(["--tun-name", "zt-st0", "--status-socket"])
        .arg(&socket)
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")]);
    let mut tunnel = ChildGuard::spawn(
        "zt-tunnel run",
        cmd,
        &net.home().join("zt-tunnel-status.out"),
    )
    .unwrap();

    // The socket appears, mode 0600.
    let deadline = Instant::now() + SETUP;
    while !socket.exists() {
        assert!(
            tunnel.is_running() && Instant::now() < deadline,
            "no status socket:\n{}\n{}",
            tunnel.log_tail(30),
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "status socket mode {mode:o}");

    // A flow through the TUN, 100 KB each way, left open.
    let stream = connect_within(ECHO, SETUP, &log).await;
    let (mut rd, mut wr) = stream.into_split();
    let sent: Vec<u8> = (0..PAYLOAD).map(|i| (i % 251) as u8).collect();
    let write = async {
        wr.write_all(&sent).await.unwrap();
        wr.flush().await.unwrap();
    };
    let read = async {
        let mut got = vec![0u8; PAYLOAD];
        rd.read_exact(&mut got).await.unwrap();
        got
    };
    let ((), got) = tokio::time::timeout(Duration::from_secs(120), async {
        tokio::join!(write, read)
    })
    .await
    .expect("echo in time");
    assert!(got == sent, "the echo came back intact");
    let client_addr = wr.local_addr().unwrap();

    // The status socket shows it (with at least the bytes that went through).
    let status = status_json(&socket).await;
    println!(
        "status: {}",
        serde_json::to_string_pretty(&status).unwrap_or_default()
    );
    assert_eq!(status["ok"], true);
    let flows = status["flows"].as_array().expect("flows");
    let flow = flows
        .iter()
        .find(|f| f["client"] == client_addr.to_string())
        .unwrap_or_else(|| panic!("our flow {client_addr} in {flows:?}"));
    assert_eq!(flow["service"], "echo");
    assert_eq!(flow["intercepted"], ECHO.to_string());
    assert_eq!(flow["established"], true);
    assert!(
        flow["bytes_up"].as_u64().unwrap() >= PAYLOAD as u64,
        "{flow}"
    );
    assert!(
        flow["bytes_down"].as_u64().unwrap() >= PAYLOAD as u64,
        "{flow}"
    );
    let identities = status["identities"].as_array().expect("identities");
    assert_eq!(identities.len(), 1);
    assert_eq!(identities[0]["name"], "client");
    assert_eq!(identities[0]["auth"], "authenticated");
    let echo = status["services"]
        .as_array()
        .expect("services")
        .iter()
        .find(|s| s["name"] == "echo")
        .expect("service echo listed")
        .clone();
    assert_eq!(echo["dial"], true);
    assert_eq!(echo["intercept"]["addresses"][0], "10.20.30.41");
    assert_eq!(echo["intercept"]["ports"][0], "7441");
    let routers = status["routers"].as_array().expect("routers");
    assert!(
        routers
            .iter()
            .any(|r| r["connected"] == true && r["name"] == net.router().name.as_str()),
        "router {} connected: {routers:?}",
        net.router().name
    );
    assert!(status["totals"]["tcp_flows"].as_u64().unwrap() >= 1);
    assert!(status["totals"]["dials"]["ok"].as_u64().unwrap() >= 1);

    // The table shows the same.
    let (ok, table, err) = zt_status(&["--socket", socket.to_str().unwrap()]).await;
    assert!(ok, "{err}");
    println!("{table}");
    assert!(table.contains("authenticated"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.contains(&client_addr.to_string()) && l.contains("echo")),
        "{table}"
    );

    // Metrics: the bytes, the open flow, the successful dial.
    let text = metrics(metrics_port).await;
    println!("{text}");
    assert!(series(&text, "zt_bytes_total{direction=\"up\"}") >= PAYLOAD as f64);
    assert!(series(&text, "zt_bytes_total{direction=\"down\"}") >= PAYLOAD as f64);
    assert!(series(&text, "zt_flows_open{proto=\"tcp\"}") >= 1.0);
    assert!(series(&text, "zt_dials_total{outcome=\"ok\"}") >= 1.0);

    // A dial to a service nobody hosts is refused and counted as such.
    let before = series(&text, "zt_dials_total{outcome=\"no_terminators\"}");
    let deadline = Instant::now() + SETUP;
    loop {
        let r = tokio::time::timeout(Duration::from_secs(60), TcpStream::connect(NOHOST)).await;
        assert!(
            !matches!(r, Ok(Ok(_))),
            "no connection to a service nobody hosts"
        );
        let now = series(
            &metrics(metrics_port).await,
            "zt_dials_total{outcome=\"no_terminators\"}",
        );
        if now > before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no_terminators still {now}:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }

    // Bad requests are answered with an error; overlong ones too, then closed.
    let bad = raw_request(&socket, b"{\"cmd\":\"reboot\"}\n").await;
    assert_eq!(bad["ok"], false, "{bad}");
    let bad = raw_request(
        &socket,
        b"{\"cmd\":\"set-log-level\",\"level\":\"verbose\"}\n",
    )
    .await;
    assert_eq!(bad["ok"], false, "{bad}");
    let mut long = vec![b' '; 70 * 1024];
    long.push(b'\n');
    let bad = raw_request(&socket, &long).await;
    assert_eq!(bad["ok"], false, "{bad}");

    // Log level: no debug line so far; after `status --log-level debug`, a new flow logs some.
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains(" DEBUG "), "debug lines at level info");
    let (ok, out, err) =
        zt_status(&["--socket", socket.to_str().unwrap(), "--log-level", "debug"]).await;
    assert!(ok, "status --log-level debug failed: {out}{err}");
    let again = connect_within(ECHO, SETUP, &log).await;
    let deadline = Instant::now() + SETUP;
    loop {
        let text = std::fs::read_to_string(&log).unwrap();
        if text.contains(" DEBUG ") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no debug line after set-log-level debug:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(again);
    drop((rd, wr));

    // Router latency: the channel's first latency probe goes out 30 s after it opened.
    let deadline = Instant::now() + SETUP;
    let latency = loop {
        let status = status_json(&socket).await;
        let measured = status["routers"]
            .as_array()
            .expect("routers")
            .iter()
            .find_map(|r| r["latency_ms"].as_f64());
        if let Some(ms) = measured {
            break ms;
        }
        assert!(
            Instant::now() < deadline,
            "no router latency measured: {status}"
        );
        tokio::time::sleep(Duration::from_secs(1)).await;
    };
    assert!((0.0..60_000.0).contains(&latency), "latency {latency} ms");
    let text = metrics(metrics_port).await;
    let series_name = format!(
        "zt_router_latency_seconds{{router=\"{}\",identity=\"client\"}}",
        net.router().name
    );
    assert!(series(&text, &series_name) >= 0.0, "{text}");

    // The socket goes with the tunnel.
    assert!(tunnel.is_running(), "{}", tunnel.log_tail(30));
    let pid = tunnel.pid().unwrap();
    // SAFETY: signalling the child we started.
    unsafe { libc::kill(libc::pid_t::try_from(pid).unwrap(), libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(60);
    while socket.exists() {
        assert!(
            Instant::now() < deadline,
            "status socket left behind:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tunnel.kill();
}
