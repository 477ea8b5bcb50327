//! The identities of `zt-tunnel run`: the files given and the `*.json` files of the identity
//! directory, which is watched while running. Each is authenticated until it succeeds (with
//! backoff, "failed to authenticate ... retrying in N s"), then handed to the tunnel; a file
//! removed from the directory takes its identity out, a file changed is loaded again.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use ziti_sdk::{ZitiContext, error_chain};
use ziti_tunnel::tunnel::{IdentityChange, TunnelIdentity};

/// How often the identity directory is read for added, changed and removed files.
pub const DIR_SCAN: Duration = Duration::from_secs(2);
/// First wait after a failed authentication; it doubles up to the cap.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Where identities come from.
#[derive(Debug, Clone)]
pub struct IdentitySource {
    /// Files given one by one.
    pub files: Vec<PathBuf>,
    /// A directory of `*.json` identity files, watched.
    pub dir: Option<PathBuf>,
    /// Longest wait between two authentication attempts.
    pub retry_cap: Duration,
}

/// The identity files present now, with their modification times.
pub type FileSet = BTreeMap<PathBuf, Option<SystemTime>>;

/// What changed between two scans: files to start and names to stop. A changed file is both.
pub fn diff(old: &FileSet, new: &FileSet) -> (Vec<PathBuf>, Vec<PathBuf>) {
    let started = new
        .iter()
        .filter(|(p, t)| old.get(*p) != Some(*t))
        .map(|(p, _)| p.clone())
        .collect();
    let stopped = old
        .iter()
        .filter(|(p, t)| new.get(*p) != Some(*t))
        .map(|(p, _)| p.clone())
        .collect();
    (started, stopped)
}

/// The name an identity file's identity has in the tunnel: its file name without `.json`.
pub fn identity_name(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| path.display().to_string())
}

/// The next wait after a failed attempt that waited `last`.
pub fn next_retry(last: Duration, cap: Duration) -> Duration {
    (last * 2).clamp(FIRST_RETRY, cap.max(FIRST_RETRY))
}

impl IdentitySource {
    fn scan(&self) -> FileSet {
        let mut set: FileSet = self
            .files
            .iter()
            .map(|p| (p.clone(), modified(p)))
            .collect();
        if let Some(dir) = &self.dir {
            match std::fs::read_dir(dir) {
                Ok(entries) => {
                    for p in entries.filter_map(|e| e.ok().map(|e| e.path())) {
                        if p.extension().is_some_and(|x| x == "json") && p.is_file() {
                            let t = modified(&p);
                            set.insert(p, t);
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(dir = %dir.display(), error = %e, "cannot read the identity directory")
                }
            }
        }
        set
    }

    /// Runs until `changes` closes: authenticates every identity, watches the directory.
    pub fn spawn(self, changes: mpsc::Sender<IdentityChange>) -> JoinHandle<()> {
        tokio::spawn(async move {
            let mut known = FileSet::new();
            let mut tasks: BTreeMap<PathBuf, JoinHandle<()>> = BTreeMap::new();
            loop {
                let now = self.scan();
                let (started, stopped) = diff(&known, &now);
                for path in stopped {
                    if let Some(task) = tasks.remove(&path) {
                        task.abort();
                    }
                    let name = identity_name(&path);
                    if !now.contains_key(&path) {
                        tracing::info!(identity = %name, file = %path.display(), "identity file removed");
                    }
                    if changes.send(IdentityChange::Remove(name)).await.is_err() {
                        return;
                    }
                }
                for path in started {
                    tasks.insert(
                        path.clone(),
                        tokio::spawn(authenticate(path, self.retry_cap, changes.clone())),
                    );
                }
                known = now;
                if self.dir.is_none() {
                    // Nothing to watch: wait for the end.
                    changes.closed().await;
                    tasks.values().for_each(JoinHandle::abort);
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(DIR_SCAN) => {}
                    () = changes.closed() => {
                        tasks.values().for_each(JoinHandle::abort);
                        return;
                    }
                }
            }
        })
    }
}

fn modified(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// Loads and authenticates one identity file until it works.
async fn authenticate(path: PathBuf, cap: Duration, changes: mpsc::Sender<IdentityChange>) {
    let name = identity_name(&path);
    let mut wait = Duration::ZERO;
    loop {
        let identity = match ziti_sdk::Identity::load(&path) {
            Ok(i) => i,
            Err(e) => {
                // A file being written may not parse yet; it is loaded again when it changes.
                tracing::error!(identity = %name, file = %path.display(), error = %error_chain(&e), "cannot load identity file; it is read again when it changes");
                return;
            }
        };
        match ZitiContext::new(identity, ziti_sdk::ContextOptions::default()).await {
            Ok(context) => {
                tracing::info!(identity = %name, file = %path.display(), "identity loaded");
                let _ = changes
                    .send(IdentityChange::Add(TunnelIdentity { name, context }))
                    .await;
                return;
            }
            Err(e) => {
                wait = next_retry(wait, cap);
                tracing::warn!(identity = %name, error = %error_chain(&e), "failed to authenticate {name}; retrying in {} s", wait.as_secs());
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[(&str, u64)]) -> FileSet {
        items
            .iter()
            .map(|(p, t)| {
                (
                    PathBuf::from(p),
                    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(*t)),
                )
            })
            .collect()
    }

    #[test]
    fn added_removed_and_changed_files() {
        let old = set(&[("a.json", 1), ("b.json", 1), ("c.json", 1)]);
        let new = set(&[("a.json", 1), ("c.json", 2), ("d.json", 1)]);
        let (started, stopped) = diff(&old, &new);
        assert_eq!(
            started,
            vec![PathBuf::from("c.json"), PathBuf::from("d.json")]
        );
        assert_eq!(
            stopped,
            vec![PathBuf::from("b.json"), PathBuf::from("c.json")]
        );
        assert_eq!(diff(&new, &new), (vec![], vec![]));
    }

    #[test]
    fn retries_double_up_to_the_cap() {
        let cap = Duration::from_secs(15);
        let mut w = Duration::ZERO;
        let waits: Vec<u64> = (0..7)
            .map(|_| {
                w = next_retry(w, cap);
                w.as_secs()
            })
            .collect();
        assert_eq!(waits, vec![1, 2, 4, 8, 15, 15, 15]);
        assert_eq!(identity_name(Path::new("/x/alice.json")), "alice");
    }
}
