#![no_main]
//! ziti-dns: upstream answers on arbitrary bytes through the forwarder's matching path.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = ziti_dns::fuzz::upstream_answer(data) {
        panic!("{violation}");
    }
});
