//! The tokio upstream client: sends forwarded queries to the upstream resolvers
//! in order, over one shared UDP socket per address family, and fetches
//! truncated answers again over TCP.
//!
//! Every upstream query gets a fresh random id (never the client's); the answer
//! is accepted through [`crate::upstream::PendingTable`] only from the right upstream with that id
//! and the same question, then rewritten to the client's id.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{debug, trace, warn};

use crate::answer::ForwardRequest;
use crate::upstream::{AnswerMatch, PendingError, PendingTable, answer_matches};
use crate::wire::{self, RawHeader, rcode};

/// Largest DNS message (UDP datagram or TCP frame).
const MAX_MESSAGE: usize = 65_535;
/// Pause after an unexpected socket error before receiving again.
const RECEIVE_ERROR_PAUSE: Duration = Duration::from_millis(10);

/// Why a forwarded query got no usable answer.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ForwardError {
    /// No upstream is configured.
    #[error("no upstream resolver configured")]
    NoUpstream,
    /// Every upstream timed out, failed or answered SERVFAIL/REFUSED/NOTIMP.
    #[error("all {0} upstream resolvers failed")]
    AllFailed(usize),
}

/// Why one attempt at one upstream failed (logged, then the next one is tried).
#[derive(Debug, thiserror::Error)]
enum AttemptError {
    #[error("timed out")]
    Timeout,
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error(transparent)]
    Pending(#[from] PendingError),
    #[error("no socket for this address family")]
    NoSocket,
    #[error("answer over TCP does not match the query")]
    Mismatch,
}

/// How the client reached us: a TCP client is asked upstream over TCP directly
/// (it came to us over TCP because the answer is large).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientTransport {
    /// Datagram client.
    Udp,
    /// Stream client.
    Tcp,
}

/// An answer from an upstream, still carrying the upstream id.
#[derive(Debug)]
struct UpstreamAnswer {
    bytes: Vec<u8>,
    truncated: bool,
    rcode: u8,
}

type Waiters = PendingTable<oneshot::Sender<UpstreamAnswer>>;

#[derive(Debug)]
struct Shared {
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
    v4: Option<Arc<UdpSocket>>,
    v6: Option<Arc<UdpSocket>>,
    pending: Mutex<Waiters>,
}

impl Shared {
    fn pending(&self) -> MutexGuard<'_, Waiters> {
        // The table stays consistent across a panic elsewhere; keep using it.
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Aborts the receive tasks when the last [`Forwarder`] clone goes away.
#[derive(Debug)]
struct AbortOnDrop(Vec<JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Forwards queries to upstream resolvers. Cheap to clone; clones share sockets.
#[derive(Debug, Clone)]
pub struct Forwarder {
    shared: Arc<Shared>,
    _tasks: Arc<AbortOnDrop>,
}

/// Removes a pending entry if the query is abandoned (timeout, error or the
/// future dropped). Checks that the entry is still this query's: once matched,
/// the same (upstream, id) may already belong to another query.
struct PendingGuard<'a> {
    shared: &'a Shared,
    upstream: SocketAddr,
    id: u16,
    rx: oneshot::Receiver<UpstreamAnswer>,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.rx.close();
        let mut pending = self.shared.pending();
        pending.remove_if(self.upstream, self.id, |tx| tx.is_closed());
    }
}

impl Forwarder {
    /// Binds the upstream sockets (one per address family in use) and starts
    /// their receive tasks. Must run inside a tokio runtime.
    pub async fn new(
        upstreams: Vec<SocketAddr>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> io::Result<Self> {
        // A family that cannot be bound (e.g. no IPv6 in the namespace) only
        // makes its upstreams fail over; without any socket nothing works.
        let bind = |any: SocketAddr, wanted: bool| async move {
            if !wanted {
                return None;
            }
            match UdpSocket::bind(any).await {
                Ok(socket) => Some(Arc::new(socket)),
                Err(e) => {
                    warn!(%any, error = %e, "cannot bind upstream socket; upstreams of this family will fail");
                    None
                }
            }
        };
        let v4 = bind(
            SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0).into(),
            upstreams.iter().any(SocketAddr::is_ipv4),
        )
        .await;
        let v6 = bind(
            SocketAddrV6::new(Ipv6Addr::UNSPECIFIED, 0, 0, 0).into(),
            upstreams.iter().any(SocketAddr::is_ipv6),
        )
        .await;
        if v4.is_none() && v6.is_none() && !upstreams.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AddrNotAvailable,
                "no upstream socket could be bound",
            ));
        }
        let shared = Arc::new(Shared {
            upstreams,
            timeout,
            v4: v4.clone(),
            v6: v6.clone(),
            pending: Mutex::new(PendingTable::new(max_in_flight)),
        });
        let tasks = [v4, v6]
            .into_iter()
            .flatten()
            .map(|socket| tokio::spawn(receive_loop(socket, Arc::clone(&shared))))
            .collect();
        Ok(Self {
            shared,
            _tasks: Arc::new(AbortOnDrop(tasks)),
        })
    }

    /// The upstreams, in the order they are tried.
    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.shared.upstreams
    }

    /// Asks the upstreams in order until one answers usefully; returns that
    /// answer under the client's id. A truncated UDP answer is fetched again
    /// over TCP from the same upstream.
    pub async fn resolve(
        &self,
        req: &ForwardRequest,
        transport: ClientTransport,
    ) -> Result<Vec<u8>, ForwardError> {
        if self.shared.upstreams.is_empty() {
            return Err(ForwardError::NoUpstream);
        }
        for &upstream in &self.shared.upstreams {
            let attempt = match transport {
                ClientTransport::Udp => self.query_udp(upstream, req).await,
                ClientTransport::Tcp => self.query_tcp(upstream, req).await,
            };
            match attempt {
                Ok(answer)
                    if matches!(
                        answer.rcode,
                        rcode::SERVFAIL | rcode::REFUSED | rcode::NOTIMP
                    ) =>
                {
                    debug!(%upstream, rcode = answer.rcode, "upstream refused or failed, trying next");
                }
                Ok(mut answer) => {
                    wire::set_id(&mut answer.bytes, req.client_id);
                    return Ok(answer.bytes);
                }
                Err(e) => debug!(%upstream, error = %e, "upstream attempt failed, trying next"),
            }
        }
        Err(ForwardError::AllFailed(self.shared.upstreams.len()))
    }

    async fn query_udp(
        &self,
        upstream: SocketAddr,
        req: &ForwardRequest,
    ) -> Result<UpstreamAnswer, AttemptError> {
        let socket = match upstream {
            SocketAddr::V4(_) => self.shared.v4.as_ref(),
            SocketAddr::V6(_) => self.shared.v6.as_ref(),
        }
        .ok_or(AttemptError::NoSocket)?;
        let (tx, rx) = oneshot::channel();
        let id = self.shared.pending().insert(
            upstream,
            req.question.clone(),
            tx,
            rand::random::<u16>,
        )?;
        let mut guard = PendingGuard {
            shared: &self.shared,
            upstream,
            id,
            rx,
        };
        socket.send_to(&req.upstream_query(id), upstream).await?;
        let answer = match tokio::time::timeout(self.shared.timeout, &mut guard.rx).await {
            Ok(Ok(answer)) => answer,
            // Sender dropped (receive task ended) or timeout: both mean no answer.
            Ok(Err(_)) | Err(_) => return Err(AttemptError::Timeout),
        };
        drop(guard);
        if answer.truncated {
            debug!(%upstream, "truncated UDP answer, retrying over TCP");
            return self.query_tcp(upstream, req).await;
        }
        Ok(answer)
    }

    async fn query_tcp(
        &self,
        upstream: SocketAddr,
        req: &ForwardRequest,
    ) -> Result<UpstreamAnswer, AttemptError> {
        let id = rand::random::<u16>();
        let query = req.upstream_query(id);
        let exchange = async {
            let mut stream = TcpStream::connect(upstream).await?;
            let len = u16::try_from(query.len())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            let mut frame = Vec::with_capacity(query.len() + 2);
            frame.extend_from_slice(&len.to_be_bytes());
            frame.extend_from_slice(&query);
            stream.write_all(&frame).await?;
            let len = usize::from(stream.read_u16().await?);
            let mut answer = vec![0; len];
            stream.read_exact(&mut answer).await?;
            Ok::<_, io::Error>(answer)
        };
        let bytes = tokio::time::timeout(self.shared.timeout, exchange)
            .await
            .map_err(|_| AttemptError::Timeout)??;
        if !answer_matches(&bytes, id, &req.question) {
            return Err(AttemptError::Mismatch);
        }
        let header = RawHeader::read(&bytes).ok_or(AttemptError::Mismatch)?;
        Ok(UpstreamAnswer {
            truncated: header.truncated(),
            rcode: header.rcode(),
            bytes,
        })
    }
}

/// Hands each datagram on the upstream socket to the query it answers.
async fn receive_loop(socket: Arc<UdpSocket>, shared: Arc<Shared>) {
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (len, from) = match socket.recv_from(&mut buf).await {
            Ok(got) => got,
            Err(e) => {
                // ICMP errors (refused/reset) concern one datagram, not the
                // socket: keep receiving. Anything else may repeat, so pause
                // rather than spin.
                trace!(error = %e, "upstream socket receive error");
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                ) {
                    tokio::time::sleep(RECEIVE_ERROR_PAUSE).await;
                }
                continue;
            }
        };
        let Some(packet) = buf.get(..len) else {
            continue;
        };
        let matched = shared.pending().match_answer(from, packet);
        match matched {
            AnswerMatch::Matched {
                value,
                truncated,
                rcode,
            } => {
                // The waiter may have timed out just now; then nobody needs it.
                let _ = value.send(UpstreamAnswer {
                    bytes: packet.to_vec(),
                    truncated,
                    rcode,
                });
            }
            AnswerMatch::Rejected(why) => debug!(%from, ?why, "ignored packet on upstream socket"),
        }
    }
}
