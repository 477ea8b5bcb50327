//! Channel frame decoder on arbitrary bytes fed in data-chosen chunks; checks chunked decoding
//! against one-shot decoding and re-encoding of whatever decodes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ziti_sdk::channel::fuzz_decode(data);
});
