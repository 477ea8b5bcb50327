//! [`EdgeStream`]: one edge connection as a tokio byte stream.
//!
//! Reads take what the channel buffered for this connection; when there is nothing, the stream
//! registers its waker and the router reader wakes exactly this stream when data, FIN or the
//! end arrives. Writes become Data messages in the channel's bounded transmit buffer; when it
//! is full `poll_write` returns `Pending` until the writer task drained it. `shutdown()` sends
//! FIN (half-close): the peer reads end-of-file and can still answer. Dropping the stream (both
//! halves, after [`EdgeStream::into_split`]) closes the connection.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::edge::{ConnClosed, Recv, SendError};

use super::connection::RouterConnection;

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

/// Why a stream operation failed; the `io::Error`s of [`EdgeStream`] carry it as their inner
/// error (`io::Error::get_ref()` / `downcast`).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// The connection ended abnormally (overflow, protocol error, router lost).
    #[error("connection to service {service} through edge router {router} ended")]
    Ended {
        /// Service.
        service: String,
        /// Router.
        router: String,
        /// Why.
        #[source]
        source: ConnClosed,
    },
    /// Sending failed.
    #[error("cannot send to service {service} through edge router {router}")]
    Send {
        /// Service.
        service: String,
        /// Router.
        router: String,
        /// Why.
        #[source]
        source: SendError,
    },
}

/// The connection both halves share; its drop closes the connection.
#[derive(Debug)]
struct Inner {
    conn: RouterConnection,
    id: u32,
    service: String,
    encrypted: bool,
    peer: PeerInfo,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let id = self.id;
        let _ = self.conn.with(|s| {
            RouterConnection::forget(s, id);
            s.ch.close_conn(Instant::now(), id, "closed");
        });
    }
}

impl Inner {
    fn poll_read(&self, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let id = self.id;
        let got = self.conn.with(|s| {
            let r = s.ch.recv(Instant::now(), id, buf.remaining());
            if matches!(r, Recv::WouldBlock) {
                RouterConnection::want_read(s, id, cx.waker());
            }
            r
        });
        match got {
            Err(_) => Poll::Ready(Err(
                self.ended(ConnClosed::Channel(crate::edge::ChannelClosed::Local))
            )),
            Ok(Recv::Data(bytes)) => {
                buf.put_slice(&bytes);
                Poll::Ready(Ok(()))
            }
            Ok(Recv::WouldBlock) => Poll::Pending,
            Ok(Recv::Fin) => Poll::Ready(Ok(())),
            // An orderly close by the peer reads as end-of-file, like a TCP FIN then RST-free
            // close; anything else is an error that says why.
            Ok(Recv::Closed(ConnClosed::ByPeer(reason))) => {
                tracing::debug!(service = %self.service, %reason, "closed by the peer");
                Poll::Ready(Ok(()))
            }
            Ok(Recv::Closed(other)) => Poll::Ready(Err(self.ended(other))),
        }
    }

    /// The next chunk as the channel holds it (at most `max` bytes, no copy); `None` at
    /// end-of-stream.
    fn poll_chunk(&self, cx: &mut Context<'_>, max: usize) -> Poll<io::Result<Option<Bytes>>> {
        let id = self.id;
        let got = self.conn.with(|s| {
            let r = s.ch.recv(Instant::now(), id, max.max(1));
            if matches!(r, Recv::WouldBlock) {
                RouterConnection::want_read(s, id, cx.waker());
            }
            r
        });
        match got {
            Err(_) => Poll::Ready(Err(
                self.ended(ConnClosed::Channel(crate::edge::ChannelClosed::Local))
            )),
            Ok(Recv::Data(bytes)) => Poll::Ready(Ok(Some(bytes))),
            Ok(Recv::WouldBlock) => Poll::Pending,
            Ok(Recv::Fin) => Poll::Ready(Ok(None)),
            Ok(Recv::Closed(ConnClosed::ByPeer(reason))) => {
                tracing::debug!(service = %self.service, %reason, "closed by the peer");
                Poll::Ready(Ok(None))
            }
            Ok(Recv::Closed(other)) => Poll::Ready(Err(self.ended(other))),
        }
    }

    fn poll_write(&self, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        if data.is_empty() {
            return Poll::Ready(Ok(0));
        }
        let id = self.id;
        let sent = self.conn.with(|s| {
            let r = s.ch.send(Instant::now(), id, data);
            if matches!(r, Err(SendError::WouldBlock)) {
                RouterConnection::want_write(s, id, cx.waker());
            }
            r
        });
        match sent {
            Err(_) => Poll::Ready(Err(self.send_failed(SendError::NotWritable))),
            Ok(Ok(n)) => Poll::Ready(Ok(n)),
            Ok(Err(SendError::WouldBlock)) => Poll::Pending,
            Ok(Err(e)) => Poll::Ready(Err(self.send_failed(e))),
        }
    }

    fn poll_shutdown(&self) -> Poll<io::Result<()>> {
        let id = self.id;
        match self.conn.with(|s| s.ch.close_write(Instant::now(), id)) {
            Ok(Ok(())) => Poll::Ready(Ok(())),
            Ok(Err(e)) => Poll::Ready(Err(self.send_failed(e))),
            Err(_) => Poll::Ready(Err(self.send_failed(SendError::NotWritable))),
        }
    }

    fn ended(&self, source: ConnClosed) -> io::Error {
        let kind = match &source {
            ConnClosed::Channel(_) => io::ErrorKind::ConnectionAborted,
            ConnClosed::Protocol(_) => io::ErrorKind::InvalidData,
            _ => io::ErrorKind::ConnectionReset,
        };
        io::Error::new(
            kind,
            StreamError::Ended {
                service: self.service.clone(),
                router: self.conn.name().to_string(),
                source,
            },
        )
    }

    fn send_failed(&self, source: SendError) -> io::Error {
        io::Error::new(
            io::ErrorKind::BrokenPipe,
            StreamError::Send {
                service: self.service.clone(),
                router: self.conn.name().to_string(),
                source,
            },
        )
    }
}

/// A connection to (or from) a Ziti service, usable as `AsyncRead + AsyncWrite`.
#[derive(Debug)]
pub struct EdgeStream {
    inner: Arc<Inner>,
}

/// The reading half of an [`EdgeStream`] (from [`EdgeStream::into_split`]).
#[derive(Debug)]
pub struct EdgeReadHalf {
    inner: Arc<Inner>,
}

/// The writing half of an [`EdgeStream`] (from [`EdgeStream::into_split`]); `shutdown()`
/// half-closes.
#[derive(Debug)]
pub struct EdgeWriteHalf {
    inner: Arc<Inner>,
}

impl EdgeStream {
    /// Wraps connection `id`, already established on `conn`.
    pub(crate) fn new(
        conn: RouterConnection,
        id: u32,
        service: &str,
        encrypted: bool,
        peer: PeerInfo,
    ) -> Self {
        EdgeStream {
            inner: Arc::new(Inner {
                conn,
                id,
                service: service.to_string(),
                encrypted,
                peer,
            }),
        }
    }

    /// The service this stream belongs to.
    pub fn service(&self) -> &str {
        &self.inner.service
    }

    /// The edge connection id on its router channel.
    pub fn conn_id(&self) -> u32 {
        self.inner.id
    }

    /// Name of the router carrying this stream.
    pub fn router(&self) -> &str {
        self.inner.conn.name()
    }

    /// `true` if the data is end-to-end encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.inner.encrypted
    }

    /// The peer, for accepted streams (only the circuit id for dialed ones).
    pub fn peer(&self) -> &PeerInfo {
        &self.inner.peer
    }

    /// Splits into owned halves that can live in different tasks; the connection closes when
    /// both are dropped.
    pub fn into_split(self) -> (EdgeReadHalf, EdgeWriteHalf) {
        (
            EdgeReadHalf {
                inner: self.inner.clone(),
            },
            EdgeWriteHalf { inner: self.inner },
        )
    }
}

impl EdgeStream {
    /// The next chunk of data as it arrived, at most `max` bytes, without copying it and
    /// without a read buffer waiting meanwhile (what a relay wants); `Ok(None)` at
    /// end-of-stream. Errors are those of `poll_read`.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.inner.poll_chunk(cx, max)).await
    }

    /// [`EdgeStream::read_chunk`] as a poll: `Pending` registers `cx`'s waker, which is woken
    /// when data, end-of-stream or an error arrives.
    pub fn poll_read_chunk(
        &mut self,
        cx: &mut Context<'_>,
        max: usize,
    ) -> Poll<io::Result<Option<Bytes>>> {
        self.inner.poll_chunk(cx, max)
    }
}

impl EdgeReadHalf {
    /// See [`EdgeStream::read_chunk`].
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        std::future::poll_fn(|cx| self.inner.poll_chunk(cx, max)).await
    }
}

impl AsyncRead for EdgeStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        // The writer task flushes TLS whenever its queue runs dry.
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown()
    }
}

impl AsyncRead for EdgeReadHalf {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.inner.poll_read(cx, buf)
    }
}

impl AsyncWrite for EdgeWriteHalf {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.inner.poll_shutdown()
    }
}
