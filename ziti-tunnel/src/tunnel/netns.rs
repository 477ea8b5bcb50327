//! A thread inside another network namespace, where a tunnel's sockets and devices are made.
//!
//! A socket or a TUN device belongs for good to the network namespace of the thread that
//! created it; once made, any thread may use it. So a tunnel for another namespace creates its
//! TUN device, its netlink socket, its DNS sockets and the sockets of hosted connections on one
//! thread of its own that entered the namespace with `setns(2)`, and the tokio runtime drives
//! them from its worker threads as usual. The workers themselves never change namespace: a task
//! that moved between workers would find itself in one namespace or another at random.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc as std_mpsc;

use tokio::sync::oneshot;

use super::TunnelError;

/// Stack of a namespace thread: it only runs short set-up jobs (pages are touched on use, so
/// the reservation costs address space, not memory).
const STACK: usize = 256 * 1024;

/// Work for the namespace thread.
type Job = Box<dyn FnOnce() + Send>;

/// Which network namespace a tunnel runs in.
#[derive(Debug, Default)]
pub(super) enum NetnsTarget {
    /// The namespace of the thread that starts the tunnel.
    #[default]
    Current,
    /// A namespace file such as `/var/run/netns/NAME` or `/proc/PID/ns/net`.
    Path(PathBuf),
    /// An open namespace file.
    Fd(OwnedFd),
}

impl NetnsTarget {
    /// A name for logs and errors.
    pub(super) fn label(&self) -> String {
        match self {
            NetnsTarget::Current => "current".into(),
            NetnsTarget::Path(p) => p.display().to_string(),
            NetnsTarget::Fd(fd) => format!("fd {}", fd.as_raw_fd()),
        }
    }
}

/// Runs jobs on a thread inside one network namespace. Clones share the thread, which ends when
/// the last clone is dropped.
#[derive(Debug, Clone)]
pub(super) struct NetnsThread {
    jobs: std_mpsc::Sender<Job>,
    label: Arc<str>,
}

impl NetnsThread {
    /// Opens `target` (not [`NetnsTarget::Current`]) and starts a thread inside it.
    pub(super) async fn enter(target: NetnsTarget) -> Result<Self, TunnelError> {
        let label = target.label();
        let netns_error = |source: io::Error| TunnelError::Netns {
            netns: label.clone(),
            source,
        };
        let fd: OwnedFd = match target {
            NetnsTarget::Current => {
                return Err(netns_error(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "the current namespace needs no thread",
                )));
            }
            NetnsTarget::Path(path) => std::fs::File::open(&path).map_err(netns_error)?.into(),
            NetnsTarget::Fd(fd) => fd,
        };
        let (jobs, queue) = std_mpsc::channel::<Job>();
        let (entered_tx, entered_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("zt-netns".into())
            .stack_size(STACK)
            .spawn(move || {
                // SAFETY: setns changes only the calling thread's network namespace; `fd` is an
                // open descriptor owned by this closure for the duration of the call.
                let rc = unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = match rc {
                    0 => Ok(()),
                    _ => Err(io::Error::last_os_error()),
                };
                // The thread's membership keeps the namespace alive from here on.
                drop(fd);
                let ok = entered.is_ok();
                let _ = entered_tx.send(entered);
                if ok {
                    while let Ok(job) = queue.recv() {
                        job();
                    }
                }
            })
            .map_err(netns_error)?;
        match entered_rx.await {
            Ok(Ok(())) => Ok(NetnsThread {
                jobs,
                label: label.into(),
            }),
            Ok(Err(source)) => Err(netns_error(source)),
            Err(_) => Err(netns_error(io::Error::other("the namespace thread ended"))),
        }
    }

    /// Runs `job` on the namespace thread and returns its result.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, TunnelError> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let _ = tx.send(job());
        });
        let gone = || TunnelError::Netns {
            netns: self.label.to_string(),
            source: io::Error::other("the namespace thread ended"),
        };
        self.jobs.send(job).map_err(|_| gone())?;
        rx.await.map_err(|_| gone())
    }

    /// A TCP socket made inside the namespace, for connecting to `addr` from there.
    pub(super) async fn tcp_socket(
        &self,
        addr: std::net::SocketAddr,
    ) -> io::Result<tokio::net::TcpSocket> {
        self.run(move || match addr {
            std::net::SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            std::net::SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })
        .await
        .map_err(io::Error::other)?
    }
    /// A UDP socket bound inside the namespace (any address, any port) for sending to `addr`
    /// from there; non-blocking, ready for [`tokio::net::UdpSocket::from_std`].
    pub(super) async fn udp_socket(
        &self,
        addr: std::net::SocketAddr,
    ) -> io::Result<std::net::UdpSocket> {
        self.run(move || {
            let any: std::net::SocketAddr = match addr {
                std::net::SocketAddr::V4(_) => (std::net::Ipv4Addr::UNSPECIFIED, 0).into(),
                std::net::SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
            };
            let socket = std::net::UdpSocket::bind(any)?;
            socket.set_nonblocking(true)?;
            Ok(socket)
        })
        .await
        .map_err(io::Error::other)?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A thread entered into our own namespace (the only one a unit test may touch) runs jobs
    /// and makes sockets.
    #[tokio::test]
    async fn runs_jobs_inside_the_namespace() {
        let target = NetnsTarget::Path("/proc/thread-self/ns/net".into());
        let thread = match NetnsThread::enter(target).await {
            Ok(t) => t,
            // Entering even our own namespace needs CAP_SYS_ADMIN.
            Err(TunnelError::Netns { source, .. })
                if source.kind() == io::ErrorKind::PermissionDenied =>
            {
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let tid = thread.run(|| std::thread::current().name().map(String::from));
        assert_eq!(tid.await.ok().flatten().as_deref(), Some("zt-netns"));
        let socket = thread.tcp_socket("127.0.0.1:1".parse().unwrap()).await;
        assert!(socket.is_ok(), "{socket:?}");
    }

    #[tokio::test]
    async fn a_missing_namespace_file_is_a_netns_error() {
        let target = NetnsTarget::Path("/nonexistent/ns/net".into());
        let err = NetnsThread::enter(target).await.unwrap_err();
        assert!(
            matches!(&err, TunnelError::Netns { netns, .. } if netns == "/nonexistent/ns/net"),
            "{err:?}"
        );
    }
}
