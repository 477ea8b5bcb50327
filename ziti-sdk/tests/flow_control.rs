//! Flow control and connection lifecycle against the real network (issue 8): the Go proxy with
//! and without SDK flow control dialing our host, a service that answers and closes, a burst
//! of 1,000 simultaneous dials. (Head-of-line blocking: `head_of_line.rs`.)
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::setup_service;
use testnet::TestNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ziti_sdk::context::{DialError, ZitiContext};
use ziti_sdk::router::EdgeStream;

/// Dials, retrying while the service has no terminator yet (hosts take a moment to bind) or the
/// dial times out (a loaded machine).
async fn dial_when_hosted(ctx: &ZitiContext, service: &str) -> EdgeStream {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match ctx.dial(service).await {
            Ok(s) => return s,
            Err(DialError::NoTerminators { .. } | DialError::Timeout { .. })
                if Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("dial {service}: {e}"),
        }
    }
}

/// A TCP server that answers `reply` and closes.
async fn answer_and_close(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                let _ = tcp.read(&mut buf).await;
                let _ = tcp.write_all(reply).await;
                // Dropping the socket closes it: FIN to the Go host.
            });
        }
    });
    port
}

/// The Go proxy (`ziti tunnel proxy`, with and without SDK flow control) dials a service our
/// SDK hosts: 100 MB each way, sha256 equal.
async fn go_proxy_dials_our_host(go_flow_control: bool, encrypted: bool) {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, "xgproxy", encrypted, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let mut listener = host_ctx.listen(&svc.name).await.unwrap();
    let (results_tx, mut results) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            let tx = results_tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(common::exchange(stream, 100 * MB, 21).await).await;
            });
        }
    });
    let port = testnet::process::free_port().unwrap();
    let flag = format!("--sdk-flow-control={go_flow_control}");
    let _proxy = net
        .spawn_go_tunnel(
            "proxy",
            &svc.client_identity,
            &[&format!("{}:{port}", svc.name), &flag],
        )
        .unwrap();
    common::wait_tcp(port, Duration::from_secs(60)).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = loop {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        match common::exchange(tcp, 100 * MB, 5).await {
            Ok(t) if t.received_bytes == 100 * MB => break t,
            other if Instant::now() < deadline => {
                tracing::debug!("proxy not ready yet: {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("exchange through the Go proxy failed: {other:?}"),
        }
    };
    let server = loop {
        if let Ok(r) = results.recv().await.expect("host results")
            && r.received_bytes == 100 * MB
        {
            break r;
        }
    };
    assert_eq!(client.sent_sha256, server.received_sha256);
    assert_eq!(server.sent_sha256, client.received_sha256);
}

const MB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_proxy_with_sdk_flow_control_dials_our_host_encrypted() {
    go_proxy_dials_our_host(true, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_proxy_without_sdk_flow_control_dials_our_host_plain() {
    go_proxy_dials_our_host(false, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_answers_and_closes_gives_end_of_file_promptly() {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(
        net,
        "answer",
        false,
        Some(answer_and_close(b"the answer").await),
    );
    let _host = net
        .spawn_go_tunnel("host", &svc.host_identity, &[])
        .unwrap();
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    let mut s = dial_when_hosted(&ctx, &svc.name).await;
    s.write_all(b"question").await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 64];
    let mut answered = None;
    let eof = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let n = s.read(&mut buf).await.unwrap();
            if n == 0 {
                return Instant::now();
            }
            answered.get_or_insert_with(Instant::now);
            got.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .expect("no end-of-file within 10 s of the answer");
    assert_eq!(got, b"the answer");
    let gap = eof - answered.unwrap();
    println!("answer to end-of-file: {gap:?}");
    assert!(
        gap < Duration::from_millis(100),
        "end-of-file {gap:?} after the answer"
    );
}

/// Issue 8 point 3: a burst of 1,000 dials from one context all succeed and carry their own
/// data. The channel keeps at most 64 Connects in flight per router and each dial's timeout runs
/// from when it is sent, so a loaded controller builds circuits in time instead of all of them
/// late (before: 388 to 719 of 1,000 on a loaded machine).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_simultaneous_dials_to_our_host_all_carry_data() {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, "burst", false, None);
    let host = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let mut listener = host.listen(&svc.name).await.unwrap();
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = stream.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
                let _ = wr.shutdown().await;
            });
        }
    });
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    // Wait until the terminator exists.
    drop(dial_when_hosted(&ctx, &svc.name).await);

    let started = Instant::now();
    let dials = (0..1000u32).map(|i| {
        let ctx = ctx.clone();
        let name = svc.name.clone();
        tokio::spawn(async move {
            let mut s = ctx
                .dial(&name)
                .await
                .map_err(|e| format!("dial {i}: {e}"))?;
            let msg = format!("stream {i} says hello {}", "x".repeat((i % 97) as usize));
            s.write_all(msg.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.shutdown().await.map_err(|e| e.to_string())?;
            let mut back = Vec::new();
            s.read_to_end(&mut back).await.map_err(|e| e.to_string())?;
            if back != msg.as_bytes() {
                return Err(format!("stream {i}: wrong echo"));
            }
            Ok::<(), String>(())
        })
    });
    let results = futures::future::join_all(dials).await;
    let failures: Vec<String> = results
        .into_iter()
        .filter_map(|r| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(e) => Some(e.to_string()),
        })
        .collect();
    println!(
        "1000 simultaneous dials + echoes: {} failed, {:?}",
        failures.len(),
        started.elapsed()
    );
    assert!(
        failures.is_empty(),
        "{} failed, first: {:?}",
        failures.len(),
        failures.first()
    );
}
