//! Relaying flows: a TCP flow's socket and its Ziti stream, moved by the driver when either
//! side wakes it (no task per flow once dialed); a UDP flow's relay task.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot};
use ziti_sdk::context::DialOptions;
use ziti_sdk::{EdgeStream, ZitiContext, error_chain};

use super::hosting::UDP_MAX;
use super::status::{Counters, DialOutcome};
use super::{CHUNK, DatagramDown, UDP_IDLE};

use crate::stack::{FlowId, NetStack, NewFlow};

/// One TCP flow as the driver sees it: the dial in flight, then the Ziti stream it relays to
/// and from the flow's socket directly, with no task, channel or buffer of its own in between.
/// The stream and the stack wake the driver for this flow only (its [`FlowWake`]).
pub(super) struct FlowPipe {
    /// The dial's outcome arrives here (the sender dropped: it failed).
    dial: Option<oneshot::Receiver<EdgeStream>>,
    stream: Option<EdgeStream>,
    /// Client -> service is over (FIN passed on, or an error).
    up_done: bool,
    /// Service -> client is over.
    down_done: bool,
    /// A chunk from the service that did not fit the socket yet.
    pending: Option<Bytes>,
    wake: Arc<FlowWake>,
    waker: Waker,
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

/// Queues one flow for the driver when its stream or its dial has news, at most once until
/// the driver looks.
pub(super) struct FlowWake {
    id: FlowId,
    queued: AtomicBool,
    tx: mpsc::UnboundedSender<FlowId>,
}

impl Wake for FlowWake {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            let _ = self.tx.send(self.id);
        }
    }
}

impl FlowPipe {
    /// The pipe of a new flow, and what its dial task needs: where to put the stream and whom
    /// to wake.
    pub(super) fn new(
        flow: &NewFlow,
        service: String,
        wake_tx: mpsc::UnboundedSender<FlowId>,
    ) -> (FlowPipe, oneshot::Sender<EdgeStream>, Waker) {
        let (dialed_tx, dialed_rx) = oneshot::channel();
        let wake = Arc::new(FlowWake {
            id: flow.id,
            queued: AtomicBool::new(false),
            tx: wake_tx,
        });
        let waker = Waker::from(wake.clone());
        let pipe = FlowPipe {
            dial: Some(dialed_rx),
            stream: None,
            up_done: false,
            down_done: false,
            pending: None,
            wake,
            waker: waker.clone(),
            client: flow.src,
            intercepted: flow.dst,
            service,
            bytes_up: 0,
            bytes_down: 0,
        };
        (pipe, dialed_tx, waker)
    }

    /// The dial succeeded and the client's handshake was let through.
    pub(super) fn is_dialed(&self) -> bool {
        self.stream.is_some()
    }

    /// Moves what can move between flow `id`'s socket and its stream; `false` once the flow is
    /// over (refused, expired or closed) and the driver should forget it.
    pub(super) fn relay(&mut self, stack: &mut NetStack, id: FlowId, counters: &Counters) -> bool {
        self.wake.queued.store(false, Ordering::Release);
        if self.stream.is_none() && !self.take_dial(stack, id) {
            return false;
        }
        let Some(stream) = self.stream.as_mut() else {
            // Still dialing: the SYN stays held.
            return true;
        };
        let mut cx = Context::from_waker(&self.waker);

        // Client -> service: straight from the socket's buffer into the stream, only as far
        // as the stream takes (else the client's window closes).
        while !self.up_done {
            let wrote = stack.recv_with(id, |data| {
                match Pin::new(&mut *stream).poll_write(&mut cx, data) {
                    Poll::Ready(Ok(n)) => (n, Ok(n)),
                    Poll::Ready(Err(e)) => (0, Err(e)),
                    // Woken when the stream has room again.
                    Poll::Pending => (0, Ok(0)),
                }
            });
            match wrote {
                Ok(Some(Ok(0))) => break,
                Ok(Some(Ok(n))) => {
                    tracing::trace!(?id, n, "client -> service");
                    self.bytes_up = self.bytes_up.saturating_add(n as u64);
                    counters.add_up(n);
                }
                Ok(None) => {
                    if stack.client_finished(id) {
                        // Half-close: the service reads end-of-file and may still answer.
                        if let Poll::Ready(Err(e)) = Pin::new(&mut *stream).poll_shutdown(&mut cx) {
                            tracing::debug!(service = self.service, error = %error_chain(&e), "could not pass on the client's FIN");
                        }
                        self.up_done = true;
                    }
                    break;
                }
                Ok(Some(Err(e))) => {
                    tracing::debug!(service = self.service, error = %error_chain(&e), "flow ended with an error");
                    stack.abort(id);
                    self.up_done = true;
                    self.down_done = true;
                }
                Err(_) => self.up_done = true,
            }
        }

        // Service -> client: each chunk as the stream received it, only as far as the socket
        // has room.
        while !self.down_done {
            if let Some(mut chunk) = self.pending.take() {
                match stack.send(id, &chunk) {
                    Ok(n) => {
                        self.bytes_down = self.bytes_down.saturating_add(n as u64);
                        counters.add_down(n);
                        if n < chunk.len() {
                            self.pending = Some(chunk.split_off(n));
                            break;
                        }
                    }
                    Err(_) => {
                        self.down_done = true;
                        break;
                    }
                }
            }
            let room = stack.send_capacity(id);
            if room == 0 {
                // Woken by the stack when the client acknowledges.
                break;
            }
            match stream.poll_read_chunk(&mut cx, room.min(CHUNK)) {
                Poll::Ready(Ok(Some(chunk))) => {
                    tracing::trace!(?id, n = chunk.len(), "service -> client");
                    self.pending = Some(chunk);
                }
                Poll::Ready(Ok(None)) => {
                    tracing::trace!(?id, "service finished sending");
                    stack.finish(id);
                    self.down_done = true;
                }
                Poll::Ready(Err(e)) => {
                    tracing::debug!(service = self.service, error = %error_chain(&e), "flow ended with an error");
                    stack.abort(id);
                    self.down_done = true;
                }
                Poll::Pending => break,
            }
        }
        !stack.is_closed(id)
    }

    /// Looks at the dial of a held flow: accepts the client's handshake when it succeeded,
    /// refuses it (RST) when it failed. `false` when the flow is over.
    fn take_dial(&mut self, stack: &mut NetStack, id: FlowId) -> bool {
        let Some(dial) = self.dial.as_mut() else {
            return false;
        };
        match dial.try_recv() {
            Ok(stream) => {
                self.dial = None;
                self.stream = Some(stream);
                // `false`: the handshake expired while dialing (the client gave up).
                stack.accept_flow(id)
            }
            Err(oneshot::error::TryRecvError::Closed) => {
                // The dial failed (logged with the service and the reason): RST the SYN, so
                // the application's connect() is refused.
                self.dial = None;
                stack.refuse_flow(id);
                false
            }
            // Still dialing, unless the held SYN expired meanwhile.
            Err(oneshot::error::TryRecvError::Empty) => stack.endpoints(id).is_some(),
        }
    }
}

/// Dials the service of one TCP flow and hands the stream to its pipe.
pub(super) async fn dial_flow(
    ctx: ZitiContext,
    service: String,
    opts: DialOptions,
    dialed: oneshot::Sender<EdgeStream>,
    waker: Waker,
    counters: Arc<Counters>,
) {
    // dial_with logs a failure with the service name and the reason.
    let result = ctx.dial_with(&service, &opts).await;
    counters.dialed(DialOutcome::of(&result));
    if let Ok(stream) = result {
        // If the flow is gone meanwhile, the stream comes back and is closed here.
        let _ = dialed.send(stream);
    }
    waker.wake();
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
    let (mut rd, mut wr) = stream.into_split();
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
            read = rd.read_chunk(UDP_MAX) => match read {
                Ok(Some(reply)) => {
                    let n = reply.len();
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
