//! Unit tests: the framing vectors of edge-protocol.md §16.2 and decoder edge cases.

use bytes::{Bytes, BytesMut};

use super::*;

fn unhex(s: &str) -> Vec<u8> {
    let clean: String = s.split_whitespace().collect();
    hex::decode(clean).unwrap()
}

fn decode_one(bytes: &[u8]) -> Message {
    let mut buf = BytesMut::from(bytes);
    let msg = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert!(buf.is_empty(), "decoder left {} bytes", buf.len());
    msg
}

fn assert_vector(msg: &Message, expected_hex: &str) {
    let expected = unhex(expected_hex);
    assert_eq!(msg.to_bytes().unwrap().as_ref(), expected.as_slice());
    assert_eq!(&decode_one(&expected), msg);
}

#[test]
fn vector_hello() {
    let msg = hello("TOKEN", "my-cn");
    assert_vector(
        &msg,
        "03 06 09 0c 00 00 00 00 ff ff ff ff 0d 00 00 00 05 00 00 00
         ea 03 00 00 05 00 00 00 54 4f 4b 45 4e 6d 79 2d 63 6e",
    );
}

#[test]
fn vector_hello_result() {
    let bytes = unhex(
        "03 06 09 0c 02 00 00 00 ff ff ff ff 1f 00 00 00 00 00 00 00
         01 00 00 00 04 00 00 00 ff ff ff ff 02 00 00 00 01 00 00 00 01
         00 00 00 00 02 00 00 00 63 31",
    );
    let msg = decode_one(&bytes);
    assert_eq!(msg.reply_for(), None, "-1 means not a reply");
    let r = HelloResult::parse(&msg).unwrap();
    assert!(r.success);
    assert_eq!(r.reply_for, Some(-1));
    assert_eq!(r.connection_id.as_deref(), Some("c1"));
    assert_eq!(r.router_id, None);
    assert!(!r.supports_bind_success);
    assert!(r.capabilities.is_none());
    // Re-encoding keeps the wire order.
    assert_eq!(msg.to_bytes().unwrap().as_ref(), bytes.as_slice());
}

#[test]
fn vector_latency_probe_and_answer() {
    let probe = latency_probe(0x0102_0304_0506_0708).with_sequence(4);
    assert_vector(
        &probe,
        "03 06 09 0c 03 00 00 00 04 00 00 00 10 00 00 00 00 00 00 00
         80 00 00 00 08 00 00 00 08 07 06 05 04 03 02 01",
    );
    // The router's answer, built the way the Go channel builds replies.
    let mut answer = Message::new(content_type::RESULT, Bytes::new()).with_sequence(9);
    answer.headers.put_i32(REPLY_FOR, 4);
    answer.headers.put_bool(RESULT_SUCCESS, true);
    answer.reply_to(&probe);
    assert_vector(
        &answer,
        "03 06 09 0c 02 00 00 00 09 00 00 00 25 00 00 00 00 00 00 00
         01 00 00 00 04 00 00 00 04 00 00 00 02 00 00 00 01 00 00 00 01
         80 00 00 00 08 00 00 00 08 07 06 05 04 03 02 01",
    );
    assert_eq!(latency_reply(&answer, 4), Some(0x0102_0304_0506_0708));
    assert_eq!(latency_reply(&answer, 5), None);
    assert_eq!(latency_reply(&probe, 4), None);
}

#[test]
fn reply_to_copies_only_reflected_headers() {
    let mut req = Message::new(60783, "x").with_sequence(77);
    req.headers.put_u32(1000, 5);
    req.headers.put_u8(128, 1);
    req.headers.put_u8(255, 2);
    req.headers.put_u8(256, 3);
    req.headers.put_u8(127, 4);
    let reply = Message::new(60784, "").replying_to(&req);
    assert_eq!(reply.reply_for(), Some(77));
    assert!(reply.is_reply_to(77));
    assert_eq!(reply.headers.get_u8(128), Some(1));
    assert_eq!(reply.headers.get_u8(255), Some(2));
    assert!(!reply.headers.contains(256));
    assert!(!reply.headers.contains(127));
    assert!(!reply.headers.contains(1000));
}

#[test]
fn unknown_version_answer_split_reads() {
    let bytes = unhex("03 06 09 0a 02 00 00 00 01 00 00 00 02 00 00 00");
    let mut dec = FrameDecoder::default();
    let mut buf = BytesMut::new();
    for (i, b) in bytes.iter().enumerate() {
        buf.extend_from_slice(&[*b]);
        let r = dec.decode(&mut buf);
        if i + 1 < bytes.len() {
            assert_eq!(r, Ok(None), "byte {i}");
        } else {
            assert_eq!(
                r,
                Err(FrameError::UnknownVersion {
                    versions: vec![1, 2]
                })
            );
        }
    }
    let mut buf = BytesMut::from(&unhex("03 06 09 0a ff 00 00 00")[..]);
    assert_eq!(
        dec.decode(&mut buf),
        Err(FrameError::BadUnknownVersion { count: 255 })
    );
}

#[test]
fn bad_magic_is_rejected() {
    let mut buf = BytesMut::from(&[0x03u8, 0x06, 0x09, 0x0d, 0, 0, 0, 0][..]);
    assert_eq!(
        FrameDecoder::default().decode(&mut buf),
        Err(FrameError::BadMagic([3, 6, 9, 0x0d]))
    );
    let mut buf = BytesMut::from(&b"HTTP/1.1 400"[..]);
    assert!(matches!(
        FrameDecoder::default().decode(&mut buf),
        Err(FrameError::BadMagic(_))
    ));
    // A partial prefix waits.
    let mut buf = BytesMut::from(&[0x03u8, 0x06][..]);
    assert_eq!(FrameDecoder::default().decode(&mut buf), Ok(None));
}

#[test]
fn limits_are_checked_before_buffering() {
    let limits = Limits {
        max_headers_len: 16,
        max_body_len: 100,
        max_header_count: 1,
    };
    // Announces a 2 GiB body with only the prefix present: must fail now, not wait.
    let mut prefix = BytesMut::new();
    prefix.extend_from_slice(&MAGIC_V2);
    prefix.extend_from_slice(&[0; 8]);
    prefix.extend_from_slice(&0u32.to_le_bytes());
    prefix.extend_from_slice(&0x8000_0000u32.to_le_bytes());
    let cap_before = prefix.capacity();
    assert_eq!(
        FrameDecoder::new(limits).decode(&mut prefix),
        Err(FrameError::BodyTooLarge {
            len: 0x8000_0000,
            max: 100
        })
    );
    assert_eq!(
        prefix.capacity(),
        cap_before,
        "no allocation for a rejected frame"
    );

    let mut m = Message::new(1, Bytes::new());
    m.headers.put_u64(1, 1);
    m.headers.put_u64(2, 2);
    let mut buf = BytesMut::new();
    m.encode(&mut buf).unwrap();
    assert_eq!(
        FrameDecoder::new(limits).decode(&mut buf.clone()),
        Err(FrameError::HeadersTooLarge { len: 32, max: 16 })
    );
    let limits = Limits {
        max_headers_len: 64,
        ..limits
    };
    assert_eq!(
        FrameDecoder::new(limits).decode(&mut buf),
        Err(FrameError::Headers(HeaderBlockError::TooManyHeaders {
            max: 1
        }))
    );
}

#[test]
fn body_is_zero_copy() {
    let mut m = Message::new(60786, vec![7u8; 1000]);
    m.headers.put_u32(1000, 1);
    let mut buf = BytesMut::new();
    m.encode(&mut buf).unwrap();
    m.encode(&mut buf).unwrap();
    let base = buf.as_ptr() as usize;
    let end = base + buf.len();
    let mut dec = FrameDecoder::default();
    let a = dec.decode(&mut buf).unwrap().unwrap();
    let b = dec.decode(&mut buf).unwrap().unwrap();
    for msg in [&a, &b] {
        let p = msg.body.as_ptr() as usize;
        assert!(
            p >= base && p < end,
            "body must point into the input buffer"
        );
        assert_eq!(msg, &m);
    }
    assert_eq!(dec.decode(&mut buf), Ok(None));
}

#[test]
fn capabilities_bits() {
    let caps = RouterCapabilities::from_bytes(Bytes::from(unhex("40 00 00 00 00 00 00 76")));
    for bit in [1, 2, 4, 5, 6, 62] {
        assert!(caps.has(bit), "bit {bit}");
    }
    for bit in [0, 3, 7, 8, 61, 63, 64, 1000] {
        assert!(!caps.has(bit), "bit {bit}");
    }
    assert!(caps.has(RouterCapabilities::CONNECT_V2));
    assert!(!RouterCapabilities::default().has(1));
}

#[test]
fn hello_result_full() {
    let mut m = Message::new(content_type::RESULT, "").with_sequence(-1);
    m.headers.put_i32(REPLY_FOR, -1);
    m.headers.put_bool(RESULT_SUCCESS, true);
    m.headers.put_str(PEER_ID, "r1");
    m.headers
        .put_str(HELLO_VERSION, "v2.0.3|abc|2025-01-01|linux|amd64");
    m.headers.put_bool(SUPPORTS_BIND_SUCCESS_HEADER, true);
    m.headers.put_bool(SUPPORTS_POSTURE_CHECKS_HEADER, true);
    m.headers.insert(ROUTER_CAPABILITIES_HEADER, vec![0x04u8]);
    let r = HelloResult::parse(&decode_one(&m.to_bytes().unwrap())).unwrap();
    assert_eq!(r.router_id.as_deref(), Some("r1"));
    assert_eq!(r.version_number(), Some("v2.0.3"));
    assert!(r.supports_bind_success && r.supports_posture_checks);
    assert!(r.capabilities.unwrap().has(RouterCapabilities::CONNECT_V2));
    assert!(HelloResult::parse(&Message::new(0, "")).is_none());
    let fail = Message::new(content_type::RESULT, "nope");
    let c = ChannelResult::parse(&fail).unwrap();
    assert!(!c.success);
    assert_eq!(c.message, "nope");
}

#[test]
fn fuzz_entry_handles_random_inputs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut valid = BytesMut::new();
    latency_probe(5)
        .with_sequence(3)
        .encode(&mut valid)
        .unwrap();
    hello("t", "l").encode(&mut valid).unwrap();
    for _ in 0..2000 {
        let len = rng.random_range(0..200);
        let mut data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        fuzz_decode(&data);
        // Mutated valid streams reach deeper paths.
        data = valid.to_vec();
        let flips = rng.random_range(0..4);
        for _ in 0..flips {
            let i = rng.random_range(0..data.len());
            data[i] ^= 1 << rng.random_range(0..8);
        }
        data.insert(0, rng.random());
        fuzz_decode(&data);
    }
}

#[test]
fn sequencer_wraps_and_stamps() {
    let mut s = Sequencer::new();
    let mut m = latency_probe(1);
    assert_eq!(s.stamp(&mut m), 1);
    assert_eq!(m.sequence, 1);
    assert_eq!(s.next_seq(), 2);
    let mut s = Sequencer { next: i32::MAX };
    assert_eq!(s.next_seq(), i32::MAX);
    assert_eq!(s.next_seq(), 1);
}

#[test]
fn frame_len_tells_what_decode_needs() {
    let mut m = Message::new(7, Bytes::from_static(b"a body of some length"));
    m.headers.put_str(1, "value");
    let bytes = m.to_bytes().unwrap();
    let dec = FrameDecoder::default();
    for cut in 0..bytes.len() {
        let need = dec.frame_len(&bytes[..cut]).unwrap();
        assert!(need > cut, "cut {cut}: needs {need}");
        // With exactly what it asked for, either the frame is whole or the next answer grows.
        let more = dec.frame_len(&bytes[..need.min(bytes.len())]).unwrap();
        assert!(more >= need, "cut {cut}");
        assert_eq!(
            dec.clone().decode(&mut BytesMut::from(&bytes[..cut])),
            Ok(None)
        );
    }
    assert_eq!(dec.frame_len(&bytes), Ok(bytes.len()));
    let mut whole = BytesMut::from(&bytes[..]);
    assert_eq!(dec.clone().decode(&mut whole), Ok(Some(m)));
    assert!(whole.is_empty());
    // The same errors as decode, from the prefix alone.
    assert_eq!(
        dec.frame_len(&[0x03, 0x06, 0x09, 0x0d]),
        Err(FrameError::BadMagic([3, 6, 9, 0x0d]))
    );
    assert_eq!(dec.frame_len(&unhex("03 06 09 0a 02 00 00 00")), Ok(16));
    assert_eq!(
        dec.frame_len(&unhex("03 06 09 0a ff 00 00 00")),
        Err(FrameError::BadUnknownVersion { count: 255 })
    );
}
