//! The bytes of one hosted TCP connection: a Ziti stream on one side, the hosted server's TCP
//! socket on the other, both directions at once, each half-closed on its own.
//!
//! Why not `tokio::io::copy_bidirectional`: it reads through 8 KiB buffers, so every 8 KiB from
//! the server became one edge payload, and the router's work per byte is mostly work per
//! message (measured with `tunnel_bench --host zt`: one download ran at 48 MiB/s with the
//! router spending 6.6 CPU s/GiB). Here a read takes up to [`CHUNK`] bytes, the size of one
//! payload, and a connection holds no buffer while it is quiet: the server-side buffer lives
//! only while the socket has data, and the Ziti side hands over the chunks the channel already
//! holds.

use std::io;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

/// Most bytes read from the server at once (one edge payload: the SDK's largest).
pub(super) const CHUNK: usize = 64 * 1024;

/// Where the Ziti side's data comes from: chunks as they arrived, `None` at end-of-stream.
pub(super) trait ChunkSource {
    /// The next chunk, at most `max` bytes.
    fn next_chunk(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = io::Result<Option<Bytes>>> + Send;
}

impl ChunkSource for ziti_sdk::router::EdgeReadHalf {
    fn next_chunk(
        &mut self,
        max: usize,
    ) -> impl std::future::Future<Output = io::Result<Option<Bytes>>> + Send {
        self.read_chunk(max)
    }
}

/// Moves bytes both ways until both directions have ended: the end of one side's data
/// half-closes the other side's writing; the first error ends both (the caller drops the
/// sockets). Returns the bytes moved (to the server, from the server).
pub(super) async fn relay<R, W>(from_ziti: R, to_ziti: W, tcp: TcpStream) -> io::Result<(u64, u64)>
where
    R: ChunkSource,
    W: AsyncWrite + Unpin,
{
    let (tcp_rd, tcp_wr) = tcp.into_split();
    tokio::try_join!(
        ziti_to_server(from_ziti, tcp_wr),
        server_to_ziti(tcp_rd, to_ziti)
    )
}

async fn ziti_to_server<R: ChunkSource>(
    mut from: R,
    mut to: tokio::net::tcp::OwnedWriteHalf,
) -> io::Result<u64> {
    let mut moved = 0u64;
    while let Some(chunk) = from.next_chunk(CHUNK).await? {
        to.write_all(&chunk).await?;
        moved += chunk.len() as u64;
    }
    to.shutdown().await?;
    Ok(moved)
}

async fn server_to_ziti<W: AsyncWrite + Unpin>(
    from: tokio::net::tcp::OwnedReadHalf,
    mut to: W,
) -> io::Result<u64> {
    let mut moved = 0u64;
    loop {
        from.readable().await?;
        // Held only while the socket has data.
        let mut buf = vec![0u8; CHUNK];
        loop {
            match from.try_read(&mut buf) {
                Ok(0) => {
                    to.shutdown().await?;
                    return Ok(moved);
                }
                Ok(n) => {
                    to.write_all(&buf[..n]).await?;
                    moved += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};

    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;
    use tokio::sync::mpsc;

    use super::*;

    /// Chunks from a channel; the sender's drop is end-of-stream.
    struct Chunks(mpsc::Receiver<Bytes>);

    impl ChunkSource for Chunks {
        async fn next_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
            let c = self.0.recv().await;
            assert!(c.as_ref().is_none_or(|c| c.len() <= max));
            Ok(c)
        }
    }

    /// What a [`Recorder`] saw.
    #[derive(Default)]
    struct Seen {
        bytes: Vec<u8>,
        writes: Vec<usize>,
        shut_down: bool,
    }

    /// Records each write (its size) and whether it was shut down.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Seen>>);

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            data: &[u8],
        ) -> Poll<io::Result<usize>> {
            let mut r = self.0.lock().unwrap();
            r.bytes.extend_from_slice(data);
            r.writes.push(data.len());
            Poll::Ready(Ok(data.len()))
        }
        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            self.0.lock().unwrap().shut_down = true;
            Poll::Ready(Ok(()))
        }
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// A relay between a fresh TCP pair's first end and a channel of chunks (the Ziti side's
    /// input) plus a recorder (its output); returns the server end, the chunk sender, the
    /// recorder and the relay's task.
    async fn start() -> (
        TcpStream,
        mpsc::Sender<Bytes>,
        Recorder,
        tokio::task::JoinHandle<io::Result<(u64, u64)>>,
    ) {
        let (ours, server) = pair().await;
        let (tx, rx) = mpsc::channel(4);
        let rec = Recorder::default();
        let task = tokio::spawn(relay(Chunks(rx), rec.clone(), ours));
        (server, tx, rec, task)
    }

    #[tokio::test]
    async fn both_directions_arrive_whole_and_half_close_on_their_own() {
        let (mut server, tx, rec, relay) = start().await;

        // Ziti -> server, then the Ziti side ends: the server reads end-of-file...
        tx.send(Bytes::from_static(b"hello ")).await.unwrap();
        tx.send(Bytes::from_static(b"server")).await.unwrap();
        drop(tx);
        let mut got = Vec::new();
        server.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hello server");

        // ... and can still answer, in one large write.
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
        server.write_all(&data).await.unwrap();
        server.shutdown().await.unwrap();
        let (up, down) = relay.await.unwrap().unwrap();
        assert_eq!((up, down), (12, data.len() as u64));
        let r = rec.0.lock().unwrap();
        assert_eq!(r.bytes, data, "the server's bytes, in order");
        assert!(
            r.shut_down,
            "the server's end-of-file half-closes the Ziti side"
        );
        // Writes to the Ziti side are up to one payload, not 8 KiB pieces.
        let largest = r.writes.iter().copied().max().unwrap_or(0);
        assert!(largest > 8 * 1024, "largest write {largest}");
        assert!(largest <= CHUNK, "largest write {largest}");
    }

    #[tokio::test]
    async fn the_server_closing_first_leaves_the_other_direction_open() {
        let (mut server, tx, rec, relay) = start().await;
        server.write_all(b"bye").await.unwrap();
        server.shutdown().await.unwrap();
        // The Ziti side still sends after the server's end-of-file.
        tx.send(Bytes::from_static(b"late")).await.unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).await.unwrap();
        assert_eq!(&buf, b"late");
        drop(tx);
        assert_eq!(relay.await.unwrap().unwrap(), (4, 3));
        let r = rec.0.lock().unwrap();
        assert_eq!(r.bytes, b"bye");
        assert!(r.shut_down);
    }
}
