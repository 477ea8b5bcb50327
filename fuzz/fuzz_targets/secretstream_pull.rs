//! Secretstream decryptor init + pull on arbitrary headers and ciphertexts.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ziti_sdk::e2ee::fuzz_pull(data);
});
