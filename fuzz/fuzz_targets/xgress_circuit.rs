//! One SDK xgress circuit fed arbitrary messages (payloads, acks, controls, closes) with
//! data-chosen time steps.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ziti_sdk::xgress::fuzz_circuit(data);
});
