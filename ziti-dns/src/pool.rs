//! The IPv4 address pool that intercepted hostnames are given addresses from.
//!
//! The first usable address of the pool belongs to the DNS server itself; the
//! rest are handed out one per intercepted name. Fresh addresses are used before
//! released ones, and released ones are reused oldest-first, so that an address a
//! client may still have cached is reassigned as late as possible.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use crate::allocator::Allocator;

/// Errors about the address pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PoolError {
    /// The prefix leaves no room for the DNS server address plus one name.
    #[error(
        "pool prefix /{0} is too small: use /30 or shorter (one address for DNS, one for a name)"
    )]
    PrefixTooLong(u8),
    /// Text is not `a.b.c.d/len`.
    #[error("invalid pool {0:?}: expected an IPv4 network such as 100.64.0.0/10")]
    Parse(String),
    /// Every address of the pool is given to a name.
    #[error(
        "address pool {pool} is exhausted: all {capacity} addresses are in use; remove names or use a larger pool"
    )]
    Exhausted {
        /// The pool that ran out.
        pool: Ipv4Cidr,
        /// How many names it can hold.
        capacity: u32,
    },
    /// The IPv6 prefix leaves no room for the DNS server address plus one name.
    #[error(
        "IPv6 pool prefix /{0} is too small: use /126 or shorter (one address for DNS, at least one for a name)"
    )]
    Ipv6PrefixTooLong(u8),
    /// Text is not `ipv6-address/len`.
    #[error("invalid IPv6 pool {0:?}: expected an IPv6 network such as fd7a:7a7a:7a7a::/64")]
    Ipv6Parse(String),
    /// Every address of the IPv6 pool is given to a name.
    #[error(
        "IPv6 address pool {pool} is exhausted: all {capacity} addresses are in use; remove names or use a larger pool"
    )]
    Ipv6Exhausted {
        /// The pool that ran out.
        pool: crate::pool6::Ipv6Cidr,
        /// How many names it can hold.
        capacity: u128,
    },
}

/// An IPv4 network, `address/prefix`, normalised to its network address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix: u8,
}

impl Ipv4Cidr {
    /// The carrier-grade NAT range 100.64.0.0/10, the default pool (as the C tunneler uses).
    pub const DEFAULT: Ipv4Cidr = Ipv4Cidr {
        network: Ipv4Addr::new(100, 64, 0, 0),
        prefix: 10,
    };

    /// A network from any address inside it and a prefix length (at most 30).
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Self, PoolError> {
        if prefix > 30 {
            return Err(PoolError::PrefixTooLong(prefix));
        }
        let network = Ipv4Addr::from(u32::from(addr) & mask(prefix));
        Ok(Self { network, prefix })
    }

    /// The network address (host bits zero).
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// Whether `ip` lies inside this network.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == u32::from(self.network)
    }

    /// The address reserved for the DNS server: the first usable address.
    pub fn dns_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.network).wrapping_add(1))
    }

    /// The last address of the network (never handed out).
    fn broadcast(&self) -> u32 {
        u32::from(self.network) | !mask(self.prefix)
    }
}

impl Default for Ipv4Cidr {
    fn default() -> Self {
        Self::DEFAULT
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = PoolError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || PoolError::Parse(s.to_owned());
        let (addr, prefix) = s.trim().split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if prefix > 32 {
            return Err(bad());
        }
        Self::new(addr, prefix)
    }
}

fn mask(prefix: u8) -> u32 {
    // prefix 0 would shift by 32, which overflows; handle it explicitly.
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Hands out and takes back the addresses of one [`Ipv4Cidr`].
///
/// It does not know which name holds which address; [`crate::NameTable`] keeps that.
#[derive(Debug, Clone)]
pub struct IpPool {
    cidr: Ipv4Cidr,
    /// From network + 2 to broadcast - 1.
    addresses: Allocator,
}

impl IpPool {
    /// A pool over all of `cidr` except its network, DNS and broadcast addresses.
    pub fn new(cidr: Ipv4Cidr) -> Self {
        let first = u32::from(cidr.network()).saturating_add(2);
        let last = cidr.broadcast().saturating_sub(1);
        let capacity = u128::from(last.saturating_sub(first)) + 1;
        Self {
            cidr,
            addresses: Allocator::new(u128::from(first), capacity),
        }
    }

    /// The network this pool allocates from.
    pub fn cidr(&self) -> Ipv4Cidr {
        self.cidr
    }

    /// How many addresses can be held at once.
    pub fn capacity(&self) -> u32 {
        u32::try_from(self.addresses.capacity()).unwrap_or(u32::MAX)
    }

    /// How many addresses are currently held.
    pub fn in_use(&self) -> u32 {
        u32::try_from(self.addresses.in_use()).unwrap_or(u32::MAX)
    }

    fn exhausted(&self) -> PoolError {
        PoolError::Exhausted {
            pool: self.cidr,
            capacity: self.capacity(),
        }
    }

    /// Whether [`IpPool::allocate`] would succeed; the error it would return if not.
    pub(crate) fn check_room(&self) -> Result<(), PoolError> {
        if self.addresses.has_room() {
            Ok(())
        } else {
            Err(self.exhausted())
        }
    }

    /// Takes an address: a never-used one while any is left, else the oldest released one.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, PoolError> {
        let n = self.addresses.allocate().ok_or_else(|| self.exhausted())?;
        // Every number is within the IPv4 network the allocator was made from.
        u32::try_from(n)
            .map(Ipv4Addr::from)
            .map_err(|_| self.exhausted())
    }

    /// Gives an address back. Returns false (and changes nothing) if `ip` is not
    /// currently allocated from this pool.
    pub fn release(&mut self, ip: Ipv4Addr) -> bool {
        self.addresses.release(u128::from(u32::from(ip)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cidr(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn parses_and_normalises() {
        let c = cidr("100.70.1.2/10");
        assert_eq!(c.network(), Ipv4Addr::new(100, 64, 0, 0));
        assert_eq!(c.prefix(), 10);
        assert_eq!(c.to_string(), "100.64.0.0/10");
        assert_eq!(c, Ipv4Cidr::default());
        assert_eq!(c.dns_addr(), Ipv4Addr::new(100, 64, 0, 1));
        assert!(c.contains(Ipv4Addr::new(100, 127, 255, 255)));
        assert!(!c.contains(Ipv4Addr::new(100, 128, 0, 0)));
        assert_eq!(
            "1.2.3.4".parse::<Ipv4Cidr>(),
            Err(PoolError::Parse("1.2.3.4".into()))
        );
        assert!("1.2.3.4/33".parse::<Ipv4Cidr>().is_err());
        assert_eq!(
            "1.2.3.4/31".parse::<Ipv4Cidr>(),
            Err(PoolError::PrefixTooLong(31))
        );
        assert_eq!(cidr("0.0.0.0/0").network(), Ipv4Addr::UNSPECIFIED);
    }

    #[test]
    fn default_pool_skips_network_dns_and_broadcast() {
        let mut p = IpPool::new(Ipv4Cidr::default());
        assert_eq!(p.capacity(), (1 << 22) - 3);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(100, 64, 0, 2));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(100, 64, 0, 3));
        assert_eq!(p.in_use(), 2);
    }

    #[test]
    fn exhaustion_then_reuse_oldest_first() {
        let mut p = IpPool::new(cidr("10.0.0.0/29")); // .2 ..= .6
        assert_eq!(p.capacity(), 5);
        let got: Vec<_> = (0..5).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 0, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 0, 0, 6)));
        let err = p.allocate().unwrap_err();
        assert!(matches!(err, PoolError::Exhausted { capacity: 5, .. }));
        assert!(err.to_string().contains("exhausted"));
        assert!(p.release(Ipv4Addr::new(10, 0, 0, 4)));
        assert!(p.release(Ipv4Addr::new(10, 0, 0, 3)));
        // Double release and foreign addresses are refused.
        assert!(!p.release(Ipv4Addr::new(10, 0, 0, 3)));
        assert!(!p.release(Ipv4Addr::new(10, 0, 0, 1)));
        assert!(!p.release(Ipv4Addr::new(10, 0, 0, 7)));
        assert_eq!(p.in_use(), 3);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 4));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 0, 0, 3));
        assert!(p.allocate().is_err());
    }

    #[test]
    fn fresh_addresses_before_released_ones() {
        let mut p = IpPool::new(cidr("10.0.0.0/29"));
        let a = p.allocate().unwrap();
        assert!(p.release(a));
        // Not yet reused: a client may still have `a` cached.
        assert_ne!(p.allocate().unwrap(), a);
        // A never-allocated address cannot be released.
        assert!(!p.release(Ipv4Addr::new(10, 0, 0, 6)));
    }

    #[test]
    fn smallest_pool_has_one_address() {
        let mut p = IpPool::new(cidr("192.168.1.8/30"));
        assert_eq!(p.capacity(), 1);
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(192, 168, 1, 10));
        assert!(p.allocate().is_err());
    }
}
