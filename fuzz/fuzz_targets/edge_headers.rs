//! Every edge message parser (and the connection state machine) on an arbitrary frame or header
//! block.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ziti_sdk::edge::fuzz_parse(data);
});
