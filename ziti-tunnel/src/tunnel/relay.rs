//! Per-flow relay tasks: dial the service, then move bytes between the flow's channels and the
//! Ziti stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use ziti_sdk::context::DialOptions;
use ziti_sdk::{ZitiContext, error_chain};

use super::status::{Counters, DialOutcome};
use super::{CHUNK, DatagramDown, UDP_IDLE};

/// Smallest read from a Ziti stream (what an idle connection waits with).
const MIN_READ: usize = 2 * 1024;
use crate::stack::{FlowId, NetStack};

/// Bytes or an end, towards the client.
#[derive(Debug)]
pub(super) enum Down {
    /// The service answered the dial: complete the client's handshake.
    Dialed,
    Data(Bytes),
    Fin,
    Abort,
}

/// The driver's end of one flow.
pub(super) struct FlowPipe {
    pub(super) up: Option<mpsc::Sender<Bytes>>,
    pub(super) down: mpsc::Receiver<Down>,
    pub(super) pending: Option<Bytes>,
    pub(super) down_done: bool,
    /// The dial succeeded and the handshake was let through.
    pub(super) dialed: bool,
    pub(super) waker: FlowWaker,
    /// The client's address.
    pub(super) client: SocketAddr,
    /// The address the client connected to.
    pub(super) intercepted: SocketAddr,
    /// The service dialed for it.
    pub(super) service: String,
    /// Bytes taken from the client towards the service.
    pub(super) bytes_up: u64,
    /// Bytes from the service handed to the client's socket.
    pub(super) bytes_down: u64,
}

/// Tells the driver that one flow's relay has news, at most once until the driver looks.
#[derive(Clone)]
pub(super) struct FlowWaker {
    id: FlowId,
    queued: Arc<AtomicBool>,
    tx: mpsc::UnboundedSender<FlowId>,
}

impl FlowWaker {
    pub(super) fn new(id: FlowId, tx: mpsc::UnboundedSender<FlowId>) -> Self {
        FlowWaker {
            id,
            queued: Arc::new(AtomicBool::new(false)),
            tx,
        }
    }

    /// Queues the flow for the driver unless it is queued already (so the queue holds each
    /// flow at most once).
    pub(super) fn wake(&self) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(self.id);
        }
    }

    /// The driver is looking at the flow now.
    pub(super) fn clear(&self) {
        self.queued.store(false, Ordering::Release);
    }
}

/// Moves client bytes of flow `id` into its channel while both have some, adding them to
/// `moved`; `false` once the channel or the socket can no longer carry any.
pub(super) fn forward_up(
    stack: &mut NetStack,
    id: FlowId,
    tx: &mpsc::Sender<Bytes>,
    buf: &mut [u8],
    moved: &mut u64,
) -> bool {
    loop {
        let permit = match tx.try_reserve() {
            Ok(p) => p,
            Err(mpsc::error::TrySendError::Full(())) => return true,
            Err(mpsc::error::TrySendError::Closed(())) => return false,
        };
        match stack.recv(id, buf) {
            Ok(0) => return true,
            Ok(n) => {
                tracing::trace!(?id, n, "client -> service");
                *moved = moved.saturating_add(u64::try_from(n).unwrap_or(u64::MAX));
                permit.send(Bytes::copy_from_slice(&buf[..n]))
            }
            Err(_) => return false,
        }
    }
}

/// One flow: dial the service, then move bytes both ways until both directions end.
pub(super) async fn relay_flow(
    ctx: ZitiContext,
    service: String,
    opts: DialOptions,
    mut up: mpsc::Receiver<Bytes>,
    down: mpsc::Sender<Down>,
    waker: FlowWaker,
    counters: Arc<Counters>,
) {
    // dial_with logs a failure with the service name and the reason.
    let dialed = ctx.dial_with(&service, &opts).await;
    counters.dialed(DialOutcome::of(&dialed));
    let stream = match dialed {
        Ok(s) => s,
        Err(_) => {
            let _ = down.send(Down::Abort).await;
            waker.wake();
            return;
        }
    };
    if down.send(Down::Dialed).await.is_err() {
        return;
    }
    waker.wake();
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upload = async {
        while let Some(chunk) = up.recv().await {
            tracing::trace!(service, n = chunk.len(), "writing to the service");
            waker.wake(); // room in the channel again
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    };
    let download = async {
        // The read buffer grows while reads fill it and shrinks back when they do not, so an
        // idle connection waits with a small one; each chunk goes down without another copy.
        let mut size = MIN_READ;
        loop {
            let mut buf = BytesMut::with_capacity(size);
            let n = rd.read_buf(&mut buf).await?;
            size = if n == size {
                (size * 2).min(CHUNK)
            } else {
                (size / 2).max(MIN_READ)
            };
            let msg = if n == 0 {
                Down::Fin
            } else {
                Down::Data(buf.freeze())
            };
            let fin = matches!(msg, Down::Fin);
            if down.send(msg).await.is_err() {
                return Ok(());
            }
            waker.wake();
            if fin {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let (u, d) = tokio::join!(upload, download);
    if let Err(e) = u.and(d) {
        tracing::debug!(service, error = %error_chain(&e), "flow ended with an error");
        let _ = down.send(Down::Abort).await;
        waker.wake();
    }
}

/// One UDP flow: dial the service, then each datagram is one Data message each way, until the
/// flow is idle for [`UDP_IDLE`].
pub(super) async fn relay_udp(
    ctx: ZitiContext,
    service: String,
    opts: DialOptions,
    (client, intercepted): (SocketAddr, SocketAddr),
    mut up: mpsc::Receiver<Bytes>,
    down: mpsc::Sender<DatagramDown>,
    counters: Arc<Counters>,
) {
    // dial_with logs a failure with the service name and the reason.
    let dialed = ctx.dial_with(&service, &opts).await;
    counters.dialed(DialOutcome::of(&dialed));
    let Ok(stream) = dialed else {
        return;
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let mut buf = vec![0u8; 65536];
    loop {
        tokio::select! {
            datagram = up.recv() => match datagram {
                Some(d) => {
                    if wr.write_all(&d).await.is_err() {
                        break;
                    }
                    counters.add_up(d.len());
                }
                None => break,
            },
            read = rd.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let reply = Bytes::copy_from_slice(&buf[..n]);
                    if down.send((intercepted, client, reply)).await.is_err() {
                        break;
                    }
                    counters.add_down(n);
                }
                _ => break,
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    tracing::debug!(service, %client, "UDP flow ended");
}
