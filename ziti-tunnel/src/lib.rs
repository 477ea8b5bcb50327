//! TUN + smoltcp userspace tunneler for OpenZiti.
//!
//! Pure core first, tokio shell on top:
//! - [`intercept`]: which service a flow belongs to (from `intercept.v1` configs).
//! - [`app_data`]: what a dial tells the host about the intercepted flow.
//! - [`host_target`]: where a hosted dial connects (`host.v1`/`host.v2` and the app data).
//! - [`health`]: how health check results move a hosted terminator's precedence and cost.
//! - [`stack`]: the smoltcp TCP/IP stack behind a packet queue, one socket per intercepted flow.
//! - [`netlink`]: addresses and routes of the TUN device, through rtnetlink.
//! - [`tunnel`]: the tokio driver: TUN <-> stack <-> Ziti streams, DNS, service updates.

/// What an intercepting dial tells the host: the app data of a flow.
pub mod app_data;
/// Fuzzing entry point for the packet path (used by `fuzz/` and by tests; not public API).
#[cfg(any(test, feature = "fuzzing"))]
#[doc(hidden)]
pub mod fuzz;
/// Health checks of hosted terminators: results in, precedence and cost out.
pub mod health;
/// Where a hosted dial connects: a terminator's config and the dial's app data.
pub mod host_target;
/// Which service a flow belongs to: the intercept table.
pub mod intercept;
/// Links and routes through rtnetlink.
pub mod netlink;
/// The sans-IO TCP/IP stack (smoltcp) between the TUN and Ziti.
pub mod stack;
/// The tokio driver that runs a tunnel.
pub mod tunnel;
