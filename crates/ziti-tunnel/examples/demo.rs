//! The README demo: a throwaway local OpenZiti network, a web service hosted by the Go tunneler,
//! and `zt-tunnel` enrolling an identity, listing its services and reaching the web service.
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
    step("done; tearing the network down");
    Ok(())
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
