//! A slow reader never stalls anyone else (issue 8): on one router connection, a stream that
//! nobody reads beside an echo stream, in SDK xgress mode and in legacy mode, against the real
//! network.
//!
//! Its own test binary, and its tests one at a time, so that the memory it measures is its
//! own.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant};

use common::setup_service;
use testnet::TestNet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use ziti_sdk::context::{DialError, ZitiContext};
use ziti_sdk::router::EdgeStream;

/// One measuring test at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

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

/// A TCP server that writes forever to whoever connects.
async fn endless_source() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let chunk = vec![0x5au8; 64 * 1024];
                while tcp.write_all(&chunk).await.is_ok() {}
            });
        }
    });
    port
}

/// A TCP echo server.
async fn echo_server() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut rd, mut wr) = tcp.into_split();
                let _ = tokio::io::copy(&mut rd, &mut wr).await;
            });
        }
    });
    port
}

fn rss_bytes() -> u64 {
    status_bytes("VmRSS:")
}

/// The process's peak resident size so far.
fn peak_rss_bytes() -> u64 {
    status_bytes("VmHWM:")
}

fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

async fn echo_round_trip(stream: &mut EdgeStream, i: u32) -> Duration {
    let msg = format!("round trip {i:04}");
    let started = Instant::now();
    stream.write_all(msg.as_bytes()).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut back))
        .await
        .unwrap_or_else(|_| panic!("echo {i} did not come back within 10 s"))
        .unwrap();
    assert_eq!(back, msg.as_bytes());
    started.elapsed()
}

/// Stream A reads from an endless Go-hosted source and is never read; stream B, on the same
/// router connection, makes 100 echo round trips; a new dial; then `hold` later the router
/// connection is up and memory grew by at most A's buffer plus 2 MiB.
async fn unread_stream_beside_an_echo(sdk_flow_control: bool, hold: Duration) {
    let _turn = ONE_AT_A_TIME.lock().await;
    common::init_tracing();
    let net = TestNet::shared();
    let source = setup_service(net, "flood", false, Some(endless_source().await));
    let echo = setup_service(net, "echo", false, Some(echo_server().await));
    let _h1 = net
        .spawn_go_tunnel("host", &source.host_identity, &[])
        .unwrap();
    let _h2 = net
        .spawn_go_tunnel("host", &echo.host_identity, &[])
        .unwrap();

    // One identity allowed to dial both, so both streams share the router connection.
    let both = testnet::unique_name("both");
    let jwt = net
        .create_identity(
            &both,
            &[
                &format!("{}-clients", source.name),
                &format!("{}-clients", echo.name),
            ],
        )
        .unwrap();
    let id_file = net.home().join(format!("{both}.json"));
    net.cli_enroll(&jwt, &id_file, "EC").unwrap();
    let identity = ziti_sdk::Identity::load(&id_file).unwrap();
    let options = ziti_sdk::ContextOptions {
        sdk_flow_control,
        ..Default::default()
    };
    let ctx = ZitiContext::new(identity, options).await.unwrap();

    let mut b = dial_when_hosted(&ctx, &echo.name).await;
    echo_round_trip(&mut b, 0).await;
    let baseline = rss_bytes();
    let mut a = dial_when_hosted(&ctx, &source.name).await;
    assert_eq!(
        a.router(),
        b.router(),
        "both streams on one router connection"
    );
    // Let the flood fill A's buffers, then check B is unaffected.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut worst = Duration::ZERO;
    for i in 1..=100 {
        worst = worst.max(echo_round_trip(&mut b, i).await);
    }
    println!(
        "sdk_flow_control={sdk_flow_control}: 100 echo round trips beside an unread flood: worst {worst:?}"
    );
    assert!(
        worst < Duration::from_millis(250),
        "an echo took {worst:?} while another stream was not read"
    );
    let started = Instant::now();
    let mut c = ctx.dial(&echo.name).await.unwrap();
    let dial_time = started.elapsed();
    println!("sdk_flow_control={sdk_flow_control}: new dial beside the flood: {dial_time:?}");
    assert!(
        dial_time < Duration::from_secs(1),
        "dial took {dial_time:?}"
    );
    echo_round_trip(&mut c, 0).await;

    tokio::time::sleep(hold).await;
    echo_round_trip(&mut b, 101).await;
    echo_round_trip(&mut c, 1).await;
    let grown = rss_bytes().saturating_sub(baseline);
    let window = ziti_sdk::edge::ChannelConfig::default().recv_window as u64;
    // Legacy mode may hold up to twice the window before closing A, plus the message that
    // crossed it (router payloads are at most 64 KiB); RSS keeps that peak when the allocator
    // does not hand the freed buffers back.
    let allowed = if sdk_flow_control {
        window
    } else {
        2 * window + 64 * 1024
    } + 2 * 1024 * 1024;
    println!(
        "sdk_flow_control={sdk_flow_control}: after {hold:?}: RSS grew {} KiB (allowed {} KiB); \
         peak RSS {} KiB above the baseline",
        grown / 1024,
        allowed / 1024,
        peak_rss_bytes().saturating_sub(baseline) / 1024
    );
    assert!(
        grown <= allowed,
        "grew {grown} bytes with one unread stream"
    );

    let mut buf = vec![0u8; 64 * 1024];
    if sdk_flow_control {
        // A was only paused: it still reads its source.
        let n = a.read(&mut buf).await.unwrap();
        assert!(n > 0);
    } else {
        // Legacy mode cannot pause one circuit: A was closed, and says why.
        let err = loop {
            match a.read(&mut buf).await {
                Ok(0) => panic!("the unread stream ended without an error"),
                Ok(_) => continue,
                Err(e) => break e,
            }
        };
        let text = ziti_sdk::error_chain(&err).to_string();
        println!("legacy mode: the unread stream ended with: {text}");
        assert!(text.contains("did not read"), "{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_nobody_reads_does_not_stall_its_router_connection() {
    unread_stream_beside_an_echo(true, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_mode_closes_a_stream_nobody_reads_and_nothing_else() {
    unread_stream_beside_an_echo(false, Duration::from_secs(25)).await;
}
