//! Per-flow relay tasks: dial the service, then move bytes between the flow's channels and the
//! Ziti stream.

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, mpsc};
use ziti_sdk::context::DialOptions;
use ziti_sdk::{ZitiContext, error_chain};

use super::{CHUNK, DatagramDown, UDP_IDLE};
use crate::stack::{FlowId, NetStack};

/// Bytes or an end, towards the client.
#[derive(Debug)]
pub(super) enum Down {
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
}

/// Moves client bytes of flow `id` into its channel while both have some; `false` once the
/// channel or the socket can no longer carry any.
pub(super) fn forward_up(
    stack: &mut NetStack,
    id: FlowId,
    tx: &mpsc::Sender<Bytes>,
    buf: &mut [u8],
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
    notify: Arc<Notify>,
) {
    // dial_with logs a failure with the service name and the reason.
    let stream = match ctx.dial_with(&service, &opts).await {
        Ok(s) => s,
        Err(_) => {
            let _ = down.send(Down::Abort).await;
            notify.notify_one();
            return;
        }
    };
    let (mut rd, mut wr) = tokio::io::split(stream);
    let upload = async {
        while let Some(chunk) = up.recv().await {
            tracing::trace!(service, n = chunk.len(), "writing to the service");
            notify.notify_one(); // room in the channel again
            wr.write_all(&chunk).await?;
        }
        wr.shutdown().await
    };
    let download = async {
        let mut buf = vec![0u8; CHUNK];
        loop {
            let n = rd.read(&mut buf).await?;
            let msg = if n == 0 {
                Down::Fin
            } else {
                Down::Data(Bytes::copy_from_slice(&buf[..n]))
            };
            let fin = matches!(msg, Down::Fin);
            if down.send(msg).await.is_err() {
                return Ok(());
            }
            notify.notify_one();
            if fin {
                return Ok::<(), std::io::Error>(());
            }
        }
    };
    let (u, d) = tokio::join!(upload, download);
    if let Err(e) = u.and(d) {
        tracing::debug!(service, error = %error_chain(&e), "flow ended with an error");
        let _ = down.send(Down::Abort).await;
        notify.notify_one();
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
) {
    // dial_with logs a failure with the service name and the reason.
    let Ok(stream) = ctx.dial_with(&service, &opts).await else {
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
                }
                None => break,
            },
            read = rd.read(&mut buf) => match read {
                Ok(n) if n > 0 => {
                    let reply = Bytes::copy_from_slice(&buf[..n]);
                    if down.send((intercepted, client, reply)).await.is_err() {
                        break;
                    }
                }
                _ => break,
            },
            _ = tokio::time::sleep(UDP_IDLE) => break,
        }
    }
    tracing::debug!(service, %client, "UDP flow ended");
}
