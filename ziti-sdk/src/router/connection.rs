//! One channel to one edge router: TLS, the hello, and the tasks that pump frames.
//!
//! The connection owns two tasks. The *reader* decodes frames from TLS and routes each one: a
//! reply to the request waiting for it, per-connection traffic to that connection's bounded
//! queue, anything else is dropped. When a connection's queue is full the reader waits, so TLS
//! stops being read and the router's TCP window closes: a slow reader back-pressures its peer
//! instead of growing memory. The *writer* drains a bounded queue of outgoing messages, encoding
//! whatever is ready into one buffer per TLS write.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_rustls::TlsConnector;

use crate::channel::{self, FrameDecoder, HelloResult, Limits, Message};
use crate::edge::{self, ConnIdAllocator, ContentType};
use crate::error_report::error_chain;

use super::{ConnectError, RouterError};

/// Outgoing frames queued per router connection before senders wait.
const OUTBOUND_QUEUE: usize = 256;
/// Incoming frames queued per edge connection before the reader waits (back-pressure).
pub(crate) const INBOUND_QUEUE: usize = 64;
/// How long the router gets to answer the hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Latency probe period and timeout (as the Go SDK).
const PROBE_INTERVAL: Duration = Duration::from_secs(30);
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest encoded batch handed to TLS in one write.
const WRITE_BATCH: usize = 256 * 1024;

/// Where a connection id's traffic goes.
#[derive(Debug, Clone)]
pub(crate) enum Sink {
    /// A dialed or accepted stream: Data, StateClosed.
    Stream(mpsc::Sender<Message>),
    /// A bind: incoming Dial, BindSuccess, StateClosed.
    Bind(mpsc::Sender<Message>),
}

impl Sink {
    fn sender(&self) -> &mpsc::Sender<Message> {
        match self {
            Sink::Stream(s) | Sink::Bind(s) => s,
        }
    }
}

/// Edge connections on one channel: where each id's traffic goes, and which ids are taken.
#[derive(Debug, Default)]
struct Mux {
    sinks: HashMap<u32, Sink>,
    ids: ConnIdAllocator,
}

#[derive(Debug)]
struct Shared {
    name: String,
    url: String,
    outbound: mpsc::Sender<Message>,
    sequence: AtomicI32,
    pending: Mutex<HashMap<i32, oneshot::Sender<Message>>>,
    mux: Mutex<Mux>,
    closed: watch::Sender<bool>,
    latency_nanos: AtomicU64,
    last_read: Mutex<Instant>,
    probe_in_flight: AtomicBool,
    hello: HelloResult,
}

/// A live channel to an edge router. Cheap to clone; all clones share the channel.
#[derive(Debug, Clone)]
pub struct RouterConnection {
    shared: Arc<Shared>,
}

/// Everything needed to open a router connection.
#[derive(Clone)]
pub struct ConnectParams {
    /// TLS configuration: the identity's client certificate and its CA as the only roots.
    pub tls: Arc<rustls::ClientConfig>,
    /// API session token for the hello (legacy `zt-session` or OIDC access token).
    pub token: String,
    /// Later tokens (OIDC refreshes), pushed to the router with UpdateToken.
    pub token_updates: Option<watch::Receiver<String>>,
    /// Label sent as the hello body (the router only logs it).
    pub label: String,
    /// Timeout for TCP + TLS + hello.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for ConnectParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a credential: never print it.
        f.debug_struct("ConnectParams")
            .field("label", &self.label)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl RouterConnection {
    /// Connects to `url` (`tls://host:port`), performs the hello and starts the pump tasks.
    pub async fn connect(
        name: &str,
        url: &str,
        params: ConnectParams,
    ) -> Result<RouterConnection, RouterError> {
        let (host, port) = parse_router_url(url)?;
        let fut = Self::connect_inner(name, url, &host, port, params.clone());
        let result = match tokio::time::timeout(params.connect_timeout, fut).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::Timeout(params.connect_timeout)),
        };
        result.map_err(|source| RouterError::Connect {
            router: name.to_string(),
            url: url.to_string(),
            source,
        })
    }

    async fn connect_inner(
        name: &str,
        url: &str,
        host: &str,
        port: u16,
        params: ConnectParams,
    ) -> Result<RouterConnection, ConnectError> {
        let tcp = TcpStream::connect((host, port))
            .await
            .map_err(ConnectError::Tcp)?;
        let _ = tcp.set_nodelay(true);
        let server_name =
            ServerName::try_from(host.to_string()).map_err(|source| ConnectError::HostName {
                host: host.to_string(),
                source,
            })?;
        let tls = TlsConnector::from(params.tls.clone())
            .connect(server_name, tcp)
            .await
            .map_err(ConnectError::from_tls_io)?;
        let (mut rd, mut wr) = tokio::io::split(tls);

        let mut buf = BytesMut::new();
        channel::hello(&params.token, &params.label)
            .encode(&mut buf)
            .map_err(ConnectError::EncodeHello)?;
        wr.write_all(&buf)
            .await
            .map_err(ConnectError::from_tls_io)?;
        wr.flush().await.map_err(ConnectError::from_tls_io)?;

        let mut decoder = FrameDecoder::new(Limits::default());
        let mut inbuf = BytesMut::with_capacity(64 * 1024);
        let hello = tokio::time::timeout(HELLO_TIMEOUT, async {
            loop {
                if let Some(msg) = decoder.decode(&mut inbuf).map_err(ConnectError::Frame)? {
                    return HelloResult::parse(&msg)
                        .ok_or(ConnectError::UnexpectedAnswer(msg.content_type));
                }
                let n = rd
                    .read_buf(&mut inbuf)
                    .await
                    .map_err(ConnectError::from_tls_io)?;
                if n == 0 {
                    return Err(ConnectError::ClosedDuringHello);
                }
            }
        })
        .await
        .map_err(|_| ConnectError::HelloTimeout(HELLO_TIMEOUT))??;
        if !hello.success {
            return Err(ConnectError::HelloRejected(hello.message.clone()));
        }

        let (out_tx, out_rx) = mpsc::channel(OUTBOUND_QUEUE);
        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            url: url.to_string(),
            outbound: out_tx,
            sequence: AtomicI32::new(1),
            pending: Mutex::new(HashMap::new()),
            mux: Mutex::new(Mux::default()),
            closed: closed_tx,
            latency_nanos: AtomicU64::new(u64::MAX),
            last_read: Mutex::new(Instant::now()),
            probe_in_flight: AtomicBool::new(false),
            hello,
        });
        let conn = RouterConnection { shared };
        tokio::spawn(writer_task(wr, out_rx, conn.shared.closed.subscribe()));
        tokio::spawn(reader_task(rd, decoder, inbuf, conn.clone()));
        tokio::spawn(prober_task(conn.clone()));
        if let Some(updates) = params.token_updates {
            tokio::spawn(token_update_task(conn.clone(), updates));
        }
        tracing::info!(router = %name, %url, version = ?conn.shared.hello.version_number(), "connected to edge router");
        Ok(conn)
    }

    /// Router name (as the controller lists it).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Router URL this channel was opened to.
    pub fn url(&self) -> &str {
        &self.shared.url
    }

    /// What the router said in its hello answer.
    pub fn hello(&self) -> &HelloResult {
        &self.shared.hello
    }

    /// `true` once the channel has failed or been closed.
    pub fn is_closed(&self) -> bool {
        *self.shared.closed.borrow()
    }

    /// Resolves when the channel closes.
    pub async fn closed(&self) {
        let mut rx = self.shared.closed.subscribe();
        let _ = rx.wait_for(|c| *c).await;
    }

    /// Last measured round-trip time, if any probe has completed.
    pub fn latency(&self) -> Option<Duration> {
        match self.shared.latency_nanos.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// Closes the channel; every connection on it ends.
    pub fn close(&self) {
        self.shared.closed.send_replace(true);
    }

    /// Takes a free connection id (below 0x8000_0000; router-assigned ids start above) and
    /// routes its traffic to `sink` until [`RouterConnection::unregister`].
    pub(crate) fn register_new(&self, sink: Sink) -> Result<u32, RouterError> {
        let mut mux = self.shared.mux.lock().map_err(|_| self.closed_error())?;
        let id = mux
            .ids
            .allocate()
            .ok_or_else(|| RouterError::NoFreeConnId {
                router: self.shared.name.clone(),
            })?;
        mux.sinks.insert(id, sink);
        Ok(id)
    }

    /// Routes traffic for a router-assigned `conn_id` to `sink`.
    pub(crate) fn register(&self, conn_id: u32, sink: Sink) {
        if let Ok(mut mux) = self.shared.mux.lock() {
            mux.sinks.insert(conn_id, sink);
        }
    }

    /// Stops routing traffic for `conn_id` and frees the id.
    pub(crate) fn unregister(&self, conn_id: u32) {
        if let Ok(mut mux) = self.shared.mux.lock() {
            mux.sinks.remove(&conn_id);
            mux.ids.release(conn_id);
        }
    }

    /// The outgoing queue (for streams that send through `PollSender`).
    pub(crate) fn outbound(&self) -> mpsc::Sender<Message> {
        self.shared.outbound.clone()
    }

    pub(crate) fn next_sequence(&self) -> i32 {
        // Keep clear of -1 (hello / "not a reply") and wrap within positive values.
        self.shared
            .sequence
            .fetch_add(1, Ordering::Relaxed)
            .rem_euclid(i32::MAX)
            .max(1)
    }

    /// Queues a message (sequence assigned here). Waits while the outgoing queue is full.
    pub async fn send(&self, mut msg: Message) -> Result<(), RouterError> {
        msg.sequence = self.next_sequence();
        self.shared
            .outbound
            .send(msg)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Queues a message without waiting; hands it back if the queue is full (or closed).
    pub(crate) fn try_send_or_return(&self, mut msg: Message) -> Result<(), Message> {
        msg.sequence = self.next_sequence();
        self.shared.outbound.try_send(msg).map_err(|e| match e {
            mpsc::error::TrySendError::Full(m) | mpsc::error::TrySendError::Closed(m) => m,
        })
    }

    /// Queues a message without waiting; fails if the queue is full or the channel is closed.
    pub(crate) fn try_send(&self, mut msg: Message) -> Result<(), RouterError> {
        msg.sequence = self.next_sequence();
        self.shared
            .outbound
            .try_send(msg)
            .map_err(|_| self.closed_error())
    }

    /// Sends a request and waits up to `timeout` for the message that replies to it.
    pub async fn request(
        &self,
        mut msg: Message,
        timeout: Duration,
    ) -> Result<Message, RouterError> {
        let seq = self.next_sequence();
        msg.sequence = seq;
        let (tx, rx) = oneshot::channel();
        if let Ok(mut p) = self.shared.pending.lock() {
            p.insert(seq, tx);
        }
        let result = async {
            self.shared
                .outbound
                .send(msg)
                .await
                .map_err(|_| self.closed_error())?;
            let mut closed = self.shared.closed.subscribe();
            tokio::select! {
                reply = rx => reply.map_err(|_| self.closed_error()),
                _ = closed.wait_for(|c| *c) => Err(self.closed_error()),
            }
        };
        let out = match tokio::time::timeout(timeout, result).await {
            Ok(r) => r,
            Err(_) => Err(RouterError::Timeout {
                router: self.shared.name.clone(),
                after: timeout,
            }),
        };
        if let Ok(mut p) = self.shared.pending.lock() {
            p.remove(&seq);
        }
        out
    }

    fn closed_error(&self) -> RouterError {
        RouterError::Closed {
            router: self.shared.name.clone(),
        }
    }

    fn mark_closed(&self, why: &str) {
        if !self.shared.closed.send_replace(true) {
            tracing::warn!(router = %self.shared.name, reason = why, "edge router connection closed");
        }
        // Dropping the senders ends every stream and bind on this channel.
        if let Ok(mut mux) = self.shared.mux.lock() {
            *mux = Mux::default();
        }
        if let Ok(mut p) = self.shared.pending.lock() {
            p.clear();
        }
    }

    async fn dispatch(&self, msg: Message) {
        if let Ok(mut t) = self.shared.last_read.lock() {
            *t = Instant::now();
        }
        if let Some(seq) = msg.reply_for() {
            let waiter = self
                .shared
                .pending
                .lock()
                .ok()
                .and_then(|mut p| p.remove(&seq));
            if let Some(w) = waiter {
                let _ = w.send(msg);
                return;
            }
        }
        let conn_id = msg.headers.get_u32(edge::header::CONN_ID);
        let sink = conn_id.and_then(|id| {
            self.shared
                .mux
                .lock()
                .ok()
                .and_then(|m| m.sinks.get(&id).cloned())
        });
        match (sink, conn_id) {
            (Some(sink), Some(id)) => {
                // Waiting here is the back-pressure: see the module docs.
                if sink.sender().send(msg).await.is_err() {
                    self.unregister(id);
                }
            }
            (None, Some(id))
                if ContentType::from_i32(msg.content_type) == Some(ContentType::Data) =>
            {
                // Data for a connection we no longer know: tell the router to drop it.
                let _ = self.try_send(edge::state_closed(id, "connection closed"));
            }
            _ => {
                tracing::debug!(
                    router = %self.shared.name,
                    content_type = msg.content_type,
                    "dropping message nobody waits for"
                );
            }
        }
    }
}

async fn writer_task<W: tokio::io::AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::Receiver<Message>,
    mut closed: watch::Receiver<bool>,
) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    loop {
        let first = tokio::select! {
            m = rx.recv() => m,
            _ = closed.wait_for(|c| *c) => None,
        };
        let Some(first) = first else { break };
        buf.clear();
        if first.encode(&mut buf).is_err() {
            continue;
        }
        while buf.len() < WRITE_BATCH {
            match rx.try_recv() {
                Ok(m) => {
                    let _ = m.encode(&mut buf);
                }
                Err(_) => break,
            }
        }
        if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
            break;
        }
    }
    let _ = wr.shutdown().await;
}

async fn reader_task<R: tokio::io::AsyncRead + Unpin>(
    mut rd: R,
    mut decoder: FrameDecoder,
    mut inbuf: BytesMut,
    conn: RouterConnection,
) {
    let mut closed = conn.shared.closed.subscribe();
    let why = loop {
        loop {
            match decoder.decode(&mut inbuf) {
                Ok(Some(msg)) => conn.dispatch(msg).await,
                Ok(None) => break,
                Err(e) => {
                    conn.mark_closed(&format!("bad frame: {}", error_chain(&e)));
                    return;
                }
            }
        }
        if inbuf.capacity() - inbuf.len() < 16 * 1024 {
            inbuf.reserve(64 * 1024);
        }
        let read = tokio::select! {
            r = rd.read_buf(&mut inbuf) => r,
            _ = closed.wait_for(|c| *c) => break "closed locally".to_string(),
        };
        match read {
            Ok(0) => break "router closed the connection".to_string(),
            Ok(_) => {}
            Err(e) => break format!("read error: {}", error_chain(&e)),
        }
    };
    conn.mark_closed(&why);
}

async fn prober_task(conn: RouterConnection) {
    let mut closed = conn.shared.closed.subscribe();
    loop {
        tokio::select! {
            _ = tokio::time::sleep(PROBE_INTERVAL) => {}
            _ = closed.wait_for(|c| *c) => return,
        }
        if conn.shared.probe_in_flight.swap(true, Ordering::AcqRel) {
            continue;
        }
        let started = Instant::now();
        let probe = channel::latency_probe(unix_nanos());
        match conn.request(probe, PROBE_TIMEOUT).await {
            Ok(_) => {
                let rtt = started.elapsed().as_nanos().min(u64::MAX as u128 - 1) as u64;
                conn.shared.latency_nanos.store(rtt, Ordering::Relaxed);
            }
            Err(RouterError::Timeout { .. }) => {
                let idle = conn
                    .shared
                    .last_read
                    .lock()
                    .map(|t| *t < started)
                    .unwrap_or(true);
                if idle {
                    conn.mark_closed("latency probe timed out and nothing was received");
                    return;
                }
            }
            Err(_) => return,
        }
        conn.shared.probe_in_flight.store(false, Ordering::Release);
    }
}

async fn token_update_task(conn: RouterConnection, mut updates: watch::Receiver<String>) {
    let mut closed = conn.shared.closed.subscribe();
    loop {
        tokio::select! {
            changed = updates.changed() => if changed.is_err() { return },
            _ = closed.wait_for(|c| *c) => return,
        }
        let token = updates.borrow_and_update().clone();
        match conn
            .request(edge::update_token(&token), Duration::from_secs(10))
            .await
        {
            Ok(reply) if reply.content_type == ContentType::UpdateTokenSuccess as i32 => {
                tracing::debug!(router = %conn.shared.name, "router accepted the refreshed token");
            }
            Ok(reply) => tracing::warn!(
                router = %conn.shared.name,
                reason = %String::from_utf8_lossy(&reply.body),
                "router refused the refreshed token"
            ),
            Err(e) => {
                tracing::warn!(router = %conn.shared.name, error = %error_chain(&e), "token update failed")
            }
        }
    }
}

fn unix_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos().min(u64::MAX as u128) as u64)
        .unwrap_or(0)
}

/// Splits `tls://host:port` (also `host:port`, `tls:host:port`) into host and port.
pub(crate) fn parse_router_url(url: &str) -> Result<(String, u16), RouterError> {
    let bad = || RouterError::BadUrl(url.to_string());
    let rest = url
        .strip_prefix("tls://")
        .or_else(|| url.strip_prefix("tls:"))
        .unwrap_or(url);
    let (host, port) = rest.rsplit_once(':').ok_or_else(bad)?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port.trim_end_matches('/').parse().map_err(|_| bad())?;
    if host.is_empty() {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn router_urls() {
        assert_eq!(
            parse_router_url("tls://127.0.0.1:3022").unwrap(),
            ("127.0.0.1".to_string(), 3022)
        );
        assert_eq!(
            parse_router_url("tls:er.example:443").unwrap(),
            ("er.example".to_string(), 443)
        );
        assert_eq!(
            parse_router_url("tls://[::1]:3022").unwrap(),
            ("::1".to_string(), 3022)
        );
        assert!(parse_router_url("tls://nohost").is_err());
        assert!(parse_router_url("tls://:12").is_err());
        assert!(parse_router_url("tls://h:99999").is_err());
    }
}
