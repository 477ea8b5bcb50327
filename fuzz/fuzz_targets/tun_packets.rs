#![no_main]
//! ziti-tunnel: the packet path (smoltcp stack, flow handling) on arbitrary packet sequences.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = ziti_tunnel::fuzz::packets(data) {
        panic!("{violation}");
    }
});
