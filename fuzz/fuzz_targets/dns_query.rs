#![no_main]
//! ziti-dns: query handling through the answering core on arbitrary bytes.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Err(violation) = ziti_dns::fuzz::query(data) {
        panic!("{violation}");
    }
});
