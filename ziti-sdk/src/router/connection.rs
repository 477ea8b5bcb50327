//! One channel to one edge router: TLS under an [`edge::Channel`], driven by tokio.
//!
//! The protocol lives in the sans-IO [`edge::Channel`]; this module only moves its bytes and
//! time. The channel sits behind one mutex shared by:
//!
//! * the **reader** task: TLS bytes in, [`edge::Channel::handle_input`], then wakes exactly the
//!   streams and waiters the resulting events name. It never waits for a stream: a connection
//!   whose application stops reading costs at most its receive window (see [`edge::channel`]);
//! * the **writer** task: [`edge::Channel::poll_transmit`] to TLS, woken when there are bytes;
//! * the **timer** task: sleeps until [`edge::Channel::poll_timeout`] and runs
//!   [`edge::Channel::handle_timeout`] (request timeouts, latency probe, overflow policy);
//! * the token task (OIDC): pushes refreshed tokens with UpdateToken;
//! * the streams, bindings and dials themselves, which call the channel directly and register
//!   their waker when they have to wait.
//!
//! [`edge::Channel`]: crate::edge::Channel
//! [`edge::channel`]: crate::edge::channel
//! [`edge::Channel::handle_input`]: crate::edge::Channel::handle_input
//! [`edge::Channel::poll_transmit`]: crate::edge::Channel::poll_transmit
//! [`edge::Channel::poll_timeout`]: crate::edge::Channel::poll_timeout
//! [`edge::Channel::handle_timeout`]: crate::edge::Channel::handle_timeout

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::Waker;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use rustls_pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, oneshot, watch};
use tokio_rustls::TlsConnector;

use crate::channel::{HelloResult, Message};
use crate::edge::{Channel, ChannelClosed, ChannelConfig, Dial, Event, OpenError};
use crate::error_report::error_chain;

use super::{ConnectError, RouterError};

/// Bytes read from the router's socket at a time, under TLS. rustls asks for at most 4 KiB
/// per read, so without this a 64 KiB payload took up to 16 `recvfrom` calls. Over 5 s of 8
/// parallel downloads (`perf stat -p`): `recvfrom` 77,450 -> 20,973, all system calls
/// 135,195 -> 80,690. The buffer is held for the channel's life.
const READ_AHEAD: usize = 64 * 1024;
/// Largest chunk handed to TLS in one write.
const WRITE_BATCH: usize = 256 * 1024;
/// Incoming dials queued per binding before new ones are rejected (a burst of dials arrives in
/// a few TLS reads; like a listen backlog, this bounds memory, not throughput).
pub(crate) const BIND_QUEUE: usize = 4096;

/// What a dial or bind waits for.
pub(crate) type OpenResult = Result<Option<String>, OpenError>;

/// A binding's inbox, filled by the reader.
#[derive(Debug, Default)]
pub(crate) struct BindInbox {
    pub(crate) dials: VecDeque<(Box<Dial>, Box<Message>)>,
    pub(crate) closed: Option<String>,
    pub(crate) waker: Option<Waker>,
}

/// The channel and who waits on it.
pub(crate) struct State {
    pub(crate) ch: Channel,
    readers: HashMap<u32, Waker>,
    writers: HashMap<u32, Waker>,
    opening: HashMap<u32, oneshot::Sender<OpenResult>>,
    pub(crate) binds: HashMap<u32, BindInbox>,
    /// The deadline the timer task sleeps until.
    timer_at: Option<Instant>,
    /// Close the channel as soon as it carries no connection and no bind
    /// ([`RouterConnection::close_when_idle`]).
    close_when_idle: bool,
}

pub(crate) struct Shared {
    name: String,
    url: String,
    hello: HelloResult,
    state: Mutex<State>,
    transmit: Notify,
    timer: Notify,
    closed: watch::Sender<bool>,
}

/// A live channel to an edge router. Cheap to clone; all clones share the channel.
#[derive(Clone)]
pub struct RouterConnection {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RouterConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterConnection")
            .field("name", &self.shared.name)
            .field("url", &self.shared.url)
            .finish_non_exhaustive()
    }
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
    /// Ask for SDK xgress mode (per-circuit flow control) on dials and binds.
    pub sdk_flow_control: bool,
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
    /// Connects to `url` (`tls://host:port`), performs the hello and starts the driver tasks.
    pub async fn connect(
        name: &str,
        url: &str,
        params: ConnectParams,
    ) -> Result<RouterConnection, RouterError> {
        let connect_error = |source| RouterError::Connect {
            router: name.to_string(),
            url: url.to_string(),
            source,
        };
        let (host, port) = parse_router_url(url)?;
        let fut = Self::connect_inner(name, url, &host, port, params.clone());
        match tokio::time::timeout(params.connect_timeout, fut).await {
            Ok(r) => r.map_err(connect_error),
            Err(_) => Err(connect_error(ConnectError::Timeout(params.connect_timeout))),
        }
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
        // rustls reads the socket 4 KiB at a time; reading ahead turns those into one
        // read per READ_AHEAD.
        let tcp = tokio::io::BufReader::with_capacity(READ_AHEAD, tcp);
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

        let config = ChannelConfig {
            label: params.label.clone(),
            sdk_flow_control: params.sdk_flow_control,
            ..ChannelConfig::default()
        };
        let hello_timeout = config.hello_timeout;
        let mut ch = Channel::new(
            config,
            &params.token,
            Instant::now(),
            rand::random(),
            unix_ms(),
        );
        // The hello: write it, then read until the channel says how it went.
        while let Some(bytes) = ch.poll_transmit(WRITE_BATCH) {
            wr.write_all(&bytes)
                .await
                .map_err(ConnectError::from_tls_io)?;
        }
        wr.flush().await.map_err(ConnectError::from_tls_io)?;
        let mut buf = BytesMut::with_capacity(64 * 1024);
        let hello = tokio::time::timeout(hello_timeout, async {
            loop {
                while let Some(event) = ch.poll_event() {
                    match event {
                        Event::Connected(h) => return Ok(*h),
                        Event::Closed(ChannelClosed::HelloRejected(text)) => {
                            return Err(ConnectError::HelloRejected(text));
                        }
                        Event::Closed(ChannelClosed::BadFrame(e)) => {
                            return Err(ConnectError::Frame(e));
                        }
                        Event::Closed(_) => return Err(ConnectError::ClosedDuringHello),
                        _ => {}
                    }
                }
                buf.clear();
                let n = rd
                    .read_buf(&mut buf)
                    .await
                    .map_err(ConnectError::from_tls_io)?;
                if n == 0 {
                    return Err(ConnectError::ClosedDuringHello);
                }
                ch.handle_input(Instant::now(), &buf);
            }
        })
        .await
        .map_err(|_| ConnectError::HelloTimeout(hello_timeout))??;

        let (closed_tx, _) = watch::channel(false);
        let shared = Arc::new(Shared {
            name: name.to_string(),
            url: url.to_string(),
            hello,
            state: Mutex::new(State {
                ch,
                readers: HashMap::new(),
                writers: HashMap::new(),
                opening: HashMap::new(),
                binds: HashMap::new(),
                timer_at: None,
                close_when_idle: false,
            }),
            transmit: Notify::new(),
            timer: Notify::new(),
            closed: closed_tx,
        });
        let conn = RouterConnection { shared };
        tokio::spawn(writer_task(wr, conn.clone()));
        tokio::spawn(reader_task(rd, conn.clone()));
        tokio::spawn(timer_task(conn.clone()));
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
        self.lock().ok().and_then(|s| s.ch.latency())
    }

    /// Edge connections and binds open on this channel.
    pub fn connection_count(&self) -> usize {
        self.lock().map(|s| s.ch.connection_count()).unwrap_or(0)
    }

    /// Closes the channel; every connection on it ends.
    pub fn close(&self) {
        let _ = self.with(|s| s.ch.close());
    }

    /// Closes the channel once it carries no connection and no bind: now if it is idle, else
    /// when its last one ends. Nothing new should be opened on it after this.
    pub fn close_when_idle(&self) {
        let _ = self.with(|s| s.close_when_idle = true);
    }

    pub(crate) fn closed_error(&self) -> RouterError {
        RouterError::Closed {
            router: self.shared.name.clone(),
        }
    }

    pub(crate) fn lock(&self) -> Result<MutexGuard<'_, State>, RouterError> {
        self.shared.state.lock().map_err(|_| self.closed_error())
    }

    /// Runs `f` on the channel, then delivers the events it caused and wakes the writer and
    /// the timer as needed.
    pub(crate) fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> Result<T, RouterError> {
        let mut state = self.lock()?;
        let out = f(&mut state);
        self.after(&mut state);
        Ok(out)
    }

    /// Starts opening a connection (dial or bind) with `start`, then waits for its outcome.
    pub(crate) async fn open(
        &self,
        start: impl FnOnce(&mut Channel, Instant) -> Result<u32, OpenError>,
    ) -> Result<(u32, Option<String>), OpenError> {
        let (tx, rx) = oneshot::channel();
        let id = self
            .with(|s| {
                let id = start(&mut s.ch, Instant::now())?;
                s.opening.insert(id, tx);
                Ok::<u32, OpenError>(id)
            })
            .map_err(|_| OpenError::ChannelClosed)??;
        // If this future is dropped, the reader finds no waiter and closes the connection.
        let circuit = rx.await.map_err(|_| OpenError::ChannelClosed)??;
        Ok((id, circuit))
    }

    /// Registers the waker of connection `id`'s reader.
    pub(crate) fn want_read(state: &mut State, id: u32, waker: &Waker) {
        state.readers.insert(id, waker.clone());
    }

    /// Registers the waker of connection `id`'s writer.
    pub(crate) fn want_write(state: &mut State, id: u32, waker: &Waker) {
        state.writers.insert(id, waker.clone());
    }

    /// Forgets a connection's wakers (the stream is gone).
    pub(crate) fn forget(state: &mut State, id: u32) {
        state.readers.remove(&id);
        state.writers.remove(&id);
    }

    /// Delivers events, then makes sure the writer and the timer know about new work.
    fn after(&self, state: &mut State) {
        if state.close_when_idle && state.ch.closed().is_none() && state.ch.connection_count() == 0
        {
            state.ch.close();
        }
        while let Some(event) = state.ch.poll_event() {
            self.deliver(state, event);
        }
        if state.ch.transmit_len() > 0 {
            self.shared.transmit.notify_one();
        }
        let next = state.ch.poll_timeout();
        if let Some(t) = next
            && state.timer_at.is_none_or(|armed| t < armed)
        {
            self.shared.timer.notify_one();
        }
    }

    fn deliver(&self, state: &mut State, event: Event) {
        match event {
            Event::Readable { conn } => {
                if let Some(w) = state.readers.remove(&conn) {
                    w.wake();
                }
            }
            Event::Writable => {
                for (_, w) in state.writers.drain() {
                    w.wake();
                }
            }
            Event::ConnWritable { conn } => {
                if let Some(w) = state.writers.remove(&conn) {
                    w.wake();
                }
            }
            Event::DialSucceeded { conn, circuit_id } => {
                let taken = state
                    .opening
                    .remove(&conn)
                    .map(|tx| tx.send(Ok(circuit_id)).is_ok());
                if taken != Some(true) {
                    // Nobody waits any more (the dial was cancelled): close it.
                    state.ch.close_conn(Instant::now(), conn, "dial cancelled");
                }
            }
            Event::DialFailed { conn, error } => {
                if let Some(tx) = state.opening.remove(&conn) {
                    let _ = tx.send(Err(error));
                }
            }
            Event::BindSucceeded { bind } => {
                state.binds.entry(bind).or_default();
                if let Some(tx) = state.opening.remove(&bind)
                    && tx.send(Ok(None)).is_err()
                {
                    state.binds.remove(&bind);
                    state.ch.unbind(bind, "");
                }
            }
            Event::BindFailed { bind, error } => {
                if let Some(tx) = state.opening.remove(&bind) {
                    let _ = tx.send(Err(error));
                }
            }
            Event::TerminatorEstablished { bind } => {
                tracing::debug!(router = %self.shared.name, bind, "terminator established");
            }
            Event::BindClosed { bind, reason } => {
                let inbox = state.binds.entry(bind).or_default();
                inbox.closed = Some(reason);
                if let Some(w) = inbox.waker.take() {
                    w.wake();
                }
            }
            Event::IncomingDial {
                bind,
                dial,
                request,
            } => match state.binds.get_mut(&bind) {
                Some(inbox) if inbox.dials.len() < BIND_QUEUE => {
                    tracing::trace!(router = %self.shared.name, bind, queued = inbox.dials.len(), "incoming dial");
                    inbox.dials.push_back((dial, request));
                    if let Some(w) = inbox.waker.take() {
                        w.wake();
                    }
                }
                Some(_) => {
                    tracing::warn!(router = %self.shared.name, bind, "rejecting a dial: the host has {BIND_QUEUE} dials waiting to be accepted");
                    state.ch.reject(
                        bind,
                        &request,
                        "the host is not accepting connections fast enough",
                    );
                }
                None => state.ch.reject(bind, &request, "not listening"),
            },
            Event::TokenUpdated { result } => match result {
                Ok(()) => {
                    tracing::debug!(router = %self.shared.name, "router accepted the refreshed token")
                }
                Err(reason) => {
                    tracing::warn!(router = %self.shared.name, %reason, "router refused the refreshed token")
                }
            },
            Event::Connected(_) => {}
            Event::Latency(rtt) => {
                tracing::trace!(router = %self.shared.name, ?rtt, "latency probe");
            }
            Event::Closed(why) => {
                if !self.shared.closed.send_replace(true) {
                    if matches!(why, ChannelClosed::Local) {
                        // Ours: a retired pool or an explicit close, not news to the operator.
                        tracing::debug!(router = %self.shared.name, "edge router connection closed locally");
                    } else {
                        tracing::warn!(router = %self.shared.name, reason = %error_chain(&why), "edge router connection closed");
                    }
                }
                for (_, w) in state.readers.drain() {
                    w.wake();
                }
                for (_, w) in state.writers.drain() {
                    w.wake();
                }
                for (_, tx) in state.opening.drain() {
                    let _ = tx.send(Err(OpenError::ChannelClosed));
                }
                for inbox in state.binds.values_mut() {
                    if inbox.closed.is_none() {
                        inbox.closed = Some(why.to_string());
                    }
                    if let Some(w) = inbox.waker.take() {
                        w.wake();
                    }
                }
                self.shared.transmit.notify_one();
                self.shared.timer.notify_one();
            }
        }
    }

    /// Maps a failed open to the router error callers see.
    pub(crate) fn open_error(&self, e: OpenError) -> RouterError {
        let router = self.shared.name.clone();
        match e {
            OpenError::Refused(failure) => RouterError::Dial { router, failure },
            OpenError::BindRefused(reason) => RouterError::Refused { router, reason },
            OpenError::TimedOut(after) => RouterError::Timeout { router, after },
            OpenError::Protocol(source) => RouterError::Protocol { router, source },
            OpenError::ChannelClosed => RouterError::Closed { router },
            OpenError::TooManyDials(waiting) => RouterError::Busy { router, waiting },
        }
    }
}

async fn writer_task<W: tokio::io::AsyncWrite + Unpin>(mut wr: W, conn: RouterConnection) {
    loop {
        let next = conn.with(|s| (s.ch.poll_transmit(WRITE_BATCH), s.ch.closed().is_some()));
        let (chunk, closed) = match next {
            Ok(v) => v,
            Err(_) => break,
        };
        match chunk {
            Some(bytes) => {
                if let Err(e) = wr.write_all(&bytes).await {
                    let _ = conn.with(|s| s.ch.transport_closed(&format!("write failed: {e}")));
                    break;
                }
                // Flush only when nothing else is ready, so bursts coalesce into TLS records.
                let more = conn
                    .lock()
                    .map(|s| s.ch.transmit_len() > 0)
                    .unwrap_or(false);
                if !more && wr.flush().await.is_err() {
                    let _ = conn.with(|s| s.ch.transport_closed("flush failed"));
                    break;
                }
            }
            None if closed => break,
            None => conn.shared.transmit.notified().await,
        }
    }
    let _ = wr.shutdown().await;
}

async fn reader_task<R: tokio::io::AsyncRead + Unpin>(mut rd: R, conn: RouterConnection) {
    let mut buf = BytesMut::with_capacity(64 * 1024);
    let mut closed = conn.shared.closed.subscribe();
    let why = loop {
        buf.clear();
        let read = tokio::select! {
            r = rd.read_buf(&mut buf) => r,
            _ = closed.wait_for(|c| *c) => return,
        };
        match read {
            Ok(0) => break "router closed the connection".to_string(),
            Ok(_) => {
                let now = Instant::now();
                if conn.with(|s| s.ch.handle_input(now, &buf)).is_err() {
                    return;
                }
            }
            Err(e) => break format!("read error: {e}"),
        }
    };
    let _ = conn.with(|s| s.ch.transport_closed(&why));
}

async fn timer_task(conn: RouterConnection) {
    loop {
        let next = conn.with(|s| {
            let t = s.ch.poll_timeout();
            s.timer_at = t;
            (t, s.ch.closed().is_some())
        });
        let (deadline, closed) = match next {
            Ok(v) => v,
            Err(_) => return,
        };
        if closed {
            return;
        }
        match deadline {
            Some(at) => {
                tokio::select! {
                    _ = tokio::time::sleep_until(at.into()) => {
                        let now = Instant::now();
                        let _ = conn.with(|s| s.ch.handle_timeout(now));
                    }
                    _ = conn.shared.timer.notified() => {}
                }
            }
            None => conn.shared.timer.notified().await,
        }
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
        let now = Instant::now();
        if conn.with(|s| s.ch.update_token(now, &token)).is_err() {
            return;
        }
    }
}

/// The wall clock in Unix milliseconds (xgress RTT stamps).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
