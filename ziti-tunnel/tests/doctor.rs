//! `zt-tunnel doctor` against a real OpenZiti network: each fault made here is named by the step
//! that finds it, in the FAIL line and in the exit status (10 + the step's number), and a healthy
//! identity passes every step.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testnet::{TestNet, unique_name};

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// The report line of `step` (`OK   step: ...`, `FAIL step: ...`, `SKIP step: ...`).
    fn line(&self, step: &str) -> &str {
        self.stdout
            .lines()
            .find(|l| {
                l.get(5..)
                    .is_some_and(|rest| rest.starts_with(&format!("{step}:")))
            })
            .unwrap_or_else(|| panic!("no line for `{step}`:\n{self}"))
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

fn doctor(identity: &Path, service: Option<&str>) -> Run {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
    cmd.args(["--log-level", "warn", "doctor", "-i"])
        .arg(identity)
        .stdin(Stdio::null());
    if let Some(s) = service {
        cmd.args(["--service", s]);
    }
    let out = cmd.output().expect("run zt-tunnel doctor");
    // The report as a person would see it (shown with --nocapture).
    eprintln!(
        "$ zt-tunnel doctor -i {}{}\n{}exit {:?}",
        identity.display(),
        service
            .map(|s| format!(" --service {s}"))
            .unwrap_or_default(),
        String::from_utf8_lossy(&out.stdout),
        out.status.code()
    );
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn enroll(net: &TestNet, name: &str, attrs: &[&str], dir: &Path) -> PathBuf {
    let jwt = net.create_identity(name, attrs).unwrap();
    let out = dir.join(format!("{name}.json"));
    let status = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"))
        .args(["enroll", "-j"])
        .arg(&jwt)
        .arg("-i")
        .arg(&out)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(status.status.success(), "enroll {name}: {status:?}");
    out
}

/// A copy of `identity` with its JSON changed by `edit`.
fn edited(identity: &Path, out: &Path, edit: impl FnOnce(&mut serde_json::Value)) -> PathBuf {
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(identity).unwrap()).unwrap();
    edit(&mut v);
    std::fs::write(out, serde_json::to_string_pretty(&v).unwrap()).unwrap();
    out.to_path_buf()
}

fn closed_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

fn assert_all_ok(run: &Run, steps: usize) {
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(lines.len(), steps, "{run}");
    assert!(lines.iter().all(|l| l.starts_with("OK   ")), "{run}");
}

#[test]
fn doctor_names_the_failing_step() {
    let net = TestNet::shared();
    let tag = unique_name("doc");
    let clients = format!("{tag}-clients");
    let hosts = format!("{tag}-hosts");
    let dir = tempfile::tempdir().unwrap();

    // Services: hosted (healthy), unhosted (no terminators), hidden (no policy), bind-only.
    let hosted = format!("{tag}-hosted");
    let unhosted = format!("{tag}-unhosted");
    let hidden = format!("{tag}-hidden");
    let bind_only = format!("{tag}-bindonly");
    net.create_config(
        &format!("{hosted}-intercept"),
        "intercept.v1",
        r#"{"protocols":["tcp"],"addresses":["doctor.ziti"],"portRanges":[{"low":80,"high":80}]}"#,
    )
    .unwrap();
    net.create_service(&hosted, &[&format!("{hosted}-intercept")], &[], false)
        .unwrap();
    for s in [&unhosted, &hidden, &bind_only] {
        net.create_service(s, &[], &[], false).unwrap();
    }
    for s in [&hosted, &unhosted] {
        net.create_service_policy(
            &format!("{s}-dial"),
            "Dial",
            &[&format!("@{s}")],
            &[&format!("#{clients}")],
        )
        .unwrap();
    }
    net.create_service_policy(
        &format!("{hosted}-bind"),
        "Bind",
        &[&format!("@{hosted}")],
        &[&format!("#{hosts}")],
    )
    .unwrap();
    net.create_service_policy(
        &format!("{bind_only}-bind"),
        "Bind",
        &[&format!("@{bind_only}")],
        &[&format!("#{clients}")],
    )
    .unwrap();

    let client = enroll(net, &format!("{tag}-client"), &[&clients], dir.path());
    let host = enroll(net, &format!("{tag}-host"), &[&hosts], dir.path());

    // The host: this process, through the SDK, until the test ends.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut listener = rt.block_on(async {
        let ctx = ziti_sdk::ZitiContext::from_file(&host).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match ctx.listen(&hosted).await {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("listen: {}; retrying", ziti_sdk::error_chain(&e));
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => panic!("listen {hosted}: {}", ziti_sdk::error_chain(&e)),
            }
        }
    });
    // Dials are answered as the host takes them.
    rt.spawn(async move { while listener.accept().await.is_some() {} });

    // Healthy: every step OK, with and without --service.
    let run = doctor(&client, Some(&hosted));
    assert_all_ok(&run, 7);
    assert!(
        run.line("dial").contains("connected through router"),
        "{run}"
    );
    assert!(run.line("service").contains("doctor.ziti"), "{run}");
    let run = doctor(&client, None);
    assert_all_ok(&run, 5);

    // (a) controller down: the identity's controller URL points at a closed port.
    let port = closed_port();
    let down = edited(&client, &dir.path().join("down.json"), |v| {
        v["ztAPI"] = format!("https://127.0.0.1:{port}/edge/client/v1").into();
        v["ztAPIs"] = serde_json::Value::Null;
    });
    let run = doctor(&down, Some(&hosted));
    assert_eq!(run.code, 12, "{run}");
    assert!(run.line("identity").starts_with("OK   identity:"), "{run}");
    assert!(
        run.line("controller").starts_with(&format!(
            "FAIL controller: cannot connect (127.0.0.1:{port}): "
        )),
        "{run}"
    );
    assert!(
        run.line("dial")
            .starts_with("SKIP dial: not run because `controller` failed"),
        "{run}"
    );

    // (b) wrong CA: the identity trusts a freshly made self-signed CA instead of the network's.
    let other = rcgen::generate_simple_self_signed(vec!["other-ca.invalid".to_string()]).unwrap();
    let wrong_ca = edited(&client, &dir.path().join("wrong-ca.json"), |v| {
        v["id"]["ca"] = format!("pem:{}", other.cert.pem()).into();
    });
    let run = doctor(&wrong_ca, Some(&hosted));
    assert_eq!(run.code, 12, "{run}");
    let line = run.line("controller");
    assert!(
        line.starts_with("FAIL controller: TLS verification failed: "),
        "{run}"
    );
    assert!(
        line.contains("the identity's CA does not match the controller"),
        "{run}"
    );

    // (c) no Dial policy: without any policy the service is invisible; with Bind only it is
    // visible but not dialable. Both are the service step.
    let run = doctor(&client, Some(&hidden));
    assert_eq!(run.code, 15, "{run}");
    assert!(
        run.line("service").starts_with(
            "FAIL service: service not found: no service policy gives this identity access"
        ),
        "{run}"
    );
    let run = doctor(&client, Some(&bind_only));
    assert_eq!(run.code, 15, "{run}");
    assert!(
        run.line("service").starts_with(
            "FAIL service: not authorized: the identity has no Dial policy for the service"
        ),
        "{run}"
    );

    // (d) no terminators: dialable, routers fine, but nobody hosts it.
    let run = doctor(&client, Some(&unhosted));
    assert_eq!(run.code, 17, "{run}");
    assert!(run.line("edge routers").starts_with("OK   "), "{run}");
    let line = run.line("dial");
    assert!(line.starts_with("FAIL dial: "), "{run}");
    assert!(
        line.contains("no terminators: no host is serving this service right now"),
        "{run}"
    );
}

/// (e) the only edge router is down: a network of its own, since the router is stopped.
#[test]
fn doctor_names_an_unreachable_router() {
    let net = TestNet::start().unwrap();
    let tag = unique_name("doc-er");
    let dir = tempfile::tempdir().unwrap();
    let svc = format!("{tag}-svc");
    net.create_service(&svc, &[], &[], false).unwrap();
    net.create_service_policy(
        &format!("{svc}-dial"),
        "Dial",
        &[&format!("@{svc}")],
        &[&format!("#{tag}-clients")],
    )
    .unwrap();
    let client = enroll(
        &net,
        &format!("{tag}-client"),
        &[&format!("{tag}-clients")],
        dir.path(),
    );

    // With the router up, the routers step passes (the dial then finds no terminator).
    let run = doctor(&client, Some(&svc));
    assert!(run.line("edge routers").starts_with("OK   "), "{run}");
    assert_eq!(run.code, 17, "{run}");

    // Stopped, and the controller has noticed: the session still names the router, but the
    // controller no longer knows its listeners, so there is no address to try.
    net.stop_router().unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while net.router_online().unwrap() {
        assert!(Instant::now() < deadline, "router still online after 120 s");
        std::thread::sleep(Duration::from_millis(500));
    }
    let expected = format!(
        "router {} unreachable: the controller lists it offline",
        net.router().name
    );
    let run = doctor(&client, Some(&svc));
    assert_eq!(run.code, 16, "{run}");
    let line = run.line("edge routers");
    assert!(line.starts_with("FAIL edge routers: "), "{run}");
    assert!(line.contains(&expected), "{run}");
    assert!(run.line("dial").starts_with("SKIP "), "{run}");

    // Without --service: the identity's routers, same verdict.
    let run = doctor(&client, None);
    assert_eq!(run.code, 16, "{run}");
    assert!(run.line("edge routers").contains(&expected), "{run}");
}
