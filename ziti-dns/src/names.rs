//! Intercepted names: normalisation, exact and wildcard patterns, and the
//! name <-> address table built on [`IpPool`].
//!
//! Names are compared lower-case and without a trailing dot. An exact pattern
//! gets its address when it is added; a wildcard `*.corp.example` covers every
//! name below `corp.example` and `corp.example` itself (as the C tunneler does),
//! and each covered name gets its own address on first lookup. Exact patterns win
//! over wildcards, and the longest covering wildcard is the one reported.
//!
//! With an IPv6 pool ([`NameTable::with_ipv6_pool`]), every name that gets an
//! IPv4 address gets an IPv6 one at the same moment, keeps both for as long as
//! it holds either, and gives both back together.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::pool::{IpPool, Ipv4Cidr, PoolError};
use crate::pool6::{Ipv6Cidr, Ipv6Pool};

/// Longest name in presentation form without the trailing dot (RFC 1035: 255 octets on the wire).
const MAX_NAME_LEN: usize = 253;
/// Longest label (RFC 1035).
const MAX_LABEL_LEN: usize = 63;

/// Why a configured name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NameError {
    /// Nothing left after trimming.
    #[error("name is empty")]
    Empty,
    /// Longer than 253 characters.
    #[error("name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    /// Two dots in a row, or a leading dot.
    #[error("name has an empty label")]
    EmptyLabel,
    /// A label over 63 characters.
    #[error("name has a label longer than {MAX_LABEL_LEN} characters")]
    LabelTooLong,
    /// `*` anywhere but as the whole first label of `*.domain`.
    #[error("wildcards must have the form *.domain")]
    BadWildcard,
    /// An IP address is not a hostname.
    #[error("an IP address is not a hostname")]
    IpAddress,
}

/// Errors of the name table.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TableError {
    /// The pattern is not a valid name.
    #[error("invalid intercepted name {name:?}: {reason}")]
    InvalidName {
        /// The pattern as given.
        name: String,
        /// What is wrong with it.
        reason: NameError,
    },
    /// No address left for a new name.
    #[error(transparent)]
    Pool(#[from] PoolError),
}

/// A parsed intercept pattern.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NamePattern {
    /// One name, normalised.
    Exact(String),
    /// `*.domain`: holds the normalised domain.
    Wildcard(String),
}

impl NamePattern {
    /// Parses `name` or `*.domain` (case-insensitive, trailing dot optional).
    pub fn parse(pattern: &str) -> Result<Self, NameError> {
        let lower = pattern.trim().to_ascii_lowercase();
        match lower.strip_prefix("*.") {
            Some(domain) => Ok(Self::Wildcard(normalize_name(domain)?)),
            None => Ok(Self::Exact(normalize_name(&lower)?)),
        }
    }

    /// The pattern as text: `name` or `*.domain`.
    pub fn to_pattern_string(&self) -> String {
        match self {
            Self::Exact(name) => name.clone(),
            Self::Wildcard(domain) => format!("*.{domain}"),
        }
    }
}

/// Normalises a hostname: trimmed, lower-case, no trailing dot; checks lengths.
pub fn normalize_name(name: &str) -> Result<String, NameError> {
    let name = name.trim();
    let name = name.strip_suffix('.').unwrap_or(name);
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong);
    }
    if name.parse::<IpAddr>().is_ok() {
        return Err(NameError::IpAddress);
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err(NameError::EmptyLabel);
        }
        if label.len() > MAX_LABEL_LEN {
            return Err(NameError::LabelTooLong);
        }
        if label.contains('*') {
            return Err(NameError::BadWildcard);
        }
    }
    Ok(name.to_ascii_lowercase())
}

/// What the table knows about a (normalised) name without changing anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameLookup {
    /// Intercepted and holding this address.
    Allocated(Ipv4Addr),
    /// Covered by a wildcard but not given an address yet.
    Covered,
    /// Not intercepted.
    NotIntercepted,
}

/// The pool addresses one intercepted name holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PoolAddrs {
    /// The IPv4 pool address (A answers).
    pub v4: Ipv4Addr,
    /// The IPv6 pool address (AAAA answers); `None` when the table has no IPv6 pool.
    pub v6: Option<Ipv6Addr>,
}

#[derive(Debug, Clone)]
struct Entry {
    ip: Ipv4Addr,
    /// Present exactly when the table has an IPv6 pool.
    ip6: Option<Ipv6Addr>,
    /// Added as an exact pattern (else it lives only because a wildcard covers it).
    exact: bool,
}

/// The name <-> address table (single owner; share it through [`crate::DnsTable`]).
///
/// Invariant: every entry is either exact or covered by a wildcard in `wildcards`,
/// `by_ip` and `by_ip6` are the exact inverses of `entries`, every address is
/// allocated in `pool` or `pool6`, and an entry has an IPv6 address exactly when
/// `pool6` is set.
#[derive(Debug, Clone)]
pub struct NameTable {
    pool: IpPool,
    pool6: Option<Ipv6Pool>,
    entries: HashMap<String, Entry>,
    by_ip: HashMap<Ipv4Addr, String>,
    by_ip6: HashMap<Ipv6Addr, String>,
    wildcards: HashSet<String>,
}

impl NameTable {
    /// An empty table allocating IPv4 addresses from `pool` (AAAA queries get no address).
    pub fn new(pool: Ipv4Cidr) -> Self {
        Self {
            pool: IpPool::new(pool),
            pool6: None,
            entries: HashMap::new(),
            by_ip: HashMap::new(),
            by_ip6: HashMap::new(),
            wildcards: HashSet::new(),
        }
    }

    /// An empty table giving each name an address from `pool` and one from `pool6`.
    pub fn with_ipv6_pool(pool: Ipv4Cidr, pool6: Ipv6Cidr) -> Self {
        Self {
            pool6: Some(Ipv6Pool::new(pool6)),
            ..Self::new(pool)
        }
    }

    /// The pool addresses come from.
    pub fn pool(&self) -> &IpPool {
        &self.pool
    }

    /// The IPv6 pool, if the table has one.
    pub fn ipv6_pool(&self) -> Option<&Ipv6Pool> {
        self.pool6.as_ref()
    }

    /// Gives `name` its addresses: both or neither, so a full IPv6 pool leaves
    /// no IPv4 address taken (and the reverse).
    fn allocate(&mut self, name: &str, exact: bool) -> Result<Entry, PoolError> {
        self.pool.check_room()?;
        if let Some(pool6) = &self.pool6 {
            pool6.check_room()?;
        }
        let ip = self.pool.allocate()?;
        let ip6 = match &mut self.pool6 {
            Some(pool6) => match pool6.allocate() {
                Ok(ip6) => Some(ip6),
                Err(e) => {
                    // Unreachable after the room check; undo rather than trust it.
                    self.pool.release(ip);
                    return Err(e);
                }
            },
            None => None,
        };
        self.by_ip.insert(ip, name.to_owned());
        if let Some(ip6) = ip6 {
            self.by_ip6.insert(ip6, name.to_owned());
        }
        let entry = Entry { ip, ip6, exact };
        self.entries.insert(name.to_owned(), entry.clone());
        Ok(entry)
    }

    /// Adds `name` or `*.domain`. Returns the address of an exact name (wildcards
    /// allocate lazily and return `None`). Adding an existing pattern keeps its address.
    pub fn add(&mut self, pattern: &str) -> Result<Option<Ipv4Addr>, TableError> {
        match parse(pattern)? {
            NamePattern::Exact(name) => self.add_exact(name).map(Some),
            NamePattern::Wildcard(domain) => {
                self.wildcards.insert(domain);
                Ok(None)
            }
        }
    }

    fn add_exact(&mut self, name: String) -> Result<Ipv4Addr, TableError> {
        if let Some(entry) = self.entries.get_mut(&name) {
            // Possibly allocated through a wildcard before: keep the address stable.
            entry.exact = true;
            return Ok(entry.ip);
        }
        Ok(self.allocate(&name, true)?.ip)
    }

    /// Removes `name` or `*.domain`; returns whether it was present. Addresses of
    /// names no longer intercepted go back to the pool; a name still covered by a
    /// wildcard keeps its address.
    pub fn remove(&mut self, pattern: &str) -> Result<bool, TableError> {
        Ok(match parse(pattern)? {
            NamePattern::Exact(name) => self.remove_exact(&name),
            NamePattern::Wildcard(domain) => self.remove_wildcard(&domain),
        })
    }

    fn remove_exact(&mut self, name: &str) -> bool {
        let covered = self.covering_wildcard(name).is_some();
        let Some(entry) = self.entries.get_mut(name) else {
            return false;
        };
        if !entry.exact {
            return false;
        }
        if covered {
            entry.exact = false;
        } else if let Some(entry) = self.entries.remove(name) {
            self.release(&entry);
        }
        true
    }

    fn remove_wildcard(&mut self, domain: &str) -> bool {
        if !self.wildcards.remove(domain) {
            return false;
        }
        let orphans: Vec<String> = self
            .entries
            .iter()
            .filter(|(name, e)| !e.exact && self.covering_wildcard(name).is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in orphans {
            if let Some(entry) = self.entries.remove(&name) {
                self.release(&entry);
            }
        }
        true
    }

    fn release(&mut self, entry: &Entry) {
        self.by_ip.remove(&entry.ip);
        self.pool.release(entry.ip);
        if let (Some(ip6), Some(pool6)) = (entry.ip6, &mut self.pool6) {
            self.by_ip6.remove(&ip6);
            pool6.release(ip6);
        }
    }

    /// Replaces all patterns with `patterns`. Every pattern is validated before
    /// anything changes; names in both the old and new set keep their addresses.
    /// If the pool runs out part-way, the names added so far stay.
    pub fn set<I, S>(&mut self, patterns: I) -> Result<(), TableError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut exact = HashSet::new();
        let mut wild = HashSet::new();
        for p in patterns {
            match parse(p.as_ref())? {
                NamePattern::Exact(n) => exact.insert(n),
                NamePattern::Wildcard(d) => wild.insert(d),
            };
        }
        // Add before removing so that a name moving between an exact and a
        // wildcard pattern keeps its address.
        self.wildcards.extend(wild.iter().cloned());
        for name in &exact {
            self.add_exact(name.clone())?;
        }
        let stale_exact: Vec<String> = self
            .entries
            .iter()
            .filter(|(n, e)| e.exact && !exact.contains(*n))
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale_exact {
            self.remove_exact(&name);
        }
        let stale_wild: Vec<String> = self.wildcards.difference(&wild).cloned().collect();
        for domain in stale_wild {
            self.remove_wildcard(&domain);
        }
        Ok(())
    }

    /// Looks a normalised name up without allocating.
    pub fn get(&self, name: &str) -> NameLookup {
        if let Some(entry) = self.entries.get(name) {
            return NameLookup::Allocated(entry.ip);
        }
        if self.covering_wildcard(name).is_some() {
            NameLookup::Covered
        } else {
            NameLookup::NotIntercepted
        }
    }

    /// The addresses a normalised name holds, without allocating.
    pub fn addrs(&self, name: &str) -> Option<PoolAddrs> {
        self.entries.get(name).map(|e| PoolAddrs {
            v4: e.ip,
            v6: e.ip6,
        })
    }

    /// The address of a normalised name, allocating one if a wildcard covers it.
    /// `Ok(None)` if the name is not intercepted.
    pub fn resolve(&mut self, name: &str) -> Result<Option<Ipv4Addr>, PoolError> {
        Ok(self.resolve_addrs(name)?.map(|a| a.v4))
    }

    /// Like [`NameTable::resolve`], with the IPv6 address too (when the table has
    /// an IPv6 pool). Fails if either pool is exhausted.
    pub fn resolve_addrs(&mut self, name: &str) -> Result<Option<PoolAddrs>, PoolError> {
        if let Some(addrs) = self.addrs(name) {
            return Ok(Some(addrs));
        }
        if self.covering_wildcard(name).is_none() {
            return Ok(None);
        }
        let entry = self.allocate(name, false)?;
        Ok(Some(PoolAddrs {
            v4: entry.ip,
            v6: entry.ip6,
        }))
    }

    /// The name holding `ip`, if any.
    pub fn lookup_ip(&self, ip: Ipv4Addr) -> Option<&str> {
        self.by_ip.get(&ip).map(String::as_str)
    }

    /// The name holding the IPv6 pool address `ip`, if any.
    pub fn lookup_ipv6(&self, ip: Ipv6Addr) -> Option<&str> {
        self.by_ip6.get(&ip).map(String::as_str)
    }

    /// The pattern that makes a normalised `name` intercepted: the name itself if
    /// it was added exactly, else the longest covering `*.domain`.
    pub fn matching_pattern(&self, name: &str) -> Option<String> {
        if self.entries.get(name).is_some_and(|e| e.exact) {
            return Some(name.to_owned());
        }
        self.covering_wildcard(name).map(|d| format!("*.{d}"))
    }

    /// The longest wildcard domain covering `name` (the name itself or a parent).
    fn covering_wildcard(&self, name: &str) -> Option<&str> {
        if self.wildcards.is_empty() {
            return None;
        }
        let mut rest = name;
        loop {
            if let Some(d) = self.wildcards.get(rest) {
                return Some(d.as_str());
            }
            rest = rest.split_once('.')?.1;
        }
    }

    /// All configured patterns (exact names and `*.domain`), sorted.
    pub fn patterns(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| e.exact)
            .map(|(n, _)| n.clone())
            .chain(self.wildcards.iter().map(|d| format!("*.{d}")))
            .collect();
        out.sort();
        out
    }

    /// How many names hold an address.
    pub fn allocated(&self) -> usize {
        self.entries.len()
    }
}

fn parse(pattern: &str) -> Result<NamePattern, TableError> {
    NamePattern::parse(pattern).map_err(|reason| TableError::InvalidName {
        name: pattern.to_owned(),
        reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table() -> NameTable {
        NameTable::new("10.10.0.0/24".parse().unwrap())
    }

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn normalisation() {
        assert_eq!(
            normalize_name(" Foo.Example.COM. ").unwrap(),
            "foo.example.com"
        );
        assert_eq!(normalize_name("."), Err(NameError::Empty));
        assert_eq!(normalize_name("a..b"), Err(NameError::EmptyLabel));
        assert_eq!(normalize_name(".a"), Err(NameError::EmptyLabel));
        assert_eq!(
            normalize_name(&"a".repeat(64)),
            Err(NameError::LabelTooLong)
        );
        assert_eq!(normalize_name(&"a.".repeat(128)), Err(NameError::TooLong));
        assert_eq!(normalize_name("10.0.0.1"), Err(NameError::IpAddress));
        assert_eq!(normalize_name("a.*.b"), Err(NameError::BadWildcard));
        assert_eq!(
            NamePattern::parse("*.Corp.Example."),
            Ok(NamePattern::Wildcard("corp.example".into()))
        );
        assert_eq!(NamePattern::parse("*"), Err(NameError::BadWildcard));
        assert_eq!(NamePattern::parse("*foo.bar"), Err(NameError::BadWildcard));
        assert_eq!(NamePattern::parse("*.*.bar"), Err(NameError::BadWildcard));
    }

    #[test]
    fn exact_names_case_and_trailing_dot() {
        let mut t = table();
        let a = t.add("App.Example.").unwrap().unwrap();
        assert_eq!(a, ip("10.10.0.2"));
        assert_eq!(
            t.add("app.example").unwrap(),
            Some(a),
            "re-adding keeps the address"
        );
        assert_eq!(t.get("app.example"), NameLookup::Allocated(a));
        assert_eq!(t.get("x.app.example"), NameLookup::NotIntercepted);
        assert_eq!(t.lookup_ip(a), Some("app.example"));
        assert_eq!(
            t.matching_pattern("app.example").as_deref(),
            Some("app.example")
        );
        assert!(t.remove("APP.EXAMPLE.").unwrap());
        assert!(!t.remove("app.example").unwrap());
        assert_eq!(t.get("app.example"), NameLookup::NotIntercepted);
        assert_eq!(t.lookup_ip(a), None);
        assert_eq!(t.pool().in_use(), 0);
    }

    #[test]
    fn wildcard_allocates_per_name_and_matches_bare_domain() {
        let mut t = table();
        assert_eq!(t.add("*.corp.example").unwrap(), None);
        assert_eq!(t.get("a.corp.example"), NameLookup::Covered);
        assert_eq!(t.get("corp.example"), NameLookup::Covered);
        assert_eq!(t.get("deep.a.corp.example"), NameLookup::Covered);
        assert_eq!(t.get("xcorp.example"), NameLookup::NotIntercepted);
        assert_eq!(t.get("example"), NameLookup::NotIntercepted);
        let a = t.resolve("a.corp.example").unwrap().unwrap();
        let b = t.resolve("b.corp.example").unwrap().unwrap();
        let bare = t.resolve("corp.example").unwrap().unwrap();
        assert_ne!(a, b);
        assert_ne!(a, bare);
        assert_eq!(t.resolve("a.corp.example").unwrap(), Some(a), "stable");
        assert_eq!(t.lookup_ip(b), Some("b.corp.example"));
        assert_eq!(
            t.matching_pattern("b.corp.example").as_deref(),
            Some("*.corp.example")
        );
        assert_eq!(t.resolve("other.example").unwrap(), None);
        assert_eq!(t.allocated(), 3);
        assert!(t.remove("*.corp.example").unwrap());
        assert_eq!(t.allocated(), 0);
        assert_eq!(t.lookup_ip(a), None);
        assert_eq!(t.pool().in_use(), 0);
    }

    #[test]
    fn longest_wildcard_and_exact_precedence() {
        let mut t = table();
        t.add("*.example").unwrap();
        t.add("*.corp.example").unwrap();
        assert_eq!(
            t.matching_pattern("a.corp.example").as_deref(),
            Some("*.corp.example")
        );
        assert_eq!(
            t.matching_pattern("a.example").as_deref(),
            Some("*.example")
        );
        // Removing the narrow wildcard keeps names the wide one still covers.
        let a = t.resolve("a.corp.example").unwrap().unwrap();
        t.remove("*.corp.example").unwrap();
        assert_eq!(t.get("a.corp.example"), NameLookup::Allocated(a));
        assert_eq!(
            t.matching_pattern("a.corp.example").as_deref(),
            Some("*.example")
        );
    }

    #[test]
    fn name_moving_between_exact_and_wildcard_keeps_address() {
        let mut t = table();
        t.add("*.corp.example").unwrap();
        let a = t.resolve("a.corp.example").unwrap().unwrap();
        assert_eq!(t.add("a.corp.example").unwrap(), Some(a));
        assert!(t.remove("a.corp.example").unwrap());
        assert_eq!(
            t.get("a.corp.example"),
            NameLookup::Allocated(a),
            "wildcard still covers it"
        );
        assert!(
            !t.remove("a.corp.example").unwrap(),
            "no longer an exact pattern"
        );
        t.add("a.corp.example").unwrap();
        t.remove("*.corp.example").unwrap();
        assert_eq!(
            t.get("a.corp.example"),
            NameLookup::Allocated(a),
            "still exact"
        );
    }

    #[test]
    fn set_replaces_and_keeps_common_names() {
        let mut t = table();
        t.set(["a.example", "b.example", "*.w.example"]).unwrap();
        let a = t.resolve("a.example").unwrap().unwrap();
        let b = t.resolve("b.example").unwrap().unwrap();
        let x = t.resolve("x.w.example").unwrap().unwrap();
        t.set(["A.example.", "c.example", "x.w.example"]).unwrap();
        assert_eq!(t.get("a.example"), NameLookup::Allocated(a));
        assert_eq!(t.get("b.example"), NameLookup::NotIntercepted);
        assert_eq!(t.lookup_ip(b), None);
        assert_eq!(
            t.get("x.w.example"),
            NameLookup::Allocated(x),
            "wildcard -> exact keeps address"
        );
        assert_eq!(t.get("y.w.example"), NameLookup::NotIntercepted);
        assert_eq!(t.patterns(), vec!["a.example", "c.example", "x.w.example"]);
        // An invalid pattern changes nothing.
        let err = t.set(["ok.example", "bad..name"]).unwrap_err();
        assert!(matches!(
            err,
            TableError::InvalidName {
                reason: NameError::EmptyLabel,
                ..
            }
        ));
        assert_eq!(t.patterns(), vec!["a.example", "c.example", "x.w.example"]);
        t.set(Vec::<String>::new()).unwrap();
        assert_eq!(t.allocated(), 0);
        assert_eq!(t.pool().in_use(), 0);
    }

    #[test]
    fn exhaustion_is_a_clear_error_and_release_allows_reuse() {
        let mut t = NameTable::new("10.0.0.0/29".parse().unwrap()); // 5 names
        for i in 0..5 {
            t.add(&format!("n{i}.example")).unwrap();
        }
        let err = t.add("n5.example").unwrap_err();
        assert!(
            matches!(
                err,
                TableError::Pool(PoolError::Exhausted { capacity: 5, .. })
            ),
            "{err}"
        );
        t.add("*.w.example").unwrap();
        assert!(t.resolve("a.w.example").is_err());
        assert_eq!(
            t.get("a.w.example"),
            NameLookup::Covered,
            "failed allocation leaves no entry"
        );
        let freed = t.resolve("n2.example").unwrap().unwrap();
        t.remove("n2.example").unwrap();
        assert_eq!(t.resolve("a.w.example").unwrap(), Some(freed));
        assert_eq!(t.lookup_ip(freed), Some("a.w.example"));
    }

    fn dual_table(pool6: &str) -> NameTable {
        NameTable::with_ipv6_pool("10.10.0.0/24".parse().unwrap(), pool6.parse().unwrap())
    }

    fn ip6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    #[test]
    fn ipv6_addresses_come_and_go_with_ipv4_ones() {
        let mut t = dual_table("fd00:10::/120");
        let a4 = t.add("a.example").unwrap().unwrap();
        let a = t.addrs("a.example").unwrap();
        assert_eq!(
            a,
            PoolAddrs {
                v4: a4,
                v6: Some(ip6("fd00:10::2"))
            }
        );
        t.add("*.corp.example").unwrap();
        assert_eq!(t.addrs("x.corp.example"), None, "wildcards allocate lazily");
        let x = t.resolve_addrs("x.corp.example").unwrap().unwrap();
        assert_eq!(x.v6, Some(ip6("fd00:10::3")));
        assert_eq!(
            t.resolve_addrs("x.corp.example").unwrap(),
            Some(x),
            "stable"
        );
        assert_eq!(t.resolve("x.corp.example").unwrap(), Some(x.v4));
        assert_eq!(t.resolve_addrs("other.example").unwrap(), None);
        assert_eq!(t.lookup_ipv6(ip6("fd00:10::3")), Some("x.corp.example"));
        assert_eq!(t.lookup_ip(x.v4), Some("x.corp.example"));
        assert_eq!(t.ipv6_pool().map(Ipv6Pool::in_use), Some(2));
        // Moving between exact and wildcard keeps both addresses.
        assert_eq!(t.add("x.corp.example").unwrap(), Some(x.v4));
        t.remove("*.corp.example").unwrap();
        assert_eq!(t.addrs("x.corp.example"), Some(x));
        // Removal gives both back.
        t.set(["a.example"]).unwrap();
        assert_eq!(t.lookup_ipv6(ip6("fd00:10::3")), None);
        assert_eq!(t.lookup_ip(x.v4), None);
        assert_eq!(t.ipv6_pool().map(Ipv6Pool::in_use), Some(1));
        assert_eq!(t.pool().in_use(), 1);
        t.remove("a.example").unwrap();
        assert_eq!(t.lookup_ipv6(ip6("fd00:10::2")), None);
        assert_eq!(t.ipv6_pool().map(Ipv6Pool::in_use), Some(0));
    }

    #[test]
    fn ipv6_exhaustion_takes_no_ipv4_address() {
        let mut t = dual_table("fd00:10::/126"); // two IPv6 names, 253 IPv4 ones
        t.set(["a.example", "b.example", "*.w.example"]).unwrap();
        let err = t.add("c.example").unwrap_err();
        assert!(
            matches!(
                err,
                TableError::Pool(PoolError::Ipv6Exhausted { capacity: 2, .. })
            ),
            "{err}"
        );
        assert!(err.to_string().contains("fd00:10::/126"), "{err}");
        assert!(t.resolve_addrs("x.w.example").is_err());
        assert_eq!(t.get("x.w.example"), NameLookup::Covered);
        assert_eq!(t.pool().in_use(), 2, "no IPv4 address leaked");
        assert_eq!(t.allocated(), 2);
        // Released addresses are reused; a fresh IPv4 address pairs with the old IPv6 one.
        let b = t.addrs("b.example").unwrap();
        t.remove("b.example").unwrap();
        let x = t.resolve_addrs("x.w.example").unwrap().unwrap();
        assert_eq!(x.v6, b.v6);
        assert_ne!(x.v4, b.v4, "fresh IPv4 addresses before released ones");
        let x6 = x.v6.unwrap();
        assert_eq!(t.lookup_ipv6(x6), Some("x.w.example"));
        assert_eq!(
            t.lookup_ipv6(t.addrs("a.example").unwrap().v6.unwrap()),
            Some("a.example")
        );
    }

    #[test]
    fn without_ipv6_pool_names_hold_no_ipv6_address() {
        let mut t = table();
        let a = t.add("a.example").unwrap().unwrap();
        assert_eq!(t.addrs("a.example"), Some(PoolAddrs { v4: a, v6: None }));
        assert!(t.ipv6_pool().is_none());
        assert_eq!(t.lookup_ipv6(ip6("::2")), None);
    }
}
