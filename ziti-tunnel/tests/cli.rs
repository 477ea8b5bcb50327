//! `zt-tunnel` against a real OpenZiti network: enroll, list services, and the troubleshooting
//! flow (a failed dial logged with the service and the reason, to a per-session log file).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output, Stdio};

use testnet::{TestNet, unique_name};

fn zt(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_zt-tunnel"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run zt-tunnel")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn enroll_list_and_failed_dial_is_logged_with_reason() {
    let net = TestNet::shared();
    let svc = unique_name("cli-svc");
    net.create_config(
        &format!("{svc}-intercept"),
        "intercept.v1",
        r#"{"protocols":["tcp"],"addresses":["cli.ziti","*.cli.ziti"],"portRanges":[{"low":80,"high":81}]}"#,
    )
    .unwrap();
    net.create_service(&svc, &[&format!("{svc}-intercept")], &[], false)
        .unwrap();
    net.create_service_policy(
        &format!("{svc}-dial"),
        "Dial",
        &[&format!("@{svc}")],
        &[&format!("#{svc}-clients")],
    )
    .unwrap();
    let jwt = net
        .create_identity(&format!("{svc}-client"), &[&format!("{svc}-clients")])
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let id = dir.path().join("client.json");
    let (jwt_s, id_s) = (jwt.to_str().unwrap(), id.to_str().unwrap());

    // -j / -i short forms.
    let out = zt(&["enroll", "-j", jwt_s, "-i", id_s]);
    assert!(out.status.success(), "{}", text(&out));
    let mode = std::fs::metadata(&id).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "identity file must be private");

    // The one-time token cannot be used twice, and the error says so.
    let again = zt(&[
        "enroll",
        "--jwt",
        jwt_s,
        "--identity",
        dir.path().join("x.json").to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already used or unknown"),
        "{}",
        text(&again)
    );

    // Services with their intercepts.
    let out = zt(&["services", "-i", id_s, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == svc.as_str())
        .unwrap_or_else(|| panic!("{svc} not listed: {list}"));
    assert_eq!(entry["dial"], true);
    assert_eq!(entry["bind"], false);
    let addrs = entry["intercept"]["addresses"].to_string();
    assert!(
        addrs.contains("cli.ziti") && addrs.contains("*.cli.ziti"),
        "{addrs}"
    );
    assert_eq!(entry["intercept"]["ports"], serde_json::json!([[80, 81]]));

    // Nobody hosts the service: the dial fails, and the session's log file says which service
    // and why.
    let log = dir.path().join("session.log");
    let out = zt(&[
        "--log-file",
        log.to_str().unwrap(),
        "dial",
        "-i",
        id_s,
        &svc,
    ]);
    assert!(!out.status.success(), "dial should fail: {}", text(&out));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains(&svc), "log names the service:\n{logged}");
    assert!(
        logged.contains("no terminators"),
        "log gives the reason:\n{logged}"
    );
    assert_eq!(
        std::fs::metadata(&log).unwrap().permissions().mode() & 0o777,
        0o600
    );
}
