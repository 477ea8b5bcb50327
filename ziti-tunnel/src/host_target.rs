//! Where a hosted dial goes: a terminator's `host.v1` config and the dial's app data give the
//! protocol, address and port to connect to, or the reason the dial is refused. Pure.
//!
//! Fixed values (`protocol`, `address`, `port`) are used as configured. Forwarded ones
//! (`forwardProtocol`, `forwardAddress`, `forwardPort`) come from the dialer's app data and must
//! lie in the config's allowed lists, as the Go tunneler requires: a destination hostname is
//! checked against the allowed names and wins over the IP (the IP a dialer intercepted under a
//! name is its own DNS pool's, meaningless here); an IP against the allowed IPs and CIDRs, then
//! mapped through `forwardAddressTranslations`.

use std::net::IpAddr;

use ziti_sdk::services::{HostV1, InterceptAddress, Protocol};

use crate::app_data::{AppData, key, protocol_name};
use crate::intercept::cidr_contains;

/// Where one hosted dial connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostTarget {
    /// TCP or UDP.
    pub protocol: Protocol,
    /// Hostname or IP.
    pub address: String,
    /// Port.
    pub port: u16,
}

impl std::fmt::Display for HostTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let proto = protocol_name(self.protocol);
        match self.address.parse::<IpAddr>() {
            Ok(IpAddr::V6(ip)) => write!(f, "{proto}:[{ip}]:{}", self.port),
            _ => write!(f, "{proto}:{}:{}", self.address, self.port),
        }
    }
}

/// Why a terminator cannot be hosted, or a dial not forwarded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TargetError {
    /// The config neither fixes nor forwards a value.
    #[error("the host config sets neither `{fixed}` nor `{forward}`")]
    Unset {
        /// The fixed field.
        fixed: &'static str,
        /// The forward flag.
        forward: &'static str,
    },
    /// A forward flag without its allowed list (the Go tunneler refuses these configs too).
    #[error("the host config sets `{forward}` but `{allowed}` is empty")]
    NothingAllowed {
        /// The forward flag.
        forward: &'static str,
        /// The empty list.
        allowed: &'static str,
    },
    /// The dialer did not send what the config forwards.
    #[error("{0} required but not provided by the dialer")]
    Missing(&'static str),
    /// The dialer's value is not usable.
    #[error("invalid {key} {value:?} from the dialer")]
    Invalid {
        /// App data key.
        key: &'static str,
        /// What it sent.
        value: String,
    },
    /// Forwarding to this protocol is not allowed.
    #[error("protocol '{0}' is not in allowed protocols")]
    ProtocolNotAllowed(String),
    /// Forwarding to this address is not allowed.
    #[error("address '{0}' is not in allowed addresses")]
    AddressNotAllowed(String),
    /// Forwarding to this port is not allowed.
    #[error("port {0} is not in allowed port ranges")]
    PortNotAllowed(u16),
}

/// Checks a terminator config before hosting it: every value is fixed or forwarded with an
/// allowed list.
pub fn check_config(t: &HostV1) -> Result<(), TargetError> {
    if t.forward_protocol {
        if t.allowed_protocols.is_empty() {
            return Err(TargetError::NothingAllowed {
                forward: "forwardProtocol",
                allowed: "allowedProtocols",
            });
        }
    } else if t.protocol.is_none() {
        return Err(TargetError::Unset {
            fixed: "protocol",
            forward: "forwardProtocol",
        });
    }
    if t.forward_address {
        if t.allowed_addresses.is_empty() {
            return Err(TargetError::NothingAllowed {
                forward: "forwardAddress",
                allowed: "allowedAddresses",
            });
        }
    } else if t.address.as_deref().is_none_or(str::is_empty) {
        return Err(TargetError::Unset {
            fixed: "address",
            forward: "forwardAddress",
        });
    }
    if t.forward_port {
        if t.allowed_port_ranges.is_empty() {
            return Err(TargetError::NothingAllowed {
                forward: "forwardPort",
                allowed: "allowedPortRanges",
            });
        }
    } else if t.port.is_none() {
        return Err(TargetError::Unset {
            fixed: "port",
            forward: "forwardPort",
        });
    }
    Ok(())
}

/// The target of one dial to a terminator hosted with `t`, given the dialer's app data.
pub fn resolve(t: &HostV1, app: &AppData) -> Result<HostTarget, TargetError> {
    check_config(t)?;
    Ok(HostTarget {
        protocol: protocol(t, app)?,
        address: address(t, app)?,
        port: port(t, app)?,
    })
}

fn protocol(t: &HostV1, app: &AppData) -> Result<Protocol, TargetError> {
    if !t.forward_protocol {
        return t.protocol.ok_or(TargetError::Unset {
            fixed: "protocol",
            forward: "forwardProtocol",
        });
    }
    let sent = app
        .get(key::DST_PROTOCOL)
        .ok_or(TargetError::Missing(key::DST_PROTOCOL))?;
    let p = match sent.to_ascii_lowercase().as_str() {
        "tcp" => Protocol::Tcp,
        "udp" => Protocol::Udp,
        _ => return Err(TargetError::ProtocolNotAllowed(sent.to_string())),
    };
    if t.allowed_protocols.contains(&p) {
        Ok(p)
    } else {
        Err(TargetError::ProtocolNotAllowed(sent.to_string()))
    }
}

fn address(t: &HostV1, app: &AppData) -> Result<String, TargetError> {
    if !t.forward_address {
        return t.address.clone().ok_or(TargetError::Unset {
            fixed: "address",
            forward: "forwardAddress",
        });
    }
    if let Some(name) = app.get(key::DST_HOSTNAME).filter(|h| !h.is_empty()) {
        if t.allowed_addresses.iter().any(|a| allows_name(a, name)) {
            return Ok(name.to_string());
        }
        return Err(TargetError::AddressNotAllowed(name.to_string()));
    }
    let sent = app
        .get(key::DST_IP)
        .ok_or(TargetError::Missing(key::DST_IP))?;
    let ip: IpAddr = sent.parse().map_err(|_| TargetError::Invalid {
        key: key::DST_IP,
        value: sent.to_string(),
    })?;
    if !t.allowed_addresses.iter().any(|a| allows_ip(a, ip)) {
        return Err(TargetError::AddressNotAllowed(sent.to_string()));
    }
    Ok(translate(t, ip).to_string())
}

fn port(t: &HostV1, app: &AppData) -> Result<u16, TargetError> {
    if !t.forward_port {
        return t.port.ok_or(TargetError::Unset {
            fixed: "port",
            forward: "forwardPort",
        });
    }
    let sent = app
        .get(key::DST_PORT)
        .ok_or(TargetError::Missing(key::DST_PORT))?;
    let port: u16 = sent.trim().parse().map_err(|_| TargetError::Invalid {
        key: key::DST_PORT,
        value: sent.to_string(),
    })?;
    if t.allowed_port_ranges.iter().any(|r| r.contains(port)) {
        Ok(port)
    } else {
        Err(TargetError::PortNotAllowed(port))
    }
}

fn allows_name(allowed: &InterceptAddress, name: &str) -> bool {
    match allowed {
        // `*` alone: any name.
        InterceptAddress::Hostname(h) if h == "*" => true,
        _ => allowed.matches_hostname(name),
    }
}

fn allows_ip(allowed: &InterceptAddress, ip: IpAddr) -> bool {
    match allowed {
        InterceptAddress::Ip(a) => *a == ip,
        InterceptAddress::Cidr(net, prefix) => cidr_contains(*net, *prefix, ip),
        _ => false,
    }
}

/// `forwardAddressTranslations`: the longest matching `from` prefix maps the address's host
/// part onto `to`. Unparsable or cross-family translations are skipped.
fn translate(t: &HostV1, ip: IpAddr) -> IpAddr {
    let best = t
        .forward_address_translations
        .iter()
        .filter_map(|x| {
            let from: IpAddr = x.from.parse().ok()?;
            let to: IpAddr = x.to.parse().ok()?;
            (from.is_ipv4() == to.is_ipv4() && cidr_contains(from, x.prefix_length, ip))
                .then_some((x.prefix_length, to))
        })
        .max_by_key(|(len, _)| *len);
    let Some((len, to)) = best else {
        return ip;
    };
    match (ip, to) {
        (IpAddr::V4(ip), IpAddr::V4(to)) => {
            let mask = u32::MAX
                .checked_shl(32 - u32::from(len.min(32)))
                .unwrap_or(0);
            IpAddr::V4((u32::from(to) & mask | u32::from(ip) & !mask).into())
        }
        (IpAddr::V6(ip), IpAddr::V6(to)) => {
            let mask = u128::MAX
                .checked_shl(128 - u32::from(len.min(128)))
                .unwrap_or(0);
            IpAddr::V6((u128::from(to) & mask | u128::from(ip) & !mask).into())
        }
        _ => ip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(json: &str) -> HostV1 {
        serde_json::from_str(json).unwrap()
    }

    fn app(pairs: &[(&str, &str)]) -> AppData {
        let mut a = AppData::default();
        for (k, v) in pairs {
            a.insert(*k, *v);
        }
        a
    }

    #[test]
    fn fixed_configs_ignore_app_data() {
        let t = host(r#"{"protocol":"tcp","address":"127.0.0.1","port":8080}"#);
        let target = resolve(&t, &app(&[("dst_port", "9")])).unwrap();
        assert_eq!(target.to_string(), "tcp:127.0.0.1:8080");
    }

    #[test]
    fn forwarded_values_must_be_allowed() {
        let t = host(
            r#"{"forwardProtocol":true,"allowedProtocols":["tcp","udp"],
                "forwardAddress":true,"allowedAddresses":["10.0.0.0/8","*.corp","db.local"],
                "forwardPort":true,"allowedPortRanges":[{"low":8000,"high":8999}]}"#,
        );
        let ok = resolve(
            &t,
            &app(&[
                ("dst_protocol", "udp"),
                ("dst_ip", "10.1.2.3"),
                ("dst_port", "8053"),
            ]),
        )
        .unwrap();
        assert_eq!(ok.to_string(), "udp:10.1.2.3:8053");
        let named = resolve(
            &t,
            &app(&[
                ("dst_protocol", "tcp"),
                ("dst_hostname", "git.corp"),
                ("dst_ip", "100.64.0.9"),
                ("dst_port", "8443"),
            ]),
        )
        .unwrap();
        assert_eq!(named.address, "git.corp");
        let refuse = |pairs: &[(&str, &str)]| resolve(&t, &app(pairs)).unwrap_err().to_string();
        assert_eq!(
            refuse(&[
                ("dst_protocol", "tcp"),
                ("dst_ip", "10.0.0.1"),
                ("dst_port", "22")
            ]),
            "port 22 is not in allowed port ranges"
        );
        assert_eq!(
            refuse(&[
                ("dst_protocol", "tcp"),
                ("dst_ip", "192.168.0.1"),
                ("dst_port", "8000")
            ]),
            "address '192.168.0.1' is not in allowed addresses"
        );
        assert_eq!(
            refuse(&[
                ("dst_protocol", "tcp"),
                ("dst_hostname", "evil.com"),
                ("dst_ip", "10.0.0.1"),
                ("dst_port", "8000")
            ]),
            "address 'evil.com' is not in allowed addresses"
        );
        assert_eq!(
            refuse(&[
                ("dst_protocol", "sctp"),
                ("dst_ip", "10.0.0.1"),
                ("dst_port", "8000")
            ]),
            "protocol 'sctp' is not in allowed protocols"
        );
        assert_eq!(
            refuse(&[("dst_ip", "10.0.0.1"), ("dst_port", "8000")]),
            "dst_protocol required but not provided by the dialer"
        );
        assert_eq!(
            refuse(&[
                ("dst_protocol", "tcp"),
                ("dst_ip", "10.0.0.1"),
                ("dst_port", "x")
            ]),
            "invalid dst_port \"x\" from the dialer"
        );
    }

    #[test]
    fn configs_that_cannot_work_are_refused_up_front() {
        let e = check_config(&host(
            r#"{"forwardPort":true,"protocol":"tcp","address":"a"}"#,
        ));
        assert_eq!(
            e.unwrap_err().to_string(),
            "the host config sets `forwardPort` but `allowedPortRanges` is empty"
        );
        let e = check_config(&host(r#"{"protocol":"tcp","port":1}"#));
        assert_eq!(
            e.unwrap_err().to_string(),
            "the host config sets neither `address` nor `forwardAddress`"
        );
    }

    #[test]
    fn translations_take_the_longest_prefix() {
        let t = host(
            r#"{"protocol":"tcp","forwardAddress":true,"allowedAddresses":["192.168.0.0/16"],"port":80,
                "forwardAddressTranslations":[{"from":"192.168.0.0","to":"10.0.1.0","prefixLength":16},
                                              {"from":"192.168.1.4","to":"1.2.3.4","prefixLength":32}]}"#,
        );
        let to = |ip: &str| resolve(&t, &app(&[("dst_ip", ip)])).unwrap().address;
        assert_eq!(to("192.168.10.3"), "10.0.10.3");
        assert_eq!(to("192.168.1.4"), "1.2.3.4");
    }
}
