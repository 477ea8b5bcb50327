//! Typed service config types: `intercept.v1`, `ziti-tunneler-client.v1`, `host.v1`, `host.v2`
//! (edge-client-api.md §4.4-4.7). Pure parsing.

use std::net::IpAddr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// Transport protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

/// Inclusive port range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct PortRange {
    /// First port.
    pub low: u16,
    /// Last port.
    pub high: u16,
}

impl PortRange {
    /// True when `port` lies in the range.
    pub fn contains(&self, port: u16) -> bool {
        self.low <= port && port <= self.high
    }
}

/// One intercept address, classified as the C SDK does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InterceptAddress {
    /// A single IP address.
    Ip(IpAddr),
    /// An IP range: address and prefix length.
    Cidr(IpAddr, u8),
    /// A DNS name (also anything unparsable, such as `1.2.3.4/56`), lowercased.
    Hostname(String),
    /// A wildcard domain: the part after `*.`, lowercased (`*.example.com` -> `example.com`).
    Wildcard(String),
}

impl InterceptAddress {
    /// Classifies an address string.
    pub fn parse(s: &str) -> Self {
        let s = s.trim();
        if let Ok(ip) = s.parse::<IpAddr>() {
            return Self::Ip(ip);
        }
        if let Some((ip, prefix)) = s.split_once('/')
            && let (Ok(ip), Ok(prefix)) = (ip.parse::<IpAddr>(), prefix.parse::<u8>())
        {
            let max = if ip.is_ipv4() { 32 } else { 128 };
            if prefix <= max {
                return Self::Cidr(ip, prefix);
            }
        }
        if let Some(domain) = s.strip_prefix("*.") {
            return Self::Wildcard(domain.to_ascii_lowercase());
        }
        Self::Hostname(s.to_ascii_lowercase())
    }

    /// Whether a DNS name is covered (case-insensitive; a wildcard also covers its bare domain,
    /// as in the C SDK).
    pub fn matches_hostname(&self, name: &str) -> bool {
        let name = name.trim_end_matches('.').to_ascii_lowercase();
        match self {
            Self::Hostname(h) => *h == name,
            Self::Wildcard(d) => {
                name == *d
                    || name
                        .strip_suffix(d.as_str())
                        .is_some_and(|head| head.ends_with('.'))
            }
            _ => false,
        }
    }
}

impl<'de> Deserialize<'de> for InterceptAddress {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self::parse(&String::deserialize(d)?))
    }
}

/// `dialOptions` of `intercept.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct DialOptions {
    /// Terminator identity to dial (may contain `$dst_ip`, `$dst_port`, `$dst_protocol`).
    #[serde(default)]
    pub identity: Option<String>,
    /// Dial timeout.
    #[serde(default)]
    pub connect_timeout_seconds: Option<u32>,
}

/// `intercept.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InterceptV1 {
    /// Protocols to intercept.
    pub protocols: Vec<Protocol>,
    /// Addresses to intercept.
    pub addresses: Vec<InterceptAddress>,
    /// Ports to intercept.
    pub port_ranges: Vec<PortRange>,
    /// Dial options.
    #[serde(default)]
    pub dial_options: Option<DialOptions>,
    /// Source `IP[:port]` the hosting side should use (template).
    #[serde(default)]
    pub source_ip: Option<String>,
    /// Only these client source IPs/CIDRs are intercepted.
    #[serde(default)]
    pub allowed_source_addresses: Vec<String>,
}

impl InterceptV1 {
    /// Dial timeout: explicit, else 15 s with dialOptions, else 5 s (schema defaults).
    pub fn connect_timeout(&self) -> Duration {
        let secs = match &self.dial_options {
            Some(d) => d.connect_timeout_seconds.unwrap_or(15),
            None => 5,
        };
        Duration::from_secs(u64::from(secs))
    }
}

/// `ziti-tunneler-client.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ZitiTunnelerClientV1 {
    /// Host name or IP to intercept.
    pub hostname: String,
    /// Port to intercept.
    pub port: u16,
}

impl ZitiTunnelerClientV1 {
    /// The equivalent intercept: tcp+udp, one address, one port.
    pub fn to_intercept(&self) -> InterceptV1 {
        InterceptV1 {
            protocols: vec![Protocol::Tcp, Protocol::Udp],
            addresses: vec![InterceptAddress::parse(&self.hostname)],
            port_ranges: vec![PortRange {
                low: self.port,
                high: self.port,
            }],
            dial_options: None,
            source_ip: None,
            allowed_source_addresses: Vec::new(),
        }
    }
}

/// Terminator precedence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Precedence {
    /// Normal.
    #[default]
    Default,
    /// Preferred over `default`.
    Required,
    /// Used only when nothing else is available.
    Failed,
}

/// `listenOptions` of `host.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListenOptions {
    /// Bind with the hosting identity's name as terminator identity.
    #[serde(default)]
    pub bind_using_edge_identity: bool,
    /// Terminator identity (template).
    #[serde(default)]
    pub identity: Option<String>,
    /// Terminator cost.
    #[serde(default)]
    pub cost: u16,
    /// Terminator precedence.
    #[serde(default)]
    pub precedence: Precedence,
    /// Maximum terminators to establish (default 3).
    #[serde(default = "default_max_connections")]
    pub max_connections: u32,
    /// Dial timeout to the hosted server; `connectTimeout` wins over the deprecated
    /// `connectTimeoutSeconds`.
    #[serde(default, deserialize_with = "opt_duration")]
    pub connect_timeout: Option<Duration>,
    /// Deprecated form of `connect_timeout`.
    #[serde(default)]
    pub connect_timeout_seconds: Option<u32>,
}

fn default_max_connections() -> u32 {
    3
}

impl Default for ListenOptions {
    fn default() -> Self {
        Self {
            bind_using_edge_identity: false,
            identity: None,
            cost: 0,
            precedence: Precedence::Default,
            max_connections: default_max_connections(),
            connect_timeout: None,
            connect_timeout_seconds: None,
        }
    }
}

impl ListenOptions {
    /// Effective dial timeout (default 5 s).
    pub fn effective_connect_timeout(&self) -> Duration {
        self.connect_timeout
            .or(self
                .connect_timeout_seconds
                .map(|s| Duration::from_secs(u64::from(s))))
            .unwrap_or(Duration::from_secs(5))
    }
}

/// `forwardAddressTranslations` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AddressTranslation {
    /// Intercepted prefix.
    pub from: String,
    /// Hosted prefix.
    pub to: String,
    /// Prefix length.
    pub prefix_length: u8,
}

/// `proxy` of `host.v1`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ProxyConfig {
    /// Proxy type (`http`).
    #[serde(rename = "type")]
    pub kind: String,
    /// `host:port`.
    pub address: String,
}

/// Health-check action.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckAction {
    /// `fail`, `pass` or `change`.
    pub trigger: String,
    /// Consecutive events needed.
    #[serde(default)]
    pub consecutive_events: Option<u32>,
    /// Duration condition.
    #[serde(default, deserialize_with = "opt_duration")]
    pub duration: Option<Duration>,
    /// e.g. `mark unhealthy`, `increase cost 10`.
    pub action: String,
}

/// TCP port health check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PortCheck {
    /// `host:port`.
    pub address: String,
    /// Check interval.
    #[serde(deserialize_with = "req_duration")]
    pub interval: Duration,
    /// Check timeout.
    #[serde(deserialize_with = "req_duration")]
    pub timeout: Duration,
    /// Actions.
    #[serde(default)]
    pub actions: Vec<CheckAction>,
}

/// HTTP health check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpCheck {
    /// URL to fetch.
    pub url: String,
    /// HTTP method (default GET).
    #[serde(default)]
    pub method: Option<String>,
    /// Request body.
    #[serde(default)]
    pub body: Option<String>,
    /// Expected status (default 200).
    #[serde(default)]
    pub expect_status: Option<u16>,
    /// Text the body must contain.
    #[serde(default)]
    pub expect_in_body: Option<String>,
    /// Check interval.
    #[serde(deserialize_with = "req_duration")]
    pub interval: Duration,
    /// Check timeout.
    #[serde(deserialize_with = "req_duration")]
    pub timeout: Duration,
    /// Actions.
    #[serde(default)]
    pub actions: Vec<CheckAction>,
}

/// `host.v1`, also each terminator of `host.v2`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct HostV1 {
    /// Fixed protocol to dial.
    #[serde(default)]
    pub protocol: Option<Protocol>,
    /// Dial the intercepted protocol instead.
    #[serde(default)]
    pub forward_protocol: bool,
    /// Protocols allowed when forwarding.
    #[serde(default)]
    pub allowed_protocols: Vec<Protocol>,
    /// Fixed address to dial.
    #[serde(default)]
    pub address: Option<String>,
    /// Dial the intercepted address instead.
    #[serde(default)]
    pub forward_address: bool,
    /// Addresses allowed when forwarding (IPs, CIDRs, `*.domain`).
    #[serde(default)]
    pub allowed_addresses: Vec<InterceptAddress>,
    /// Fixed port to dial.
    #[serde(default)]
    pub port: Option<u16>,
    /// Dial the intercepted port instead.
    #[serde(default)]
    pub forward_port: bool,
    /// Ports allowed when forwarding.
    #[serde(default)]
    pub allowed_port_ranges: Vec<PortRange>,
    /// Address translations applied when forwarding.
    #[serde(default)]
    pub forward_address_translations: Vec<AddressTranslation>,
    /// Source addresses the hosting side adds routes for.
    #[serde(default)]
    pub allowed_source_addresses: Vec<String>,
    /// Dial through a proxy.
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// Terminator options.
    #[serde(default)]
    pub listen_options: Option<ListenOptions>,
    /// TCP health checks.
    #[serde(default)]
    pub port_checks: Vec<PortCheck>,
    /// HTTP health checks.
    #[serde(default)]
    pub http_checks: Vec<HttpCheck>,
}

impl HostV1 {
    /// The listen options, defaults when absent.
    pub fn listen_options_or_default(&self) -> ListenOptions {
        self.listen_options.clone().unwrap_or_default()
    }
}

/// `host.v2`: several terminators.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct HostV2 {
    /// One bind per entry.
    pub terminators: Vec<HostV1>,
}

/// Parses a Go-style duration: `<n>(h|m|s|ms)` (what the schemas allow), also `<n>us`/`<n>ns`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit())?;
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    Some(match unit {
        "h" => Duration::from_secs(n.checked_mul(3600)?),
        "m" => Duration::from_secs(n.checked_mul(60)?),
        "s" => Duration::from_secs(n),
        "ms" => Duration::from_millis(n),
        "us" | "µs" => Duration::from_micros(n),
        "ns" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) => parse_duration(&s)
            .map(Some)
            .ok_or_else(|| serde::de::Error::custom(format!("invalid duration `{s}`"))),
    }
}

fn req_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).ok_or_else(|| serde::de::Error::custom(format!("invalid duration `{s}`")))
}

#[cfg(test)]
mod tests;
