//! Runnable examples for `ziti-sdk` and `ziti-tunnel`; see the `examples/` targets.
