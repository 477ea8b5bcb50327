//! The README demo: a throwaway local OpenZiti network, a web service hosted by the Go tunneler,
//! and `zt-tunnel` enrolling an identity, listing its services, dialing the service, and finally
//! running as the session's tunneler: a TUN device and DNS server through which a plain TCP
//! client reaches `http://demo.ziti/`.
//!
//! Everything runs inside a private network namespace that the demo creates first (so it needs
//! root); the host's network is never touched and the namespace vanishes with the demo.
//!
//! Run with `scripts/demo` (it builds `zt-tunnel` first and passes its path in `ZT_TUNNEL_BIN`).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use testnet::TestNet;

fn main() -> anyhow::Result<()> {
    let zt = PathBuf::from(
        std::env::var("ZT_TUNNEL_BIN")
            .context("ZT_TUNNEL_BIN must point at the zt-tunnel binary (scripts/demo sets it)")?,
    );
    step("entering a private network namespace (loopback only)");
    enter_private_netns()?;

    step("starting a throwaway OpenZiti network (controller + edge router)");
    let net = TestNet::start().context("starting the test network")?;
    println!(
        "    controller {}  router port {}",
        net.ctrl_url(),
        net.router().port
    );

    step("starting a local web server that only the Ziti network will reach");
    let web = std::net::TcpListener::bind("127.0.0.1:0")?;
    let web_port = web.local_addr()?.port();
    std::thread::spawn(move || serve_web(web));

    step("creating service `demo-web` (intercept demo.ziti:80, hosted at 127.0.0.1)");
    net.create_config(
        "demo-web-intercept",
        "intercept.v1",
        r#"{"protocols":["tcp"],"addresses":["demo.ziti"],"portRanges":[{"low":80,"high":80}]}"#,
    )?;
    net.create_config(
        "demo-web-host",
        "host.v1",
        &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{web_port}}}"#),
    )?;
    net.create_service(
        "demo-web",
        &["demo-web-intercept", "demo-web-host"],
        &["demo"],
        true,
    )?;
    net.create_service_policy("demo-dial", "Dial", &["#demo"], &["#demo-clients"])?;
    net.create_service_policy("demo-bind", "Bind", &["#demo"], &["#demo-hosts"])?;

    step("hosting it with the Go tunneler (`ziti tunnel host`)");
    let host_jwt = net.create_identity("demo-host", &["demo-hosts"])?;
    let host_json = net.home().join("demo-host.json");
    net.cli_enroll(&host_jwt, &host_json, "EC")?;
    let _host = net.spawn_go_tunnel("host", &host_json, &[])?;

    step("zt-tunnel enroll");
    let jwt = net.create_identity("demo-client", &["demo-clients"])?;
    let client_json = net.home().join("demo-client.json");
    run(Command::new(&zt)
        .arg("enroll")
        .arg("-j")
        .arg(&jwt)
        .arg("-i")
        .arg(&client_json))?;

    step("zt-tunnel services");
    run(Command::new(&zt)
        .arg("services")
        .arg("-i")
        .arg(&client_json))?;

    step(
        "zt-tunnel dial demo-web  (an HTTP request through the Ziti network, end-to-end encrypted)",
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_through(&zt, &client_json) {
            Ok(body) if body.contains("hello from behind OpenZiti") => {
                println!("{body}");
                break;
            }
            Ok(other) if Instant::now() > deadline => bail!("unexpected answer: {other}"),
            Err(e) if Instant::now() > deadline => return Err(e),
            _ => std::thread::sleep(Duration::from_millis(500)), // host still binding
        }
    }
    step("zt-tunnel run  (TUN device + DNS; a plain TCP client reaches http://demo.ziti/)");
    let ids = net.home().join("identities");
    std::fs::create_dir_all(&ids)?;
    std::fs::copy(&client_json, ids.join("demo-client.json"))?;
    let mut cmd = Command::new(&zt);
    cmd.args(["--log-level", "info", "run", "--identity-dir"])
        .arg(&ids)
        .args(["--tun-name", "ziti-demo0", "--refresh", "2"]);
    let log = net.home().join("zt-tunnel-run.log");
    let mut tunnel = testnet::ChildGuard::spawn("zt-tunnel run", cmd, &log)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let ip = loop {
        if let Some(ip) = runtime.block_on(resolve("demo.ziti")) {
            break ip;
        }
        if !tunnel.is_running() || Instant::now() > deadline {
            bail!(
                "zt-tunnel's DNS never answered demo.ziti:\n{}",
                tunnel.log_tail(30)
            );
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    println!("    demo.ziti -> {ip}  (answered by zt-tunnel's DNS at 100.64.0.1)");
    println!(
        "    GET http://demo.ziti/  (kernel TCP -> TUN -> smoltcp -> Ziti -> Go host -> web server)"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match http_get(ip) {
            Ok(body) if body.contains("hello from behind OpenZiti") => {
                println!("{body}");
                break;
            }
            other if Instant::now() > deadline => {
                bail!(
                    "no answer through the tunnel: {other:?}\n{}",
                    tunnel.log_tail(30)
                )
            }
            _ => std::thread::sleep(Duration::from_millis(500)),
        }
    }
    tunnel.kill();

    step("done; tearing the network down");
    Ok(())
}

/// Moves this (still single-threaded) process into a new network namespace with loopback up.
fn enter_private_netns() -> anyhow::Result<()> {
    // SAFETY: unshare only changes this process's namespace membership.
    if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
        bail!(
            "cannot create a network namespace (run the demo as root): {}",
            std::io::Error::last_os_error()
        );
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let nl = ziti_tunnel::netlink::Netlink::connect()?;
        let lo = nl.link_index("lo").await?;
        nl.set_up(lo).await?;
        Ok::<(), anyhow::Error>(())
    })
}

/// Asks zt-tunnel's DNS server for `name`'s A record.
async fn resolve(name: &str) -> Option<std::net::Ipv4Addr> {
    use hickory_proto::op::{Message, Query};
    use hickory_proto::rr::{Name, RData, RecordType};
    let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await.ok()?;
    let mut msg = Message::query();
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    msg.metadata.recursion_desired = true;
    sock.send_to(&msg.to_vec().ok()?, "100.64.0.1:53")
        .await
        .ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(1), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let answer = Message::from_vec(&buf[..n]).ok()?;
    answer.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// A plain HTTP/1.0 GET over a kernel TCP socket; reads the headers and `Content-Length` bytes
/// of body (the host keeps the connection open until the client closes, as HTTP allows).
fn http_get(ip: std::net::Ipv4Addr) -> anyhow::Result<String> {
    use std::io::Read;
    let mut conn = std::net::TcpStream::connect_timeout(&(ip, 80).into(), Duration::from_secs(5))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET / HTTP/1.0\r\nHost: demo.ziti\r\n\r\n")?;
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = conn.read(&mut buf)?;
        reply.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&reply).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length = head
                .lines()
                .find_map(|l| l.strip_prefix("Content-Length: "))
                .and_then(|v| v.trim().parse::<usize>().ok());
            if n == 0 || length.is_some_and(|len| body.len() >= len) {
                return Ok(text);
            }
        } else if n == 0 {
            bail!("connection closed before the headers ended");
        }
    }
}

fn step(what: &str) {
    println!("\n==> {what}");
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

fn http_through(zt: &Path, identity: &Path) -> anyhow::Result<String> {
    let mut child = Command::new(zt)
        .args(["--log-level", "error", "dial", "-i"])
        .arg(identity)
        .arg("demo-web")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(b"GET / HTTP/1.0\r\nHost: demo.ziti\r\n\r\n")?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!("zt-tunnel dial failed ({})", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn serve_web(listener: std::net::TcpListener) {
    use std::io::Read;
    for mut conn in listener.incoming().flatten() {
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            let mut req = Vec::new();
            while !req.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            let body = "hello from behind OpenZiti\n";
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        });
    }
}
