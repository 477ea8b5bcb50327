//! The set of router channels a context keeps: one per router for binds, and up to
//! [`DEFAULT_DIAL_CHANNELS`] per router that dials are spread over (see "Dial channels" below).
//!
//! A dial or bind names the routers its session offers; the pool hands back a live channel to
//! one of them, preferring the lowest measured latency. When none is connected it connects to
//! all offered routers at once and takes the first that completes the hello; the others join
//! the pool when they finish. Channels that die are dropped; while a session offers a router the
//! pool has no channel to, each request tries it again in the background (at most once per
//! [`RECONNECT_EVERY`]), so a router that comes back is used again within seconds, and a dead
//! one costs nothing but that attempt.
//!
//! **Dial channels.** Dials may be spread over several channels to the same router
//! ([`RouterPool::set_dial_channels`]). The router hands payloads to an SDK channel through one
//! writer and a queue of a few messages, and drops what does not fit (the circuit's sender
//! resends it later). With several busy circuits on one channel, most of what is dropped is
//! theirs: in 8 parallel downloads through one channel, 47 % of the sender's payloads were
//! dropped and resent (BENCHMARKS.md). Each extra channel has its own queue and writer. The
//! first channel to a router also carries binds, latency probes and the router's status; the
//! others are opened in the background when a dial first picks the router, and a dial takes
//! the live channel with the fewest connections.
//!
//! **Closing.** [`RouterPool::retire`] (run when the owning context is dropped) stops the pool
//! opening channels and closes each channel it has once its last connection or bind ends, so
//! streams still in use finish normally and nothing is left open after them.
//! [`RouterPool::close_all`] closes them at once. A channel whose connect finishes after either
//! is closed straight away instead of joining the pool.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;

use super::RouterError;
use super::connection::{ConnectParams, RouterConnection};
use crate::error_report::error_chain;

/// Least time between two background attempts to reach a router a session offers but the pool
/// has no channel to.
pub const RECONNECT_EVERY: Duration = Duration::from_secs(3);

/// Channels per router that dials are spread over, unless set otherwise.
pub const DEFAULT_DIAL_CHANNELS: usize = 4;

/// An edge router as a session lists it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RouterAddr {
    /// Router name.
    pub name: String,
    /// `tls://host:port`.
    pub url: String,
}

/// Router channels shared by a context.
#[derive(Clone)]
pub struct RouterPool {
    inner: Arc<Inner>,
}

struct Inner {
    tls: Arc<rustls::ClientConfig>,
    token: watch::Receiver<String>,
    push_token_updates: bool,
    label: String,
    connect_timeout: Duration,
    sdk_flow_control: AtomicBool,
    /// Set by [`RouterPool::retire`] and [`RouterPool::close_all`]: no channel is opened or
    /// kept from then on.
    retired: AtomicBool,
    channels: Mutex<HashMap<String, RouterConnection>>,
    connecting: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// When each router without a channel was last tried in the background.
    last_background_try: Mutex<HashMap<String, Instant>>,
    /// How many channels per router dials are spread over (the first included).
    dial_channels: AtomicUsize,
    /// The extra dial channels, by router URL and index (1..dial_channels).
    extra: Mutex<HashMap<(String, usize), RouterConnection>>,
    /// When each extra channel was last tried (at most once per [`RECONNECT_EVERY`]).
    extra_tried: Mutex<HashMap<(String, usize), Instant>>,
}

impl std::fmt::Debug for RouterPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RouterPool")
            .field("label", &self.inner.label)
            .field("routers", &self.connected().len())
            .finish_non_exhaustive()
    }
}

impl RouterPool {
    /// A pool that opens channels with `tls` and the API session token in `token`.
    ///
    /// With `push_token_updates` (OIDC sessions) every later value of `token` is sent to the
    /// routers with UpdateToken, so channels outlive the access token they were opened with.
    pub fn new(
        tls: Arc<rustls::ClientConfig>,
        token: watch::Receiver<String>,
        push_token_updates: bool,
        label: &str,
    ) -> Self {
        RouterPool {
            inner: Arc::new(Inner {
                tls,
                token,
                push_token_updates,
                label: label.to_string(),
                connect_timeout: Duration::from_secs(10),
                sdk_flow_control: AtomicBool::new(true),
                retired: AtomicBool::new(false),
                channels: Mutex::new(HashMap::new()),
                connecting: Mutex::new(HashMap::new()),
                last_background_try: Mutex::new(HashMap::new()),
                dial_channels: AtomicUsize::new(DEFAULT_DIAL_CHANNELS),
                extra: Mutex::new(HashMap::new()),
                extra_tried: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Whether channels opened from now on ask for SDK xgress mode (default `true`; `false`
    /// keeps every connection in legacy Data mode).
    pub fn set_sdk_flow_control(&self, on: bool) {
        self.inner.sdk_flow_control.store(on, Ordering::Relaxed);
    }

    /// How many channels per router dials are spread over (default
    /// [`DEFAULT_DIAL_CHANNELS`]; 0 counts as 1). See the module docs.
    pub fn set_dial_channels(&self, n: usize) {
        self.inner.dial_channels.store(n.max(1), Ordering::Relaxed);
    }

    /// Live channels (the first to each router; extra dial channels are not listed).
    pub fn connected(&self) -> Vec<RouterConnection> {
        self.inner
            .channels
            .lock()
            .map(|m| m.values().filter(|c| !c.is_closed()).cloned().collect())
            .unwrap_or_default()
    }

    /// Every live channel: the first to each router and the extra dial channels.
    pub fn channels(&self) -> Vec<RouterConnection> {
        let mut all = self.connected();
        if let Ok(m) = self.inner.extra.lock() {
            all.extend(m.values().filter(|c| !c.is_closed()).cloned());
        }
        all
    }

    /// A live channel to one of `routers`, connecting if needed (see the module docs). Of a
    /// router's dial channels it is the one with the fewest connections.
    pub async fn select(&self, routers: &[RouterAddr]) -> Result<RouterConnection, RouterError> {
        if routers.is_empty() {
            return Err(RouterError::NoRouters);
        }
        if self.is_retired() {
            return Err(RouterError::PoolClosed);
        }
        if let Some(best) = self.best_live(routers) {
            let now = Instant::now();
            self.reach_missing(routers, now);
            return Ok(self.least_loaded(best, now));
        }
        let mut attempts: FuturesUnordered<_> = routers
            .iter()
            .cloned()
            .map(|r| {
                let pool = self.clone();
                // Spawned so that slower routers still join the pool after we return.
                tokio::spawn(async move {
                    let res = pool.get_or_connect(&r).await;
                    (r, res)
                })
            })
            .collect();
        let mut failures = Vec::new();
        while let Some(joined) = attempts.next().await {
            match joined {
                Ok((_, Ok(conn))) => return Ok(self.least_loaded(conn, Instant::now())),
                Ok((r, Err(e))) => {
                    tracing::debug!(router = %r.name, error = %error_chain(&e), "edge router unreachable");
                    failures.push(e);
                }
                Err(e) => failures.push(RouterError::Task(e)),
            }
        }
        let mut failures = failures.into_iter();
        match failures.next() {
            Some(first) => Err(RouterError::NoneReachable {
                source: Box::new(first),
                others: failures.collect(),
            }),
            None => Err(RouterError::NoRouters),
        }
    }

    /// Live channels to any of `routers`, lowest latency first.
    pub fn live_for(&self, routers: &[RouterAddr]) -> Vec<RouterConnection> {
        let Ok(map) = self.inner.channels.lock() else {
            return Vec::new();
        };
        let mut live: Vec<RouterConnection> = routers
            .iter()
            .filter_map(|r| map.get(&r.url))
            .filter(|c| !c.is_closed())
            .cloned()
            .collect();
        live.sort_by_key(|c| c.latency().unwrap_or(Duration::MAX));
        live
    }

    /// Starts background connections to the offered routers the pool has no channel to (each at
    /// most once per [`RECONNECT_EVERY`]), so every router a session offers is ready for the
    /// next dial and a restarted router rejoins.
    fn reach_missing(&self, routers: &[RouterAddr], now: Instant) {
        let missing: Vec<RouterAddr> = {
            let Ok(map) = self.inner.channels.lock() else {
                return;
            };
            routers
                .iter()
                .filter(|r| map.get(&r.url).is_none_or(RouterConnection::is_closed))
                .cloned()
                .collect()
        };
        if missing.is_empty() {
            return;
        }
        let Ok(mut tried) = self.inner.last_background_try.lock() else {
            return;
        };
        for r in missing {
            if tried
                .get(&r.url)
                .is_some_and(|at| now.saturating_duration_since(*at) < RECONNECT_EVERY)
            {
                continue;
            }
            tried.insert(r.url.clone(), now);
            let pool = self.clone();
            tokio::spawn(async move {
                if let Err(e) = pool.get_or_connect(&r).await {
                    tracing::debug!(router = %r.name, error = %error_chain(&e), "edge router still unreachable");
                }
            });
        }
    }

    /// Among `first` and the live extra dial channels to its router, the one with the fewest
    /// connections; starts the missing extra channels in the background.
    fn least_loaded(&self, first: RouterConnection, now: Instant) -> RouterConnection {
        let n = self.inner.dial_channels.load(Ordering::Relaxed);
        if n <= 1 {
            return first;
        }
        let url = first.url().to_string();
        let mut live = Vec::with_capacity(n);
        let mut missing = Vec::new();
        if let Ok(mut extra) = self.inner.extra.lock() {
            for i in 1..n {
                let key = (url.clone(), i);
                match extra.get(&key) {
                    Some(c) if !c.is_closed() => live.push(c.clone()),
                    Some(_) => {
                        extra.remove(&key);
                        missing.push(key);
                    }
                    None => missing.push(key),
                }
            }
        }
        if !missing.is_empty() {
            self.open_extra(first.name(), missing, now);
        }
        live.into_iter().fold(first, |best, c| {
            if c.connection_count() < best.connection_count() {
                c
            } else {
                best
            }
        })
    }

    /// Opens the extra dial channels `keys` in the background, each at most once per
    /// [`RECONNECT_EVERY`]. A failure only means dials keep using the channels that are up.
    fn open_extra(&self, name: &str, keys: Vec<(String, usize)>, now: Instant) {
        let Ok(mut tried) = self.inner.extra_tried.lock() else {
            return;
        };
        for key in keys {
            if tried
                .get(&key)
                .is_some_and(|at| now.saturating_duration_since(*at) < RECONNECT_EVERY)
            {
                continue;
            }
            tried.insert(key.clone(), now);
            let pool = self.clone();
            let name = name.to_string();
            tokio::spawn(async move {
                let params = pool.connect_params();
                match RouterConnection::connect(&name, &key.0, params).await {
                    Ok(conn) => {
                        if let Ok(mut extra) = pool.inner.extra.lock()
                            && !pool.is_retired()
                        {
                            extra.insert(key, conn);
                        } else {
                            conn.close();
                        }
                    }
                    Err(e) => {
                        tracing::debug!(router = %name, error = %error_chain(&e), "extra dial channel not opened");
                    }
                }
            });
        }
    }

    /// What a new channel is opened with: the current token and the pool's settings.
    fn connect_params(&self) -> ConnectParams {
        let mut token = self.inner.token.clone();
        let current = token.borrow_and_update().clone();
        ConnectParams {
            tls: self.inner.tls.clone(),
            token: current,
            token_updates: self.inner.push_token_updates.then_some(token),
            label: self.inner.label.clone(),
            connect_timeout: self.inner.connect_timeout,
            sdk_flow_control: self.inner.sdk_flow_control.load(Ordering::Relaxed),
        }
    }

    fn best_live(&self, routers: &[RouterAddr]) -> Option<RouterConnection> {
        self.live_for(routers).into_iter().next()
    }

    /// The channel to `router`, opening it if there is none (one attempt at a time per router).
    pub async fn get_or_connect(
        &self,
        router: &RouterAddr,
    ) -> Result<RouterConnection, RouterError> {
        let gate = {
            let mut c = self
                .inner
                .connecting
                .lock()
                .map_err(|_| RouterError::PoolUnavailable)?;
            c.entry(router.url.clone()).or_default().clone()
        };
        let _turn = gate.lock().await;
        if self.is_retired() {
            return Err(RouterError::PoolClosed);
        }
        if let Some(c) = self.live(&router.url) {
            return Ok(c);
        }
        let params = self.connect_params();
        let conn = RouterConnection::connect(&router.name, &router.url, params).await?;
        // Checked under the map's lock, which `retire` and `close_all` take after setting the
        // flag: a channel is either in the map for them to close, or closed here.
        let mut m = self
            .inner
            .channels
            .lock()
            .map_err(|_| RouterError::PoolUnavailable)?;
        if self.is_retired() {
            drop(m);
            conn.close();
            return Err(RouterError::PoolClosed);
        }
        m.insert(router.url.clone(), conn.clone());
        Ok(conn)
    }

    fn is_retired(&self) -> bool {
        self.inner.retired.load(Ordering::SeqCst)
    }

    fn live(&self, url: &str) -> Option<RouterConnection> {
        let mut map = self.inner.channels.lock().ok()?;
        match map.get(url) {
            Some(c) if !c.is_closed() => Some(c.clone()),
            Some(_) => {
                map.remove(url);
                None
            }
            None => None,
        }
    }

    /// Stops using the routers: no channel is opened from now on ([`RouterError::PoolClosed`]),
    /// and each open channel closes once its last connection or bind ends (at once if it has
    /// none). Run when the owning context is dropped.
    pub fn retire(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
        if let Ok(mut m) = self.inner.channels.lock() {
            for (_, c) in m.drain() {
                c.close_when_idle();
            }
        }
        if let Ok(mut m) = self.inner.extra.lock() {
            for (_, c) in m.drain() {
                c.close_when_idle();
            }
        }
    }

    /// Closes every channel now (their connections end) and, like [`retire`](Self::retire),
    /// opens no more.
    pub fn close_all(&self) {
        self.inner.retired.store(true, Ordering::SeqCst);
        if let Ok(mut m) = self.inner.channels.lock() {
            for c in m.values() {
                c.close();
            }
            m.clear();
        }
        if let Ok(mut m) = self.inner.extra.lock() {
            for c in m.values() {
                c.close();
            }
            m.clear();
        }
    }
}
