//! [`EdgeStream`]: one edge connection as a tokio byte stream.
//!
//! Reads come from the connection's bounded inbound queue (filled by the router reader task);
//! writes become Data frames on the router's bounded outbound queue, so a full queue makes
//! `poll_write` return `Pending` rather than buffer. `shutdown()` sends FIN (half-close): the peer
//! sees end-of-file but can still answer. Dropping the stream closes the connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::mpsc;
use tokio_util::sync::PollSender;

use crate::channel::Message;
use crate::edge::{ConnEvent, ConnState, EdgeConn};

use super::RouterError;
use super::connection::RouterConnection;

/// Largest plaintext carried by one Data frame we send.
pub(crate) const MAX_DATA_BODY: usize = 32 * 1024;

/// Who is on the other end of an accepted connection (from the router's Dial).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// Caller id the dialer sent (header 1008), if any.
    pub caller_id: Option<String>,
    /// Dialing identity id (header 1034, v2.0+ routers).
    pub dialer_identity_id: Option<String>,
    /// Dialing identity name (header 1035, v2.0+ routers).
    pub dialer_identity_name: Option<String>,
    /// Fabric circuit id (header 1026).
    pub circuit_id: Option<String>,
    /// App data the dialer attached (header 1011).
    pub app_data: Option<Bytes>,
}

/// A connection to (or from) a Ziti service, usable as `AsyncRead + AsyncWrite`.
///
/// The protocol state (FIN, close, end-to-end encryption, multipart) lives in the pure
/// [`EdgeConn`]; this type only moves its messages between tokio and the router channel.
pub struct EdgeStream {
    conn: RouterConnection,
    edge: EdgeConn,
    service: String,
    inbound: mpsc::Receiver<Message>,
    outbound: PollSender<Message>,
    pending: Bytes,
    pending_parts: std::collections::VecDeque<Bytes>,
    read_eof: bool,
    peer_closed: bool,
    peer: PeerInfo,
}

impl std::fmt::Debug for EdgeStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeStream")
            .field("service", &self.service)
            .field("router", &self.conn.name())
            .field("edge", &self.edge)
            .finish_non_exhaustive()
    }
}

impl EdgeStream {
    /// Wraps an established connection whose id is registered on `conn` (its protocol messages,
    /// e.g. the stream header, already sent).
    pub(crate) fn new(
        conn: RouterConnection,
        edge: EdgeConn,
        service: &str,
        inbound: mpsc::Receiver<Message>,
        peer: PeerInfo,
    ) -> Self {
        EdgeStream {
            outbound: PollSender::new(conn.outbound()),
            conn,
            edge,
            service: service.to_string(),
            inbound,
            pending: Bytes::new(),
            pending_parts: Default::default(),
            read_eof: false,
            peer_closed: false,
            peer,
        }
    }

    /// The service this stream belongs to.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The edge connection id on its router channel.
    pub fn conn_id(&self) -> u32 {
        self.edge.conn_id()
    }

    /// Name of the router carrying this stream.
    pub fn router(&self) -> &str {
        self.conn.name()
    }

    /// `true` if the data is end-to-end encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.edge.is_encrypted()
    }

    /// The peer, for accepted streams (only the circuit id for dialed ones).
    pub fn peer(&self) -> &PeerInfo {
        &self.peer
    }

    fn sequenced(&self, mut msg: Message) -> Message {
        msg.sequence = self.conn.next_sequence();
        msg
    }

    /// Feeds one inbound message to the state machine and queues what it yields.
    fn absorb(&mut self, msg: Message) -> io::Result<()> {
        let events = self.edge.handle(&msg).map_err(|e| {
            self.read_eof = true;
            io::Error::new(io::ErrorKind::InvalidData, e)
        })?;
        for event in events {
            match event {
                ConnEvent::Data(bytes) => self.pending_parts.push_back(bytes),
                ConnEvent::Fin => self.read_eof = true,
                ConnEvent::Closed(reason) => {
                    tracing::debug!(service = %self.service, ?reason, "closed by the peer");
                    self.read_eof = true;
                    self.peer_closed = true;
                }
                ConnEvent::Connected { .. } => {}
            }
        }
        Ok(())
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                let chunk = self.pending.split_to(n);
                buf.put_slice(&chunk);
                return Poll::Ready(Ok(()));
            }
            if let Some(next) = self.pending_parts.pop_front() {
                self.pending = next;
                continue;
            }
            if self.read_eof {
                return Poll::Ready(Ok(()));
            }
            match ready!(self.inbound.poll_recv(cx)) {
                Some(msg) => self.absorb(msg)?,
                None => {
                    self.read_eof = true;
                    return Poll::Ready(Err(lost(&self.conn, io::ErrorKind::ConnectionAborted)));
                }
            }
        }
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        ready!(self.outbound.poll_reserve(cx)).map_err(|_| broken(&self.conn))?;
        let n = buf.len().min(MAX_DATA_BODY);
        let frame = self
            .edge
            .send(&buf[..n])
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let frame = self.sequenced(frame);
        self.outbound
            .send_item(frame)
            .map_err(|_| broken(&self.conn))?;
        Poll::Ready(Ok(n))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task flushes TLS after every batch.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if matches!(
            self.edge.state(),
            ConnState::LocalFinSent | ConnState::Closed
        ) {
            return Poll::Ready(Ok(()));
        }
        ready!(self.outbound.poll_reserve(cx)).map_err(|_| broken(&self.conn))?;
        let fin = self
            .edge
            .close_write()
            .map_err(|e| io::Error::new(io::ErrorKind::BrokenPipe, e))?;
        let fin = self.sequenced(fin);
        self.outbound
            .send_item(fin)
            .map_err(|_| broken(&self.conn))?;
        Poll::Ready(Ok(()))
    }
}

impl Drop for EdgeStream {
    fn drop(&mut self) {
        self.conn.unregister(self.edge.conn_id());
        if self.peer_closed {
            return;
        }
        let msg = self.edge.close("closed");
        if let Err(msg) = self.conn.try_send_or_return(msg) {
            // Queue full: finish the close in the background rather than leak the circuit.
            let conn = self.conn.clone();
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    let _ = conn.send(msg).await;
                });
            }
        }
    }
}

fn broken(conn: &RouterConnection) -> io::Error {
    lost(conn, io::ErrorKind::BrokenPipe)
}

/// The router channel under the stream is gone: an I/O error of `kind` carrying
/// [`RouterError::Closed`].
fn lost(conn: &RouterConnection, kind: io::ErrorKind) -> io::Error {
    io::Error::new(
        kind,
        RouterError::Closed {
            router: conn.name().to_string(),
        },
    )
}
