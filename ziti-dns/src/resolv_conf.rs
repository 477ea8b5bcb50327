//! Reading the system's nameservers from `/etc/resolv.conf` (our own small parser).
//!
//! Only `nameserver` lines matter here. Like glibc, at most three are used, in
//! file order; comments start with `#` or `;`.

use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::path::Path;

/// The standard DNS port.
pub const DNS_PORT: u16 = 53;
/// glibc's `MAXNS`: later nameserver lines are ignored.
pub const MAX_NAMESERVERS: usize = 3;
/// Where the system resolver configuration lives.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";

/// Nameservers listed in resolv.conf text, as port-53 socket addresses.
/// Unparsable lines are skipped.
pub fn parse_nameservers(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let line = line.split(['#', ';']).next().unwrap_or("");
            let mut words = line.split_whitespace();
            match (words.next(), words.next()) {
                (Some("nameserver"), Some(addr)) => parse_addr(addr),
                _ => None,
            }
        })
        .take(MAX_NAMESERVERS)
        .collect()
}

fn parse_addr(text: &str) -> Option<SocketAddr> {
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Some(SocketAddr::new(ip, DNS_PORT));
    }
    // Link-local IPv6 with a zone: only a numeric zone can be used without
    // asking the kernel for interface indexes.
    let (ip, zone) = text.split_once('%')?;
    let ip: Ipv6Addr = ip.parse().ok()?;
    let scope: u32 = zone.parse().ok()?;
    Some(SocketAddr::V6(SocketAddrV6::new(ip, DNS_PORT, 0, scope)))
}

/// Nameservers of the resolv.conf file at `path`.
pub fn nameservers_from_file(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    Ok(parse_nameservers(&std::fs::read_to_string(path)?))
}

/// Nameservers of `/etc/resolv.conf`.
pub fn system_nameservers() -> std::io::Result<Vec<SocketAddr>> {
    nameservers_from_file(Path::new(RESOLV_CONF))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nameserver_lines() {
        let text = "# generated\nsearch corp.example\nnameserver 10.0.0.53 # primary\n\
                    ;nameserver 9.9.9.9\n  nameserver\t2001:db8::1\nnameserver fe80::1%2\n\
                    nameserver fe80::1%eth0\nnameserver bogus\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n\
                    options edns0 timeout:1\n";
        let got = parse_nameservers(text);
        let want: Vec<SocketAddr> = vec![
            "10.0.0.53:53".parse().unwrap(),
            "[2001:db8::1]:53".parse().unwrap(),
            SocketAddr::V6(SocketAddrV6::new("fe80::1".parse().unwrap(), 53, 0, 2)),
        ];
        assert_eq!(got, want);
        assert!(parse_nameservers("").is_empty());
        assert!(parse_nameservers("nameserver").is_empty());
    }

    #[test]
    fn reads_a_file() {
        let dir = std::env::temp_dir().join(format!("ziti-dns-resolv-{}", std::process::id()));
        std::fs::write(&dir, "nameserver 127.0.0.53\n").unwrap();
        let got = nameservers_from_file(&dir).unwrap();
        std::fs::remove_file(&dir).unwrap();
        assert_eq!(got, vec!["127.0.0.53:53".parse::<SocketAddr>().unwrap()]);
        assert!(nameservers_from_file(Path::new("/nonexistent/resolv.conf")).is_err());
    }
}
