//! Secretstream push/pull throughput: ziti-sdk's e2ee (crypto_secretstream crate) next to
//! dryoc's classic libsodium port as the reference.

use std::hint::black_box;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dryoc::classic::crypto_secretstream_xchacha20poly1305 as dss;
use ziti_sdk::e2ee::{ABYTES, Decryptor, Encryptor, SessionKey};

const SIZES: [(usize, &str); 2] = [(1024, "1KiB"), (32 * 1024, "32KiB")];
const KEY: [u8; 32] = [7; 32];
const HEADER: [u8; 24] = [9; 24];

fn push(c: &mut Criterion) {
    let mut g = c.benchmark_group("secretstream_push");
    for (size, name) in SIZES {
        let plain = vec![0x5Au8; size];
        g.throughput(Throughput::Bytes(size as u64));
        let mut enc = Encryptor::with_fixed_header(&SessionKey::from_bytes(KEY), HEADER);
        g.bench_function(format!("ziti/{name}"), |b| {
            b.iter(|| black_box(enc.push(black_box(&plain)).unwrap()))
        });
        let mut state = dss::State::new();
        dss::crypto_secretstream_xchacha20poly1305_init_pull(&mut state, &HEADER, &KEY);
        g.bench_function(format!("dryoc/{name}"), |b| {
            b.iter(|| {
                // Allocate the output like our push does, to compare like with like.
                let mut out = vec![0u8; size + ABYTES];
                dss::crypto_secretstream_xchacha20poly1305_push(
                    &mut state,
                    &mut out,
                    black_box(&plain),
                    None,
                    0,
                )
                .unwrap();
                black_box(out)
            })
        });
    }
    g.finish();
}

fn pull(c: &mut Criterion) {
    let mut g = c.benchmark_group("secretstream_pull");
    for (size, name) in SIZES {
        let plain = vec![0x5Au8; size];
        let key = SessionKey::from_bytes(KEY);
        let cipher = Encryptor::with_fixed_header(&key, HEADER)
            .push(&plain)
            .unwrap();
        g.throughput(Throughput::Bytes(size as u64));
        // Each pull needs a fresh state at the same position (the first message).
        g.bench_function(format!("ziti/{name}"), |b| {
            b.iter_batched(
                || Decryptor::new(&key, &HEADER).unwrap(),
                |mut dec| black_box(dec.pull(&cipher).unwrap()),
                BatchSize::SmallInput,
            )
        });
        g.bench_function(format!("dryoc/{name}"), |b| {
            b.iter_batched(
                || {
                    let mut st = dss::State::new();
                    dss::crypto_secretstream_xchacha20poly1305_init_pull(&mut st, &HEADER, &KEY);
                    st
                },
                |mut st| {
                    let mut out = vec![0u8; size];
                    let mut tag = 0u8;
                    dss::crypto_secretstream_xchacha20poly1305_pull(
                        &mut st, &mut out, &mut tag, &cipher, None,
                    )
                    .unwrap();
                    black_box(out)
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, push, pull);
criterion_main!(benches);
