//! Unit tests: §16.2 edge vectors, parsers, dial-failure classification, state machine.

use bytes::{Bytes, BytesMut};

use super::*;
use crate::channel::{FrameDecoder, Message};
use crate::e2ee::{KeyPair, PublicKey};

fn unhex(s: &str) -> Vec<u8> {
    hex::decode(s.split_whitespace().collect::<String>()).unwrap()
}

fn roundtrip(m: &Message) -> Message {
    let mut buf = BytesMut::from(&m.to_bytes().unwrap()[..]);
    FrameDecoder::default().decode(&mut buf).unwrap().unwrap()
}

const CLIENT_PK: &str = "0e0216223f147143d32615a91189c288c1728cba3cc5f9f621b1026e03d83129";

#[test]
fn vector_connect() {
    let pk = PublicKey::from_slice(&unhex(CLIENT_PK)).unwrap();
    let mut req = ConnectRequest::new(1, "SVC-TOKEN");
    req.public_key = Some(pk);
    let mut m = connect(&req).with_sequence(1);
    // The vector carries a 1009 entry as a layout example; we never send it ourselves.
    assert!(!m.headers.contains(header::CRYPTO_METHOD));
    m.headers.put_u8(header::CRYPTO_METHOD, 0);
    assert_eq!(
        m.to_bytes().unwrap().as_ref(),
        unhex(
            "03 06 09 0c 6f ed 00 00 01 00 00 00 3d 00 00 00 09 00 00 00
             e8 03 00 00 04 00 00 00 01 00 00 00
             eb 03 00 00 20 00 00 00 0e 02 16 22 3f 14 71 43 d3 26 15 a9 11 89 c2 88
             c1 72 8c ba 3c c5 f9 f6 21 b1 02 6e 03 d8 31 29
             f1 03 00 00 01 00 00 00 00
             53 56 43 2d 54 4f 4b 45 4e"
        )
    );
}

#[test]
fn vector_data_fin() {
    let m = fin(1).with_sequence(3);
    assert_eq!(
        m.to_bytes().unwrap().as_ref(),
        unhex(
            "03 06 09 0c 72 ed 00 00 03 00 00 00 18 00 00 00 00 00 00 00
             e8 03 00 00 04 00 00 00 01 00 00 00 f2 03 00 00 04 00 00 00 01 00 00 00"
        )
    );
    let d = Data::parse(&roundtrip(&m)).unwrap();
    assert!(d.is_fin() && d.body.is_empty() && d.conn_id == 1);
}

#[test]
fn vector_dial_success() {
    let dial = Message::new(ContentType::Dial as i32, "").with_sequence(7);
    let m = dial_success(&dial, 3, 0x8000_0000, None).with_sequence(5);
    assert_eq!(
        m.to_bytes().unwrap().as_ref(),
        unhex(
            "03 06 09 0c 74 ed 00 00 05 00 00 00 18 00 00 00 04 00 00 00
             01 00 00 00 04 00 00 00 07 00 00 00 e8 03 00 00 04 00 00 00 03 00 00 00
             00 00 00 80"
        )
    );
    let f = dial_failed(&dial, 3, "busy");
    assert_eq!(f.reply_for(), Some(7));
    assert_eq!(f.headers.get_u32(header::CONN_ID), Some(3));
    assert_eq!(f.body.as_ref(), b"busy");
}

#[test]
fn vector_bind() {
    // The vector shows 1000, 1012, 1004, 1005; our Bind also asks for BindSuccess (1024).
    let mut req = BindRequest::new(3, "BIND-TOKEN");
    req.cost = 10;
    req.precedence = Precedence::Required;
    let mut m = bind(&req).with_sequence(6);
    assert_eq!(
        m.headers.get_bool(header::SUPPORTS_BIND_SUCCESS),
        Some(true)
    );
    m.headers.remove(header::SUPPORTS_BIND_SUCCESS);
    assert_eq!(
        m.to_bytes().unwrap().as_ref(),
        unhex(
            "03 06 09 0c 76 ed 00 00 06 00 00 00 28 00 00 00 0a 00 00 00
             e8 03 00 00 04 00 00 00 03 00 00 00 f4 03 00 00 01 00 00 00 01
             ec 03 00 00 02 00 00 00 0a 00 ed 03 00 00 01 00 00 00 01
             42 49 4e 44 2d 54 4f 4b 45 4e"
        )
    );
    let plain = bind(&BindRequest::new(3, "t"));
    assert!(!plain.headers.contains(header::COST));
    assert!(!plain.headers.contains(header::PRECEDENCE));
    assert!(!plain.headers.contains(header::PUBLIC_KEY));
}

#[test]
fn content_type_sanity() {
    assert_eq!(
        (ContentType::Connect as i32).to_le_bytes(),
        [0x6f, 0xed, 0, 0]
    );
    assert_eq!((ContentType::Data as i32).to_le_bytes(), [0x72, 0xed, 0, 0]);
    for v in 60783..=60807 {
        assert_eq!(ContentType::from_i32(v).map(|c| c as i32), Some(v));
    }
    assert_eq!(
        ContentType::from_i32(10800),
        Some(ContentType::PostureResponse)
    );
    assert_eq!(ContentType::from_i32(60808), None);
}

#[test]
fn parse_dial_with_all_headers() {
    let pk = KeyPair::from_seed(&[3; 32]).public_key();
    let mut m = Message::new(ContentType::Dial as i32, "bind-token").with_sequence(42);
    m.headers.put_u32(header::CONN_ID, 3);
    m.headers
        .put_u32(header::ROUTER_PROVIDED_CONN_ID, 0x8000_0001);
    m.headers
        .insert(header::PUBLIC_KEY, Bytes::copy_from_slice(pk.as_bytes()));
    m.headers.put_str(header::CALLER_ID, "caller");
    m.headers.put_str(header::DIALER_IDENTITY_ID, "id1");
    m.headers.put_str(header::DIALER_IDENTITY_NAME, "alice");
    m.headers.put_str(header::CIRCUIT_ID, "circ");
    m.headers
        .insert(header::APP_DATA, Bytes::from_static(b"{}"));
    let d = match EdgeMessage::parse(&roundtrip(&m)).unwrap() {
        EdgeMessage::Dial(d) => d,
        other => panic!("{other:?}"),
    };
    assert_eq!(d.sequence, 42);
    assert_eq!(d.bind_conn_id, 3);
    assert_eq!(d.new_conn_id, Some(0x8000_0001));
    assert_eq!(d.token, "bind-token");
    assert_eq!(d.peer_key, Some(pk));
    assert_eq!(d.caller_id.as_deref(), Some("caller"));
    assert_eq!(d.dialer_identity_id.as_deref(), Some("id1"));
    assert_eq!(d.dialer_identity_name.as_deref(), Some("alice"));
    assert_eq!(d.circuit_id.as_deref(), Some("circ"));
    assert_eq!(d.app_data.as_deref(), Some(&b"{}"[..]));

    // A 1003 of the wrong size is an error, a missing 1000 too.
    m.headers.insert(header::PUBLIC_KEY, vec![1u8; 31]);
    assert!(matches!(Dial::parse(&m), Err(EdgeError::BadPublicKey(_))));
    m.headers.remove(header::CONN_ID);
    assert!(matches!(
        Dial::parse(&m),
        Err(EdgeError::MissingHeader { header: 1000, .. })
    ));
}

#[test]
fn parse_state_closed_with_structured_error() {
    let mut m = Message::new(ContentType::StateClosed as i32, "");
    m.headers.put_u32(header::CONN_ID, 9);
    m.headers.put_str(
        header::STRUCTURED_ERROR,
        r#"{"message":"bind access lost","code":14,"cause":{},"retryHint":2,"extra":[1]}"#,
    );
    let sc = StateClosed::parse(&m).unwrap();
    assert_eq!(sc.conn_id, Some(9));
    let e = sc.error.clone().unwrap();
    assert_eq!(e.message, "bind access lost");
    assert_eq!(e.code, Some(ErrorCode::ACCESS_DENIED));
    assert_eq!(e.retry_hint, RetryHint::StartOver);
    assert_eq!(sc.error_code, Some(ErrorCode::ACCESS_DENIED));
    assert!(matches!(sc.dial_failure(), DialFailure::NotAuthorized(_)));
    // Garbage JSON is ignored, not an error.
    m.headers.put_str(header::STRUCTURED_ERROR, "{not json");
    assert_eq!(StateClosed::parse(&m).unwrap().error, None);
}

#[test]
fn dial_failure_texts_from_v2_routers() {
    use error::EncryptionSide;
    let cases: &[(&str, DialFailure)] = &[
        (
            "service 3cNq has no terminators",
            DialFailure::NoTerminators("service 3cNq has no terminators".into()),
        ),
        (
            "no access to service, failed dial access check",
            DialFailure::NotAuthorized("no access to service, failed dial access check".into()),
        ),
        ("invalid service", DialFailure::ServiceNotFound),
        ("invalid api session", DialFailure::InvalidApiSession),
        (
            "invalid session",
            DialFailure::InvalidSession("invalid session".into()),
        ),
        (
            "invalid edge router for session",
            DialFailure::WrongEdgeRouter,
        ),
        (
            "encryption required on service, initiator did not send public header",
            DialFailure::EncryptionMissing(EncryptionSide::Initiator),
        ),
        (
            "encryption required on service, terminator did not send public header",
            DialFailure::EncryptionMissing(EncryptionSide::Terminator),
        ),
        (
            "no controller available, cannot create circuit",
            DialFailure::ControllerUnavailable,
        ),
        (
            "connId not set, required",
            DialFailure::Other("connId not set, required".into()),
        ),
    ];
    for (text, want) in cases {
        assert_eq!(&DialFailure::classify(text), want, "{text}");
    }
    assert!(DialFailure::classify("invalid session").needs_new_session());
    let shown = DialFailure::classify("service x has no terminators").to_string();
    assert!(shown.starts_with("no terminators"), "{shown}");
    assert!(
        DialFailure::classify("no access to service, failed dial access check")
            .to_string()
            .starts_with("not authorized")
    );
    assert_eq!(
        DialFailure::ServiceNotFound.to_string(),
        "service not found"
    );
    assert_eq!(
        DialFailure::from_code_or_text(Some(ErrorCode::INVALID_SERVICE), "x"),
        DialFailure::ServiceNotFound
    );
}

#[test]
fn multipart_split() {
    let body = Bytes::from_static(&[3, 0, b'a', b'b', b'c', 0, 0, 1, 0, b'z']);
    let parts = split_multipart(&body).unwrap();
    assert_eq!(parts, vec![&b"abc"[..], &b""[..], &b"z"[..]]);
    assert!(split_multipart(&Bytes::from_static(&[3, 0, b'a'])).is_err());
    assert!(split_multipart(&Bytes::from_static(&[3])).is_err());
    assert_eq!(split_multipart(&Bytes::new()).unwrap(), Vec::<Bytes>::new());
}

#[test]
fn update_token_replies() {
    let req = update_token("jwt").with_sequence(11);
    let ok = Message::new(ContentType::UpdateTokenSuccess as i32, "").replying_to(&req);
    assert_eq!(
        EdgeMessage::parse(&ok).unwrap(),
        EdgeMessage::UpdateTokenSuccess {
            reply_for: Some(11)
        }
    );
    let mut bad = Message::new(ContentType::UpdateTokenFailure as i32, "nope").replying_to(&req);
    bad.headers.put_u32(header::ERROR_CODE, 12);
    match EdgeMessage::parse(&bad).unwrap() {
        EdgeMessage::UpdateTokenFailure(f) => {
            assert_eq!(f.reply_for, Some(11));
            assert_eq!(f.message, "nope");
            assert_eq!(f.error_code, Some(ErrorCode::INVALID_API_SESSION_TYPE));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        EdgeMessage::parse(&Message::new(2, "")).unwrap(),
        EdgeMessage::Unknown(2)
    );
    assert_eq!(
        EdgeMessage::parse(&Message::new(60798, "")).unwrap(),
        EdgeMessage::Unhandled(ContentType::ConnInspectRequest)
    );
}

#[test]
fn other_builders() {
    let u = unbind(3, "tok");
    assert_eq!(u.content_type, ContentType::Unbind as i32);
    assert_eq!(u.headers.get_u32(header::CONN_ID), Some(3));
    let ub = update_bind(3, "tok", Some(5), Some(Precedence::Failed));
    assert_eq!(ub.headers.get_u16(header::COST), Some(5));
    assert_eq!(ub.headers.get_u8(header::PRECEDENCE), Some(2));
    let h = health_event(3, "tok", false);
    assert_eq!(h.headers.get_bool(header::HEALTH_STATUS), Some(false));
    let mut req = ConnectRequest::new(4, "t");
    req.caller_id = Some("me".into());
    req.terminator_identity = Some("inst".into());
    req.app_data = Some(Bytes::from_static(b"ad"));
    let c = connect(&req);
    assert_eq!(c.headers.get_str(header::CALLER_ID), Some("me"));
    assert_eq!(c.headers.get_str(header::TERMINATOR_IDENTITY), Some("inst"));
    assert_eq!(c.headers.get(header::APP_DATA).unwrap().as_ref(), b"ad");
    let d = data(4, "x", flags::MULTIPART);
    assert_eq!(d.headers.get_u32(header::FLAGS), Some(flags::MULTIPART));
    assert!(!data(4, "x", 0).headers.contains(header::FLAGS));
    let bs = Message::new(ContentType::BindSuccess as i32, "");
    assert!(BindSuccess::parse(&bs).is_err());
}

// ---- state machine ----

fn state_connected(conn_id: u32, key: Option<PublicKey>) -> Message {
    let mut m = Message::new(ContentType::StateConnected as i32, "");
    m.headers.put_u32(header::CONN_ID, conn_id);
    if let Some(k) = key {
        m.headers
            .insert(header::PUBLIC_KEY, Bytes::copy_from_slice(k.as_bytes()));
    }
    m
}

/// Simulates the router: forwards every Data message from one conn to the other's id.
fn forward(m: &Message, to: u32) -> Message {
    let mut f = m.clone();
    f.headers.put_u32(header::CONN_ID, to);
    f
}

#[test]
fn encrypted_dial_and_accept_exchange_data() {
    let host_kp = KeyPair::generate();
    let mut dialer = EdgeConn::dial(5, true);
    let req = dialer.connect_request("tok");
    let dialer_pk = req.public_key.unwrap();
    assert_eq!(
        connect(&req).headers.get(header::PUBLIC_KEY).unwrap().len(),
        32
    );

    // Host accepts with the Dial's key; its header is queued.
    let mut host = EdgeConn::accept(0x8000_0000, Some(&host_kp), Some(&dialer_pk)).unwrap();
    assert_eq!(host.send(b"x"), Err(ConnError::HeaderPending));
    let host_header = host.poll_transmit().unwrap();
    assert_eq!(host_header.body.len(), 24);

    let ev = dialer
        .handle(&state_connected(5, Some(host_kp.public_key())))
        .unwrap();
    assert!(matches!(
        &ev[..],
        [ConnEvent::Connected {
            peer_key: Some(_),
            ..
        }]
    ));
    assert_eq!(dialer.state(), ConnState::Connected);
    let dialer_header = dialer.poll_transmit().unwrap();

    assert_eq!(
        host.handle(&forward(&dialer_header, 0x8000_0000)).unwrap(),
        vec![]
    );
    assert_eq!(dialer.handle(&forward(&host_header, 5)).unwrap(), vec![]);

    let m = dialer.send(b"ping").unwrap();
    assert_eq!(m.body.len(), 4 + 17);
    assert_eq!(
        host.handle(&forward(&m, 0x8000_0000)).unwrap(),
        vec![ConnEvent::Data(Bytes::from_static(b"ping"))]
    );
    let r = host.send(b"pong").unwrap();
    assert_eq!(
        dialer.handle(&forward(&r, 5)).unwrap(),
        vec![ConnEvent::Data(Bytes::from_static(b"pong"))]
    );

    // Half close from the dialer, then from the host.
    let f = dialer.close_write().unwrap();
    assert!(f.body.is_empty());
    assert_eq!(dialer.state(), ConnState::LocalFinSent);
    assert!(matches!(
        dialer.send(b"late"),
        Err(ConnError::InvalidState(_))
    ));
    assert_eq!(
        host.handle(&forward(&f, 0x8000_0000)).unwrap(),
        vec![ConnEvent::Fin]
    );
    assert_eq!(host.state(), ConnState::RemoteFinReceived);
    let last = host.send(b"bye").unwrap();
    assert_eq!(
        dialer.handle(&forward(&last, 5)).unwrap(),
        vec![ConnEvent::Data(Bytes::from_static(b"bye"))]
    );
    let hf = host.close_write().unwrap();
    assert_eq!(host.state(), ConnState::Closed);
    assert_eq!(
        dialer.handle(&forward(&hf, 5)).unwrap(),
        vec![ConnEvent::Fin]
    );
    assert_eq!(dialer.state(), ConnState::Closed);
}

#[test]
fn encrypted_dial_rejects_plaintext_answer_and_tampering() {
    let mut dialer = EdgeConn::dial(5, true);
    assert_eq!(
        dialer.handle(&state_connected(5, None)),
        Err(ConnError::MissingPeerKey)
    );
    assert_eq!(dialer.state(), ConnState::Closed);

    let host_kp = KeyPair::generate();
    let mut dialer = EdgeConn::dial(5, true);
    let dpk = dialer.public_key().unwrap();
    dialer
        .handle(&state_connected(5, Some(host_kp.public_key())))
        .unwrap();
    let mut host = EdgeConn::accept(9, Some(&host_kp), Some(&dpk)).unwrap();
    dialer
        .handle(&forward(&host.poll_transmit().unwrap(), 5))
        .unwrap();
    let mut m = host.send(b"secret").unwrap();
    let mut body = m.body.to_vec();
    body[3] ^= 0x80;
    m.body = body.into();
    assert!(matches!(
        dialer.handle(&forward(&m, 5)),
        Err(ConnError::Crypto(_))
    ));
    assert!(EdgeConn::accept(9, Some(&host_kp), None).is_err());
}

#[test]
fn plain_conn_multipart_close_and_dial_failure() {
    let mut c = EdgeConn::dial(1, false);
    assert!(c.public_key().is_none());
    assert_eq!(
        c.handle(&data(1, "early", 0)),
        Err(ConnError::DataBeforeConnected)
    );

    let mut c = EdgeConn::dial(1, false);
    let mut refused = Message::new(
        ContentType::StateClosed as i32,
        "service s1 has no terminators",
    );
    refused.headers.put_u32(header::CONN_ID, 1);
    match &c.handle(&refused).unwrap()[..] {
        [ConnEvent::Closed(CloseReason::DialFailed(DialFailure::NoTerminators(_)))] => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(c.state(), ConnState::Closed);
    assert_eq!(c.handle(&data(1, "x", 0)).unwrap(), vec![]);

    let mut c = EdgeConn::dial(1, false);
    c.handle(&state_connected(1, None)).unwrap();
    assert!(c.poll_transmit().is_none());
    let mp = data(
        1,
        Bytes::from_static(&[2, 0, b'h', b'i', 0, 0, 1, 0, b'!']),
        flags::MULTIPART_MSG | flags::FIN,
    );
    assert_eq!(
        c.handle(&mp).unwrap(),
        vec![
            ConnEvent::Data(Bytes::from_static(b"hi")),
            ConnEvent::Data(Bytes::from_static(b"!")),
            ConnEvent::Fin
        ]
    );
    assert_eq!(c.send(b"abc").unwrap().body.as_ref(), b"abc");
    let closed = c.close("done");
    assert_eq!(closed.content_type, ContentType::StateClosed as i32);
    assert_eq!(c.state(), ConnState::Closed);

    let mut c = EdgeConn::dial(2, false);
    c.handle(&state_connected(2, None)).unwrap();
    let mut bye = Message::new(ContentType::StateClosed as i32, "close called");
    bye.headers.put_u32(header::CONN_ID, 2);
    match &c.handle(&bye).unwrap()[..] {
        [ConnEvent::Closed(CloseReason::ClosedByPeer { reason, .. })] => {
            assert_eq!(reason, "close called")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn conn_id_allocator_skips_in_use_and_wraps() {
    let mut a = ConnIdAllocator::new();
    assert_eq!(a.allocate(), Some(1));
    assert_eq!(a.allocate(), Some(2));
    a.release(1);
    assert_eq!(a.in_use(), 1);
    // Force a wrap: next is MAX.
    let mut a = ConnIdAllocator::new();
    assert_eq!(a.allocate(), Some(1));
    let mut a = a.with_next(ConnIdAllocator::MAX);
    assert_eq!(a.allocate(), Some(ConnIdAllocator::MAX));
    assert_eq!(a.allocate(), Some(2), "1 is in use and must be skipped");
}

#[test]
fn fuzz_entry_handles_random_inputs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let seeds: Vec<Bytes> = vec![
        connect(&ConnectRequest::new(1, "t")).to_bytes().unwrap(),
        state_connected(1, Some(KeyPair::generate().public_key()))
            .to_bytes()
            .unwrap(),
        data(1, Bytes::from_static(&[2, 0, 1, 2]), flags::MULTIPART_MSG)
            .to_bytes()
            .unwrap(),
    ];
    for i in 0..3000 {
        let mut d: Vec<u8> = if i % 2 == 0 {
            seeds[i % seeds.len()].to_vec()
        } else {
            (0..rng.random_range(0..120))
                .map(|_| rng.random())
                .collect()
        };
        if !d.is_empty() {
            for _ in 0..rng.random_range(0..3) {
                let j = rng.random_range(0..d.len());
                d[j] = rng.random();
            }
        }
        fuzz_parse(&d);
    }
}

#[test]
fn a_stale_terminator_is_worth_a_second_dial_and_a_refusal_is_not() {
    let stale = DialFailure::classify(
        "exceeded maximum [2] retries creating circuit [c/x] (error creating route for [s/x] on [r/y] (invalid egress destination abc))",
    );
    assert!(stale.is_stale_terminator());
    let refused = DialFailure::classify(
        "exceeded maximum [2] retries creating circuit [c/x] (error creating route for [s/x] on [r/y] (failed to establish connection with terminator address t. error: (port 9 is not in allowed port ranges)))",
    );
    assert!(!refused.is_stale_terminator());
    assert!(!DialFailure::classify("no terminators for service").is_stale_terminator());
}
