//! The optional IPv6 address pool that intercepted hostnames are given AAAA
//! addresses from, alongside their IPv4 pool address.
//!
//! It follows the IPv4 pool ([`crate::IpPool`]): the network address (the
//! subnet-router anycast address of RFC 4291) is never handed out, the next one
//! is reserved for the DNS server, and the rest go one per intercepted name.
//! IPv6 has no broadcast address, so the last address of the network is usable.
//! Fresh addresses are used before released ones, and released ones are reused
//! oldest-first, so that an address a client may still have cached is
//! reassigned as late as possible.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use crate::allocator::Allocator;

use crate::pool::PoolError;

/// The longest usable prefix: network, DNS and two names.
const MAX_PREFIX: u8 = 126;

/// An IPv6 network, `address/prefix`, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv6Cidr {
    network: Ipv6Addr,
    prefix: u8,
}

impl Ipv6Cidr {
    /// `fd7a:7a7a:7a7a::/64`, the suggested IPv6 pool.
    ///
    /// A unique local address (RFC 4193) prefix, so it is never routed on the
    /// internet. RFC 4193 asks for a random global ID; this one is a fixed,
    /// documented choice instead (`7a` is ASCII `z`, for Ziti) so that every
    /// tunneler hands out addresses from the same recognisable range, as the IPv4
    /// default 100.64.0.0/10 does. Configure another prefix if it collides with a
    /// network you use. It is not applied by default: a [`crate::DnsTable`] only
    /// answers AAAA from a pool it was given (see [`crate::DnsTable::with_ipv6_pool`]).
    pub const DEFAULT: Ipv6Cidr = Ipv6Cidr {
        network: Ipv6Addr::new(0xfd7a, 0x7a7a, 0x7a7a, 0, 0, 0, 0, 0),
        prefix: 64,
    };

    /// A network from any address inside it and a prefix length (at most 126).
    pub fn new(addr: Ipv6Addr, prefix: u8) -> Result<Self, PoolError> {
        if prefix > MAX_PREFIX {
            return Err(PoolError::Ipv6PrefixTooLong(prefix));
        }
        let network = Ipv6Addr::from(u128::from(addr) & mask(prefix));
        Ok(Self { network, prefix })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv6Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv6Addr) -> bool {
        u128::from(ip) & mask(self.prefix) == u128::from(self.network)
    }

    /// The address reserved for the DNS server: the first after the network address.
    pub fn dns_addr(&self) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(self.network).wrapping_add(1))
    }

    /// The last address of the network.
    fn last(&self) -> u128 {
        u128::from(self.network) | !mask(self.prefix)
    }
}

impl Default for Ipv6Cidr {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Ipv6Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv6Cidr {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PoolError::Ipv6Parse(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv6Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 128 {
            return Err(bad());
        }
        Self::new(addr, prefix)
    }
}

fn mask(prefix: u8) -> u128 {
    // prefix 0 would shift by 128, which overflows; handle it explicitly.
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// Hands out and takes back the addresses of one [`Ipv6Cidr`].
///
/// It does not know which name holds which address; [`crate::NameTable`] keeps that.
#[derive(Debug, Clone)]
pub struct Ipv6Pool {
    cidr: Ipv6Cidr,
    /// From network + 2 to the last address of the network.
    addresses: Allocator,
}

impl Ipv6Pool {
    /// A pool over all of `cidr` except its network and DNS addresses.
    pub fn new(cidr: Ipv6Cidr) -> Self {
        // `Ipv6Cidr::new` keeps at least two host bits, so `first <= last`.
        let first = u128::from(cidr.network()).saturating_add(2);
        let capacity = cidr.last().saturating_sub(first).saturating_add(1);
        Self {
            cidr,
            addresses: Allocator::new(first, capacity),
        }
    }

    /// The network this pool allocates from.
    pub fn cidr(&self) -> Ipv6Cidr {
        self.cidr
    }

    /// How many addresses can be held at once.
    pub fn capacity(&self) -> u128 {
        self.addresses.capacity()
    }

    /// How many addresses are currently held.
    pub fn in_use(&self) -> u128 {
        self.addresses.in_use()
    }

    fn exhausted(&self) -> PoolError {
        PoolError::Ipv6Exhausted {
            pool: self.cidr,
            capacity: self.capacity(),
        }
    }

    /// Whether [`Ipv6Pool::allocate`] would succeed; the error it would return if not.
    pub(crate) fn check_room(&self) -> Result<(), PoolError> {
        if self.addresses.has_room() {
            Ok(())
        } else {
            Err(self.exhausted())
        }
    }

    /// Takes an address: a never-used one while any is left, else the oldest released one.
    pub fn allocate(&mut self) -> Result<Ipv6Addr, PoolError> {
        let n = self.addresses.allocate().ok_or_else(|| self.exhausted())?;
        Ok(Ipv6Addr::from(n))
    }

    /// Gives an address back. Returns false (and changes nothing) if `ip` is not
    /// currently allocated from this pool.
    pub fn release(&mut self, ip: Ipv6Addr) -> bool {
        self.addresses.release(u128::from(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv6Cidr {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        let c = cidr("fd7a:7a7a:7a7a:0:1234::5/64");
        assert_eq!(c.network(), ip("fd7a:7a7a:7a7a::"));
        assert_eq!(c.prefix(), 64);
        assert_eq!(c.to_string(), "fd7a:7a7a:7a7a::/64");
        assert_eq!(c, Ipv6Cidr::default());
        assert_eq!(c.dns_addr(), ip("fd7a:7a7a:7a7a::1"));
        assert!(c.contains(ip("fd7a:7a7a:7a7a:0:ffff:ffff:ffff:ffff")));
        assert!(!c.contains(ip("fd7a:7a7a:7a7a:1::")));
        assert_eq!(
            "fd00::".parse::<Ipv6Cidr>(),
            Err(PoolError::Ipv6Parse("fd00::".into()))
        );
        assert!("10.0.0.0/8".parse::<Ipv6Cidr>().is_err());
        assert!("fd00::/129".parse::<Ipv6Cidr>().is_err());
        assert_eq!(
            "fd00::/127".parse::<Ipv6Cidr>(),
            Err(PoolError::Ipv6PrefixTooLong(127))
        );
        assert_eq!(cidr("::/0").network(), Ipv6Addr::UNSPECIFIED);
    }

    #[test]
    fn default_pool_skips_network_and_dns() {
        let mut p = Ipv6Pool::new(Ipv6Cidr::default());
        assert_eq!(p.capacity(), (1u128 << 64) - 2);
        assert_eq!(p.allocate().unwrap(), ip("fd7a:7a7a:7a7a::2"));
        assert_eq!(p.allocate().unwrap(), ip("fd7a:7a7a:7a7a::3"));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn exhaustion_then_reuse_oldest_first() {
        let mut p = Ipv6Pool::new(cidr("fd00::/125")); // ::2 ..= ::7
        assert_eq!(p.capacity(), 6);
        let got: Vec<_> = (0..6).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got.first(), Some(&ip("fd00::2")));
        assert_eq!(got.last(), Some(&ip("fd00::7")), "no broadcast in IPv6");
        let err = p.allocate().unwrap_err();
        assert!(matches!(err, PoolError::Ipv6Exhausted { capacity: 6, .. }));
        assert!(err.to_string().contains("fd00::/125 is exhausted"), "{err}");
        assert!(p.check_room().is_err());
        assert!(p.release(ip("fd00::4")));
        assert!(p.release(ip("fd00::3")));
        // Double release and foreign addresses are refused.
        assert!(!p.release(ip("fd00::3")));
        assert!(!p.release(ip("fd00::1")));
        assert!(!p.release(ip("fd00::8")));
        assert!(!p.release(Ipv6Addr::UNSPECIFIED));
        assert_eq!(p.in_use(), 4);
        assert!(p.check_room().is_ok());
        assert_eq!(p.allocate().unwrap(), ip("fd00::4"));
        assert_eq!(p.allocate().unwrap(), ip("fd00::3"));
        assert!(p.allocate().is_err());
    }

    #[test]
    fn fresh_addresses_before_released_ones() {
        let mut p = Ipv6Pool::new(cidr("fd00::/125"));
        let a = p.allocate().unwrap();
        assert!(p.release(a));
        // Not yet reused: a client may still have `a` cached.
        assert_ne!(p.allocate().unwrap(), a);
        // A never-allocated address cannot be released.
        assert!(!p.release(ip("fd00::7")));
    }

    #[test]
    fn edges_of_the_address_space() {
        let mut p = Ipv6Pool::new(cidr("fd00::/126"));
        assert_eq!(p.capacity(), 2);
        assert_eq!(p.allocate().unwrap(), ip("fd00::2"));
        assert_eq!(p.allocate().unwrap(), ip("fd00::3"));
        assert!(p.allocate().is_err());
        // The last address of the whole space is handed out without overflow.
        let mut top = Ipv6Pool::new(cidr("ffff:ffff:ffff:ffff:ffff:ffff:ffff:fffc/126"));
        top.allocate().unwrap();
        assert_eq!(top.allocate().unwrap(), Ipv6Addr::from(u128::MAX));
        assert!(top.allocate().is_err());
        assert!(top.release(Ipv6Addr::from(u128::MAX)));
        assert_eq!(top.allocate().unwrap(), Ipv6Addr::from(u128::MAX));
        let all = Ipv6Pool::new(cidr("::/0"));
        assert_eq!(all.capacity(), u128::MAX - 1);
    }
}
