//! Service change detection: poll `current-api-session/service-updates`, re-list when it moves,
//! and turn the difference into events (edge-client-api.md §4.2).

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;

use super::Service;
use crate::controller::Controller;
use crate::session::SessionType;

/// Default poll interval. The Go SDK polls every 5 min, the C SDK every 10 s; one minute keeps a
/// tunneler responsive to policy changes for the cost of one tiny request per minute.
pub const DEFAULT_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

/// Capacity of the event channel; the watcher waits when the consumer falls behind.
const EVENT_QUEUE: usize = 256;

/// Re-list every this many polls even if `lastChangeAt` did not move, as a safety net against
/// changes the controller does not timestamp.
const FULL_RELIST_EVERY: u32 = 10;

/// A change in the set of services visible to the identity.
#[derive(Debug, Clone, PartialEq)]
pub enum ServiceEvent {
    /// Newly visible (every service is reported as added on the first poll).
    Added(Service),
    /// Still visible, but permissions, configs or flags changed (the new state).
    Changed(Service),
    /// No longer visible (the last known state).
    Removed(Service),
}

impl ServiceEvent {
    /// The service the event is about.
    pub fn service(&self) -> &Service {
        match self {
            Self::Added(s) | Self::Changed(s) | Self::Removed(s) => s,
        }
    }
}

/// Events that turn `known` into `current`; updates `known`. Removed events come first so that
/// a consumer never holds two services with the same intercept at once.
pub(crate) fn diff(
    known: &mut HashMap<String, Service>,
    current: Vec<Service>,
) -> Vec<ServiceEvent> {
    let next: HashMap<String, Service> = current.into_iter().map(|s| (s.id.clone(), s)).collect();
    let mut removed = Vec::new();
    let mut updated = Vec::new();
    let mut still_visible = std::collections::HashSet::new();
    for (id, old) in known.drain() {
        match next.get(&id) {
            None => removed.push(ServiceEvent::Removed(old)),
            Some(new) => {
                if *new != old {
                    updated.push(ServiceEvent::Changed(new.clone()));
                }
                still_visible.insert(id);
            }
        }
    }
    for (id, new) in &next {
        if !still_visible.contains(id) {
            updated.push(ServiceEvent::Added(new.clone()));
        }
    }
    removed.sort_by(|a, b| a.service().name.cmp(&b.service().name));
    updated.sort_by(|a, b| a.service().name.cmp(&b.service().name));
    *known = next;
    removed.extend(updated);
    removed
}

impl Controller {
    /// Watches the identity's services, polling every `interval` (use
    /// [`DEFAULT_REFRESH_INTERVAL`] unless you have a reason). The first poll reports every
    /// current service as [`ServiceEvent::Added`]. The background task ends when the receiver
    /// is dropped; errors are logged and retried at the next tick.
    pub fn watch_services(&self, interval: Duration) -> mpsc::Receiver<ServiceEvent> {
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let ctrl = self.clone();
        let interval = interval.max(Duration::from_millis(100));
        tokio::spawn(async move {
            let mut known: HashMap<String, Service> = HashMap::new();
            let mut last_change: Option<String> = None;
            let mut listed_once = false;
            let mut polls_since_list = 0u32;
            loop {
                let stamp = match ctrl.services_last_changed().await {
                    Ok(t) => Some(t),
                    Err(e) => {
                        tracing::warn!(error = %crate::error_report::error_chain(&e), "service update check failed");
                        None
                    }
                };
                let moved = stamp.is_some() && stamp != last_change;
                polls_since_list += 1;
                if !listed_once || moved || polls_since_list >= FULL_RELIST_EVERY {
                    match ctrl.services().await {
                        Ok(list) => {
                            listed_once = true;
                            polls_since_list = 0;
                            if stamp.is_some() {
                                last_change = stamp;
                            }
                            for event in diff(&mut known, list) {
                                // A changed or vanished service may have new routers or policies:
                                // its cached sessions are stale.
                                if let ServiceEvent::Changed(s) | ServiceEvent::Removed(s) = &event
                                {
                                    ctrl.invalidate_session(&s.id, SessionType::Dial);
                                    ctrl.invalidate_session(&s.id, SessionType::Bind);
                                }
                                if tx.send(event).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %crate::error_report::error_chain(&e), "service listing failed")
                        }
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(interval) => {}
                    _ = tx.closed() => return,
                }
            }
        });
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::{Permissions, ServiceConfigs};

    fn svc(id: &str, name: &str, dial: bool) -> Service {
        Service {
            id: id.into(),
            name: name.into(),
            permissions: Permissions { dial, bind: false },
            encryption_required: true,
            configs: ServiceConfigs::default(),
            role_attributes: Vec::new(),
        }
    }

    #[test]
    fn diff_reports_added_changed_removed() {
        let mut known = HashMap::new();
        let ev = diff(&mut known, vec![svc("1", "a", true), svc("2", "b", true)]);
        assert_eq!(
            ev,
            [
                ServiceEvent::Added(svc("1", "a", true)),
                ServiceEvent::Added(svc("2", "b", true))
            ]
        );
        // No change: no events.
        assert!(diff(&mut known, vec![svc("1", "a", true), svc("2", "b", true)]).is_empty());
        let ev = diff(&mut known, vec![svc("2", "b", false), svc("3", "c", true)]);
        assert_eq!(
            ev,
            [
                ServiceEvent::Removed(svc("1", "a", true)),
                ServiceEvent::Changed(svc("2", "b", false)),
                ServiceEvent::Added(svc("3", "c", true)),
            ]
        );
        assert_eq!(known.len(), 2);
        let ev = diff(&mut known, Vec::new());
        assert_eq!(ev.len(), 2);
        assert!(ev.iter().all(|e| matches!(e, ServiceEvent::Removed(_))));
    }
}
