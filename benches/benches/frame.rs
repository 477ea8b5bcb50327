//! Channel frame encode/decode throughput for edge Data frames (64 B, 1 KiB, 32 KiB bodies).
//!
//! Decoding is zero-copy: the body is split off the input buffer, so decode cost should be
//! independent of body size.

use std::hint::black_box;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ziti_sdk::channel::{FrameDecoder, Limits};
use ziti_sdk::edge;

const SIZES: [(usize, &str); 3] = [(64, "64B"), (1024, "1KiB"), (32 * 1024, "32KiB")];

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_encode");
    for (size, name) in SIZES {
        let msg = edge::data(7, Bytes::from(vec![0xA5u8; size]), 0).with_sequence(42);
        g.throughput(Throughput::Bytes(msg.encoded_len() as u64));
        let mut buf = BytesMut::with_capacity(msg.encoded_len() * 2);
        g.bench_function(name, |b| {
            b.iter(|| {
                buf.clear();
                black_box(&msg).encode(&mut buf).unwrap();
                black_box(buf.len())
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("frame_decode");
    for (size, name) in SIZES {
        let msg = edge::data(7, Bytes::from(vec![0xA5u8; size]), 0).with_sequence(42);
        let wire = msg.to_bytes().unwrap();
        g.throughput(Throughput::Bytes(wire.len() as u64));
        let mut dec = FrameDecoder::new(Limits::default());
        g.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&wire[..]),
                |mut buf| {
                    let m = dec.decode(&mut buf).unwrap().unwrap();
                    black_box(m.body.len())
                },
                BatchSize::SmallInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, encode, decode);
criterion_main!(benches);
