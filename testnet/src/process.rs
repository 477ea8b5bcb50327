//! Child processes that can never outlive the test process.
//!
//! Every child runs in its own process group (so the whole tree can be signalled) and has
//! `PR_SET_PDEATHSIG = SIGKILL`, so it dies with us even when a test panics or the test binary is
//! killed. The kernel delivers the parent-death signal when the *thread* that forked exits, so all
//! children are forked from a spawner thread that lives as long as the process: one per network
//! namespace, because a child starts in its forking thread's namespace, and a test that runs its
//! network in a namespace of its own ([`crate::in_new_netns`]) must get its processes there, even
//! when another test of the same binary started the shared network in the host's.

use std::collections::HashMap;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::TestNetError;

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// The spawner of the calling thread's network namespace, started from this thread (so in
/// that namespace) on first use.
fn spawner() -> Result<mpsc::Sender<SpawnRequest>, TestNetError> {
    static SPAWNERS: OnceLock<Mutex<HashMap<PathBuf, mpsc::Sender<SpawnRequest>>>> =
        OnceLock::new();
    let netns = std::fs::read_link("/proc/thread-self/ns/net").unwrap_or_default();
    let mut spawners = SPAWNERS
        .get_or_init(|| Mutex::new(HashMap::new()))
        .lock()
        .map_err(|_| TestNetError::Io("spawner lock poisoned".into()))?;
    if let Some(tx) = spawners.get(&netns) {
        return Ok(tx.clone());
    }
    let (tx, rx) = mpsc::channel::<SpawnRequest>();
    std::thread::Builder::new()
        .name("testnet-spawner".into())
        .spawn(move || {
            for (mut cmd, reply) in rx {
                let _ = reply.send(cmd.spawn());
            }
            // The channel sender lives in a static, so this loop never ends; park forever
            // anyway so that children keep their parent thread.
            loop {
                std::thread::park();
            }
        })
        .map_err(|e| TestNetError::Io(format!("cannot start spawner thread: {e}")))?;
    spawners.insert(netns, tx.clone());
    Ok(tx)
}

/// A running child process (and its process group), killed on drop.
#[derive(Debug)]
pub struct ChildGuard {
    child: Option<Child>,
    name: String,
    log: PathBuf,
}

impl ChildGuard {
    /// Spawns `cmd` with stdout and stderr appended to `log`.
    pub fn spawn(name: &str, mut cmd: Command, log: &Path) -> Result<Self, TestNetError> {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| TestNetError::Io(format!("open {}: {e}", log.display())))?;
        let err = out
            .try_clone()
            .map_err(|e| TestNetError::Io(format!("dup log fd: {e}")))?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        cmd.process_group(0);
        // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let (tx, rx) = mpsc::channel();
        spawner()?
            .send((cmd, tx))
            .map_err(|_| TestNetError::Io("spawner thread is gone".into()))?;
        let child = rx
            .recv()
            .map_err(|_| TestNetError::Io("spawner thread is gone".into()))?
            .map_err(|e| TestNetError::Io(format!("spawn {name}: {e}")))?;
        Ok(ChildGuard {
            child: Some(child),
            name: name.to_string(),
            log: log.to_path_buf(),
        })
    }

    /// The process id.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The file receiving the child's output.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The child's output so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `n` lines of the child's output, for error messages.
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// True while the child has not exited.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Waits until `pred(log)` holds or `timeout` passes; fails early if the child exits.
    pub fn wait_for_log(
        &mut self,
        timeout: Duration,
        pred: impl Fn(&str) -> bool,
    ) -> Result<(), TestNetError> {
        let deadline = Instant::now() + timeout;
        loop {
            if pred(&self.log()) {
                return Ok(());
            }
            if !self.is_running() {
                return Err(TestNetError::Process(format!(
                    "{} exited early; last output:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            if Instant::now() > deadline {
                return Err(TestNetError::Timeout(format!(
                    "{}: expected output did not appear in {timeout:?}; last output:\n{}",
                    self.name,
                    self.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Terminates the process group: SIGTERM, then SIGKILL after a grace period.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pgid = child.id() as libc::pid_t;
        // SAFETY: signalling a process group we created.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                // Reap any stragglers in the group too.
                // SAFETY: as above.
                unsafe { libc::kill(-pgid, libc::SIGKILL) };
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = child.wait();
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs a command to completion and returns its stdout, or an error holding its output.
pub fn run(mut cmd: Command, what: &str) -> Result<String, TestNetError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| TestNetError::Io(format!("{what}: {e}")))?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(TestNetError::Cli(format!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            stdout,
            String::from_utf8_lossy(&out.stderr)
        )))
    }
}

/// A free TCP port on 127.0.0.1 (racy by nature, but the OS hands out ports randomly).
pub fn free_port() -> Result<u16, TestNetError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| TestNetError::Io(format!("bind: {e}")))?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|e| TestNetError::Io(format!("local_addr: {e}")))
}
