//! Hosting without a TUN device: the services the identities may bind are hosted, nothing is
//! intercepted, no DNS server runs, and no privilege is needed (`zt-tunnel run --host-only`,
//! like `ziti tunnel host`). Identities join and leave while it runs.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use ziti_sdk::ServiceEvent;

use super::hosting::Hosting;
use super::{EVENT_QUEUE, IdentityChange, TunnelError, TunnelIdentity};

/// Hosts the services of the identities that arrive on `identities` until `shutdown`
/// completes; services are polled every `refresh_interval` and hosting follows their changes.
pub async fn host_only(
    mut identities: mpsc::Receiver<IdentityChange>,
    refresh_interval: Duration,
    shutdown: impl Future<Output = ()>,
) -> Result<(), TunnelError> {
    let (tx, mut events) = mpsc::channel::<(usize, ServiceEvent)>(EVENT_QUEUE);
    let mut members: HashMap<usize, (TunnelIdentity, JoinHandle<()>)> = HashMap::new();
    let mut next = 0usize;
    let mut hosting = Hosting::new(None);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            change = identities.recv() => match change {
                Some(IdentityChange::Add(identity)) => {
                    if members.values().any(|(m, _)| m.name == identity.name) {
                        tracing::warn!(identity = %identity.name, "an identity of that name is hosting already");
                        continue;
                    }
                    let index = next;
                    next += 1;
                    let watcher =
                        super::watch_identity(index, &identity.context, refresh_interval, tx.clone());
                    tracing::info!(identity = %identity.name, "identity added (hosting only)");
                    members.insert(index, (identity, watcher));
                }
                Some(IdentityChange::Remove(name)) => {
                    let gone: Vec<usize> = members
                        .iter()
                        .filter(|(_, (m, _))| m.name == name)
                        .map(|(i, _)| *i)
                        .collect();
                    for index in gone {
                        if let Some((_, watcher)) = members.remove(&index) {
                            watcher.abort();
                        }
                        hosting.stop_identity(index);
                        tracing::info!(identity = %name, "identity removed");
                    }
                }
                // Nobody can add identities any more; keep hosting the ones there are.
                None => std::future::pending().await,
            },
            Some((index, event)) = events.recv() => {
                // Events still queued from an identity removed since are dropped here.
                let Some((identity, _)) = members.get(&index) else {
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
        }
    }
    hosting.stop_all();
    members.values().for_each(|(_, w)| w.abort());
    tracing::info!("hosting stopped");
    Ok(())
}
