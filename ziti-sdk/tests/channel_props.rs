//! Property tests for the channel codec: encode/decode identity, typed header values, chunked
//! decoding equal to one-shot decoding, and no panics on arbitrary input.

// Test helpers outside #[test] fns may fail loudly: this whole crate is test code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;
use ziti_sdk::channel::{FrameDecoder, FrameError, Headers, Limits, Message};

fn arb_message() -> impl Strategy<Value = Message> {
    (
        any::<i32>(),
        any::<i32>(),
        proptest::collection::btree_map(
            any::<i32>(),
            proptest::collection::vec(any::<u8>(), 0..48),
            0..12,
        ),
        proptest::collection::vec(any::<u8>(), 0..600),
    )
        .prop_map(|(ct, seq, hdrs, body)| {
            let mut m = Message::new(ct, body).with_sequence(seq);
            for (k, v) in hdrs {
                m.headers.insert(k, v);
            }
            m
        })
}

/// Decodes everything in `data`, feeding it `chunk` bytes at a time.
fn decode_stream(data: &[u8], chunk: usize) -> (Vec<Message>, Option<FrameError>) {
    let mut dec = FrameDecoder::new(Limits::default());
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for piece in data.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(m)) => out.push(m),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

proptest! {
    #[test]
    fn encode_decode_identity(msgs in proptest::collection::vec(arb_message(), 1..5)) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            m.encode(&mut wire).unwrap();
            prop_assert_eq!(m.encoded_len(), m.to_bytes().unwrap().len());
        }
        let (decoded, err) = decode_stream(&wire, usize::MAX);
        prop_assert_eq!(err, None);
        prop_assert_eq!(&decoded, &msgs);
        // Re-encoding the decoded messages gives the same bytes (order preserved).
        let mut again = BytesMut::new();
        for m in &decoded {
            m.encode(&mut again).unwrap();
        }
        prop_assert_eq!(again, wire);
    }

    #[test]
    fn split_input_equals_one_shot(
        msgs in proptest::collection::vec(arb_message(), 1..4),
        chunk in 1usize..64,
        garbage in proptest::collection::vec(any::<u8>(), 0..40),
    ) {
        let mut wire = BytesMut::new();
        for m in &msgs {
            m.encode(&mut wire).unwrap();
        }
        wire.extend_from_slice(&garbage);
        let one = decode_stream(&wire, usize::MAX);
        let split = decode_stream(&wire, chunk);
        prop_assert_eq!(&one, &split);
        prop_assert_eq!(&one.0[..msgs.len()], &msgs[..]);
    }

    #[test]
    fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..512), chunk in 1usize..32) {
        let _ = decode_stream(&data, chunk);
        ziti_sdk::channel::fuzz_decode(&data);
    }

    /// Header blocks with repeated ids (small id range) and optional trailing garbage: decoding
    /// keeps entries verbatim, lookups see the last duplicate, re-encoding is byte-identical, and
    /// a block with garbage after the last entry is rejected.
    #[test]
    fn header_blocks_with_duplicates(
        entries in proptest::collection::vec(
            (0i32..4, proptest::collection::vec(any::<u8>(), 0..8)), 0..10),
        tail in proptest::collection::vec(any::<u8>(), 0..7),
    ) {
        let mut block = Vec::new();
        for (id, v) in &entries {
            block.extend_from_slice(&id.to_le_bytes());
            block.extend_from_slice(&(v.len() as u32).to_le_bytes());
            block.extend_from_slice(v);
        }
        let clean = block.len();
        block.extend_from_slice(&tail);
        let mut wire = BytesMut::new();
        wire.extend_from_slice(&[3, 6, 9, 0x0c, 0x72, 0xed, 0, 0, 1, 0, 0, 0]);
        wire.extend_from_slice(&(block.len() as u32).to_le_bytes());
        wire.extend_from_slice(&0u32.to_le_bytes());
        wire.extend_from_slice(&block);
        let original = wire.clone().freeze();
        let res = FrameDecoder::default().decode(&mut wire);
        if tail.is_empty() {
            let m = res.unwrap().unwrap();
            prop_assert_eq!(m.headers.len(), entries.len());
            for id in 0..4 {
                let last = entries.iter().rev().find(|(k, _)| *k == id).map(|(_, v)| v.as_slice());
                prop_assert_eq!(m.headers.get(id).map(|b| b.as_ref()), last);
            }
            prop_assert_eq!(m.to_bytes().unwrap(), original);
        } else {
            // 1..7 stray bytes can never form a complete 8-byte entry prefix.
            prop_assert!(res.is_err(), "garbage after {} bytes accepted", clean);
        }
    }

    #[test]
    fn typed_header_values_round_trip(
        u in any::<u32>(), i in any::<i32>(), l in any::<u64>(), s in any::<u16>(),
        b in any::<u8>(), f in any::<bool>(), text in ".{0,40}",
        slice in proptest::collection::vec(".{0,20}", 0..8),
        map in proptest::collection::btree_map(any::<u32>(), proptest::collection::vec(any::<u8>(), 0..20), 0..8),
        smap in proptest::collection::btree_map(".{0,10}", ".{0,10}", 0..8),
    ) {
        let mut h = Headers::new();
        h.put_u32(1, u);
        h.put_i32(2, i);
        h.put_u64(3, l);
        h.put_u16(4, s);
        h.put_u8(5, b);
        h.put_bool(6, f);
        h.put_str(7, &text);
        h.put_string_slice(8, &slice);
        let bmap: BTreeMap<u32, Bytes> = map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect();
        h.put_u32_bytes_map(9, &bmap);
        h.put_string_map(10, &smap);

        let m = Message { content_type: 1, sequence: 2, headers: h, body: Bytes::new() };
        let mut wire = BytesMut::from(&m.to_bytes().unwrap()[..]);
        let d = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        let h = &d.headers;
        prop_assert_eq!(h.get_u32(1), Some(u));
        prop_assert_eq!(h.get_i32(2), Some(i));
        prop_assert_eq!(h.get_u64(3), Some(l));
        prop_assert_eq!(h.get_u16(4), Some(s));
        prop_assert_eq!(h.get_u8(5), Some(b));
        prop_assert_eq!(h.get_bool(6), Some(f));
        prop_assert_eq!(h.get_str(7), Some(text.as_str()));
        prop_assert_eq!(h.get_string_slice(8).unwrap(), Some(slice));
        prop_assert_eq!(h.get_u32_bytes_map(9).unwrap(), Some(bmap));
        prop_assert_eq!(h.get_string_map(10).unwrap(), Some(smap));
        // Wrong-length integers read as absent.
        prop_assert_eq!(h.get_u32(3), None);
        prop_assert_eq!(h.get_u64(1), None);
        prop_assert_eq!(h.get_u16(1), None);
    }
}
