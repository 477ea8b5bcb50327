//! Runnable examples for `ziti-sdk`; see the `examples/` targets.
