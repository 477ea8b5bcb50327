//! Which service a connection leaving the session belongs to: the intercept table built from the
//! services' `intercept.v1` (or `ziti-tunneler-client.v1`) configs. Pure: no sockets, no clock.
//!
//! A flow is matched by protocol, destination port and destination address. The address matches
//! an intercept when it is one of its IPs, lies in one of its CIDRs, or is the pool address the
//! DNS server gave one of its hostnames (exact or wildcard). When several services match, the most
//! specific address wins (IP and exact hostname, then the longest CIDR prefix, then the longest
//! wildcard domain), then the service name, so the choice never depends on arrival order.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use ziti_sdk::Service;
use ziti_sdk::services::{InterceptAddress, InterceptV1, PortRange, Protocol};

use crate::app_data::{AppData, FlowAddrs};

/// One service's intercept: what it captures and how to dial it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intercept {
    /// The service to dial.
    pub service: String,
    /// Captured protocols.
    pub protocols: Vec<Protocol>,
    /// Captured addresses.
    pub addresses: Vec<InterceptAddress>,
    /// Captured destination ports.
    pub port_ranges: Vec<PortRange>,
    /// `dialOptions.identity`, possibly with `$dst_ip`, `$dst_port`, `$dst_protocol`,
    /// `$dst_hostname` placeholders.
    pub dial_identity: Option<String>,
    /// How long a dial may take.
    pub connect_timeout: Duration,
    /// `sourceIp`: the source address the host should use, possibly with `$src_ip`,
    /// `$src_port`, `$dst_ip`, `$dst_port` placeholders; sent as app data `source_addr`.
    pub source_ip: Option<String>,
}

impl Intercept {
    /// The intercept of a service the identity may dial, if it has an intercept config.
    pub fn from_service(service: &Service) -> Option<Self> {
        if !service.permissions.dial {
            return None;
        }
        let config: InterceptV1 = service.configs.intercept()?;
        Some(Self::from_config(&service.name, &config))
    }

    /// An intercept from a parsed config.
    pub fn from_config(service: &str, config: &InterceptV1) -> Self {
        Intercept {
            service: service.to_string(),
            protocols: config.protocols.clone(),
            addresses: config.addresses.clone(),
            port_ranges: config.port_ranges.clone(),
            dial_identity: config
                .dial_options
                .as_ref()
                .and_then(|o| o.identity.clone())
                .filter(|i| !i.is_empty()),
            connect_timeout: config.connect_timeout(),
            source_ip: config.source_ip.clone().filter(|s| !s.is_empty()),
        }
    }

    /// The terminator identity to dial for `flow`, placeholders filled in.
    pub fn dial_identity_for(&self, flow: &FlowAddrs) -> Option<String> {
        self.dial_identity.as_deref().map(|t| flow.expand(t))
    }

    /// The app data for a dial of `flow`: what was intercepted, and `sourceIp` filled in.
    pub fn app_data_for(&self, flow: &FlowAddrs) -> AppData {
        AppData::for_flow(flow, self.source_ip.as_deref().map(|t| flow.expand(t)))
    }

    fn captures_port(&self, protocol: Protocol, port: u16) -> bool {
        self.protocols.contains(&protocol) && self.port_ranges.iter().any(|r| r.contains(port))
    }

    /// How specifically this intercept names `ip` (reached under `hostname`, if the DNS server
    /// gave it out): `None` when it does not.
    fn specificity(&self, ip: IpAddr, hostname: Option<&str>) -> Option<u32> {
        self.addresses
            .iter()
            .filter_map(|a| match a {
                InterceptAddress::Ip(x) if *x == ip => Some(1000),
                InterceptAddress::Cidr(net, prefix) if cidr_contains(*net, *prefix, ip) => {
                    Some(500 + u32::from(*prefix))
                }
                InterceptAddress::Hostname(_) | InterceptAddress::Wildcard(_) => {
                    let name = hostname?;
                    if !a.matches_hostname(name) {
                        return None;
                    }
                    match a {
                        InterceptAddress::Wildcard(d) => {
                            Some(100 + u32::try_from(d.len()).unwrap_or(255).min(255))
                        }
                        _ => Some(1000),
                    }
                }
                _ => None,
            })
            .max()
    }
}

/// Whether `ip` lies in `net/prefix` (false across address families).
pub fn cidr_contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    match (net, ip) {
        (IpAddr::V4(n), IpAddr::V4(i)) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            u32::from(n) & mask == u32::from(i) & mask
        }
        (IpAddr::V6(n), IpAddr::V6(i)) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            u128::from(n) & mask == u128::from(i) & mask
        }
        _ => false,
    }
}

/// What changed when a service was put into or taken out of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableChange {
    /// Nothing: the intercept was already there, or was never there.
    None,
    /// The set of intercepts changed.
    Changed,
}

/// The intercepts of every dialable service, keyed by service name.
#[derive(Debug, Clone, Default)]
pub struct InterceptTable {
    by_service: BTreeMap<String, Intercept>,
}

impl InterceptTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies a service's current state: inserts or replaces its intercept, or removes it when
    /// the service can no longer be dialed or lost its intercept config.
    pub fn apply_service(&mut self, service: &Service) -> TableChange {
        match Intercept::from_service(service) {
            Some(i) => self.insert(i),
            None => self.remove(&service.name),
        }
    }

    /// Inserts or replaces an intercept.
    pub fn insert(&mut self, intercept: Intercept) -> TableChange {
        match self.by_service.get(&intercept.service) {
            Some(old) if *old == intercept => TableChange::None,
            _ => {
                self.by_service.insert(intercept.service.clone(), intercept);
                TableChange::Changed
            }
        }
    }

    /// Removes a service's intercept.
    pub fn remove(&mut self, service: &str) -> TableChange {
        match self.by_service.remove(service) {
            Some(_) => TableChange::Changed,
            None => TableChange::None,
        }
    }

    /// Number of intercepted services.
    pub fn len(&self) -> usize {
        self.by_service.len()
    }

    /// `true` when nothing is intercepted.
    pub fn is_empty(&self) -> bool {
        self.by_service.is_empty()
    }

    /// The intercept of one service.
    pub fn get(&self, service: &str) -> Option<&Intercept> {
        self.by_service.get(service)
    }

    /// The intercept a flow to `dst` belongs to. `hostname` is the name the DNS server handed
    /// `dst` out for, if any.
    pub fn find(
        &self,
        protocol: Protocol,
        dst: SocketAddr,
        hostname: Option<&str>,
    ) -> Option<&Intercept> {
        self.by_service
            .values()
            .filter(|i| i.captures_port(protocol, dst.port()))
            .filter_map(|i| i.specificity(dst.ip(), hostname).map(|s| (s, i)))
            // max_by_key keeps the last maximum; iterate names in reverse so the first name wins.
            .rev()
            .max_by_key(|(s, _)| *s)
            .map(|(_, i)| i)
    }

    /// Every hostname pattern to answer in DNS (`name` or `*.domain`), deduplicated.
    pub fn hostnames(&self) -> BTreeSet<String> {
        self.by_service
            .values()
            .flat_map(|i| i.addresses.iter())
            .filter_map(|a| match a {
                InterceptAddress::Hostname(h) => Some(h.clone()),
                InterceptAddress::Wildcard(d) => Some(format!("*.{d}")),
                _ => None,
            })
            .collect()
    }

    /// Every IP and CIDR to route into the tunnel, as `(network, prefix)`.
    pub fn ip_routes(&self) -> BTreeSet<(IpAddr, u8)> {
        self.by_service
            .values()
            .flat_map(|i| i.addresses.iter())
            .filter_map(|a| match a {
                InterceptAddress::Ip(ip) => Some((*ip, if ip.is_ipv4() { 32 } else { 128 })),
                InterceptAddress::Cidr(net, prefix) => Some((network_of(*net, *prefix), *prefix)),
                _ => None,
            })
            .collect()
    }
}

fn network_of(ip: IpAddr, prefix: u8) -> IpAddr {
    match ip {
        IpAddr::V4(v4) => {
            let p = u32::from(prefix.min(32));
            let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
            IpAddr::V4((u32::from(v4) & mask).into())
        }
        IpAddr::V6(v6) => {
            let p = u32::from(prefix.min(128));
            let mask = if p == 0 { 0 } else { u128::MAX << (128 - p) };
            IpAddr::V6((u128::from(v6) & mask).into())
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn intercept(
        service: &str,
        addrs: &[&str],
        ports: (u16, u16),
        protos: &[Protocol],
    ) -> Intercept {
        Intercept {
            service: service.into(),
            protocols: protos.to_vec(),
            addresses: addrs.iter().map(|a| InterceptAddress::parse(a)).collect(),
            port_ranges: vec![PortRange {
                low: ports.0,
                high: ports.1,
            }],
            dial_identity: None,
            connect_timeout: Duration::from_secs(5),
            source_ip: None,
        }
    }

    fn dst(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn matches_ip_cidr_hostname_and_wildcard_with_ports_and_protocols() {
        let mut t = InterceptTable::new();
        t.insert(intercept("ip", &["192.0.2.10"], (80, 80), &[Protocol::Tcp]));
        t.insert(intercept(
            "net",
            &["198.18.0.0/16"],
            (1, 65535),
            &[Protocol::Tcp, Protocol::Udp],
        ));
        t.insert(intercept(
            "web",
            &["web.corp"],
            (443, 443),
            &[Protocol::Tcp],
        ));
        t.insert(intercept("wild", &["*.corp"], (443, 443), &[Protocol::Tcp]));

        let f = |p, d: &str, h| t.find(p, dst(d), h).map(|i| i.service.as_str());
        assert_eq!(f(Protocol::Tcp, "192.0.2.10:80", None), Some("ip"));
        assert_eq!(
            f(Protocol::Tcp, "192.0.2.10:81", None),
            None,
            "port outside range"
        );
        assert_eq!(
            f(Protocol::Udp, "192.0.2.10:80", None),
            None,
            "protocol not captured"
        );
        assert_eq!(f(Protocol::Udp, "198.18.200.1:53", None), Some("net"));
        assert_eq!(
            f(Protocol::Tcp, "198.19.0.1:53", None),
            None,
            "outside the CIDR"
        );
        let pool_ip = "100.64.0.7:443";
        assert_eq!(
            f(Protocol::Tcp, pool_ip, Some("WEB.corp.")),
            Some("web"),
            "exact beats wildcard"
        );
        assert_eq!(f(Protocol::Tcp, pool_ip, Some("git.corp")), Some("wild"));
        assert_eq!(
            f(Protocol::Tcp, pool_ip, Some("corp")),
            Some("wild"),
            "bare domain"
        );
        assert_eq!(f(Protocol::Tcp, pool_ip, Some("evilcorp")), None);
        assert_eq!(
            f(Protocol::Tcp, pool_ip, None),
            None,
            "no name, no hostname match"
        );
    }

    #[test]
    fn most_specific_then_name_order_wins() {
        let mut t = InterceptTable::new();
        t.insert(intercept(
            "b-wide",
            &["10.0.0.0/8"],
            (1, 65535),
            &[Protocol::Tcp],
        ));
        t.insert(intercept(
            "c-narrow",
            &["10.1.0.0/16"],
            (1, 65535),
            &[Protocol::Tcp],
        ));
        t.insert(intercept(
            "a-narrow",
            &["10.1.0.0/16"],
            (1, 65535),
            &[Protocol::Tcp],
        ));
        t.insert(intercept(
            "z-host",
            &["10.1.2.3"],
            (1, 65535),
            &[Protocol::Tcp],
        ));
        let f = |d: &str| {
            t.find(Protocol::Tcp, dst(d), None)
                .map(|i| i.service.clone())
        };
        assert_eq!(f("10.1.2.3:5").as_deref(), Some("z-host"));
        assert_eq!(f("10.1.2.4:5").as_deref(), Some("a-narrow"));
        assert_eq!(f("10.2.0.1:5").as_deref(), Some("b-wide"));
    }

    #[test]
    fn insert_remove_report_changes_and_export_names_and_routes() {
        let mut t = InterceptTable::new();
        let i = intercept(
            "s",
            &["a.corp", "*.b.corp", "192.0.2.1", "198.18.5.9/16"],
            (1, 2),
            &[Protocol::Tcp],
        );
        assert_eq!(t.insert(i.clone()), TableChange::Changed);
        assert_eq!(t.insert(i), TableChange::None);
        assert_eq!(
            t.hostnames().into_iter().collect::<Vec<_>>(),
            vec!["*.b.corp".to_string(), "a.corp".to_string()]
        );
        let routes: Vec<_> = t.ip_routes().into_iter().collect();
        assert_eq!(
            routes,
            vec![
                ("192.0.2.1".parse().unwrap(), 32),
                ("198.18.0.0".parse().unwrap(), 16)
            ]
        );
        assert_eq!(t.remove("s"), TableChange::Changed);
        assert_eq!(t.remove("s"), TableChange::None);
        assert!(t.is_empty());
    }

    #[test]
    fn dial_identity_placeholders() {
        let mut i = intercept("s", &["*.corp"], (1, 65535), &[Protocol::Tcp]);
        i.dial_identity = Some("host-$dst_hostname-$dst_ip-$dst_port-$dst_protocol".into());
        i.source_ip = Some("$src_ip:$src_port".into());
        let flow = FlowAddrs {
            protocol: Protocol::Tcp,
            src: dst("100.64.0.1:5000"),
            dst: dst("100.64.0.3:22"),
            hostname: Some("a.corp".into()),
        };
        assert_eq!(
            i.dial_identity_for(&flow).as_deref(),
            Some("host-a.corp-100.64.0.3-22-tcp")
        );
        let app = i.app_data_for(&flow);
        assert_eq!(app.get("source_addr"), Some("100.64.0.1:5000"));
        assert_eq!(app.get("dst_hostname"), Some("a.corp"));
    }

    #[test]
    fn cidr_edges() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert!(cidr_contains(ip("0.0.0.0"), 0, ip("8.8.8.8")));
        assert!(cidr_contains(ip("10.0.0.0"), 32, ip("10.0.0.0")));
        assert!(!cidr_contains(ip("10.0.0.0"), 32, ip("10.0.0.1")));
        assert!(cidr_contains(ip("2001:db8::"), 32, ip("2001:db8:1::1")));
        assert!(!cidr_contains(ip("2001:db8::"), 32, ip("10.0.0.1")));
        assert!(
            cidr_contains(ip("10.0.0.0"), 200, ip("10.0.0.0")),
            "prefix clamped"
        );
    }
}
