//! A running tunnel seen from outside: its counters, identity changes, shutdown.

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use super::status::TunnelStatus;
use super::{TunnelError, TunnelIdentity};

/// What a tunnel carries right now. The driver publishes a new value only when a count changes,
/// so reading it costs a lock-free-in-practice read of a [`watch`] channel.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TunnelStats {
    /// Intercepted TCP connections: established, or held while their service is dialed.
    pub tcp_connections: usize,
    /// UDP flows (client address, intercepted address) with a live relay.
    pub udp_flows: usize,
    /// Identities in the tunnel.
    pub identities: usize,
    /// Services whose intercept is in force (addresses routed, names answered).
    pub intercepted_services: usize,
    /// Services hosted, one per (identity, service).
    pub hosted_services: usize,
}

/// A request from a [`TunnelHandle`] to the driver's loop.
#[derive(Debug)]
pub(super) enum Control {
    /// Start watching this identity's services.
    AddIdentity(TunnelIdentity, oneshot::Sender<Result<(), TunnelError>>),
    /// Stop using the identity of this name.
    RemoveIdentity(String, oneshot::Sender<Result<(), TunnelError>>),
    /// Describe the tunnel: identities, services, routers, flows, counters.
    Status(oneshot::Sender<TunnelStatus>),
}

/// A running tunnel (see [`TunnelBuilder::start`](super::TunnelBuilder::start)).
///
/// Dropping the handle stops the tunnel too, in the background; [`TunnelHandle::shutdown`]
/// stops it and waits until its routes, DNS server and TUN device are gone.
#[derive(Debug)]
pub struct TunnelHandle {
    pub(super) control: mpsc::Sender<Control>,
    pub(super) stats: watch::Receiver<TunnelStats>,
    pub(super) stop: Option<oneshot::Sender<()>>,
    /// `None` once [`TunnelHandle::wait`] has returned the outcome.
    pub(super) task: Option<JoinHandle<Result<(), TunnelError>>>,
    pub(super) netns: String,
    pub(super) tun_name: String,
}

impl TunnelHandle {
    /// The tunnel's current counters.
    pub fn stats(&self) -> TunnelStats {
        *self.stats.borrow()
    }

    /// A receiver of the counters that is told each time they change.
    pub fn watch_stats(&self) -> watch::Receiver<TunnelStats> {
        self.stats.clone()
    }

    /// What the tunnel is doing now: identities, services, routers, each live flow with its
    /// byte counts, and the counters since start. Answered by the tunnel's packet task between
    /// two turns of its loop.
    pub async fn status(&self) -> Result<TunnelStatus, TunnelError> {
        self.monitor().status().await
    }

    /// A cheap, cloneable handle that can only ask for [`TunnelHandle::status`] (for a status
    /// socket or a metrics endpoint serving beside the tunnel). It does not keep the tunnel
    /// running.
    pub fn monitor(&self) -> TunnelMonitor {
        TunnelMonitor {
            control: self.control.clone(),
        }
    }

    /// The network namespace the tunnel runs in, as given (`current` for the caller's own).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The name of the tunnel's TUN device.
    pub fn tun_name(&self) -> &str {
        &self.tun_name
    }

    /// Adds an identity to the running tunnel: its services are intercepted and hosted as they
    /// arrive from its controller.
    ///
    /// Fails with [`TunnelError::DuplicateIdentity`] if an identity of that name is in the
    /// tunnel already.
    pub async fn add_identity(&self, identity: TunnelIdentity) -> Result<(), TunnelError> {
        self.ask(|reply| Control::AddIdentity(identity, reply))
            .await
    }

    /// Removes an identity from the running tunnel: the intercepts it owned go (routes, DNS
    /// names; another identity that may dial the same service takes it over), and the services
    /// it hosted are no longer hosted. Connections it already carries run on until they end.
    ///
    /// Fails with [`TunnelError::NoSuchIdentity`] if no identity has that name.
    pub async fn remove_identity(&self, name: &str) -> Result<(), TunnelError> {
        let name = name.to_string();
        self.ask(|reply| Control::RemoveIdentity(name, reply)).await
    }

    /// `true` once the tunnel has stopped (shut down, or failed: [`TunnelHandle::wait`] says
    /// why).
    pub fn is_finished(&self) -> bool {
        self.task.as_ref().is_none_or(JoinHandle::is_finished)
    }

    /// Waits until the tunnel stops by itself (a failed TUN device, for instance) and returns
    /// why. It never stops by itself while all is well, so this is for watching over it beside
    /// other work. Cancel-safe; after it has returned, [`TunnelHandle::shutdown`] returns
    /// `Ok(())`.
    pub async fn wait(&mut self) -> Result<(), TunnelError> {
        let Some(task) = self.task.as_mut() else {
            return Err(TunnelError::Stopped);
        };
        let outcome = task.await;
        self.task = None;
        outcome.map_err(TunnelError::Task)?
    }

    /// Stops the tunnel: hosting stops, the routes are removed, the DNS server stops and the TUN
    /// device is closed. Returns how the tunnel ended (an error if it had failed before).
    pub async fn shutdown(mut self) -> Result<(), TunnelError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(TunnelError::Task)?,
            None => Ok(()),
        }
    }

    async fn ask(
        &self,
        request: impl FnOnce(oneshot::Sender<Result<(), TunnelError>>) -> Control,
    ) -> Result<(), TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(request(reply))
            .await
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)?
    }
}

/// Asks a running tunnel for its [`TunnelStatus`] (see [`TunnelHandle::monitor`]).
#[derive(Debug, Clone)]
pub struct TunnelMonitor {
    control: mpsc::Sender<Control>,
}

impl TunnelMonitor {
    /// See [`TunnelHandle::status`]. Fails with [`TunnelError::Stopped`] once the tunnel has
    /// stopped.
    pub async fn status(&self) -> Result<TunnelStatus, TunnelError> {
        let (reply, answer) = oneshot::channel();
        self.control
            .send(Control::Status(reply))
            .await
            .map_err(|_| TunnelError::Stopped)?;
        answer.await.map_err(|_| TunnelError::Stopped)
    }
}
