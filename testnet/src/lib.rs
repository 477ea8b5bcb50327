//! A real, throwaway local OpenZiti network for tests.
//!
//! [`TestNet::start`] brings up `ziti edge quickstart --no-router` (controller, admin/admin) in a
//! temporary home on free loopback ports, then one edge router as its own process (so tests can
//! kill and restart it), the `#public` edge-router policy and the all-services service-edge-router
//! policy. [`TestNet::start_with`] can instead start an HA cluster (the first member with
//! `quickstart`, the others with `quickstart join`, sharing one PKI) and several routers, each
//! controller and router its own process that tests stop and restart one at a time. The `ziti edge` CLI runs with its own `ZITI_CONFIG_DIR`, so parallel networks never
//! share login state. Every process started here dies with the test process, panics included.
//!
//! ```no_run
//! let net = testnet::TestNet::shared();
//! let jwt = net.create_identity("alice", &["clients"]).unwrap();
//! # let _ = jwt;
//! ```
//!
//! When the `ziti` binary cannot be obtained every constructor fails with
//! [`TestNetError::ZitiUnavailable`], whose message says how to get it: tests never skip silently.

pub mod netns;
pub mod process;
pub mod ziti_bin;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use netns::in_new_netns;
pub use process::ChildGuard;
pub use ziti_bin::ZITI_VERSION;

/// What can go wrong while running the test network.
#[derive(Debug, thiserror::Error)]
pub enum TestNetError {
    /// The `ziti` binary is missing and could not be built.
    #[error("OpenZiti `ziti` binary unavailable: {0}")]
    ZitiUnavailable(String),
    /// A `ziti` CLI command failed.
    #[error("ziti CLI: {0}")]
    Cli(String),
    /// A process did not become ready in time.
    #[error("timeout: {0}")]
    Timeout(String),
    /// A process exited unexpectedly.
    #[error("process: {0}")]
    Process(String),
    /// Local I/O failed.
    #[error("io: {0}")]
    Io(String),
    /// A downloaded or prebuilt file does not match its published checksum.
    #[error(
        "checksum mismatch for {file}: expected sha256 {expected}, got {actual}; \
         the file is corrupt or not the pinned release, replace it"
    )]
    ChecksumMismatch {
        /// The file checked.
        file: String,
        /// The published SHA-256.
        expected: String,
        /// The SHA-256 of the file.
        actual: String,
    },
}

/// Result alias for this crate.
pub type Result<T, E = TestNetError> = std::result::Result<T, E>;

/// Quickstart instance id of a single controller: fixed, so a second quickstart run finds the
/// first one's home. Cluster members are `zt0`, `zt1`, ...
const QS_INSTANCE: &str = "zt";
/// SPIFFE trust domain of a cluster's members.
const QS_TRUST_DOMAIN: &str = "zt-testnet";

/// Settings of a network that differ from the quickstart defaults.
#[derive(Debug, Clone, Default)]
pub struct TestNetOptions {
    /// `edge.oidc.accessTokenDuration` (e.g. `"1m"`, the controller's minimum): short-lived OIDC
    /// access tokens, for tests of token refresh on open channels. In a cluster it is set on the
    /// first member (the one identities are created on, and so the one they log in to).
    pub access_token_duration: Option<String>,
    /// Controllers: 0 or 1 for one controller; more make an HA (raft) cluster.
    pub controllers: usize,
    /// Edge routers (0 means 1); router `i` is given controller `i % controllers` to join.
    pub routers: usize,
}

/// Edge-router details of the network.
#[derive(Debug, Clone)]
pub struct RouterInfo {
    /// Router name on the controller.
    pub name: String,
    /// Edge listener port on 127.0.0.1.
    pub port: u16,
    config: PathBuf,
    log: PathBuf,
    /// Port of the controller it is configured with.
    ctrl_port: u16,
}

/// One controller (a cluster member when there are several).
#[derive(Debug)]
struct Member {
    /// Quickstart instance id.
    instance: String,
    port: u16,
    /// The first member's port when this one joins a cluster.
    join: Option<u16>,
    log: PathBuf,
    process: Mutex<ChildGuard>,
}

/// A running controller (or HA cluster) and its edge routers.
#[derive(Debug)]
pub struct TestNet {
    ziti: PathBuf,
    home: tempfile::TempDir,
    cli_dir: PathBuf,
    /// Several members make a cluster.
    members: Vec<Member>,
    /// The member the CLI is logged in to.
    cli_member: Mutex<usize>,
    routers: Vec<RouterInfo>,
    router_procs: Vec<Mutex<Option<ChildGuard>>>,
    spawned: Mutex<Vec<ChildGuard>>,
}

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// A name that is unique in this process: `<base>-<pid>-<n>`.
pub fn unique_name(base: &str) -> String {
    format!(
        "{base}-{}-{}",
        std::process::id(),
        UNIQUE.fetch_add(1, Ordering::Relaxed)
    )
}

impl TestNet {
    /// One network per test binary, started on first use and torn down when the process exits.
    ///
    /// Panics (with the reason and how to fix it) when the network cannot be started: this is
    /// test infrastructure, and a loud failure is what a test wants.
    #[allow(clippy::panic)]
    pub fn shared() -> &'static TestNet {
        static SHARED: OnceLock<std::result::Result<TestNet, String>> = OnceLock::new();
        match SHARED.get_or_init(|| TestNet::start().map_err(|e| e.to_string())) {
            Ok(net) => net,
            Err(e) => panic!("cannot start the OpenZiti test network: {e}"),
        }
    }

    /// Starts a new network (controller + one router) with default settings. Blocking; takes
    /// some seconds.
    pub fn start() -> Result<TestNet> {
        Self::start_with(&TestNetOptions::default())
    }

    /// Starts a new network with `options`.
    pub fn start_with(options: &TestNetOptions) -> Result<TestNet> {
        let ziti = ziti_bin::obtain()?;
        remove_stale_homes();
        let home = tempfile::Builder::new()
            .prefix(&format!("zt-testnet-{}-", std::process::id()))
            .tempdir()
            .map_err(|e| TestNetError::Io(format!("temp dir: {e}")))?;
        let cli_dir = home.path().join("cli");
        std::fs::create_dir_all(&cli_dir).map_err(|e| TestNetError::Io(e.to_string()))?;

        let count = options.controllers.max(1);
        let cluster = count > 1;
        let ports = (0..count)
            .map(|_| process::free_port())
            .collect::<Result<Vec<u16>>>()?;
        let first_port = ports.first().copied().unwrap_or_default();
        let instance = |i: usize| match cluster {
            false => QS_INSTANCE.to_string(),
            true => format!("zt{i}"),
        };
        let first = instance(0);
        if let Some(duration) = &options.access_token_duration {
            // Generate the controller config, then edit it before the real start (quickstart
            // reuses an initialised home with the same instance id).
            let mut cmd = quickstart_command(
                &ziti,
                home.path(),
                &first,
                first_port,
                cluster,
                None,
                &cli_dir,
            );
            cmd.arg("--configure-and-exit");
            process::run(cmd, "ziti edge quickstart --configure-and-exit")?;
            patch_token_duration(&home.path().join("quickstart").join(&first), duration)?;
        }
        let log = match cluster {
            false => home.path().join("controller.log"),
            true => home.path().join(format!("controller-{first}.log")),
        };
        let cmd = quickstart_command(
            &ziti,
            home.path(),
            &first,
            first_port,
            cluster,
            None,
            &cli_dir,
        );
        let mut process = ChildGuard::spawn(&format!("controller {first}"), cmd, &log)?;
        wait_for_controller(&mut process, first_port)?;
        let first_member = Member {
            instance: first,
            port: first_port,
            join: None,
            log,
            process: Mutex::new(process),
        };

        let mut routers = Vec::new();
        for i in 0..options.routers.max(1) {
            let name = match i {
                0 => format!("router-{}", std::process::id()),
                i => format!("router-{}-{i}", std::process::id()),
            };
            routers.push(RouterInfo {
                port: process::free_port()?,
                config: home.path().join("router").join(format!("{name}.yaml")),
                log: home.path().join(format!("{name}.log")),
                ctrl_port: ports.get(i % count).copied().unwrap_or(first_port),
                name,
            });
        }
        let router_procs = routers.iter().map(|_| Mutex::new(None)).collect();
        let mut net = TestNet {
            ziti,
            home,
            cli_dir,
            members: vec![first_member],
            cli_member: Mutex::new(0),
            routers,
            router_procs,
            spawned: Mutex::new(Vec::new()),
        };
        net.login(0)?;
        // A model update: retried until the (first) controller leads, so members can join.
        net.ziti(&[
            "edge",
            "create",
            "edge-router-policy",
            "all-endpoints-public-routers",
            "--edge-router-roles",
            "#public",
            "--identity-roles",
            "#all",
        ])?;
        for (i, port) in ports.iter().enumerate().skip(1) {
            let member = net.join_member(&instance(i), *port, first_port)?;
            net.members.push(member);
        }
        for r in &net.routers {
            net.setup_router(r)?;
        }
        net.ziti(&[
            "edge",
            "create",
            "service-edge-router-policy",
            "all-routers-all-services",
            "--edge-router-roles",
            "#all",
            "--service-roles",
            "#all",
        ])?;
        for i in 0..net.routers.len() {
            net.start_router_of(i)?;
        }
        Ok(net)
    }

    /// Starts a controller that joins the cluster led by the one on `first_port`, and waits
    /// until the cluster lists it. A join refused while the cluster has no leader is tried again
    /// from scratch (a few times).
    fn join_member(&self, instance: &str, port: u16, first_port: u16) -> Result<Member> {
        let log = self.home.path().join(format!("controller-{instance}.log"));
        let mut last = String::new();
        for _ in 0..4 {
            let cmd = quickstart_command(
                &self.ziti,
                self.home.path(),
                instance,
                port,
                true,
                Some(first_port),
                &self.cli_dir,
            );
            let mut process = ChildGuard::spawn(&format!("controller {instance}"), cmd, &log)?;
            let deadline = Instant::now() + Duration::from_secs(120);
            let joined = loop {
                if !process.is_running() {
                    break false;
                }
                let listed = self
                    .ziti(&["fabric", "list", "controllers", "-j"])
                    .ok()
                    .and_then(|out| serde_json::from_str::<serde_json::Value>(&out).ok())
                    .is_some_and(|v| {
                        v["data"]
                            .as_array()
                            .into_iter()
                            .flatten()
                            .any(|c| c["id"] == instance)
                    });
                if listed && wait_for_controller(&mut process, port).is_ok() {
                    break true;
                }
                if Instant::now() > deadline {
                    return Err(TestNetError::Timeout(format!(
                        "controller {instance} did not join in 120 s; last output:\n{}",
                        process.log_tail(30)
                    )));
                }
                std::thread::sleep(Duration::from_millis(500));
            };
            if joined {
                return Ok(Member {
                    instance: instance.to_string(),
                    port,
                    join: Some(first_port),
                    log,
                    process: Mutex::new(process),
                });
            }
            last = process.log_tail(10);
            // The failed join left an initialised home that would skip joining next time.
            let _ = std::fs::remove_dir_all(self.home.path().join("quickstart").join(instance));
            std::thread::sleep(Duration::from_secs(2));
        }
        Err(TestNetError::Process(format!(
            "controller {instance} could not join the cluster; last output:\n{last}"
        )))
    }

    /// Path of the `ziti` binary in use.
    pub fn ziti_bin(&self) -> &Path {
        &self.ziti
    }

    /// The network's scratch directory (logs, JWTs, identities).
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// Port of the first controller on 127.0.0.1.
    pub fn ctrl_port(&self) -> u16 {
        self.ctrl_port_of(0)
    }

    /// Base URL of the first controller, `https://127.0.0.1:<port>`.
    pub fn ctrl_url(&self) -> String {
        self.ctrl_url_of(0)
    }

    /// How many controllers the network has (more than one: an HA cluster).
    pub fn controllers(&self) -> usize {
        self.members.len()
    }

    /// Port of controller `i` on 127.0.0.1 (0 when there is no such controller).
    pub fn ctrl_port_of(&self, i: usize) -> u16 {
        self.members.get(i).map_or(0, |m| m.port)
    }

    /// Base URL of controller `i`, `https://127.0.0.1:<port>`.
    pub fn ctrl_url_of(&self, i: usize) -> String {
        format!("https://127.0.0.1:{}", self.ctrl_port_of(i))
    }

    /// The first edge router.
    pub fn router(&self) -> &RouterInfo {
        &self.routers[0]
    }

    /// Every edge router.
    pub fn routers(&self) -> &[RouterInfo] {
        &self.routers
    }

    /// Runs `ziti <args>` with this network's CLI state; returns stdout.
    ///
    /// A controller that has just (re)started may not have elected a raft leader yet and answers
    /// model updates with 503 `CLUSTER_NO_LEADER`, and a cluster member whose leader was just
    /// stopped answers 429 while it still forwards to it; such commands are retried for up to
    /// 60 s. When
    /// the controller the CLI is logged in to has been stopped, it logs in to a running member.
    pub fn ziti(&self, args: &[&str]) -> Result<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut cmd = self.command();
            cmd.args(args);
            match process::run(cmd, &format!("ziti {}", args.join(" "))) {
                Err(TestNetError::Cli(msg)) if is_leaderless(&msg) && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) if args.first() == Some(&"edge") && self.move_cli_to_live_member()? => {
                    tracing::debug!(error = %e, "CLI moved to a running controller; retrying");
                }
                other => return other,
            }
        }
    }

    /// If the controller the CLI is logged in to is stopped, logs in to a running one; whether
    /// it moved.
    fn move_cli_to_live_member(&self) -> Result<bool> {
        let current = self.cli_member.lock().map(|m| *m).unwrap_or(0);
        if self.member_running(current) {
            return Ok(false);
        }
        match (0..self.members.len()).find(|i| self.member_running(*i)) {
            Some(live) => {
                self.login(live)?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    fn member_running(&self, i: usize) -> bool {
        self.members
            .get(i)
            .and_then(|m| m.process.lock().ok().map(|mut p| p.is_running()))
            .unwrap_or(false)
    }

    /// The URL of a running controller (the CLI's when it runs), for direct API calls.
    fn live_ctrl_url(&self) -> String {
        let current = self.cli_member.lock().map(|m| *m).unwrap_or(0);
        let live = std::iter::once(current)
            .chain(0..self.members.len())
            .find(|i| self.member_running(*i))
            .unwrap_or(0);
        self.ctrl_url_of(live)
    }

    /// A `ziti` command preconfigured with this network's CLI state.
    pub fn command(&self) -> Command {
        let mut cmd = Command::new(&self.ziti);
        cmd.env("ZITI_CONFIG_DIR", &self.cli_dir)
            .env("HOME", self.home.path());
        cmd
    }

    fn login(&self, member: usize) -> Result<()> {
        let addr = format!("127.0.0.1:{}", self.ctrl_port_of(member));
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let mut cmd = self.command();
            cmd.args(["edge", "login", &addr, "-u", "admin", "-p", "admin", "-y"]);
            match process::run(cmd, "ziti edge login") {
                Ok(_) => {
                    if let Ok(mut m) = self.cli_member.lock() {
                        *m = member;
                    }
                    return Ok(());
                }
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(500)),
            }
        }
    }

    fn setup_router(&self, router: &RouterInfo) -> Result<()> {
        let dir = self.home.path().join("router");
        std::fs::create_dir_all(&dir).map_err(|e| TestNetError::Io(e.to_string()))?;
        let jwt = dir.join(format!("{}.jwt", router.name));
        let jwt_s = path_str(&jwt)?;
        self.ziti(&[
            "edge",
            "create",
            "edge-router",
            &router.name,
            "--jwt-output-file",
            jwt_s,
            "--tunneler-enabled",
            "--role-attributes",
            "public",
        ])?;
        let mut cmd = self.router_command(router);
        cmd.args(["create", "config", "router", "edge", "--routerName"])
            .arg(&router.name)
            .arg("--output")
            .arg(&router.config);
        process::run(cmd, "ziti create config router edge")?;
        let mut cmd = self.router_command(router);
        cmd.args(["router", "enroll"])
            .arg(&router.config)
            .arg("--jwt")
            .arg(&jwt);
        process::run(cmd, "ziti router enroll")?;
        Ok(())
    }

    fn router_command(&self, router: &RouterInfo) -> Command {
        let mut cmd = self.command();
        let port = router.port.to_string();
        cmd.env("ZITI_HOME", self.home.path().join("router"))
            .env("ZITI_CTRL_ADVERTISED_ADDRESS", "127.0.0.1")
            .env("ZITI_CTRL_ADVERTISED_PORT", router.ctrl_port.to_string())
            .env("ZITI_ROUTER_ADVERTISED_ADDRESS", "127.0.0.1")
            .env("ZITI_ROUTER_PORT", &port)
            .env("ZITI_ROUTER_LISTENER_BIND_PORT", &port);
        cmd
    }

    /// Starts (or restarts) the first edge router and waits until the controller reports it
    /// online.
    pub fn start_router(&self) -> Result<()> {
        self.start_router_of(0)
    }

    /// Starts (or restarts) edge router `i` and waits until the controller reports it online.
    pub fn start_router_of(&self, i: usize) -> Result<()> {
        let (Some(router), Some(slot)) = (self.routers.get(i), self.router_procs.get(i)) else {
            return Err(TestNetError::Process(format!("no router {i}")));
        };
        let mut slot = slot
            .lock()
            .map_err(|_| TestNetError::Io("router lock poisoned".into()))?;
        if slot.is_some() {
            return Ok(());
        }
        let mut cmd = self.router_command(router);
        cmd.args(["router", "run"]).arg(&router.config);
        let mut guard = ChildGuard::spawn(&format!("router {i}"), cmd, &router.log)?;
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let listening = std::net::TcpStream::connect(("127.0.0.1", router.port)).is_ok();
            if listening && self.router_online_of(i)? {
                break;
            }
            if !guard.is_running() {
                return Err(TestNetError::Process(format!(
                    "router {i} exited; last output:\n{}",
                    guard.log_tail(30)
                )));
            }
            if Instant::now() > deadline {
                return Err(TestNetError::Timeout(format!(
                    "router {i} not online after 120 s; last output:\n{}",
                    guard.log_tail(30)
                )));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        *slot = Some(guard);
        Ok(())
    }

    /// Kills the first controller (for tests of a controller that is down). The routers, and
    /// the clients, keep running. [`TestNet::start_controller`] brings it back.
    pub fn stop_controller(&self) -> Result<()> {
        self.stop_controller_of(0)
    }

    /// Kills controller `i`; [`TestNet::start_controller_of`] brings it back.
    pub fn stop_controller_of(&self, i: usize) -> Result<()> {
        let Some(m) = self.members.get(i) else {
            return Err(TestNetError::Process(format!("no controller {i}")));
        };
        m.process
            .lock()
            .map_err(|_| TestNetError::Io("controller lock poisoned".into()))?
            .kill();
        Ok(())
    }

    /// Starts the first controller again with its database (after
    /// [`TestNet::stop_controller`]) and waits until it answers.
    pub fn start_controller(&self) -> Result<()> {
        self.start_controller_of(0)
    }

    /// Starts controller `i` again with its database (a cluster member rejoins its cluster) and
    /// waits until it answers.
    pub fn start_controller_of(&self, i: usize) -> Result<()> {
        let Some(m) = self.members.get(i) else {
            return Err(TestNetError::Process(format!("no controller {i}")));
        };
        let mut c = m
            .process
            .lock()
            .map_err(|_| TestNetError::Io("controller lock poisoned".into()))?;
        if c.is_running() {
            return Ok(());
        }
        let cmd = quickstart_command(
            &self.ziti,
            self.home.path(),
            &m.instance,
            m.port,
            self.members.len() > 1,
            m.join,
            &self.cli_dir,
        );
        let mut guard = ChildGuard::spawn(&format!("controller {}", m.instance), cmd, &m.log)?;
        wait_for_controller(&mut guard, m.port)?;
        *c = guard;
        Ok(())
    }

    /// Kills the first edge router (for reconnect tests). [`TestNet::start_router`] brings it
    /// back.
    pub fn stop_router(&self) -> Result<()> {
        self.stop_router_of(0)
    }

    /// Kills edge router `i`; [`TestNet::start_router_of`] brings it back.
    pub fn stop_router_of(&self, i: usize) -> Result<()> {
        let Some(slot) = self.router_procs.get(i) else {
            return Err(TestNetError::Process(format!("no router {i}")));
        };
        if let Some(mut g) = slot
            .lock()
            .map_err(|_| TestNetError::Io("router lock poisoned".into()))?
            .take()
        {
            g.kill();
        }
        Ok(())
    }

    /// Whether the controller lists the first router as online.
    pub fn router_online(&self) -> Result<bool> {
        self.router_online_of(0)
    }

    /// Whether the controller lists router `i` as online.
    pub fn router_online_of(&self, i: usize) -> Result<bool> {
        let Some(router) = self.routers.get(i) else {
            return Ok(false);
        };
        let filter = format!("name = \"{}\"", router.name);
        let out = self.ziti(&["edge", "list", "edge-routers", &filter, "-j"])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| TestNetError::Cli(format!("edge-router listing is not JSON: {e}")))?;
        Ok(v["data"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|r| r["name"] == router.name.as_str() && r["isOnline"] == true))
    }

    /// The first router's output so far.
    pub fn router_log(&self) -> String {
        self.router_log_of(0)
    }

    /// Router `i`'s output so far.
    pub fn router_log_of(&self, i: usize) -> String {
        self.routers
            .get(i)
            .and_then(|r| std::fs::read_to_string(&r.log).ok())
            .unwrap_or_default()
    }

    /// The first controller's output so far.
    pub fn controller_log(&self) -> String {
        self.controller_log_of(0)
    }

    /// Controller `i`'s output so far.
    pub fn controller_log_of(&self, i: usize) -> String {
        self.members
            .get(i)
            .and_then(|m| std::fs::read_to_string(&m.log).ok())
            .unwrap_or_default()
    }

    /// Creates an identity with role attributes; returns the path of its enrollment JWT.
    pub fn create_identity(&self, name: &str, attrs: &[&str]) -> Result<PathBuf> {
        let jwt = self.home.path().join(format!("{name}.jwt"));
        let mut args = vec!["edge", "create", "identity", name, "-o", path_str(&jwt)?];
        let joined = attrs.join(",");
        if !attrs.is_empty() {
            args.extend(["-a", joined.as_str()]);
        }
        self.ziti(&args)?;
        Ok(jwt)
    }

    /// Issues a new one-time enrollment for an existing identity, valid `minutes`; returns the JWT
    /// path. (Delete the identity's current enrollment first if it has one.)
    pub fn create_enrollment_ott(&self, name: &str, minutes: u32) -> Result<PathBuf> {
        let jwt = self.home.path().join(format!(
            "{name}-{}.jwt",
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        self.ziti(&[
            "edge",
            "create",
            "enrollment",
            "ott",
            name,
            "-d",
            &minutes.to_string(),
            "-o",
            path_str(&jwt)?,
        ])?;
        Ok(jwt)
    }

    /// Issues a new one-time enrollment for an existing identity that expires `valid_for` from now,
    /// to the second; returns the JWT path. The CLI only counts whole minutes, so this goes
    /// through the management API: tests of expired tokens wait seconds, not a minute. The
    /// controller refuses an expiry that is not in the future, so keep `valid_for` a few seconds
    /// long. (Delete the identity's current enrollment first if it has one.)
    pub fn create_enrollment_ott_expiring_in(
        &self,
        name: &str,
        valid_for: Duration,
    ) -> Result<PathBuf> {
        let filter = format!("name = \"{name}\"");
        let out = self.ziti(&["edge", "list", "identities", &filter, "-j"])?;
        let listing: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| TestNetError::Cli(format!("identity listing is not JSON: {e}")))?;
        let identity_id = listing["data"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|i| i["name"] == name)
            .and_then(|i| i["id"].as_str())
            .ok_or_else(|| TestNetError::Cli(format!("no identity named {name}: {listing}")))?
            .to_string();
        let session = self.management_login()?;
        let body = serde_json::json!({
            "method": "ott",
            "identityId": identity_id,
            "expiresAt": rfc3339_utc(SystemTime::now() + valid_for),
        });
        let created = self.management(&session, "POST", "enrollments", Some(&body))?;
        let enrollment = created["data"]["id"]
            .as_str()
            .ok_or_else(|| TestNetError::Cli(format!("enrollment without id: {created}")))?;
        let detail =
            self.management(&session, "GET", &format!("enrollments/{enrollment}"), None)?;
        let jwt = detail["data"]["jwt"]
            .as_str()
            .ok_or_else(|| TestNetError::Cli(format!("enrollment without JWT: {detail}")))?;
        let path = self.home.path().join(format!(
            "{name}-{}.jwt",
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, jwt).map_err(|e| TestNetError::Io(e.to_string()))?;
        Ok(path)
    }

    /// Logs in to the management API as admin (password, legacy session); returns the
    /// `zt-session` token.
    fn management_login(&self) -> Result<String> {
        let mut cmd = Command::new("curl");
        cmd.args([
            "-sSk",
            "--max-time",
            "60",
            "-X",
            "POST",
            "-H",
            "content-type: application/json",
            "--data",
            r#"{"username":"admin","password":"admin"}"#,
        ])
        .arg(format!(
            "{}/edge/management/v1/authenticate?method=password",
            self.live_ctrl_url()
        ));
        let v = json_reply(process::run(cmd, "management login")?, "management login")?;
        v["data"]["token"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| TestNetError::Cli(format!("management login without token: {v}")))
    }

    /// One management API request with curl; the controller's error, if any, becomes `Cli`.
    fn management(
        &self,
        session: &str,
        method: &str,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value> {
        let what = format!("management {method} {path}");
        let mut cmd = Command::new("curl");
        cmd.args(["-sSk", "--max-time", "60", "-X", method, "-H"])
            .arg(format!("zt-session: {session}"));
        if let Some(body) = body {
            cmd.args(["-H", "content-type: application/json", "--data"])
                .arg(body.to_string());
        }
        cmd.arg(format!(
            "{}/edge/management/v1/{path}",
            self.live_ctrl_url()
        ));
        json_reply(process::run(cmd, &what)?, &what)
    }

    /// Enrolls a JWT with the Go CLI (`ziti edge enroll`), writing the identity JSON to `out`.
    /// `key_alg` is `"RSA"` or `"EC"`.
    pub fn cli_enroll(&self, jwt: &Path, out: &Path, key_alg: &str) -> Result<()> {
        self.ziti(&[
            "edge",
            "enroll",
            path_str(jwt)?,
            "--out",
            path_str(out)?,
            "--keyAlg",
            key_alg,
        ])?;
        Ok(())
    }

    /// Creates an identity with role attributes and enrolls it (EC key) into `out`.
    pub fn enroll_identity(&self, name: &str, attrs: &[&str], out: &Path) -> Result<()> {
        let jwt = self.create_identity(name, attrs)?;
        self.cli_enroll(&jwt, out, "EC")
    }

    /// Creates a config of `config_type` with the given JSON.
    pub fn create_config(&self, name: &str, config_type: &str, json: &str) -> Result<()> {
        self.ziti(&["edge", "create", "config", name, config_type, json])?;
        Ok(())
    }

    /// Creates a service with configs and role attributes.
    pub fn create_service(
        &self,
        name: &str,
        configs: &[&str],
        attrs: &[&str],
        encryption_required: bool,
    ) -> Result<()> {
        let configs = configs.join(",");
        let attrs = attrs.join(",");
        let mut args = vec!["edge", "create", "service", name];
        if !configs.is_empty() {
            args.extend(["--configs", configs.as_str()]);
        }
        if !attrs.is_empty() {
            args.extend(["-a", attrs.as_str()]);
        }
        args.extend(["-e", if encryption_required { "ON" } else { "OFF" }]);
        self.ziti(&args)?;
        Ok(())
    }

    /// Creates a service policy; `kind` is `"Dial"` or `"Bind"`. Roles are comma-joined
    /// (`@name` for one entity, `#attr` for an attribute).
    pub fn create_service_policy(
        &self,
        name: &str,
        kind: &str,
        service_roles: &[&str],
        identity_roles: &[&str],
    ) -> Result<()> {
        self.ziti(&[
            "edge",
            "create",
            "service-policy",
            name,
            kind,
            "--service-roles",
            &service_roles.join(","),
            "--identity-roles",
            &identity_roles.join(","),
        ])?;
        Ok(())
    }

    /// Replaces an identity's role attributes.
    pub fn update_identity_attrs(&self, name: &str, attrs: &[&str]) -> Result<()> {
        self.ziti(&[
            "edge",
            "update",
            "identity",
            name,
            "--role-attributes",
            &attrs.join(","),
        ])?;
        Ok(())
    }

    /// Deletes an entity, e.g. `delete("service", "echo")`.
    pub fn delete(&self, entity: &str, name: &str) -> Result<()> {
        self.ziti(&["edge", "delete", entity, name])?;
        Ok(())
    }

    /// Starts the Go tunneler (`ziti tunnel <mode> --identity <json> <extra>...`) as a child that
    /// is killed with the guard (or with the test process). Its output goes to a log file.
    pub fn spawn_go_tunnel(
        &self,
        mode: &str,
        identity: &Path,
        extra: &[&str],
    ) -> Result<ChildGuard> {
        let mut cmd = self.command();
        cmd.args(["tunnel", mode, "--identity"])
            .arg(identity)
            .args(extra);
        let log = self
            .home
            .path()
            .join(format!("{}.log", unique_name(&format!("tunnel-{mode}"))));
        ChildGuard::spawn(&format!("ziti tunnel {mode}"), cmd, &log)
    }

    /// Keeps a child alive as long as the network (for helpers started by shared fixtures).
    pub fn adopt(&self, child: ChildGuard) {
        if let Ok(mut v) = self.spawned.lock() {
            v.push(child);
        }
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        if let Ok(mut v) = self.spawned.lock() {
            v.clear();
        }
        for i in 0..self.routers.len() {
            let _ = self.stop_router_of(i);
        }
        for i in 0..self.members.len() {
            let _ = self.stop_controller_of(i);
        }
    }
}

/// `ziti edge quickstart` for controller `instance` of the network in `home`: the first start
/// initialises `home/quickstart/<instance>`, later starts reuse it. Cluster members share
/// `home/quickstart` (its PKI) and a trust domain; all but the first `join` the first.
fn quickstart_command(
    ziti: &Path,
    home: &Path,
    instance: &str,
    ctrl_port: u16,
    cluster: bool,
    join: Option<u16>,
    cli_dir: &Path,
) -> Command {
    let mut cmd = Command::new(ziti);
    cmd.args(["edge", "quickstart"]);
    if let Some(first) = join {
        cmd.args(["join", "--cluster-member"])
            .arg(format!("tls:127.0.0.1:{first}"));
    }
    cmd.args(["--no-router", "--instance-id", instance]);
    if cluster {
        cmd.args(["--trust-domain", QS_TRUST_DOMAIN]);
    }
    cmd.arg("--home")
        .arg(home.join("quickstart"))
        .args(["--ctrl-address", "127.0.0.1", "--ctrl-port"])
        .arg(ctrl_port.to_string())
        .env("ZITI_CONFIG_DIR", cli_dir)
        .env("HOME", home);
    cmd
}

/// Whether a CLI failure says the cluster has no (reachable) leader for the moment.
fn is_leaderless(msg: &str) -> bool {
    msg.contains("CLUSTER_NO_LEADER")
        || msg.contains("SERVER_TOO_MANY_REQUESTS")
        || msg.contains("error dialing peer")
}

/// Sets `edge.oidc.accessTokenDuration` in the controller config under `instance_home`.
fn patch_token_duration(instance_home: &Path, duration: &str) -> Result<()> {
    let cfg = instance_home.join("ctrl.yaml");
    let yaml = std::fs::read_to_string(&cfg)
        .map_err(|e| TestNetError::Io(format!("read {}: {e}", cfg.display())))?;
    let patched = yaml.replacen(
        "\nedge:\n",
        &format!("\nedge:\n  oidc:\n    accessTokenDuration: {duration}\n"),
        1,
    );
    if patched == yaml {
        return Err(TestNetError::Io("ctrl.yaml has no `edge:` section".into()));
    }
    std::fs::write(&cfg, patched).map_err(|e| TestNetError::Io(e.to_string()))
}

fn wait_for_controller(controller: &mut ChildGuard, port: u16) -> Result<()> {
    let url = format!("https://127.0.0.1:{port}/edge/client/v1/version");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let mut cmd = Command::new("curl");
        cmd.args(["-sk", "--max-time", "2", &url]);
        if let Ok(body) = process::run(cmd, "curl")
            && body.contains("\"capabilities\"")
        {
            return Ok(());
        }
        if !controller.is_running() {
            return Err(TestNetError::Process(format!(
                "controller exited; last output:\n{}",
                controller.log_tail(40)
            )));
        }
        if Instant::now() > deadline {
            return Err(TestNetError::Timeout(format!(
                "controller did not answer {url} in 120 s; last output:\n{}",
                controller.log_tail(40)
            )));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Removes network homes left behind by test processes that no longer exist (a shared network
/// lives in a static and is never dropped; its children die with the process, its files do not).
fn remove_stale_homes() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix("zt-testnet-")) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Parses a management API reply; an `error` object in it becomes [`TestNetError::Cli`].
fn json_reply(body: String, what: &str) -> Result<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(&body)
        .map_err(|e| TestNetError::Cli(format!("{what}: reply is not JSON ({e}): {body}")))?;
    if v.get("error").is_some() {
        return Err(TestNetError::Cli(format!("{what}: {v}")));
    }
    Ok(v)
}

/// `2026-01-31T23:59:59Z` for `t` (whole seconds, UTC).
fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Days since 1970-01-01 to a civil date (H. Hinnant's algorithm), years from 0000-03-01.
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3_600,
        rem % 3_600 / 60,
        rem % 60
    )
}

fn path_str(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| TestNetError::Io(format!("non-UTF-8 path {}", p.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_utc_formats_whole_seconds() {
        let at = |s: u64| rfc3339_utc(UNIX_EPOCH + Duration::from_secs(s));
        assert_eq!(at(0), "1970-01-01T00:00:00Z");
        assert_eq!(at(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(at(1_796_199_020), "2026-12-02T08:10:20Z");
        assert_eq!(at(4_102_444_799), "2099-12-31T23:59:59Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_millis(1_999)),
            "1970-01-01T00:00:01Z"
        );
    }
}
