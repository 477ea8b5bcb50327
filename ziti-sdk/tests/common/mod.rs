//! Shared fixtures for the integration tests: services on the real test network, and a
//! bidirectional transfer whose both directions are checked by SHA-256.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::PathBuf;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use testnet::{TestNet, unique_name};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Logs to the test output when `RUST_LOG` is set.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

/// A service with one dialing and one hosting identity (both enrolled with the Go CLI).
#[derive(Debug, Clone)]
pub struct TestService {
    pub name: String,
    pub client_identity: PathBuf,
    pub host_identity: PathBuf,
}

/// Creates a service `<base>-<unique>`, optionally with a `host.v1` config forwarding to
/// `127.0.0.1:<host_port>`, plus a client identity allowed to dial it and a host identity
/// allowed to bind it.
pub fn setup_service(
    net: &TestNet,
    base: &str,
    encrypted: bool,
    host_port: Option<u16>,
) -> TestService {
    let run = || {
        let name = unique_name(base);
        let mut configs = Vec::new();
        if let Some(port) = host_port {
            let cfg = format!("{name}-host");
            net.create_config(
                &cfg,
                "host.v1",
                &format!(r#"{{"protocol":"tcp","address":"127.0.0.1","port":{port}}}"#),
            )
            .unwrap();
            configs.push(cfg);
        }
        let configs: Vec<&str> = configs.iter().map(String::as_str).collect();
        net.create_service(&name, &configs, &[], encrypted).unwrap();
        let clients = format!("{name}-clients");
        let hosts = format!("{name}-hosts");
        net.create_service_policy(
            &format!("{name}-dial"),
            "Dial",
            &[&format!("@{name}")],
            &[&format!("#{clients}")],
        )
        .unwrap();
        net.create_service_policy(
            &format!("{name}-bind"),
            "Bind",
            &[&format!("@{name}")],
            &[&format!("#{hosts}")],
        )
        .unwrap();
        let enroll = |who: &str, attr: &str| {
            let id = format!("{name}-{who}");
            let jwt = net.create_identity(&id, &[attr]).unwrap();
            let out = net.home().join(format!("{id}.json"));
            net.cli_enroll(&jwt, &out, "EC").unwrap();
            out
        };
        TestService {
            client_identity: enroll("client", &clients),
            host_identity: enroll("host", &hosts),
            name,
        }
    };
    match tokio::runtime::Handle::try_current() {
        Ok(_) => tokio::task::block_in_place(run),
        Err(_) => run(),
    }
}

/// What one side of an [`exchange`] sent and received.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transfer {
    pub sent_bytes: u64,
    pub sent_sha256: [u8; 32],
    pub received_bytes: u64,
    pub received_sha256: [u8; 32],
}

/// How long a transfer may go without moving a byte before it counts as stalled: generous for a
/// loaded machine, and a stalled data path fails the test instead of hanging the suite.
pub const STALL: Duration = Duration::from_secs(60);

/// `io` or a `TimedOut` error when it makes no progress within [`STALL`].
pub async fn unstalled<T>(
    what: &str,
    io: impl std::future::Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    tokio::time::timeout(STALL, io).await.unwrap_or_else(|_| {
        Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            format!("{what}: no progress for {STALL:?}"),
        ))
    })
}

/// Writes `send_len` pseudo-random bytes (from `seed`) then half-closes, while reading to EOF;
/// both directions run at once, so neither side's buffers limit the transfer. Either direction
/// failing to move for [`STALL`] is an error.
pub async fn exchange<S>(stream: S, send_len: u64, seed: u64) -> std::io::Result<Transfer>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (mut rd, mut wr) = tokio::io::split(stream);
    let writer = tokio::spawn(async move {
        let mut rng = seed | 1;
        let mut hash = Sha256::new();
        let mut left = send_len;
        let mut chunk = vec![0u8; 64 * 1024];
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            for word in chunk[..n].chunks_mut(8) {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                let bytes = rng.to_le_bytes();
                word.copy_from_slice(&bytes[..word.len()]);
            }
            unstalled("write", wr.write_all(&chunk[..n])).await?;
            hash.update(&chunk[..n]);
            left -= n as u64;
        }
        unstalled("shutdown", wr.shutdown()).await?;
        Ok::<_, std::io::Error>((send_len, <[u8; 32]>::from(hash.finalize())))
    });
    let mut hash = Sha256::new();
    let mut total = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = unstalled("read", rd.read(&mut buf)).await?;
        if n == 0 {
            break;
        }
        hash.update(&buf[..n]);
        total += n as u64;
    }
    let (sent_bytes, sent_sha256) = writer.await.map_err(std::io::Error::other)??;
    Ok(Transfer {
        sent_bytes,
        sent_sha256,
        received_bytes: total,
        received_sha256: hash.finalize().into(),
    })
}

/// Results of the connections a [`start_exchange_server`] served.
pub struct ServerResults(tokio::sync::mpsc::Receiver<std::io::Result<Transfer>>);

impl ServerResults {
    /// The next transfer that received data (connections that only probed are skipped).
    pub async fn recv_one(&mut self) -> Transfer {
        loop {
            match self.0.recv().await {
                Some(Ok(t)) if t.received_bytes > 0 => return t,
                Some(_) => continue,
                None => panic!("exchange server stopped"),
            }
        }
    }
}

/// A plain TCP server on 127.0.0.1 that runs [`exchange`] on every connection.
pub async fn start_exchange_server(send_len: u64, seed: u64) -> (u16, ServerResults) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(exchange(tcp, send_len, seed).await).await;
            });
        }
    });
    (port, ServerResults(rx))
}

/// Waits until something accepts TCP on 127.0.0.1:`port`.
pub async fn wait_tcp(port: u16, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "nothing listens on port {port}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
