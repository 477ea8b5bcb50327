//! Data plane against a real OpenZiti network: our SDK dialing and hosting, with the Go tunneler
//! (`ziti tunnel host|proxy`) and the edge router as peers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::{Duration, Instant, SystemTime};

use common::{Transfer, exchange, setup_service, start_exchange_server, unstalled, wait_tcp};
use testnet::{TestNet, TestNetOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use ziti_sdk::context::{DialError, ZitiContext, ZitiListener};

const MB: u64 = 1024 * 1024;

/// Answers every stream `listener` accepts with what it reads, until the stream ends.
fn spawn_echo_host(mut listener: ZitiListener) {
    tokio::spawn(async move {
        while let Some(mut s) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
}

/// Dials, retrying while the service has no terminator yet (hosts take a moment to bind) or the
/// dial times out (a loaded machine).
async fn dial_when_hosted(ctx: &ZitiContext, service: &str) -> ziti_sdk::router::EdgeStream {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        match ctx.dial(service).await {
            Ok(s) => return s,
            Err(e @ (DialError::NoTerminators { .. } | DialError::Timeout { .. }))
                if Instant::now() < deadline =>
            {
                tracing::debug!("waiting for terminator: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(e) => panic!("dial {service}: {e}"),
        }
    }
}

async fn dial_go_hosted(encrypted: bool) {
    common::init_tracing();
    let net = TestNet::shared();
    let (port, mut server_results) = start_exchange_server(100 * MB, 7).await;
    let svc = setup_service(net, "gohost", encrypted, Some(port));
    let _host = net
        .spawn_go_tunnel("host", &svc.host_identity, &[])
        .expect("start ziti tunnel host");
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    let stream = dial_when_hosted(&ctx, &svc.name).await;
    assert_eq!(stream.is_encrypted(), encrypted);
    let client: Transfer = exchange(stream, 100 * MB, 3).await.unwrap();
    let server: Transfer = server_results.recv_one().await;
    assert_eq!(client.sent_bytes, 100 * MB);
    assert_eq!(client.received_bytes, 100 * MB);
    assert_eq!(
        client.sent_sha256, server.received_sha256,
        "client -> host data differs"
    );
    assert_eq!(
        server.sent_sha256, client.received_sha256,
        "host -> client data differs"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_go_tunneler_host_plain_100mb_each_way() {
    dial_go_hosted(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_go_tunneler_host_encrypted_100mb_each_way() {
    dial_go_hosted(true).await;
}

async fn go_proxy_dials_our_host(encrypted: bool) {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, "ourhost", encrypted, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let mut listener = host_ctx.listen(&svc.name).await.unwrap();
    let (results_tx, mut results) = tokio::sync::mpsc::channel(4);
    tokio::spawn(async move {
        while let Some(stream) = listener.accept().await {
            let tx = results_tx.clone();
            tokio::spawn(async move {
                let r = exchange(stream, 100 * MB, 11).await;
                let _ = tx.send(r).await;
            });
        }
    });
    let proxy_port = testnet::process::free_port().unwrap();
    let _proxy = net
        .spawn_go_tunnel(
            "proxy",
            &svc.client_identity,
            &[&format!("{}:{proxy_port}", svc.name)],
        )
        .expect("start ziti tunnel proxy");
    wait_tcp(proxy_port, Duration::from_secs(60)).await;
    // The proxy accepts TCP before it may dial successfully; retry the first exchange.
    let deadline = Instant::now() + Duration::from_secs(90);
    let client = loop {
        let tcp = tokio::net::TcpStream::connect(("127.0.0.1", proxy_port))
            .await
            .unwrap();
        match exchange(tcp, 100 * MB, 5).await {
            Ok(t) if t.received_bytes == 100 * MB => break t,
            other if Instant::now() < deadline => {
                tracing::debug!("proxy not ready yet: {other:?}");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            other => panic!("exchange through the Go proxy failed: {other:?}"),
        }
    };
    // Earlier attempts made while the proxy was starting may have ended early (the peer closed,
    // so our writes failed with BrokenPipe); take the complete transfer.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tunneler_proxy_dials_our_host_plain() {
    go_proxy_dials_our_host(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_tunneler_proxy_dials_our_host_encrypted() {
    go_proxy_dials_our_host(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn our_dialer_to_our_host_100mb_encrypted() {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, "ours", true, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let mut listener = host_ctx.listen(&svc.name).await.unwrap();
    let server = tokio::spawn(async move {
        let stream = listener.accept().await.expect("incoming");
        exchange(stream, 100 * MB, 21).await.unwrap()
    });
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    let client = exchange(dial_when_hosted(&ctx, &svc.name).await, 100 * MB, 22)
        .await
        .unwrap();
    let server = server.await.unwrap();
    assert_eq!(client.sent_sha256, server.received_sha256);
    assert_eq!(server.sent_sha256, client.received_sha256);
    assert_eq!(client.received_bytes, 100 * MB);
}

/// The client half-closes; the server still reads to end-of-file and then answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn half_close_lets_the_server_answer_after_eof() {
    common::init_tracing();
    let net = TestNet::shared();
    // Through the Go tunneler host to a plain TCP server...
    let tcp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = tcp.accept().await {
            tokio::spawn(async move {
                let mut all = Vec::new();
                s.read_to_end(&mut all).await.unwrap();
                s.write_all(format!("got {} bytes", all.len()).as_bytes())
                    .await
                    .unwrap();
                s.shutdown().await.unwrap();
            });
        }
    });
    let svc = setup_service(net, "halfclose", false, Some(port));
    let _host = net
        .spawn_go_tunnel("host", &svc.host_identity, &[])
        .unwrap();
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    let mut s = dial_when_hosted(&ctx, &svc.name).await;
    s.write_all(&[7u8; 100_000]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    unstalled("read", s.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, "got 100000 bytes");

    // ...and between our own dialer and host.
    let svc2 = setup_service(net, "halfclose2", true, None);
    let host_ctx = ZitiContext::from_file(&svc2.host_identity).await.unwrap();
    let mut listener = host_ctx.listen(&svc2.name).await.unwrap();
    tokio::spawn(async move {
        let mut s = listener.accept().await.unwrap();
        let mut all = Vec::new();
        s.read_to_end(&mut all).await.unwrap();
        s.write_all(format!("got {} bytes", all.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    });
    let ctx2 = ZitiContext::from_file(&svc2.client_identity).await.unwrap();
    let mut s = dial_when_hosted(&ctx2, &svc2.name).await;
    s.write_all(&[9u8; 70_001]).await.unwrap();
    s.shutdown().await.unwrap();
    let mut answer = String::new();
    unstalled("read", s.read_to_string(&mut answer))
        .await
        .unwrap();
    assert_eq!(answer, "got 70001 bytes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_streams_over_one_router() {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, "many", false, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let mut listener = host_ctx.listen(&svc.name).await.unwrap();
    tokio::spawn(async move {
        while let Some(mut s) = listener.accept().await {
            tokio::spawn(async move {
                // Echo until EOF, then close.
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    let n = s.read(&mut buf).await.unwrap();
                    if n == 0 {
                        break;
                    }
                    s.write_all(&buf[..n]).await.unwrap();
                }
                s.shutdown().await.unwrap();
            });
        }
    });
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    drop(dial_when_hosted(&ctx, &svc.name).await);
    let mut tasks = Vec::new();
    for i in 0..200u32 {
        let ctx = ctx.clone();
        let name = svc.name.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = ctx.dial(&name).await.unwrap();
            let payload: Vec<u8> = (0..65_536u32)
                .map(|j| (j.wrapping_mul(31).wrapping_add(i)) as u8)
                .collect();
            let (mut rd, mut wr) = tokio::io::split(&mut s);
            let send = async {
                wr.write_all(&payload).await.unwrap();
                wr.shutdown().await.unwrap();
            };
            let mut back = Vec::new();
            let recv = rd.read_to_end(&mut back);
            let ((), r) = tokio::time::timeout(common::STALL, async { tokio::join!(send, recv) })
                .await
                .unwrap_or_else(|_| panic!("stream {i} stalled"));
            r.unwrap();
            assert_eq!(back, payload, "stream {i} returned different data");
            s.router().to_string()
        }));
    }
    let mut routers = std::collections::HashSet::new();
    for t in tasks {
        routers.insert(t.await.unwrap());
    }
    assert_eq!(routers.len(), 1, "all streams share one router channel");
    assert_eq!(ctx.routers().connected().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_dials_say_why() {
    common::init_tracing();
    let net = TestNet::shared();
    // A service nobody hosts.
    let svc = setup_service(net, "unhosted", false, None);
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    // Fails on the router's answer, not by running out the dial timeout: the reason is
    // `NoTerminators`, never `Timeout`.
    let err = ctx.dial(&svc.name).await.unwrap_err();
    assert!(matches!(err, DialError::NoTerminators { .. }), "{err:?}");
    assert!(err.to_string().contains("no terminators"), "{err}");
    assert!(err.to_string().contains(&svc.name), "{err}");

    // A service this identity may not dial (only the host may bind it).
    let other = setup_service(net, "forbidden", false, None);
    let err = ctx.dial(&other.name).await.unwrap_err();
    assert!(
        matches!(
            err,
            DialError::NotAuthorized { .. } | DialError::ServiceNotFound { .. }
        ),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("not authorized") || text.contains("service not found"),
        "{text}"
    );

    // The host identity may bind but not dial its own service.
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let err = host_ctx.dial(&svc.name).await.unwrap_err();
    assert!(matches!(err, DialError::NotAuthorized { .. }), "{err:?}");
}

/// The router dies and comes back: new dials work again once it is back, without a new context,
/// and our hosted service is bound again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_router_restart() {
    common::init_tracing();
    let net = TestNet::start().unwrap();
    let svc = setup_service(&net, "restart", false, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    let mut listener = host_ctx.listen(&svc.name).await.unwrap();
    tokio::spawn(async move {
        while let Some(mut s) = listener.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"hello from host").await;
                let _ = s.shutdown().await;
            });
        }
    });
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    let greet = |mut s: ziti_sdk::router::EdgeStream| async move {
        let mut text = String::new();
        unstalled("read", s.read_to_string(&mut text))
            .await
            .map(|_| text)
    };
    assert_eq!(
        greet(dial_when_hosted(&ctx, &svc.name).await)
            .await
            .unwrap(),
        "hello from host"
    );

    net.stop_router().unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(ctx.dial(&svc.name).await.is_err(), "no router, no dial");
    tokio::task::block_in_place(|| net.start_router()).unwrap();
    let back = Instant::now();
    loop {
        if let Ok(s) = ctx.dial(&svc.name).await
            && let Ok(text) = greet(s).await
            && text == "hello from host"
        {
            break;
        }
        assert!(
            back.elapsed() < Duration::from_secs(30),
            "no successful dial within 30 s of the router's return"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// OIDC access tokens live 1 minute (the controller's minimum) on this network; the channel must
/// outlive the one it was opened with (the router closes channels whose token expired unless
/// UpdateToken refreshed it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn channel_outlives_its_oidc_access_token() {
    common::init_tracing();
    let net = TestNet::start_with(&TestNetOptions {
        access_token_duration: Some("1m".into()),
        ..TestNetOptions::default()
    })
    .unwrap();
    let svc = setup_service(&net, "token", false, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    spawn_echo_host(host_ctx.listen(&svc.name).await.unwrap());
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    assert!(ctx.uses_oidc(), "a v2 quickstart controller offers OIDC");
    let mut s = dial_when_hosted(&ctx, &svc.name).await;
    let channel = ctx.routers().connected();
    assert_eq!(channel.len(), 1);
    // The channel was opened with this token or an older one.
    let token = ctx.controller().current_access_token().await.unwrap();
    let expires = token
        .expires_at()
        .expect("OIDC access tokens carry their expiry");
    let lifetime = expires
        .duration_since(SystemTime::now())
        .unwrap_or_default();
    assert!(
        lifetime <= Duration::from_secs(61),
        "a 1-minute token: {lifetime:?}"
    );
    // Keep the stream busy past that token's expiry plus two of the router's 5 s checks, after
    // which the router closes any channel that was not sent a fresh token.
    let keep_until = expires + Duration::from_secs(12);
    let mut i = 0u32;
    while SystemTime::now() < keep_until {
        let msg = format!("ping {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; msg.len()];
        unstalled("read", s.read_exact(&mut buf)).await.unwrap();
        assert_eq!(buf, msg.as_bytes());
        i += 1;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        !channel[0].is_closed(),
        "the original channel is still open"
    );
    assert_ne!(
        ctx.controller()
            .current_access_token()
            .await
            .unwrap()
            .secret(),
        token.secret(),
        "the token was refreshed"
    );
    // New dials still work on it.
    let mut s2 = ctx.dial(&svc.name).await.unwrap();
    s2.write_all(b"late").await.unwrap();
    let mut buf = [0u8; 4];
    unstalled("read", s2.read_exact(&mut buf)).await.unwrap();
    assert_eq!(&buf, b"late");
    assert_eq!(ctx.routers().connected().len(), 1);
}

/// `dialOptions.identity`: two addressable terminators for one service; a dial names the one
/// it wants.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dial_reaches_the_named_hosting_identity() {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, "addressable", false, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    for who in ["alpha", "beta"] {
        let opts = ziti_sdk::ListenOptions {
            identity: Some(who.to_string()),
            ..Default::default()
        };
        let mut listener = host_ctx.listen_with(&svc.name, &opts).await.unwrap();
        tokio::spawn(async move {
            while let Some(mut s) = listener.accept().await {
                let _ = s.write_all(who.as_bytes()).await;
                let _ = s.shutdown().await;
            }
        });
    }
    // Addressable terminators only: a dial that names no identity finds none of them.
    let ctx = ZitiContext::from_file(&svc.client_identity).await.unwrap();
    for who in ["beta", "alpha", "beta"] {
        let opts = ziti_sdk::DialOptions {
            identity: Some(who.to_string()),
            ..Default::default()
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        let answer = loop {
            match ctx.dial_with(&svc.name, &opts).await {
                Ok(mut s) => {
                    let mut text = String::new();
                    unstalled("read", s.read_to_string(&mut text))
                        .await
                        .unwrap();
                    break text;
                }
                // The second terminator may still be registering.
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("{e}");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => panic!("dial {who}: {e}"),
            }
        };
        assert_eq!(answer, who);
    }
}

/// A service `base` hosted by an echo host (the returned host context keeps it up), and a
/// client context that spreads dials over `channels` channels, all of them open and idle.
async fn echo_service_with_idle_dial_channels(
    base: &str,
    channels: usize,
) -> (common::TestService, ZitiContext, ZitiContext) {
    common::init_tracing();
    let net = TestNet::shared();
    let svc = setup_service(net, base, false, None);
    let host_ctx = ZitiContext::from_file(&svc.host_identity).await.unwrap();
    spawn_echo_host(host_ctx.listen(&svc.name).await.unwrap());
    let identity = ziti_sdk::Identity::load(&svc.client_identity).unwrap();
    let options = ziti_sdk::ContextOptions {
        dial_channels: channels,
        ..Default::default()
    };
    let ctx = ZitiContext::new(identity, options).await.unwrap();
    // The first dial opens the router's extra channels in the background.
    drop(dial_when_hosted(&ctx, &svc.name).await);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while ctx.routers().channels().len() < channels {
        assert!(
            std::time::Instant::now() < deadline,
            "extra dial channels never opened: {} channels",
            ctx.routers().channels().len()
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // The earlier stream's circuit may take a moment to go; wait until no channel holds one.
    while ctx
        .routers()
        .channels()
        .iter()
        .any(|c| c.connection_count() > 0)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the first stream never closed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    (svc, host_ctx, ctx)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dials_spread_over_a_routers_dial_channels() {
    let (svc, _host, ctx) = echo_service_with_idle_dial_channels("spread", 3).await;
    let mut streams = Vec::new();
    for _ in 0..6 {
        streams.push(ctx.dial(&svc.name).await.unwrap());
    }
    let counts: Vec<usize> = ctx
        .routers()
        .channels()
        .iter()
        .map(|c| c.connection_count())
        .collect();
    assert_eq!(
        counts,
        vec![2, 2, 2],
        "each dial takes the least loaded channel"
    );
    assert_eq!(ctx.routers().connected().len(), 1, "one router");
    for (i, s) in streams.iter_mut().enumerate() {
        let msg = format!("stream {i}");
        s.write_all(msg.as_bytes()).await.unwrap();
        let mut back = vec![0u8; msg.len()];
        unstalled("echo", s.read_exact(&mut back)).await.unwrap();
        assert_eq!(back, msg.as_bytes());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_context_closes_its_router_channels_once_its_streams_end() {
    use std::time::Duration;
    let (svc, _host, ctx) = echo_service_with_idle_dial_channels("retire", 2).await;
    let mut stream = ctx.dial(&svc.name).await.unwrap();
    let pool = ctx.routers().clone();
    let (busy, idle): (Vec<_>, Vec<_>) = pool
        .channels()
        .into_iter()
        .partition(|c| c.connection_count() > 0);
    assert_eq!(
        (busy.len(), idle.len()),
        (1, 1),
        "one channel carries the stream"
    );
    drop(ctx);

    tokio::time::timeout(Duration::from_secs(10), idle[0].closed())
        .await
        .expect("the idle channel closes when the context goes");
    assert!(
        !busy[0].is_closed(),
        "the stream's channel stays while it is in use"
    );
    stream.write_all(b"still here").await.unwrap();
    let mut back = [0u8; 10];
    unstalled("echo after the context went", stream.read_exact(&mut back))
        .await
        .unwrap();
    assert_eq!(&back, b"still here");
    let router = ziti_sdk::router::RouterAddr {
        name: busy[0].name().to_string(),
        url: busy[0].url().to_string(),
    };
    assert!(
        matches!(
            pool.get_or_connect(&router).await,
            Err(ziti_sdk::router::RouterError::PoolClosed)
        ),
        "a retired pool opens nothing"
    );

    drop(stream);
    tokio::time::timeout(Duration::from_secs(40), busy[0].closed())
        .await
        .expect("the last channel closes once its stream has ended");
    assert!(pool.channels().is_empty());
}
