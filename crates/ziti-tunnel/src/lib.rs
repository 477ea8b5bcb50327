//! TUN + smoltcp userspace tunneler for OpenZiti.
//!
//! Today the crate provides the pieces the `zt-tunnel` binary shares with embedders; the
//! intercepting packet path lands in later modules.

/// Logging setup: stderr or one file per session.
pub mod logging;
