//! Scale-out on OpenZiti's own cluster (issue 11), against real networks in namespaces of their
//! own: a three-member HA controller cluster with three routers, and (the same suite, so neither
//! mode regresses) one controller with two routers.
//!
//! - **Cluster:** an identity enrolled by our SDK authenticates, lists services and dials a
//!   Go-hosted service; the SDK learns the cluster's members.
//! - **A router dies:** `zt-tunnel run` holds a flow on every router (services pinned to one
//!   router each by service-edge-router policies); the router carrying one is killed: new dials
//!   succeed within 5 s through the others, the flows on the others keep moving data, and a
//!   service hosted by our SDK (bound on every router) stays reachable. Restarted, the router is
//!   used again and our host binds on it again.
//! - **The controller in use stops (HA):** token refresh and service polling move to another
//!   member; a service created there is intercepted within one poll interval; dials keep working.
//! - **Every controller down for two minutes:** established flows keep moving data; dials of
//!   known services never wait for a controller; once the controllers are back, a new service is
//!   intercepted and reached without a restart.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use testnet::{ChildGuard, TestNet, TestNetOptions, in_new_netns};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

/// zt-tunnel's service poll interval (`--svcPollRate`), seconds.
const POLL: u64 = 5;
/// How long every controller stays down.
const OUTAGE: Duration = Duration::from_secs(120);
const DNS: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(Ipv4Addr::LOCALHOST), 53);

#[test]
fn ha_cluster_of_three_controllers_and_three_routers() {
    run(3, 3);
}

#[test]
fn single_controller_with_two_routers() {
    run(1, 2);
}

fn run(controllers: usize, routers: usize) {
    in_new_netns(move || {
        let started = Instant::now();
        let net = TestNet::start_with(&TestNetOptions {
            controllers,
            routers,
            // In the cluster, the first member (the one identities are created on) issues
            // one-minute access tokens: zt-tunnel refreshes every few seconds, so refreshes are
            // seen while that member is down. (Routers end a channel whose token expired, so
            // tokens that outlive the two-minute outage are the other members' defaults.)
            access_token_duration: (controllers > 1).then(|| "1m".into()),
        })
        .unwrap();
        eprintln!(
            "[{controllers} controllers, {routers} routers] network up in {:?}",
            started.elapsed()
        );
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(scenario(&net));
    });
}

/// An echo server on loopback.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = s.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    port
}

/// One DNS query over UDP: the first A record, if any.
async fn resolve(name: &str) -> Option<Ipv4Addr> {
    let sock = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    let mut msg = Message::query();
    static ID: AtomicU16 = AtomicU16::new(1);
    msg.metadata.id = ID.fetch_add(1, Ordering::Relaxed);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).ok()?, RecordType::A));
    sock.send_to(&msg.to_vec().ok()?, DNS).await.ok()?;
    let mut buf = vec![0u8; 2048];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), sock.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let reply = Message::from_vec(&buf[..n]).ok()?;
    if reply.metadata.response_code != ResponseCode::NoError {
        return None;
    }
    reply.answers.iter().find_map(|r| match &r.data {
        RData::A(a) => Some(a.0),
        _ => None,
    })
}

/// Writes `msg` and reads it back.
async fn round_trip(s: &mut TcpStream, msg: &str) -> Result<(), String> {
    s.write_all(msg.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut back))
        .await
        .map_err(|_| "no echo in 10 s".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if back != msg.as_bytes() {
        return Err("wrong echo".into());
    }
    Ok(())
}

/// A new connection to the intercepted `name:port` with one round trip.
async fn open(name: &str, port: u16) -> Result<TcpStream, String> {
    let ip = resolve(name)
        .await
        .ok_or_else(|| format!("{name} does not resolve"))?;
    let mut s = tokio::time::timeout(
        Duration::from_secs(10),
        TcpStream::connect(SocketAddr::from((ip, port))),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| format!("connect: {e}"))?;
    round_trip(&mut s, &format!("hello {name}\n")).await?;
    Ok(s)
}

/// Keeps opening `name:port` until one round trip works; how long that took.
async fn open_within(name: &str, port: u16, limit: Duration, log: &Path) -> (TcpStream, Duration) {
    let start = Instant::now();
    let mut last = String::new();
    while start.elapsed() < limit {
        match open(name, port).await {
            Ok(s) => return (s, start.elapsed()),
            Err(e) => last = e,
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    panic!(
        "{name}:{port} not reached within {limit:?}; last: {last}\n{}",
        log_tail(log, 25)
    );
}

fn log_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

fn log_tail(log: &Path, n: usize) -> String {
    let lines = log_lines(log);
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn count_lines(log: &Path, needle: &str) -> usize {
    log_lines(log).iter().filter(|l| l.contains(needle)).count()
}

/// A service intercepted at `name:port`, hosted at 127.0.0.1:`echo`, dialed by `#clients` and
/// bound by `binders`.
fn service(net: &TestNet, name: &str, port: u16, echo: u16, attrs: &[&str], binders: &str) {
    net.create_config(
        &format!("{name}-intercept"),
        "intercept.v1",
        &format!(r#"{{"protocols":["tcp"],"addresses":["{name}.cluster.test"],"portRanges":[{{"low":{port},"high":{port}}}]}}"#),
    )
    .unwrap();
    net.create_config(
        &format!("{name}-host"),
        "host.v1",
        &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{echo}}}"#),
    )
    .unwrap();
    net.create_service(
        name,
        &[&format!("{name}-intercept"), &format!("{name}-host")],
        attrs,
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

/// How many terminators `service` has.
fn terminators(net: &TestNet, service: &str) -> usize {
    let out = net
        .ziti(&[
            "edge",
            "list",
            "terminators",
            &format!("service.name=\"{service}\""),
            "-j",
        ])
        .unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_default();
    v["data"].as_array().map_or(0, Vec::len)
}

async fn wait_for_terminators(net: &TestNet, service: &str, want: usize, limit: Duration) {
    let start = Instant::now();
    loop {
        let n = terminators(net, service);
        if n == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{service} has {n} terminators after {limit:?}, want {want}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Hosts `service` with our SDK in this process (echoing), until the context is dropped.
async fn sdk_host(ctx: &ziti_sdk::ZitiContext, service: &str) {
    // Right after a controller restart the routers may not be back with it yet, so a bind
    // session can list none: try again for a while.
    let start = Instant::now();
    let mut listener = loop {
        match ctx.listen(service).await {
            Ok(l) => break l,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "hosting {service}: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
}

/// Waits until `name` resolves (intercepted); how long that took.
async fn intercepted_within(name: &str, limit: Duration, log: &Path) -> Duration {
    let start = Instant::now();
    loop {
        if resolve(name).await.is_some() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < limit,
            "{name} not intercepted within {limit:?}\n{}",
            log_tail(log, 25)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Rewrites an identity file's controller to member `i` of the cluster.
fn point_at_member(identity: &Path, net: &TestNet, i: usize) {
    let mut id: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(identity).unwrap()).unwrap();
    id["ztAPI"] = format!("{}/edge/client/v1", net.ctrl_url_of(i)).into();
    std::fs::write(identity, id.to_string()).unwrap();
}

/// A new connection through the Go proxy at `addr` with one round trip.
async fn open_at(addr: SocketAddr, what: &str) -> Result<TcpStream, String> {
    let mut s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(addr))
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| format!("connect: {e}"))?;
    round_trip(&mut s, &format!("hello {what}\n")).await?;
    Ok(s)
}

async fn enroll_with_our_sdk(net: &TestNet, name: &str, attrs: &[&str], out: &Path) {
    let jwt = net.create_identity(name, attrs).unwrap();
    let text = std::fs::read_to_string(jwt).unwrap();
    ziti_sdk::enroll::enroll_to_file(&text, ziti_sdk::enroll::EnrollOptions::default(), out)
        .await
        .unwrap();
}

async fn scenario(net: &TestNet) {
    let ha = net.controllers() > 1;
    let tag = if ha { "[HA]" } else { "[single]" };
    let routers: Vec<String> = net.routers().iter().map(|r| r.name.clone()).collect();
    let echo = echo_server().await;
    let tmp = tempfile::tempdir().unwrap();
    let ids = tmp.path().join("identities");
    std::fs::create_dir(&ids).unwrap();

    // Services reach every router only through their own policies: `#any-router` ones
    // everywhere, `pinned-i` through router i alone.
    net.ziti(&[
        "edge",
        "update",
        "service-edge-router-policy",
        "all-routers-all-services",
        "--service-roles",
        "#any-router",
    ])
    .unwrap();
    service(net, "known", 7001, echo, &["any-router"], "#go-hosts");
    service(net, "sdk", 7002, echo, &["any-router"], "#sdk-hosts");
    for (i, r) in routers.iter().enumerate() {
        let name = format!("pinned-{i}");
        service(net, &name, 7100 + i as u16, echo, &[], "#go-hosts");
        net.ziti(&[
            "edge",
            "create",
            "service-edge-router-policy",
            &format!("{name}-serp"),
            "--service-roles",
            &format!("@{name}"),
            "--edge-router-roles",
            &format!("@{r}"),
        ])
        .unwrap();
    }

    // 1. Enroll (our SDK), authenticate, list services, dial a Go-hosted service.
    let go_host = tmp.path().join("go-host.json");
    net.enroll_identity("go-host", &["go-hosts"], &go_host)
        .unwrap();
    if ha {
        // The Go tunneler talks only to the controller in its file, and its tokens must outlive
        // the outage: a member with the default token lifetime.
        point_at_member(&go_host, net, 1);
    }
    net.adopt(net.spawn_go_tunnel("host", &go_host, &[]).unwrap());
    // The control for dials while every controller is down: the Go tunneler's proxy dialing the
    // same service (its file names a member whose tokens outlive the outage, as for the host).
    let go_client = tmp.path().join("go-client.json");
    net.enroll_identity("go-client", &["clients"], &go_client)
        .unwrap();
    if ha {
        point_at_member(&go_client, net, 1);
    }
    let go_proxy_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    net.adopt(
        net.spawn_go_tunnel("proxy", &go_client, &[&format!("known:{go_proxy_port}")])
            .unwrap(),
    );
    let go_proxy = SocketAddr::from((Ipv4Addr::LOCALHOST, go_proxy_port));
    let client = ids.join("client.json");
    enroll_with_our_sdk(net, "client", &["clients"], &client).await;
    let host_file = tmp.path().join("sdk-host.json");
    enroll_with_our_sdk(net, "sdk-host", &["sdk-hosts"], &host_file).await;

    let ctx = ziti_sdk::ZitiContext::from_file(&client).await.unwrap();
    let names: Vec<String> = ctx
        .controller()
        .services()
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.name)
        .collect();
    assert!(names.contains(&"known".to_string()), "{names:?}");
    let start = Instant::now();
    let mut stream = loop {
        match ctx.dial("known").await {
            Ok(s) => break s,
            Err(e) => {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "dialing the Go-hosted service: {e}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    stream.write_all(b"sdk dial\n").await.unwrap();
    let mut back = [0u8; 9];
    stream.read_exact(&mut back).await.unwrap();
    assert_eq!(&back, b"sdk dial\n");
    drop(stream);
    if ha {
        // The identity names one member; the SDK learns the others from the cluster.
        let start = Instant::now();
        while ctx.controller().controllers().len() < net.controllers() {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "cluster members not learned: {:?}",
                ctx.controller().controllers()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    drop(ctx);
    eprintln!("{tag} 1: enrolled, authenticated, listed, dialed the Go host");

    let host_ctx = ziti_sdk::ZitiContext::from_file(&host_file).await.unwrap();
    sdk_host(&host_ctx, "sdk").await;

    let log = tmp.path().join("zt.log");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_zt-tunnel"));
    cmd.arg("--log-file")
        .arg(&log)
        .args(["run", "--identity-dir"])
        .arg(&ids)
        .args([
            "-v",
            "--svcPollRate",
            &POLL.to_string(),
            "-d",
            "100.70.0.0/16",
            "--dnsUpstream",
            "udp://127.0.0.1:9",
            "--no-ipv6",
        ]);
    let _zt = ChildGuard::spawn("zt-tunnel run", cmd, &tmp.path().join("zt.out")).unwrap();

    // 4. A router dies. Our host is bound on every router; zt-tunnel holds a flow on each.
    wait_for_terminators(net, "sdk", routers.len(), Duration::from_secs(60)).await;
    open_within("known.cluster.test.", 7001, Duration::from_secs(90), &log).await;
    let mut pinned = Vec::new();
    for i in 0..routers.len() {
        let name = format!("pinned-{i}.cluster.test.");
        let (s, _) = open_within(&name, 7100 + i as u16, Duration::from_secs(60), &log).await;
        pinned.push(s);
    }
    net.stop_router_of(0).unwrap();
    let killed = Instant::now();
    let (_, known_after) =
        open_within("known.cluster.test.", 7001, Duration::from_secs(5), &log).await;
    let (_, sdk_after) = open_within("sdk.cluster.test.", 7002, Duration::from_secs(5), &log).await;
    eprintln!(
        "{tag} 4: router 0 killed; new dials through the others: Go-hosted after {known_after:?}, ours {sdk_after:?} after that ({:?} in all)",
        killed.elapsed()
    );
    for (i, s) in pinned.iter_mut().enumerate().skip(1) {
        round_trip(s, &format!("still here on router {i}\n"))
            .await
            .unwrap_or_else(|e| panic!("the flow on router {i} was disturbed: {e}"));
    }
    // Restarted: used again, and our host binds on it again.
    net.start_router_of(0).unwrap();
    open_within(
        "pinned-0.cluster.test.",
        7100,
        Duration::from_secs(30),
        &log,
    )
    .await;
    wait_for_terminators(net, "sdk", routers.len(), Duration::from_secs(60)).await;
    eprintln!("{tag} 4: router 0 back: dialed through it and our host bound on it again");

    // 2. The controller in use stops (HA): refresh and polling move on, a new service created
    //    meanwhile is intercepted within one poll interval, dials keep working.
    if ha {
        // The member zt-tunnel authenticated with (its identity names member 0, the one whose
        // tokens live a minute) is still the one in use: with every member up, nothing moves it.
        let moves: Vec<String> = log_lines(&log)
            .into_iter()
            .filter(|l| l.contains("controller not answering; using another"))
            .collect();
        assert!(
            moves.is_empty(),
            "zt-tunnel left a controller while every member was up: {moves:#?}"
        );
        let lines_before_stop = log_lines(&log).len();
        net.stop_controller_of(0).unwrap();
        let stopped = Instant::now();
        service(net, "late", 7003, echo, &["any-router"], "#sdk-hosts");
        let created = Instant::now();
        let took =
            intercepted_within("late.cluster.test.", Duration::from_secs(POLL + 3), &log).await;
        eprintln!(
            "{tag} 2: member 0 stopped; a service created {:?} later was intercepted {took:?} after its creation",
            created - stopped
        );
        sdk_host(&host_ctx, "late").await;
        open_within("late.cluster.test.", 7003, Duration::from_secs(30), &log).await;
        open_within("known.cluster.test.", 7001, Duration::from_secs(5), &log).await;
        // A refresh after the move away from member 0 (logged), so by another member.
        let refreshed_elsewhere = || {
            log_lines(&log)
                .into_iter()
                .skip(lines_before_stop)
                .skip_while(|l| !l.contains("controller not answering; using another"))
                .any(|l| l.contains("API session refreshed"))
        };
        let start = Instant::now();
        while !refreshed_elsewhere() {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no token refresh by another member since member 0 stopped\n{}",
                log_tail(&log, 25)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        net.start_controller_of(0).unwrap();
    }

    // 3. Every controller down for two minutes.
    let (mut flow, _) =
        open_within("known.cluster.test.", 7001, Duration::from_secs(30), &log).await;
    let start = Instant::now();
    while let Err(e) = open_at(go_proxy, "go proxy").await {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the Go proxy never reached the service: {e}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let failed_before = count_lines(&log, "dial failed");
    let lines_before = log_lines(&log).len();
    for i in 0..net.controllers() {
        net.stop_controller_of(i).unwrap();
    }
    let down = Instant::now();
    let mut dials = (0, Vec::new());
    let mut go_dials = (0, Vec::new());
    let mut round = 0;
    while down.elapsed() < OUTAGE {
        round += 1;
        round_trip(&mut flow, &format!("round {round} without controllers\n"))
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "the established flow stopped after {:?}: {e}",
                    down.elapsed()
                )
            });
        match open("known.cluster.test.", 7001).await {
            Ok(_) => dials.0 += 1,
            Err(e) => dials.1.push(e),
        }
        match open_at(go_proxy, "go proxy").await {
            Ok(_) => go_dials.0 += 1,
            Err(e) => go_dials.1.push(e),
        }
        tokio::time::sleep(Duration::from_secs(10)).await;
    }
    let failures: Vec<String> = log_lines(&log)
        .into_iter()
        .filter(|l| l.contains("dial failed"))
        .skip(failed_before)
        .collect();
    eprintln!(
        "{tag} 3: {round} round trips on the established flow over {:?} without controllers; new dials: {} worked, {} did not ({:?}); zt-tunnel's failed dials: {failures:#?}",
        down.elapsed(),
        dials.0,
        dials.1.len(),
        dials.1
    );
    // What zt-tunnel said about the flows it was offered during the outage (known service, port
    // 7001): how each new dial ended, for the record.
    let about_dials: Vec<String> = log_lines(&log)
        .into_iter()
        .skip(lines_before)
        .filter(|l| {
            ["7001", "known", "no intercept", "held SYN", "dial"]
                .iter()
                .any(|k| l.contains(k))
        })
        .take(40)
        .collect();
    eprintln!("{tag} 3: zt-tunnel's lines about the outage dials: {about_dials:#?}");
    eprintln!(
        "{tag} 3: the control, the Go proxy dialing the same service meanwhile: {} worked, {} did not ({:?})",
        go_dials.0,
        go_dials.1.len(),
        go_dials.1
    );
    // New dials are the routers' call (a circuit needs a controller): ours may fail only where
    // the Go tunneler's fail too.
    assert!(
        dials.0 >= go_dials.0,
        "the Go proxy's dials worked more often than ours without controllers: ours {}, Go {}",
        dials.0,
        go_dials.0
    );
    assert!(
        failures
            .iter()
            .all(|l| !l.contains("cannot reach controller")),
        "a dial of a known service waited for a controller: {failures:#?}"
    );
    for i in 0..net.controllers() {
        net.start_controller_of(i).unwrap();
    }
    let back = Instant::now();
    round_trip(&mut flow, "after the outage\n").await.unwrap();
    service(net, "after", 7004, echo, &["any-router"], "#sdk-hosts");
    let took =
        intercepted_within("after.cluster.test.", Duration::from_secs(POLL + 30), &log).await;
    sdk_host(&host_ctx, "after").await;
    open_within("after.cluster.test.", 7004, Duration::from_secs(60), &log).await;
    open_within("known.cluster.test.", 7001, Duration::from_secs(60), &log).await;
    eprintln!(
        "{tag} 3: controllers back; a new service intercepted {took:?} after its creation, everything reached {:?} after the restart",
        back.elapsed()
    );
}
