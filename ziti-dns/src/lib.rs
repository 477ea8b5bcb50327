//! Intercepting DNS server for OpenZiti service hostnames.
//!
//! Inside a tunneler session, names of intercepted services resolve to addresses
//! from a pool the TUN device owns; every other name is forwarded to the real
//! resolvers. A table with an IPv6 pool ([`DnsTable::with_ipv6_pool`]) gives
//! each intercepted name an IPv6 address too and answers AAAA with it; without
//! one, AAAA for an intercepted name is an empty NOERROR. The answering core
//! ([`DnsCore`]) is pure (bytes in, [`Outcome`] out); [`DnsServer`] and
//! [`Forwarder`] are the tokio shell around it.
//!
//! ```
//! use std::net::IpAddr;
//! use ziti_dns::{AnswerPolicy, DnsCore, DnsTable, Ipv4Cidr, Outcome};
//!
//! let table = DnsTable::new(Ipv4Cidr::DEFAULT);
//! let ip = table.add_name("app.example")?.expect("exact names get an address at once");
//! table.add_name("*.corp.example")?;
//! assert_eq!(table.resolve_name("APP.example."), Some(ip));
//! assert_eq!(table.lookup_ip(IpAddr::V4(ip)).as_deref(), Some("app.example"));
//!
//! // The core answers a raw query packet (here a hand-made A query for app.example).
//! let mut query = vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0];
//! query.extend_from_slice(b"\x03app\x07example\x00\x00\x01\x00\x01");
//! let core = DnsCore::new(table.clone(), AnswerPolicy::default());
//! match core.handle(&query) {
//!     Outcome::Reply(reply) => assert!(reply.ends_with(&ip.octets())),
//!     other => panic!("unexpected {other:?}"),
//! }
//! # Ok::<(), ziti_dns::TableError>(())
//! ```

/// Fresh-first, oldest-released-next numbering shared by both address pools.
mod allocator;
/// The sans-IO answering core: query bytes in, reply / forward / drop out.
pub mod answer;
/// Server configuration: listen address, pool, upstreams, limits.
pub mod config;
/// The tokio upstream client (UDP with TCP retry, failover in order).
pub mod forwarder;
/// Fuzzing entry points used by `fuzz/` targets and regression tests (not public API).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
/// Intercepted-name patterns and the name <-> address table.
pub mod names;
/// The IPv4 address pool for intercepted names.
pub mod pool;
/// The optional IPv6 address pool for intercepted names (AAAA answers).
pub mod pool6;
/// Nameservers from `/etc/resolv.conf`.
pub mod resolv_conf;
/// The tokio UDP + TCP server around the core.
pub mod server;
/// The shared, live-updatable table handle.
pub mod table;
/// Upstream answer matching by (upstream, id, question).
pub mod upstream;
/// Raw DNS wire helpers (header, question key, header-only replies).
pub mod wire;

pub use answer::{AnswerPolicy, DnsCore, ForwardRequest, Outcome};
pub use config::{ConfigError, DnsConfig, Unanswerable, Upstreams};
pub use forwarder::{ClientTransport, ForwardError, Forwarder};
pub use names::{NameError, NamePattern, NameTable, PoolAddrs, TableError};
pub use pool::{IpPool, Ipv4Cidr, PoolError};
pub use pool6::{Ipv6Cidr, Ipv6Pool};
pub use server::{DnsServer, RunningServer, ServerError};
pub use table::DnsTable;
