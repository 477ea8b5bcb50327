//! [`DnsTable`]: the shared, live-updatable handle on the [`NameTable`].
//!
//! Service events add and remove names through it while the DNS server answers
//! from it; the tunnel uses it to map a destination address back to its name.
//! Lookups take a read lock; only a first query for a wildcard-covered name and
//! updates take the write lock.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::names::{NameLookup, NameTable, TableError, normalize_name};
use crate::pool::{Ipv4Cidr, PoolError};

/// Cheaply clonable handle on the intercepted-name table (all clones share it).
#[derive(Debug, Clone)]
pub struct DnsTable {
    inner: Arc<RwLock<NameTable>>,
    pool: Ipv4Cidr,
}

impl DnsTable {
    /// An empty table allocating from `pool`.
    pub fn new(pool: Ipv4Cidr) -> Self {
        Self {
            inner: Arc::new(RwLock::new(NameTable::new(pool))),
            pool,
        }
    }

    /// The address pool.
    pub fn pool(&self) -> Ipv4Cidr {
        self.pool
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
    pub fn lookup_ip(&self, ip: IpAddr) -> Option<String> {
        match ip {
            IpAddr::V4(v4) => self.read().lookup_ip(v4).map(str::to_owned),
            IpAddr::V6(v6) => v6
                .to_ipv4_mapped()
                .and_then(|v4| self.read().lookup_ip(v4).map(str::to_owned)),
        }
    }

    /// The pattern (`name` or `*.domain`) that intercepts the name holding `ip`.
    pub fn lookup_ip_pattern(&self, ip: Ipv4Addr) -> Option<String> {
        let table = self.read();
        let name = table.lookup_ip(ip)?;
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
        match normalize_name(name) {
            Ok(name) => self.resolve_normalized(&name),
            Err(_) => Ok(None),
        }
    }

    /// Resolution for an already normalised name: read lock first, write lock only
    /// to allocate.
    pub(crate) fn resolve_normalized(&self, name: &str) -> Result<Option<Ipv4Addr>, PoolError> {
        match self.read().get(name) {
            NameLookup::Allocated(ip) => return Ok(Some(ip)),
            NameLookup::NotIntercepted => return Ok(None),
            NameLookup::Covered => {}
        }
        // Another writer may have allocated or removed it meanwhile; resolve rechecks.
        self.write().resolve(name)
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
