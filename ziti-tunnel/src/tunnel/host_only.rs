//! Hosting without a TUN device: the services the identities may bind are hosted, nothing is
//! intercepted, no DNS server runs, and no privilege is needed (`zt-tunnel run --host-only`,
//! like `ziti tunnel host`).

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use ziti_sdk::ServiceEvent;

use super::hosting::Hosting;
use super::{EVENT_QUEUE, TunnelError, TunnelIdentity};

/// Hosts the identities' services until `shutdown` completes; services are polled every
/// `refresh_interval` and hosting follows their changes.
pub async fn host_only(
    identities: Vec<TunnelIdentity>,
    refresh_interval: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TunnelError> {
    if identities.is_empty() {
        return Err(TunnelError::NoIdentities);
    }
    let (tx, mut events) = mpsc::channel::<(usize, ServiceEvent)>(EVENT_QUEUE);
    let mut watchers = Vec::new();
    for (index, identity) in identities.iter().enumerate() {
        let mut rx = identity
            .context
            .controller()
            .watch_services(refresh_interval);
        let tx = tx.clone();
        watchers.push(tokio::spawn(async move {
            while let Some(ev) = rx.recv().await {
                if tx.send((index, ev)).await.is_err() {
                    break;
                }
            }
        }));
        tracing::info!(identity = %identity.name, "identity added (hosting only)");
    }
    drop(tx);
    let mut hosting = Hosting::new(None);
    tokio::pin!(shutdown);
    loop {
        let (index, event) = tokio::select! {
            () = &mut shutdown => break,
            ev = events.recv() => match ev {
                Some(ev) => ev,
                None => break,
            },
        };
        let Some(identity) = identities.get(index) else {
            continue;
        };
        match event {
            ServiceEvent::Added(s) | ServiceEvent::Changed(s) => {
                tracing::info!(identity = %identity.name, service = %s.name, bind = s.permissions.bind, "service available");
                hosting.apply(identity.context.clone(), index, &s);
            }
            ServiceEvent::Removed(s) => {
                tracing::info!(identity = %identity.name, service = %s.name, "service no longer available");
                hosting.stop(index, &s.name);
            }
        }
    }
    hosting.stop_all();
    watchers.iter().for_each(tokio::task::JoinHandle::abort);
    tracing::info!("hosting stopped");
    Ok(())
}
