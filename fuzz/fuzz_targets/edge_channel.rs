//! `edge::Channel` driven by data-chosen operations, router messages (legacy Data and xgress
//! content types), raw bytes and time steps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ziti_sdk::edge::channel::fuzz_channel(data);
});
