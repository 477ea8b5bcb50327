//! What a running tunnel is doing, on demand: identities, services, routers, live flows and
//! the counters since start ([`TunnelStatus`]), and the same as Prometheus text
//! ([`TunnelStatus::prometheus`]).
//!
//! The counters are cheap to keep: the packet task adds each chunk it moves to its flow's
//! counts and to the totals, each relay adds its dial's outcome; a status request walks the
//! flows once.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};
use ziti_sdk::DialError;
use ziti_sdk::services::{InterceptAddress, InterceptV1};

/// A snapshot of a running tunnel (see [`TunnelHandle::status`](super::TunnelHandle::status)).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TunnelStatus {
    /// The identities of the tunnel.
    pub identities: Vec<IdentityStatus>,
    /// Every service of every identity, sorted by service name, then identity.
    pub services: Vec<ServiceStatus>,
    /// The live router channels of every identity.
    pub routers: Vec<RouterStatus>,
    /// The intercepted TCP connections, established or held while their service is dialed.
    pub flows: Vec<FlowStatus>,
    /// UDP flows (client address, intercepted address) with a live relay.
    pub udp_flows: usize,
    /// Counters since the tunnel started.
    pub totals: TunnelTotals,
}

/// One identity of the tunnel.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct IdentityStatus {
    /// Its name in the tunnel.
    pub name: String,
    /// `authenticated` while it holds an API session, else `not authenticated`.
    pub auth: String,
    /// The API address of the controller in use.
    pub controller: String,
    /// Every controller it knows (the identity's, then the HA cluster's members), in the order
    /// they are tried when the one in use stops answering.
    pub controllers: Vec<String>,
    /// Services it sees (may dial or bind).
    pub services: usize,
}

/// One service as one identity sees it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct ServiceStatus {
    /// Service name.
    pub name: String,
    /// The identity that sees it.
    pub identity: String,
    /// The identity may dial it.
    pub dial: bool,
    /// The identity may bind (host) it.
    pub bind: bool,
    /// Its intercept, when this identity's intercept of it is in force.
    pub intercept: Option<InterceptStatus>,
    /// Its hosting, when this identity hosts it.
    pub hosting: Option<HostingStatus>,
}

/// An intercept in force.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct InterceptStatus {
    /// Addresses: IPs, CIDRs, hostnames, `*.domain` wildcards.
    pub addresses: Vec<String>,
    /// Port ranges (`80`, `8000-8099`).
    pub ports: Vec<String>,
    /// `tcp`, `udp`.
    pub protocols: Vec<String>,
}

/// A hosted service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct HostingStatus {
    /// Terminators its host config lists.
    pub terminators: usize,
    /// Terminators whose listener is running.
    pub running: usize,
}

/// A live router channel of one identity.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RouterStatus {
    /// The identity whose channel it is.
    pub identity: String,
    /// Router name.
    pub name: String,
    /// Router address (`tls://host:port`).
    pub url: String,
    /// The channel is open (channels that closed are not listed).
    pub connected: bool,
    /// Last measured round-trip time of the channel's latency probe, if one completed.
    pub latency_ms: Option<f64>,
    /// Edge connections and binds open on the channel.
    pub connections: usize,
}

/// One intercepted TCP connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct FlowStatus {
    /// The client's address.
    pub client: SocketAddr,
    /// The address it connected to.
    pub intercepted: SocketAddr,
    /// The service it was dialed to.
    pub service: String,
    /// The dial succeeded (else the client's SYN is held while it runs).
    pub established: bool,
    /// Bytes from the client taken towards the service.
    pub bytes_up: u64,
    /// Bytes from the service handed to the client's connection.
    pub bytes_down: u64,
}

/// Counters since the tunnel started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct TunnelTotals {
    /// Intercepted TCP connections open now.
    pub tcp_flows: usize,
    /// UDP flows open now.
    pub udp_flows: usize,
    /// Bytes from clients towards services (TCP and UDP intercepts).
    pub bytes_up: u64,
    /// Bytes from services towards clients (TCP and UDP intercepts).
    pub bytes_down: u64,
    /// Dials of intercepted flows by outcome.
    pub dials: DialCounts,
}

/// Dials of intercepted flows by outcome.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct DialCounts {
    /// The service answered.
    pub ok: u64,
    /// The identity may not dial the service.
    pub not_authorized: u64,
    /// Nobody hosts the service.
    pub no_terminators: u64,
    /// The service does not exist or the identity cannot see it.
    pub service_not_found: u64,
    /// The network did not answer in time.
    pub timeout: u64,
    /// Any other failure (no edge router, controller error, router refusal).
    pub other: u64,
}

/// How one dial ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum DialOutcome {
    /// Connected.
    Ok,
    /// [`DialError::NotAuthorized`].
    NotAuthorized,
    /// [`DialError::NoTerminators`].
    NoTerminators,
    /// [`DialError::ServiceNotFound`].
    ServiceNotFound,
    /// [`DialError::Timeout`].
    Timeout,
    /// Any other [`DialError`].
    Other,
}

impl DialOutcome {
    /// Every outcome, in the order of [`DialCounts`]' fields.
    pub const ALL: [DialOutcome; 6] = [
        DialOutcome::Ok,
        DialOutcome::NotAuthorized,
        DialOutcome::NoTerminators,
        DialOutcome::ServiceNotFound,
        DialOutcome::Timeout,
        DialOutcome::Other,
    ];

    /// The outcome of a dial that returned `result`.
    pub fn of<T>(result: &Result<T, DialError>) -> Self {
        match result {
            Ok(_) => DialOutcome::Ok,
            Err(DialError::NotAuthorized { .. }) => DialOutcome::NotAuthorized,
            Err(DialError::NoTerminators { .. }) => DialOutcome::NoTerminators,
            Err(DialError::ServiceNotFound { .. }) => DialOutcome::ServiceNotFound,
            Err(DialError::Timeout { .. }) => DialOutcome::Timeout,
            Err(_) => DialOutcome::Other,
        }
    }

    /// The label used in metrics: `ok`, `not_authorized`, ...
    pub fn label(self) -> &'static str {
        match self {
            DialOutcome::Ok => "ok",
            DialOutcome::NotAuthorized => "not_authorized",
            DialOutcome::NoTerminators => "no_terminators",
            DialOutcome::ServiceNotFound => "service_not_found",
            DialOutcome::Timeout => "timeout",
            DialOutcome::Other => "other",
        }
    }

    fn index(self) -> usize {
        match self {
            DialOutcome::Ok => 0,
            DialOutcome::NotAuthorized => 1,
            DialOutcome::NoTerminators => 2,
            DialOutcome::ServiceNotFound => 3,
            DialOutcome::Timeout => 4,
            DialOutcome::Other => 5,
        }
    }
}

impl DialCounts {
    /// The count of one outcome.
    pub fn get(&self, outcome: DialOutcome) -> u64 {
        match outcome {
            DialOutcome::Ok => self.ok,
            DialOutcome::NotAuthorized => self.not_authorized,
            DialOutcome::NoTerminators => self.no_terminators,
            DialOutcome::ServiceNotFound => self.service_not_found,
            DialOutcome::Timeout => self.timeout,
            DialOutcome::Other => self.other,
        }
    }
}

/// The tunnel's cumulative counters, shared by the packet task and the relays.
#[derive(Debug, Default)]
pub(super) struct Counters {
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    dials: [AtomicU64; 6],
}

impl Counters {
    pub(super) fn add_up(&self, n: usize) {
        self.bytes_up
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn add_down(&self, n: usize) {
        self.bytes_down
            .fetch_add(u64::try_from(n).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    pub(super) fn dialed(&self, outcome: DialOutcome) {
        if let Some(c) = self.dials.get(outcome.index()) {
            c.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The byte and dial counts (the open-flow counts are the caller's).
    pub(super) fn snapshot(&self) -> TunnelTotals {
        let dial = |o: DialOutcome| {
            self.dials
                .get(o.index())
                .map_or(0, |c| c.load(Ordering::Relaxed))
        };
        TunnelTotals {
            tcp_flows: 0,
            udp_flows: 0,
            bytes_up: self.bytes_up.load(Ordering::Relaxed),
            bytes_down: self.bytes_down.load(Ordering::Relaxed),
            dials: DialCounts {
                ok: dial(DialOutcome::Ok),
                not_authorized: dial(DialOutcome::NotAuthorized),
                no_terminators: dial(DialOutcome::NoTerminators),
                service_not_found: dial(DialOutcome::ServiceNotFound),
                timeout: dial(DialOutcome::Timeout),
                other: dial(DialOutcome::Other),
            },
        }
    }
}

impl InterceptStatus {
    /// The intercept of an `intercept.v1` (or `ziti-tunneler-client.v1`) config.
    pub fn of(config: &InterceptV1) -> Self {
        InterceptStatus {
            addresses: config
                .addresses
                .iter()
                .map(|a| match a {
                    InterceptAddress::Ip(ip) => ip.to_string(),
                    InterceptAddress::Cidr(ip, len) => format!("{ip}/{len}"),
                    InterceptAddress::Hostname(h) => h.clone(),
                    InterceptAddress::Wildcard(d) => format!("*.{d}"),
                })
                .collect(),
            ports: config
                .port_ranges
                .iter()
                .map(|p| match p.low == p.high {
                    true => p.low.to_string(),
                    false => format!("{}-{}", p.low, p.high),
                })
                .collect(),
            protocols: config
                .protocols
                .iter()
                .map(|p| format!("{p:?}").to_lowercase())
                .collect(),
        }
    }
}

impl TunnelStatus {
    /// The counters in the Prometheus text exposition format (version 0.0.4):
    /// `zt_flows_open{proto}`, `zt_bytes_total{direction}`, `zt_dials_total{outcome}` and,
    /// for router channels with a measured latency, `zt_router_latency_seconds{router,identity}`.
    pub fn prometheus(&self) -> String {
        let t = &self.totals;
        let mut out = String::new();
        out.push_str("# HELP zt_flows_open Intercepted flows open now.\n");
        out.push_str("# TYPE zt_flows_open gauge\n");
        let _ = writeln!(out, "zt_flows_open{{proto=\"tcp\"}} {}", t.tcp_flows);
        let _ = writeln!(out, "zt_flows_open{{proto=\"udp\"}} {}", t.udp_flows);
        out.push_str("# HELP zt_bytes_total Bytes carried for intercepted flows.\n");
        out.push_str("# TYPE zt_bytes_total counter\n");
        let _ = writeln!(out, "zt_bytes_total{{direction=\"up\"}} {}", t.bytes_up);
        let _ = writeln!(out, "zt_bytes_total{{direction=\"down\"}} {}", t.bytes_down);
        out.push_str("# HELP zt_dials_total Dials of intercepted flows by outcome.\n");
        out.push_str("# TYPE zt_dials_total counter\n");
        for o in DialOutcome::ALL {
            let _ = writeln!(
                out,
                "zt_dials_total{{outcome=\"{}\"}} {}",
                o.label(),
                t.dials.get(o)
            );
        }
        let measured: Vec<(&RouterStatus, f64)> = self
            .routers
            .iter()
            .filter_map(|r| r.latency_ms.map(|ms| (r, ms)))
            .collect();
        if !measured.is_empty() {
            out.push_str(
                "# HELP zt_router_latency_seconds Last round-trip time of a router channel's latency probe.\n",
            );
            out.push_str("# TYPE zt_router_latency_seconds gauge\n");
            for (r, ms) in measured {
                let _ = writeln!(
                    out,
                    "zt_router_latency_seconds{{router=\"{}\",identity=\"{}\"}} {}",
                    label_value(&r.name),
                    label_value(&r.identity),
                    ms / 1000.0
                );
            }
        }
        out
    }
}

/// A Prometheus label value: backslash, double quote and newline escaped.
fn label_value(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prometheus_text_has_every_series_and_escapes_labels() {
        let counters = Counters::default();
        counters.add_up(100);
        counters.add_down(250);
        counters.dialed(DialOutcome::Ok);
        counters.dialed(DialOutcome::Ok);
        counters.dialed(DialOutcome::NoTerminators);
        let mut totals = counters.snapshot();
        totals.tcp_flows = 3;
        totals.udp_flows = 1;
        let status = TunnelStatus {
            routers: vec![RouterStatus {
                identity: "a".into(),
                name: "r\"1\\".into(),
                url: "tls://x:1".into(),
                connected: true,
                latency_ms: Some(12.5),
                connections: 1,
            }],
            totals,
            ..TunnelStatus::default()
        };
        let text = status.prometheus();
        for line in [
            "zt_flows_open{proto=\"tcp\"} 3",
            "zt_flows_open{proto=\"udp\"} 1",
            "zt_bytes_total{direction=\"up\"} 100",
            "zt_bytes_total{direction=\"down\"} 250",
            "zt_dials_total{outcome=\"ok\"} 2",
            "zt_dials_total{outcome=\"no_terminators\"} 1",
            "zt_dials_total{outcome=\"timeout\"} 0",
            "zt_router_latency_seconds{router=\"r\\\"1\\\\\",identity=\"a\"} 0.0125",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} in\n{text}");
        }
    }

    #[test]
    fn no_latency_series_without_a_measurement() {
        let status = TunnelStatus {
            routers: vec![RouterStatus {
                name: "r".into(),
                connected: true,
                ..RouterStatus::default()
            }],
            ..TunnelStatus::default()
        };
        assert!(!status.prometheus().contains("zt_router_latency_seconds"));
    }

    #[test]
    fn status_round_trips_through_json() {
        let status = TunnelStatus {
            flows: vec![FlowStatus {
                client: SocketAddr::from(([100, 64, 0, 1], 40000)),
                intercepted: SocketAddr::from(([10, 20, 30, 41], 80)),
                service: "echo".into(),
                established: true,
                bytes_up: 1,
                bytes_down: 2,
            }],
            ..TunnelStatus::default()
        };
        let json = serde_json::to_string(&status).unwrap_or_default();
        let back: Option<TunnelStatus> = serde_json::from_str(&json).ok();
        assert_eq!(back, Some(status));
    }
}
