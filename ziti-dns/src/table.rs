//! [`DnsTable`]: the shared, live-updatable handle on the [`NameTable`].
//!
//! Service events add and remove names through it while the DNS server answers
//! from it; the tunnel uses it to map a destination address back to its name.
//! Lookups take a read lock; only a first query for a wildcard-covered name and
//! updates take the write lock.
//!
//! ```
//! use std::net::IpAddr;
//! use ziti_dns::{DnsTable, Ipv4Cidr, Ipv6Cidr};
//!
//! let table = DnsTable::with_ipv6_pool(Ipv4Cidr::DEFAULT, Ipv6Cidr::DEFAULT);
//! table.add_name("*.corp.example")?;
//! let addrs = table.resolve_addrs("db.corp.example").expect("covered by the wildcard");
//! let v6 = addrs.v6.expect("the table has an IPv6 pool");
//! assert!(Ipv6Cidr::DEFAULT.contains(v6));
//! assert_eq!(table.resolve_name_v6("DB.corp.example."), Some(v6));
//! assert_eq!(table.lookup_ip(IpAddr::V6(v6)).as_deref(), Some("db.corp.example"));
//! assert_eq!(table.lookup_ip(IpAddr::V4(addrs.v4)).as_deref(), Some("db.corp.example"));
//! # Ok::<(), ziti_dns::TableError>(())
//! ```

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::config::DnsConfig;
use crate::names::{NameLookup, NameTable, PoolAddrs, TableError, normalize_name};
use crate::pool::{Ipv4Cidr, PoolError};
use crate::pool6::Ipv6Cidr;

/// Cheaply clonable handle on the intercepted-name table (all clones share it).
#[derive(Debug, Clone)]
pub struct DnsTable {
    inner: Arc<RwLock<NameTable>>,
    pool: Ipv4Cidr,
    pool6: Option<Ipv6Cidr>,
}

impl DnsTable {
    /// An empty table allocating from `pool`, IPv4 only: AAAA queries for
    /// intercepted names get an empty NOERROR answer.
    pub fn new(pool: Ipv4Cidr) -> Self {
        Self {
            inner: Arc::new(RwLock::new(NameTable::new(pool))),
            pool,
            pool6: None,
        }
    }

    /// An empty table giving every intercepted name an address from `pool` (A
    /// answers) and one from `pool6` (AAAA answers); both map back to the name.
    pub fn with_ipv6_pool(pool: Ipv4Cidr, pool6: Ipv6Cidr) -> Self {
        Self {
            inner: Arc::new(RwLock::new(NameTable::with_ipv6_pool(pool, pool6))),
            pool,
            pool6: Some(pool6),
        }
    }

    /// An empty table on the pools of `config` (`pool`, and `ipv6_pool` if set).
    pub fn from_config(config: &DnsConfig) -> Self {
        match config.ipv6_pool {
            Some(pool6) => Self::with_ipv6_pool(config.pool, pool6),
            None => Self::new(config.pool),
        }
    }

    /// The address pool.
    pub fn pool(&self) -> Ipv4Cidr {
        self.pool
    }

    /// The IPv6 address pool, if the table has one.
    pub fn ipv6_pool(&self) -> Option<Ipv6Cidr> {
        self.pool6
    }

    /// The address reserved for the DNS server inside the pool.
    pub fn dns_addr(&self) -> Ipv4Addr {
        self.pool.dns_addr()
    }

    // A panic while holding the lock cannot leave the table half-updated in a way
    // that matters more than stopping DNS altogether, so poisoning is ignored.
    fn read(&self) -> RwLockReadGuard<'_, NameTable> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, NameTable> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// Adds `name` or `*.domain`; returns the address of an exact name.
    pub fn add_name(&self, pattern: &str) -> Result<Option<Ipv4Addr>, TableError> {
        self.write().add(pattern)
    }

    /// Removes `name` or `*.domain`; returns whether it was present.
    pub fn remove_name(&self, pattern: &str) -> Result<bool, TableError> {
        self.write().remove(pattern)
    }

    /// Replaces every pattern at once (see [`NameTable::set`]).
    pub fn set_names<I, S>(&self, patterns: I) -> Result<(), TableError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        self.write().set(patterns)
    }

    /// The name that holds `ip` (for the tunnel: which service a packet is for).
    /// Both pools' addresses resolve, and so does an IPv4-mapped IPv6 address
    /// (`::ffff:a.b.c.d`) of the IPv4 pool.
    pub fn lookup_ip(&self, ip: IpAddr) -> Option<String> {
        let table = self.read();
        Self::name_of(&table, ip).map(str::to_owned)
    }

    fn name_of(table: &NameTable, ip: IpAddr) -> Option<&str> {
        match ip {
            IpAddr::V4(v4) => table.lookup_ip(v4),
            IpAddr::V6(v6) => table
                .lookup_ipv6(v6)
                .or_else(|| v6.to_ipv4_mapped().and_then(|v4| table.lookup_ip(v4))),
        }
    }

    /// The pattern (`name` or `*.domain`) that intercepts the name holding `ip`.
    pub fn lookup_ip_pattern(&self, ip: Ipv4Addr) -> Option<String> {
        self.lookup_addr_pattern(IpAddr::V4(ip))
    }

    /// Like [`DnsTable::lookup_ip_pattern`], for an address of either pool.
    pub fn lookup_addr_pattern(&self, ip: IpAddr) -> Option<String> {
        let table = self.read();
        let name = Self::name_of(&table, ip)?;
        table.matching_pattern(name)
    }

    /// The address of `name` if it is intercepted, allocating one on first use of
    /// a wildcard-covered name, as a DNS A query would. `None` also when the pool
    /// is exhausted (use [`DnsTable::try_resolve_name`] to tell the two apart).
    pub fn resolve_name(&self, name: &str) -> Option<Ipv4Addr> {
        self.try_resolve_name(name).ok().flatten()
    }

    /// Like [`DnsTable::resolve_name`], reporting pool exhaustion as an error.
    pub fn try_resolve_name(&self, name: &str) -> Result<Option<Ipv4Addr>, PoolError> {
        Ok(self.try_resolve_addrs(name)?.map(|a| a.v4))
    }

    /// The IPv6 pool address of `name` if it is intercepted and the table has an
    /// IPv6 pool, allocating on first use as a DNS AAAA query would.
    pub fn resolve_name_v6(&self, name: &str) -> Option<Ipv6Addr> {
        self.resolve_addrs(name).and_then(|a| a.v6)
    }

    /// Both pool addresses of `name` if it is intercepted, allocating on first
    /// use of a wildcard-covered name. `None` also when a pool is exhausted (use
    /// [`DnsTable::try_resolve_addrs`] to tell the two apart).
    pub fn resolve_addrs(&self, name: &str) -> Option<PoolAddrs> {
        self.try_resolve_addrs(name).ok().flatten()
    }

    /// Like [`DnsTable::resolve_addrs`], reporting pool exhaustion as an error.
    pub fn try_resolve_addrs(&self, name: &str) -> Result<Option<PoolAddrs>, PoolError> {
        match normalize_name(name) {
            Ok(name) => self.resolve_normalized(&name),
            Err(_) => Ok(None),
        }
    }

    /// Resolution for an already normalised name: read lock first, write lock only
    /// to allocate.
    pub(crate) fn resolve_normalized(&self, name: &str) -> Result<Option<PoolAddrs>, PoolError> {
        {
            let table = self.read();
            if let Some(addrs) = table.addrs(name) {
                return Ok(Some(addrs));
            }
            if table.get(name) == NameLookup::NotIntercepted {
                return Ok(None);
            }
        }
        // Another writer may have allocated or removed it meanwhile; resolve rechecks.
        self.write().resolve_addrs(name)
    }

    /// All configured patterns, sorted.
    pub fn names(&self) -> Vec<String> {
        self.read().patterns()
    }

    /// How many names currently hold an address.
    pub fn allocated(&self) -> usize {
        self.read().allocated()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_handle_sees_live_updates() {
        let t = DnsTable::new(Ipv4Cidr::default());
        let other = t.clone();
        let ip = t.add_name("svc.example").unwrap().unwrap();
        assert_eq!(other.resolve_name("SVC.example."), Some(ip));
        assert_eq!(
            other.lookup_ip(IpAddr::V4(ip)).as_deref(),
            Some("svc.example")
        );
        let mapped = IpAddr::V6(ip.to_ipv6_mapped());
        assert_eq!(other.lookup_ip(mapped).as_deref(), Some("svc.example"));
        other.add_name("*.wild.example").unwrap();
        let w = t.resolve_name("a.wild.example").unwrap();
        assert_eq!(t.lookup_ip_pattern(w).as_deref(), Some("*.wild.example"));
        assert_eq!(t.names(), vec!["*.wild.example", "svc.example"]);
        other.remove_name("svc.example").unwrap();
        assert_eq!(t.resolve_name("svc.example"), None);
        assert_eq!(t.lookup_ip(IpAddr::V4(ip)), None);
        assert_eq!(t.resolve_name("not a..name"), None);
        assert_eq!(t.dns_addr(), Ipv4Addr::new(100, 64, 0, 1));
    }

    #[test]
    fn lookup_ip_resolves_ipv6_pool_addresses() {
        let t = DnsTable::with_ipv6_pool(Ipv4Cidr::DEFAULT, Ipv6Cidr::DEFAULT);
        assert_eq!(t.ipv6_pool(), Some(Ipv6Cidr::DEFAULT));
        t.add_name("svc.example").unwrap();
        t.add_name("*.wild.example").unwrap();
        let svc = t.resolve_addrs("svc.example").unwrap();
        let svc6 = svc.v6.unwrap();
        assert_eq!(svc6, "fd7a:7a7a:7a7a::2".parse::<Ipv6Addr>().unwrap());
        let w6 = t.resolve_name_v6("A.Wild.Example.").unwrap();
        assert_ne!(w6, svc6);
        assert_eq!(
            t.lookup_ip(IpAddr::V6(svc6)).as_deref(),
            Some("svc.example")
        );
        assert_eq!(
            t.lookup_ip(IpAddr::V6(w6)).as_deref(),
            Some("a.wild.example")
        );
        assert_eq!(
            t.lookup_ip(IpAddr::V4(svc.v4)).as_deref(),
            Some("svc.example")
        );
        let mapped = IpAddr::V6(svc.v4.to_ipv6_mapped());
        assert_eq!(t.lookup_ip(mapped).as_deref(), Some("svc.example"));
        assert_eq!(
            t.lookup_addr_pattern(IpAddr::V6(w6)).as_deref(),
            Some("*.wild.example")
        );
        assert_eq!(
            t.lookup_addr_pattern(IpAddr::V6(svc6)).as_deref(),
            Some("svc.example")
        );
        // An address of the pool that no name holds, and one outside it.
        let unused = "fd7a:7a7a:7a7a::99".parse().unwrap();
        assert_eq!(t.lookup_ip(IpAddr::V6(unused)), None);
        assert_eq!(t.lookup_addr_pattern(IpAddr::V6(unused)), None);
        assert_eq!(t.lookup_ip("2001:db8::2".parse().unwrap()), None);
        t.remove_name("*.wild.example").unwrap();
        assert_eq!(t.lookup_ip(IpAddr::V6(w6)), None);
        assert_eq!(t.resolve_name_v6("a.wild.example"), None);
    }

    #[test]
    fn without_ipv6_pool_nothing_resolves_to_ipv6() {
        let t = DnsTable::from_config(&DnsConfig::default());
        assert_eq!(t.ipv6_pool(), None);
        let ip = t.add_name("svc.example").unwrap().unwrap();
        assert_eq!(t.resolve_name_v6("svc.example"), None);
        assert_eq!(
            t.resolve_addrs("svc.example"),
            Some(PoolAddrs { v4: ip, v6: None })
        );
        let dual = DnsTable::from_config(&DnsConfig {
            ipv6_pool: Some(Ipv6Cidr::DEFAULT),
            ..DnsConfig::default()
        });
        assert_eq!(dual.ipv6_pool(), Some(Ipv6Cidr::DEFAULT));
        dual.add_name("svc.example").unwrap();
        assert!(dual.resolve_name_v6("svc.example").is_some());
    }

    #[test]
    fn concurrent_first_queries_get_one_address() {
        let t = DnsTable::new(Ipv4Cidr::default());
        t.add_name("*.w.example").unwrap();
        let got: Vec<Ipv4Addr> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..8)
                .map(|_| s.spawn(|| t.resolve_name("x.w.example")))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
        });
        assert!(got.windows(2).all(|w| w[0] == w[1]), "{got:?}");
        assert_eq!(t.allocated(), 1);
    }
}
