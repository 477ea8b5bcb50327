//! [`DnsConfig`]: where the server listens, the address pool, the upstreams and limits.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::pool::Ipv4Cidr;
use crate::pool6::Ipv6Cidr;
use crate::resolv_conf;

/// Where forwarded queries go.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Upstreams {
    /// The nameservers of `/etc/resolv.conf`, read when the server starts.
    #[default]
    System,
    /// These resolvers, tried in order. Empty: every other name gets REFUSED.
    List(Vec<SocketAddr>),
}

/// What a query gets when its name is not intercepted and no upstream answers it (no
/// upstream is configured, or every one failed): `--dnsUnanswerable` of the Go tunneler.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unanswerable {
    /// REFUSED: the client moves on to its next nameserver at once (the Go default).
    Refused,
    /// SERVFAIL.
    Servfail,
    /// No answer: the client times out and tries its next nameserver.
    Timeout,
}

impl std::str::FromStr for Unanswerable {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "refused" => Ok(Unanswerable::Refused),
            "servfail" => Ok(Unanswerable::Servfail),
            "timeout" => Ok(Unanswerable::Timeout),
            _ => Err(format!(
                "invalid unanswerable response {s:?}: must be one of timeout, servfail, or refused"
            )),
        }
    }
}

/// Invalid configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The server must bind one specific address, never a wildcard.
    #[error(
        "listen address {0} is unspecified: bind the DNS server to one address (e.g. the pool's DNS address)"
    )]
    UnspecifiedListen(SocketAddr),
    /// A limit is zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// resolv.conf could not be read.
    #[error("cannot read {path}")]
    ResolvConf {
        /// The file.
        path: &'static str,
        /// Why.
        source: std::io::Error,
    },
}

/// Configuration of the intercepting DNS server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// The one address the UDP and TCP listeners bind (port 0 picks a free port).
    pub listen: SocketAddr,
    /// Pool intercepted names get addresses from; its first usable address is the DNS server's.
    pub pool: Ipv4Cidr,
    /// Pool intercepted names also get an IPv6 address from, for AAAA answers
    /// ([`Ipv6Cidr::DEFAULT`] is a suggestion). `None` (the default): IPv4 only,
    /// AAAA queries for intercepted names get an empty NOERROR answer.
    pub ipv6_pool: Option<Ipv6Cidr>,
    /// Resolvers for names that are not intercepted.
    pub upstreams: Upstreams,
    /// How long to wait for one upstream before trying the next.
    pub upstream_timeout: Duration,
    /// Forwarded queries in flight at once; beyond it clients get SERVFAIL at once
    /// (an immediate answer lets them retry, where a drop would cost them a timeout).
    pub max_in_flight: usize,
    /// TTL of intercepted A and AAAA answers, seconds.
    pub ttl: u32,
    /// Client TCP connections served at once; more are closed on accept.
    pub max_tcp_connections: usize,
    /// A client TCP connection idle this long is closed.
    pub tcp_idle_timeout: Duration,
    /// What unanswerable queries get; `None`: REFUSED when no upstream is configured,
    /// SERVFAIL when the upstreams failed.
    pub unanswerable: Option<Unanswerable>,
}

impl Default for DnsConfig {
    fn default() -> Self {
        let pool = Ipv4Cidr::DEFAULT;
        Self {
            listen: SocketAddr::new(IpAddr::V4(pool.dns_addr()), resolv_conf::DNS_PORT),
            pool,
            ipv6_pool: None,
            upstreams: Upstreams::System,
            upstream_timeout: Duration::from_secs(2),
            max_in_flight: 512,
            ttl: 60,
            max_tcp_connections: 64,
            tcp_idle_timeout: Duration::from_secs(10),
            unanswerable: None,
        }
    }
}

impl DnsConfig {
    /// Checks limits and the listen address.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.listen.ip().is_unspecified() {
            return Err(ConfigError::UnspecifiedListen(self.listen));
        }
        for (value, name) in [
            (self.max_in_flight, "max_in_flight"),
            (self.max_tcp_connections, "max_tcp_connections"),
        ] {
            if value == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.upstream_timeout.is_zero() {
            return Err(ConfigError::Zero("upstream_timeout"));
        }
        if self.tcp_idle_timeout.is_zero() {
            return Err(ConfigError::Zero("tcp_idle_timeout"));
        }
        Ok(())
    }

    /// The upstream list to use: the configured one or resolv.conf's, minus our
    /// own listen address (forwarding to ourselves would loop).
    pub fn resolve_upstreams(&self) -> Result<Vec<SocketAddr>, ConfigError> {
        let list = match &self.upstreams {
            Upstreams::List(list) => list.clone(),
            Upstreams::System => {
                resolv_conf::system_nameservers().map_err(|source| ConfigError::ResolvConf {
                    path: resolv_conf::RESOLV_CONF,
                    source,
                })?
            }
        };
        Ok(list.into_iter().filter(|u| *u != self.listen).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_validation() {
        let c = DnsConfig::default();
        assert_eq!(c.listen, "100.64.0.1:53".parse().unwrap());
        assert!(c.validate().is_ok());
        let bad = DnsConfig {
            listen: "0.0.0.0:53".parse().unwrap(),
            ..c.clone()
        };
        assert!(matches!(
            bad.validate(),
            Err(ConfigError::UnspecifiedListen(_))
        ));
        let bad = DnsConfig {
            max_in_flight: 0,
            ..c.clone()
        };
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("max_in_flight")
        );
        let bad = DnsConfig {
            upstream_timeout: Duration::ZERO,
            ..c
        };
        assert!(bad.validate().is_err());
    }

    #[test]
    fn own_address_is_never_an_upstream() {
        let c = DnsConfig {
            listen: "127.0.0.1:5300".parse().unwrap(),
            upstreams: Upstreams::List(vec![
                "127.0.0.1:5300".parse().unwrap(),
                "127.0.0.2:53".parse().unwrap(),
            ]),
            ..DnsConfig::default()
        };
        assert_eq!(
            c.resolve_upstreams().unwrap(),
            vec!["127.0.0.2:53".parse::<SocketAddr>().unwrap()]
        );
    }
}
