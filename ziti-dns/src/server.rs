//! The tokio shell: UDP and TCP listeners on one address around [`DnsCore`].
//!
//! Intercepted names are answered inline on the receive loop. Forwarded
//! queries run as tasks, at most `max_in_flight` at once; beyond that the
//! client gets SERVFAIL immediately. Client TCP connections are bounded too and
//! closed when idle or when they send something unreadable.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, info, warn};

use crate::answer::{AnswerPolicy, DnsCore, ForwardRequest, Outcome};
use crate::config::{ConfigError, DnsConfig, Unanswerable};
use crate::forwarder::{ClientTransport, Forwarder};
use crate::table::DnsTable;
use crate::wire::rcode;

/// Largest DNS message.
const MAX_MESSAGE: usize = 65_535;
/// How often binding TCP to the UDP port chosen by the OS is retried (port 0 only).
const BIND_ATTEMPTS: usize = 16;
/// Pause after a failed accept (e.g. out of file descriptors) instead of spinning.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Why the server could not start or stopped.
///
/// Each variant says what failed; `source()` says why.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// Invalid configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A listener could not be bound.
    #[error("cannot bind DNS {proto} listener on {addr}")]
    Bind {
        /// "UDP" or "TCP".
        proto: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The upstream sockets could not be bound.
    #[error("cannot open upstream sockets")]
    Upstream(#[source] io::Error),
    /// The UDP socket failed for good.
    #[error("DNS UDP socket failed")]
    Udp(#[source] io::Error),
}

/// What every client-serving task shares.
#[derive(Debug)]
struct Context {
    core: DnsCore,
    forwarder: Option<Forwarder>,
    in_flight: Arc<Semaphore>,
    unanswerable: Option<Unanswerable>,
}

impl Context {
    /// The answer to a forwarded query, or what an unanswerable one gets (`None`: nothing).
    async fn forward(
        &self,
        req: &ForwardRequest,
        transport: ClientTransport,
        _permit: OwnedSemaphorePermit,
    ) -> Option<Vec<u8>> {
        let answer = match &self.forwarder {
            Some(f) => f.resolve(req, transport).await,
            None => return self.unanswerable(req, rcode::REFUSED),
        };
        match answer {
            Ok(bytes) => Some(bytes),
            Err(e) => {
                debug!(error = %e, "forwarding failed");
                self.unanswerable(req, rcode::SERVFAIL)
            }
        }
    }

    fn unanswerable(&self, req: &ForwardRequest, default: u8) -> Option<Vec<u8>> {
        match self.unanswerable {
            None => Some(req.error_reply(default)),
            Some(Unanswerable::Refused) => Some(req.error_reply(rcode::REFUSED)),
            Some(Unanswerable::Servfail) => Some(req.error_reply(rcode::SERVFAIL)),
            Some(Unanswerable::Timeout) => None,
        }
    }
}

/// A bound, not yet running DNS server.
#[derive(Debug)]
pub struct DnsServer {
    udp: Arc<UdpSocket>,
    tcp: TcpListener,
    local_addr: SocketAddr,
    ctx: Arc<Context>,
    tcp_slots: Arc<Semaphore>,
    tcp_idle: Duration,
}

impl DnsServer {
    /// Validates `config`, binds UDP and TCP on `config.listen` (the same port
    /// for both) and prepares the upstreams. Answers come from `table`, which
    /// should be built on the config's pools ([`DnsTable::from_config`]).
    pub async fn bind(config: &DnsConfig, table: DnsTable) -> Result<Self, ServerError> {
        config.validate()?;
        let (udp, tcp) = bind_pair(config.listen).await?;
        let local_addr = udp.local_addr().map_err(|source| ServerError::Bind {
            proto: "UDP",
            addr: config.listen,
            source,
        })?;
        let upstreams = config.resolve_upstreams()?;
        let forwarding = !upstreams.is_empty();
        if !forwarding {
            warn!("no upstream DNS resolver: names that are not intercepted get REFUSED");
        }
        let forwarder = match forwarding {
            true => Some(
                Forwarder::new(
                    upstreams.clone(),
                    config.upstream_timeout,
                    config.max_in_flight,
                )
                .await
                .map_err(ServerError::Upstream)?,
            ),
            false => None,
        };
        info!(%local_addr, ?upstreams, pool = %config.pool, ipv6_pool = ?config.ipv6_pool, "DNS server bound");
        let policy = AnswerPolicy {
            ttl: config.ttl,
            forwarding,
        };
        Ok(Self {
            udp: Arc::new(udp),
            tcp,
            local_addr,
            ctx: Arc::new(Context {
                core: DnsCore::new(table, policy),
                forwarder,
                in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
                unanswerable: config.unanswerable,
            }),
            tcp_slots: Arc::new(Semaphore::new(config.max_tcp_connections)),
            tcp_idle: config.tcp_idle_timeout,
        })
    }

    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves until the UDP socket fails. Dropping the future stops every
    /// task it started.
    pub async fn run(self) -> Result<(), ServerError> {
        let Self {
            udp,
            tcp,
            ctx,
            tcp_slots,
            tcp_idle,
            ..
        } = self;
        tokio::select! {
            r = udp_loop(udp, Arc::clone(&ctx)) => r,
            () = tcp_loop(tcp, ctx, tcp_slots, tcp_idle) => Ok(()),
        }
    }

    /// Runs the server on a task; it stops when the handle is dropped or shut down.
    pub fn spawn(self) -> RunningServer {
        let local_addr = self.local_addr;
        RunningServer {
            local_addr,
            task: tokio::spawn(self.run()),
        }
    }
}

/// A server running on a task (see [`DnsServer::spawn`]); stops on drop.
#[derive(Debug)]
pub struct RunningServer {
    local_addr: SocketAddr,
    task: JoinHandle<Result<(), ServerError>>,
}

impl RunningServer {
    /// The bound address.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops the server and every task it started.
    pub async fn shutdown(mut self) {
        self.task.abort();
        // Aborted (or finished): either way the task is gone.
        let _ = (&mut self.task).await;
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds UDP then TCP on the same address; with port 0, TCP gets the port the
/// OS gave UDP, retrying with a new port if TCP cannot have it.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), ServerError> {
    let attempts = if listen.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last = None;
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| ServerError::Bind {
                proto: "UDP",
                addr: listen,
                source,
            })?;
        let addr = udp.local_addr().map_err(|source| ServerError::Bind {
            proto: "UDP",
            addr: listen,
            source,
        })?;
        match TcpListener::bind(addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(source) => {
                last = Some(ServerError::Bind {
                    proto: "TCP",
                    addr,
                    source,
                })
            }
        }
    }
    Err(last.unwrap_or(ServerError::Bind {
        proto: "TCP",
        addr: listen,
        source: io::Error::from(io::ErrorKind::AddrInUse),
    }))
}

async fn udp_loop(udp: Arc<UdpSocket>, ctx: Arc<Context>) -> Result<(), ServerError> {
    let mut buf = vec![0u8; MAX_MESSAGE];
    let mut tasks = JoinSet::new();
    loop {
        let (len, peer) = match udp.recv_from(&mut buf).await {
            Ok(got) => got,
            // A previous reply's ICMP error, reported late: not this socket's failure.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) =>
            {
                continue;
            }
            Err(e) => return Err(ServerError::Udp(e)),
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        match ctx.core.handle(packet) {
            Outcome::Reply(reply) => send_udp(&udp, &reply, peer).await,
            Outcome::Drop => {}
            Outcome::Forward(req) => match Arc::clone(&ctx.in_flight).try_acquire_owned() {
                Ok(permit) => {
                    let (udp, ctx) = (Arc::clone(&udp), Arc::clone(&ctx));
                    tasks.spawn(async move {
                        if let Some(answer) = ctx.forward(&req, ClientTransport::Udp, permit).await
                        {
                            send_udp(&udp, &req.fit_udp(answer), peer).await;
                        }
                    });
                }
                Err(_) => send_udp(&udp, &req.error_reply(rcode::SERVFAIL), peer).await,
            },
        }
        // Reap finished forwarding tasks so the set stays as small as in-flight work.
        while tasks.try_join_next().is_some() {}
    }
}

async fn send_udp(udp: &UdpSocket, reply: &[u8], peer: SocketAddr) {
    if let Err(e) = udp.send_to(reply, peer).await {
        debug!(%peer, error = %e, "cannot send DNS reply");
    }
}

async fn tcp_loop(tcp: TcpListener, ctx: Arc<Context>, slots: Arc<Semaphore>, idle: Duration) {
    let mut conns = JoinSet::new();
    loop {
        match tcp.accept().await {
            Ok((stream, peer)) => match Arc::clone(&slots).try_acquire_owned() {
                Ok(permit) => {
                    let ctx = Arc::clone(&ctx);
                    conns.spawn(async move {
                        if let Err(e) = serve_tcp(stream, &ctx, idle).await {
                            debug!(%peer, error = %e, "DNS TCP connection ended");
                        }
                        drop(permit);
                    });
                }
                Err(_) => debug!(%peer, "too many DNS TCP connections, closing new one"),
            },
            Err(e) => {
                warn!(error = %e, "DNS TCP accept failed");
                tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
            }
        }
        while conns.try_join_next().is_some() {}
    }
}

/// Serves length-prefixed queries on one connection, one at a time, until the
/// client closes, idles out, or sends something unreadable.
async fn serve_tcp(mut stream: TcpStream, ctx: &Context, idle: Duration) -> io::Result<()> {
    let timed_out = || io::Error::from(io::ErrorKind::TimedOut);
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let len = match tokio::time::timeout(idle, stream.read_u16()).await {
            Ok(Ok(len)) => usize::from(len),
            Ok(Err(e)) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(Err(e)) => return Err(e),
            Err(_) => return Ok(()),
        };
        let Some(packet) = buf.get_mut(..len) else {
            return Ok(());
        };
        tokio::time::timeout(idle, stream.read_exact(packet))
            .await
            .map_err(|_| timed_out())??;
        let reply = match ctx.core.handle(packet) {
            Outcome::Reply(reply) => reply,
            Outcome::Drop => return Ok(()),
            Outcome::Forward(req) => match Arc::clone(&ctx.in_flight).try_acquire_owned() {
                Ok(permit) => match ctx.forward(&req, ClientTransport::Tcp, permit).await {
                    Some(answer) => answer,
                    // `--dnsUnanswerable timeout`: the client waits for nothing.
                    None => continue,
                },
                Err(_) => req.error_reply(rcode::SERVFAIL),
            },
        };
        let Ok(reply_len) = u16::try_from(reply.len()) else {
            return Ok(());
        };
        let mut frame = Vec::with_capacity(reply.len() + 2);
        frame.extend_from_slice(&reply_len.to_be_bytes());
        frame.extend_from_slice(&reply);
        tokio::time::timeout(idle, stream.write_all(&frame))
            .await
            .map_err(|_| timed_out())??;
    }
}
