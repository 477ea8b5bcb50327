//! TUN + smoltcp userspace tunneler for OpenZiti.
//!
//! Pure core first, tokio shell on top:
//! - [`intercept`]: which service a flow belongs to (from `intercept.v1` configs).
//! - [`stack`]: the smoltcp TCP/IP stack behind a packet queue, one socket per intercepted flow.
//! - [`netlink`]: addresses and routes of the TUN device, through rtnetlink.
//! - [`tunnel`]: the tokio driver: TUN <-> stack <-> Ziti streams, DNS, service updates.

/// Fuzzing entry point for the packet path (used by `fuzz/` and by tests; not public API).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
/// Which service a flow belongs to: the intercept table.
pub mod intercept;
/// Links and routes through rtnetlink.
pub mod netlink;
/// The sans-IO TCP/IP stack (smoltcp) between the TUN and Ziti.
pub mod stack;
/// The tokio driver that runs a tunnel.
pub mod tunnel;
