//! `Channel` on bytes alone: a scripted router decodes what the channel transmits and answers
//! with frames; time is a plain `Instant` moved by hand. No sockets, no runtime.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::*;
use crate::channel::{self, FrameDecoder, Limits, Message, content_type};
use crate::e2ee::KeyPair;
use crate::edge::{self, ContentType, DialFailure, flags, header};
use crate::xgress;

/// The router's side of the byte pipe.
struct Router {
    decoder: FrameDecoder,
    inbuf: BytesMut,
}

impl Router {
    fn new() -> Self {
        Router {
            decoder: FrameDecoder::new(Limits::default()),
            inbuf: BytesMut::new(),
        }
    }

    /// Every message the channel has transmitted so far.
    fn take(&mut self, ch: &mut Channel) -> Vec<Message> {
        while let Some(b) = ch.poll_transmit(7000) {
            self.inbuf.extend_from_slice(&b);
        }
        let mut out = Vec::new();
        while let Some(m) = self.decoder.decode(&mut self.inbuf).unwrap() {
            out.push(m);
        }
        out
    }

    fn send(&self, ch: &mut Channel, now: Instant, msg: &Message) {
        let bytes = msg.to_bytes().unwrap();
        // Split in two to exercise partial frames.
        let (a, b) = bytes.split_at(bytes.len() / 2);
        ch.handle_input(now, a);
        ch.handle_input(now, b);
    }
}

fn events(ch: &mut Channel) -> Vec<Event> {
    std::iter::from_fn(|| ch.poll_event()).collect()
}

fn config() -> ChannelConfig {
    ChannelConfig {
        label: "test".into(),
        recv_window: 64 * 1024,
        overflow_grace: Duration::from_secs(2),
        transmit_limit: 100 * 1024,
        sdk_flow_control: false,
        ..ChannelConfig::default()
    }
}

/// A channel that has completed its hello.
fn open(now: Instant) -> (Channel, Router) {
    let mut ch = Channel::new(config(), "api-token", now, 7, 1_700_000_000_000);
    let mut r = Router::new();
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, content_type::HELLO);
    assert_eq!(
        sent[0].headers.get_str(channel::SESSION_TOKEN_HEADER),
        Some("api-token")
    );
    let mut answer = Message::new(content_type::RESULT, "");
    answer.reply_to(&sent[0]);
    answer.headers.put_bool(channel::RESULT_SUCCESS, true);
    answer.headers.put_str(channel::PEER_ID, "router-1");
    r.send(&mut ch, now, &answer);
    let ev = events(&mut ch);
    assert!(
        matches!(&ev[..], [Event::Connected(h)] if h.router_id.as_deref() == Some("router-1")),
        "{ev:?}"
    );
    assert!(ch.is_open());
    (ch, r)
}

fn reply(ct: ContentType, to: &Message, conn: u32, body: &str) -> Message {
    let mut m = Message::new(ct as i32, Bytes::copy_from_slice(body.as_bytes()));
    m.reply_to(to);
    m.headers.put_u32(header::CONN_ID, conn);
    m
}

fn data(conn: u32, body: &[u8], fl: u32) -> Message {
    edge::data(conn, Bytes::copy_from_slice(body), fl)
}

fn dial_params() -> DialParams {
    DialParams {
        session_token: "dial-token".into(),
        timeout: Duration::from_secs(5),
        ..DialParams::default()
    }
}

/// Dials and answers StateConnected; returns the connection id.
fn dialed(ch: &mut Channel, r: &mut Router, now: Instant) -> u32 {
    let conn = ch.dial(now, &dial_params()).unwrap();
    let sent = r.take(ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, ContentType::Connect as i32);
    assert_eq!(sent[0].headers.get_u32(header::CONN_ID), Some(conn));
    let mut ok = reply(ContentType::StateConnected, &sent[0], conn, "");
    ok.headers.put_str(header::CIRCUIT_ID, "circuit-1");
    r.send(ch, now, &ok);
    let ev = events(ch);
    assert_eq!(
        ev,
        vec![Event::DialSucceeded {
            conn,
            circuit_id: Some("circuit-1".into())
        }]
    );
    conn
}

fn read_all(ch: &mut Channel, conn: u32) -> (Vec<u8>, Recv) {
    let mut got = Vec::new();
    loop {
        match ch.recv(Instant::now(), conn, 1000) {
            Recv::Data(b) => got.extend_from_slice(&b),
            other => return (got, other),
        }
    }
}

#[test]
fn hello_rejected_and_hello_timeout_end_the_channel() {
    let now = Instant::now();
    let mut ch = Channel::new(config(), "bad", now, 1, 0);
    let mut r = Router::new();
    let hello = r.take(&mut ch).remove(0);
    let mut no = Message::new(content_type::RESULT, "invalid session");
    no.reply_to(&hello);
    no.headers.put_bool(channel::RESULT_SUCCESS, false);
    r.send(&mut ch, now, &no);
    assert_eq!(
        events(&mut ch),
        vec![Event::Closed(ChannelClosed::HelloRejected(
            "invalid session".into()
        ))]
    );

    let mut ch = Channel::new(config(), "t", now, 1, 0);
    assert_eq!(ch.poll_timeout(), Some(now + Duration::from_secs(10)));
    ch.handle_timeout(now + Duration::from_secs(9));
    assert!(events(&mut ch).is_empty());
    ch.handle_timeout(now + Duration::from_secs(10));
    assert_eq!(
        events(&mut ch),
        vec![Event::Closed(ChannelClosed::HelloTimeout(
            Duration::from_secs(10)
        ))]
    );
    assert_eq!(ch.poll_timeout(), None);
}

#[test]
fn dial_then_data_in_order_then_fin() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = dialed(&mut ch, &mut r, now);
    for i in 0..5u8 {
        r.send(&mut ch, now, &data(conn, &[i; 3], 0));
    }
    let ev = events(&mut ch);
    assert_eq!(ev.len(), 5);
    assert!(ev.iter().all(|e| *e == Event::Readable { conn }));
    r.send(&mut ch, now, &data(conn, b"", flags::FIN));
    let (got, end) = read_all(&mut ch, conn);
    assert_eq!(got, [0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4]);
    assert_eq!(end, Recv::Fin);

    // Our direction is still open after the peer's FIN; then we half-close too.
    assert_eq!(ch.send(Instant::now(), conn, b"answer"), Ok(6));
    ch.close_write(Instant::now(), conn).unwrap();
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 2);
    assert_eq!(&sent[0].body[..], b"answer");
    assert_eq!(sent[1].headers.get_u32(header::FLAGS), Some(flags::FIN));
    assert_eq!(
        ch.send(Instant::now(), conn, b"late"),
        Err(SendError::NotWritable)
    );
}

#[test]
fn recv_splits_large_chunks_without_losing_bytes() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = dialed(&mut ch, &mut r, now);
    let body: Vec<u8> = (0..5000u32).map(|i| i as u8).collect();
    r.send(&mut ch, now, &data(conn, &body, 0));
    assert_eq!(ch.buffered(conn), 5000);
    let (got, end) = read_all(&mut ch, conn);
    assert_eq!(got, body);
    assert_eq!(end, Recv::WouldBlock);
    assert_eq!(ch.buffered(conn), 0);
}

#[test]
fn sends_are_chunked_and_sequenced() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = dialed(&mut ch, &mut r, now);
    let big = vec![9u8; 40 * 1024];
    let n = ch.send(Instant::now(), conn, &big).unwrap();
    assert_eq!(n, 32 * 1024);
    let n2 = ch.send(Instant::now(), conn, &big[n..]).unwrap();
    assert_eq!(n + n2, big.len());
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 2);
    assert!(sent[1].sequence > sent[0].sequence);
    assert_eq!(sent[0].body.len() + sent[1].body.len(), big.len());
}

#[test]
fn failed_dials_are_classified_and_free_their_id() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = ch.dial(now, &dial_params()).unwrap();
    let connect = r.take(&mut ch).remove(0);
    r.send(
        &mut ch,
        now,
        &reply(
            ContentType::StateClosed,
            &connect,
            conn,
            "service abc has no terminators",
        ),
    );
    let ev = events(&mut ch);
    assert!(
        matches!(&ev[..], [Event::DialFailed { conn: c, error: OpenError::Refused(DialFailure::NoTerminators(_)) }] if *c == conn),
        "{ev:?}"
    );
    assert_eq!(ch.connection_count(), 0);

    // No answer at all: the dial times out and the router is told we gave up.
    let conn = ch.dial(now, &dial_params()).unwrap();
    r.take(&mut ch);
    ch.handle_timeout(now + Duration::from_secs(5));
    let ev = events(&mut ch);
    assert_eq!(
        ev,
        vec![Event::DialFailed {
            conn,
            error: OpenError::TimedOut(Duration::from_secs(5))
        }]
    );
    let sent = r.take(&mut ch);
    assert_eq!(sent[0].content_type, ContentType::StateClosed as i32);
}

#[test]
fn encrypted_dial_sends_our_key_and_stream_header() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = ch
        .dial(
            now,
            &DialParams {
                encrypted: true,
                ..dial_params()
            },
        )
        .unwrap();
    let connect = r.take(&mut ch).remove(0);
    let client_pk = connect.headers.get(header::PUBLIC_KEY).unwrap().clone();
    assert_eq!(client_pk.len(), 32);

    // A plaintext answer to an encrypted dial is a downgrade: refused.
    r.send(
        &mut ch,
        now,
        &reply(ContentType::StateConnected, &connect, conn, ""),
    );
    let ev = events(&mut ch);
    assert!(
        matches!(
            &ev[..],
            [Event::DialFailed {
                error: OpenError::Protocol(_),
                ..
            }]
        ),
        "{ev:?}"
    );
    // ... and the router is told to tear the circuit down.
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, ContentType::StateClosed as i32);

    // With the host's key: connected, and our first Data is the 24-byte stream header.
    let conn = ch
        .dial(
            now,
            &DialParams {
                encrypted: true,
                ..dial_params()
            },
        )
        .unwrap();
    let connect = r.take(&mut ch).remove(0);
    let host = KeyPair::from_seed(&[3; 32]);
    let mut ok = reply(ContentType::StateConnected, &connect, conn, "");
    ok.headers.insert(
        header::PUBLIC_KEY,
        Bytes::copy_from_slice(host.public_key().as_bytes()),
    );
    r.send(&mut ch, now, &ok);
    assert!(matches!(
        &events(&mut ch)[..],
        [Event::DialSucceeded { .. }]
    ));
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, ContentType::Data as i32);
    assert_eq!(sent[0].body.len(), crate::e2ee::HEADER_BYTES);
}

#[test]
fn the_same_seed_replays_the_same_bytes() {
    let run = || {
        let now = Instant::now();
        let (mut ch, mut r) = open(now);
        ch.dial(
            now,
            &DialParams {
                encrypted: true,
                ..dial_params()
            },
        )
        .unwrap();
        r.take(&mut ch)
            .remove(0)
            .headers
            .get(header::PUBLIC_KEY)
            .cloned()
    };
    assert_eq!(run(), run());
}

#[test]
fn peer_close_and_local_close() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let a = dialed(&mut ch, &mut r, now);
    let b = dialed(&mut ch, &mut r, now);
    r.send(&mut ch, now, &data(a, b"last words", 0));
    let mut closed = Message::new(ContentType::StateClosed as i32, "bye");
    closed.headers.put_u32(header::CONN_ID, a);
    r.send(&mut ch, now, &closed);
    let (got, end) = read_all(&mut ch, a);
    assert_eq!(got, b"last words");
    assert_eq!(end, Recv::Closed(ConnClosed::ByPeer("bye".into())));
    // Closed by the peer: forgetting it sends nothing.
    ch.close_conn(Instant::now(), a, "done");
    assert!(r.take(&mut ch).is_empty());
    // Closed by us: StateClosed goes out.
    ch.close_conn(Instant::now(), b, "done");
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, ContentType::StateClosed as i32);
    assert_eq!(sent[0].headers.get_u32(header::CONN_ID), Some(b));
    assert_eq!(ch.connection_count(), 0);
}

#[test]
fn data_for_an_unknown_connection_is_refused() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    r.send(&mut ch, now, &data(4242, b"who?", 0));
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, ContentType::StateClosed as i32);
    assert_eq!(sent[0].headers.get_u32(header::CONN_ID), Some(4242));
    assert!(events(&mut ch).is_empty());
}

#[test]
fn bind_incoming_dial_accept_and_unbind() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let bind = ch
        .bind(
            now,
            &BindParams {
                request: edge::BindRequest::new(0, "bind-token"),
                timeout: Duration::from_secs(15),
            },
        )
        .unwrap();
    let req = r.take(&mut ch).remove(0);
    assert_eq!(req.content_type, ContentType::Bind as i32);
    assert_eq!(req.headers.get_u32(header::CONN_ID), Some(bind));
    r.send(
        &mut ch,
        now,
        &reply(ContentType::StateConnected, &req, bind, ""),
    );
    let mut established = Message::new(ContentType::BindSuccess as i32, "");
    established.headers.put_u32(header::CONN_ID, bind);
    r.send(&mut ch, now, &established);
    assert_eq!(
        events(&mut ch),
        vec![
            Event::BindSucceeded { bind },
            Event::TerminatorEstablished { bind }
        ]
    );

    let mut dial = Message::new(ContentType::Dial as i32, "bind-token");
    dial.sequence = 77;
    dial.headers.put_u32(header::CONN_ID, bind);
    dial.headers
        .put_u32(header::ROUTER_PROVIDED_CONN_ID, 0x8000_0005);
    dial.headers.put_str(header::CALLER_ID, "alice");
    r.send(&mut ch, now, &dial);
    let ev = events(&mut ch);
    let [
        Event::IncomingDial {
            bind: b,
            dial: d,
            request,
        },
    ] = &ev[..]
    else {
        panic!("{ev:?}");
    };
    assert_eq!(*b, bind);
    assert_eq!(d.caller_id.as_deref(), Some("alice"));
    let conn = ch.accept(Instant::now(), bind, request, None).unwrap();
    assert_eq!(conn, 0x8000_0005);
    let sent = r.take(&mut ch);
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].content_type, ContentType::DialSuccess as i32);
    assert!(sent[0].is_reply_to(77));

    // The accepted stream carries data both ways.
    r.send(&mut ch, now, &data(conn, b"ping", 0));
    assert_eq!(
        ch.recv(Instant::now(), conn, 100),
        Recv::Data(Bytes::from_static(b"ping"))
    );
    ch.send(Instant::now(), conn, b"pong").unwrap();
    assert_eq!(&r.take(&mut ch)[0].body[..], b"pong");

    // A dial to a bind we do not have is answered DialFailed.
    let mut stray = dial.clone();
    stray.headers.put_u32(header::CONN_ID, 999);
    r.send(&mut ch, now, &stray);
    let sent = r.take(&mut ch);
    assert_eq!(sent[0].content_type, ContentType::DialFailed as i32);

    ch.unbind(bind, "bind-token");
    let sent = r.take(&mut ch);
    let types: Vec<i32> = sent.iter().map(|m| m.content_type).collect();
    assert_eq!(
        types,
        vec![ContentType::Unbind as i32, ContentType::StateClosed as i32]
    );
}

#[test]
fn the_router_ending_a_bind_is_reported() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let bind = ch
        .bind(
            now,
            &BindParams {
                request: edge::BindRequest::new(0, "t"),
                timeout: Duration::from_secs(15),
            },
        )
        .unwrap();
    let req = r.take(&mut ch).remove(0);
    r.send(
        &mut ch,
        now,
        &reply(ContentType::StateConnected, &req, bind, ""),
    );
    let mut closed = Message::new(ContentType::StateClosed as i32, "terminator removed");
    closed.headers.put_u32(header::CONN_ID, bind);
    r.send(&mut ch, now, &closed);
    assert_eq!(
        events(&mut ch),
        vec![
            Event::BindSucceeded { bind },
            Event::BindClosed {
                bind,
                reason: "terminator removed".into()
            }
        ]
    );
}

#[test]
fn latency_probe_measures_and_its_timeout_ends_a_silent_channel() {
    let t0 = Instant::now();
    let (mut ch, mut r) = open(t0);
    let probe_at = t0 + Duration::from_secs(30);
    assert_eq!(ch.poll_timeout(), Some(probe_at));
    ch.handle_timeout(probe_at);
    let probe = r.take(&mut ch).remove(0);
    assert_eq!(probe.content_type, content_type::LATENCY);
    let mut answer = Message::new(content_type::RESULT, "");
    answer.reply_to(&probe);
    r.send(&mut ch, probe_at + Duration::from_millis(40), &answer);
    assert_eq!(
        events(&mut ch),
        vec![Event::Latency(Duration::from_millis(40))]
    );
    assert_eq!(ch.latency(), Some(Duration::from_millis(40)));

    // Next probe: no answer and nothing else received -> the channel is dead.
    let second = probe_at + Duration::from_secs(30);
    ch.handle_timeout(second);
    r.take(&mut ch);
    ch.handle_timeout(second + Duration::from_secs(10));
    let ev = events(&mut ch);
    assert!(
        matches!(
            ev.last(),
            Some(Event::Closed(ChannelClosed::ProbeTimeout(_)))
        ),
        "{ev:?}"
    );
}

#[test]
fn a_busy_channel_survives_an_unanswered_probe() {
    let t0 = Instant::now();
    let (mut ch, mut r) = open(t0);
    let conn = dialed(&mut ch, &mut r, t0);
    let probe_at = t0 + Duration::from_secs(30);
    ch.handle_timeout(probe_at);
    r.take(&mut ch);
    // Data keeps arriving (the router is slow to answer probes under load, not dead).
    r.send(
        &mut ch,
        probe_at + Duration::from_secs(5),
        &data(conn, b"x", 0),
    );
    ch.handle_timeout(probe_at + Duration::from_secs(10));
    assert!(ch.is_open());
}

#[test]
fn token_update_success_and_refusal() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    ch.update_token(now, "new-token");
    let req = r.take(&mut ch).remove(0);
    assert_eq!(req.content_type, ContentType::UpdateToken as i32);
    assert_eq!(&req.body[..], b"new-token");
    let mut ok = Message::new(ContentType::UpdateTokenSuccess as i32, "");
    ok.reply_to(&req);
    r.send(&mut ch, now, &ok);
    assert_eq!(
        events(&mut ch),
        vec![Event::TokenUpdated { result: Ok(()) }]
    );

    ch.update_token(now, "bad-token");
    let req = r.take(&mut ch).remove(0);
    let mut no = Message::new(ContentType::UpdateTokenFailure as i32, "token expired");
    no.reply_to(&req);
    r.send(&mut ch, now, &no);
    let ev = events(&mut ch);
    assert_eq!(
        ev,
        vec![
            Event::TokenUpdated {
                result: Err("token expired".into())
            },
            Event::Closed(ChannelClosed::TokenRefused("token expired".into()))
        ]
    );
}

#[test]
fn a_reader_that_stops_costs_only_its_window_and_never_blocks_the_others() {
    let t0 = Instant::now();
    let (mut ch, mut r) = open(t0);
    let slow = dialed(&mut ch, &mut r, t0);
    let fast = dialed(&mut ch, &mut r, t0);
    let chunk = vec![1u8; 16 * 1024];
    // 80 KiB to the slow reader: above its 64 KiB window, below twice it.
    for _ in 0..5 {
        r.send(&mut ch, t0, &data(slow, &chunk, 0));
    }
    assert_eq!(ch.buffered(slow), 80 * 1024);
    // The other connection is unaffected.
    r.send(&mut ch, t0, &data(fast, b"echo", 0));
    assert_eq!(
        ch.recv(Instant::now(), fast, 100),
        Recv::Data(Bytes::from_static(b"echo"))
    );
    // Within the grace period nothing happens ...
    ch.handle_timeout(t0 + Duration::from_secs(1));
    assert_eq!(ch.buffered(slow), 80 * 1024);
    // ... after it, the slow connection is closed and its memory freed.
    assert_eq!(ch.poll_timeout(), Some(t0 + Duration::from_secs(2)));
    ch.handle_timeout(t0 + Duration::from_secs(2));
    assert_eq!(ch.buffered(slow), 0);
    assert!(matches!(
        ch.recv(Instant::now(), slow, 100),
        Recv::Closed(ConnClosed::Overflow { .. })
    ));
    let sent = r.take(&mut ch);
    assert!(
        sent.iter()
            .any(|m| m.content_type == ContentType::StateClosed as i32
                && m.headers.get_u32(header::CONN_ID) == Some(slow))
    );
    // Late data for it is ignored; the fast one keeps working.
    r.send(&mut ch, t0, &data(slow, &chunk, 0));
    assert_eq!(ch.buffered(slow), 0);
    r.send(&mut ch, t0, &data(fast, b"still here", 0));
    assert_eq!(
        ch.recv(Instant::now(), fast, 100),
        Recv::Data(Bytes::from_static(b"still here"))
    );
}

#[test]
fn a_queued_chunk_pins_only_its_own_frame() {
    let t0 = Instant::now();
    let (mut ch, mut r) = open(t0);
    let slow = dialed(&mut ch, &mut r, t0);
    let fast = dialed(&mut ch, &mut r, t0);
    // Interleaved frames for both, as one run of bytes cut at places that fall inside
    // prefixes, headers and bodies.
    let mut wire = Vec::new();
    for i in 0..5u8 {
        wire.extend_from_slice(
            &data(slow, &vec![i; 20_000 + usize::from(i)], 0)
                .to_bytes()
                .unwrap(),
        );
        wire.extend_from_slice(&data(fast, &[i; 3], 0).to_bytes().unwrap());
    }
    for piece in wire.chunks(7_001) {
        ch.handle_input(t0, piece);
    }
    for i in 0..5u8 {
        assert_eq!(
            ch.recv(Instant::now(), fast, 100),
            Recv::Data(Bytes::copy_from_slice(&[i; 3]))
        );
    }
    // Each chunk the slow reader has not taken owns its memory alone: reading the fast
    // connection freed everything else, and no chunk shares a buffer with another.
    for i in 0..5u8 {
        let Recv::Data(chunk) = ch.recv(Instant::now(), slow, usize::MAX) else {
            panic!("chunk {i} missing");
        };
        assert_eq!(chunk.len(), 20_000 + usize::from(i));
        assert!(chunk.iter().all(|b| *b == i));
        assert!(
            chunk.try_into_mut().is_ok(),
            "chunk {i} shares its allocation with other messages"
        );
    }
    assert_eq!(ch.recv(Instant::now(), slow, 100), Recv::WouldBlock);
}

#[test]
fn a_reader_that_catches_up_is_not_closed() {
    let t0 = Instant::now();
    let (mut ch, mut r) = open(t0);
    let conn = dialed(&mut ch, &mut r, t0);
    let chunk = vec![1u8; 16 * 1024];
    for _ in 0..5 {
        r.send(&mut ch, t0, &data(conn, &chunk, 0));
    }
    // It reads back below its window before the grace period ends.
    for _ in 0..2 {
        assert!(matches!(
            ch.recv(Instant::now(), conn, 16 * 1024),
            Recv::Data(_)
        ));
    }
    assert_eq!(ch.poll_timeout(), Some(t0 + Duration::from_secs(30)));
    ch.handle_timeout(t0 + Duration::from_secs(3));
    assert_eq!(ch.buffered(conn), 48 * 1024);
}

#[test]
fn twice_the_window_closes_at_once() {
    let t0 = Instant::now();
    let (mut ch, mut r) = open(t0);
    let conn = dialed(&mut ch, &mut r, t0);
    let chunk = vec![1u8; 16 * 1024];
    for _ in 0..9 {
        r.send(&mut ch, t0, &data(conn, &chunk, 0));
    }
    assert_eq!(ch.buffered(conn), 0);
    assert!(matches!(
        ch.recv(Instant::now(), conn, 100),
        Recv::Closed(ConnClosed::Overflow { .. })
    ));
}

#[test]
fn a_full_transmit_buffer_blocks_writers_until_drained() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = dialed(&mut ch, &mut r, now);
    let chunk = vec![0u8; 32 * 1024];
    let mut sent = 0;
    loop {
        match ch.send(Instant::now(), conn, &chunk) {
            Ok(n) => sent += n,
            Err(SendError::WouldBlock) => break,
            Err(e) => panic!("{e:?}"),
        }
    }
    assert!(sent >= 100 * 1024);
    assert!(!ch.can_send());
    assert!(events(&mut ch).is_empty());
    r.take(&mut ch);
    assert_eq!(events(&mut ch), vec![Event::Writable]);
    assert!(ch.can_send());
}

#[test]
fn transport_loss_ends_every_connection_and_pending_dial() {
    let now = Instant::now();
    let (mut ch, mut r) = open(now);
    let conn = dialed(&mut ch, &mut r, now);
    let pending = ch.dial(now, &dial_params()).unwrap();
    ch.transport_closed("router closed the connection");
    let ev = events(&mut ch);
    assert!(ev.contains(&Event::DialFailed {
        conn: pending,
        error: OpenError::ChannelClosed
    }));
    assert!(ev.contains(&Event::Readable { conn }));
    assert!(matches!(
        ev.last(),
        Some(Event::Closed(ChannelClosed::Transport(_)))
    ));
    assert!(matches!(
        ch.recv(Instant::now(), conn, 10),
        Recv::Closed(ConnClosed::Channel(_))
    ));
    assert_eq!(ch.dial(now, &dial_params()), Err(OpenError::ChannelClosed));
}

#[test]
fn a_burst_of_dials_waits_its_turn_and_each_timeout_starts_when_sent() {
    let now = Instant::now();
    let mut ch = Channel::new(
        ChannelConfig {
            max_dials_in_flight: 2,
            max_queued_dials: 3,
            ..config()
        },
        "api-token",
        now,
        7,
        1_700_000_000_000,
    );
    let mut r = Router::new();
    let hello = r.take(&mut ch);
    let mut answer = Message::new(content_type::RESULT, "");
    answer.reply_to(&hello[0]);
    answer.headers.put_bool(channel::RESULT_SUCCESS, true);
    r.send(&mut ch, now, &answer);
    events(&mut ch);

    let ids: Vec<u32> = (0..5)
        .map(|_| ch.dial(now, &dial_params()).unwrap())
        .collect();
    assert_eq!(
        ch.dial(now, &dial_params()),
        Err(OpenError::TooManyDials(3)),
        "the queue is bounded"
    );
    assert_eq!(ch.dials_pending(), (2, 3));
    let sent = r.take(&mut ch);
    let conns: Vec<_> = sent
        .iter()
        .map(|m| m.headers.get_u32(header::CONN_ID))
        .collect();
    assert_eq!(conns, vec![Some(ids[0]), Some(ids[1])], "two in flight");

    // A queued dial the application gives up on is never sent.
    ch.close_conn(now, ids[3], "cancelled");
    assert_eq!(ch.dials_pending(), (2, 2));
    assert!(r.take(&mut ch).is_empty(), "nothing to tell the router");

    // The first answer lets the next waiting dial out, 4 s later; the second times out at 5 s.
    let t4 = now + Duration::from_secs(4);
    let ok = reply(ContentType::StateConnected, &sent[0], ids[0], "");
    r.send(&mut ch, t4, &ok);
    let next = r.take(&mut ch);
    assert_eq!(next.len(), 1);
    assert_eq!(next[0].headers.get_u32(header::CONN_ID), Some(ids[2]));
    let t5 = now + Duration::from_secs(5);
    ch.handle_timeout(t5);
    let ev = events(&mut ch);
    assert!(ev.contains(&Event::DialSucceeded {
        conn: ids[0],
        circuit_id: None
    }));
    assert!(ev.contains(&Event::DialFailed {
        conn: ids[1],
        error: OpenError::TimedOut(Duration::from_secs(5))
    }));
    // ids[1]'s timeout sent its StateClosed and let the last waiting dial out.
    let after = r.take(&mut ch);
    assert!(
        after
            .iter()
            .any(|m| m.content_type == ContentType::Connect as i32
                && m.headers.get_u32(header::CONN_ID) == Some(ids[4])),
        "{after:?}"
    );
    // ids[2], sent at 4 s, is still waiting at 8.9 s and times out at 9 s.
    ch.handle_timeout(now + Duration::from_millis(8900));
    assert!(
        !events(&mut ch)
            .iter()
            .any(|e| matches!(e, Event::DialFailed { conn, .. } if *conn == ids[2]))
    );
    ch.handle_timeout(now + Duration::from_secs(9));
    assert!(events(&mut ch).contains(&Event::DialFailed {
        conn: ids[2],
        error: OpenError::TimedOut(Duration::from_secs(5))
    }));
    assert_eq!(ch.dials_pending(), (1, 0));

    // Queued dials fail when the channel ends.
    let a = ch.dial(t5, &dial_params()).unwrap();
    let b = ch.dial(t5, &dial_params()).unwrap();
    assert_eq!(ch.dials_pending(), (2, 1));
    ch.transport_closed("gone");
    let ev = events(&mut ch);
    for conn in [a, b, ids[4]] {
        assert!(
            ev.contains(&Event::DialFailed {
                conn,
                error: OpenError::ChannelClosed
            }),
            "{conn}: {ev:?}"
        );
    }
}

#[test]
fn garbage_from_the_router_ends_the_channel() {
    let now = Instant::now();
    let (mut ch, _r) = open(now);
    ch.handle_input(now, b"this is not a channel frame at all, not even close");
    let ev = events(&mut ch);
    assert!(
        matches!(ev.last(), Some(Event::Closed(ChannelClosed::BadFrame(_)))),
        "{ev:?}"
    );
}

#[test]
fn fuzz_entry_handles_seeded_random_inputs() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(8);
    for _ in 0..3000 {
        let len = rng.random_range(0..600);
        let data: Vec<u8> = (0..len).map(|_| rng.random()).collect();
        super::fuzz_channel(&data);
    }
    // A scripted run that reaches an open channel with a dial and data.
    super::fuzz_channel(&[
        1, 0, 0, 0, 0x81, 4, 0, 50, 9, 1, 2, 1, 0, 3, 0, 6, 0, 3, 7, 0, 9,
    ]);
}

// ---------------------------------------------------------------- SDK xgress mode

/// A channel asking for SDK xgress mode, opened.
fn open_xgress(now: Instant) -> (Channel, Router) {
    let mut ch = Channel::new(
        ChannelConfig {
            sdk_flow_control: true,
            ..config()
        },
        "api-token",
        now,
        7,
        1_700_000_000_000,
    );
    let mut r = Router::new();
    let hello = r.take(&mut ch).remove(0);
    let mut answer = Message::new(content_type::RESULT, "");
    answer.reply_to(&hello);
    answer.headers.put_bool(channel::RESULT_SUCCESS, true);
    r.send(&mut ch, now, &answer);
    events(&mut ch);
    (ch, r)
}

/// Moves messages between the channel and the far end's circuit (the routers forward xgress
/// messages unchanged) until nothing moves.
fn shuttle(ch: &mut Channel, r: &mut Router, far: &mut xgress::Circuit, now: Instant) {
    for _ in 0..10_000 {
        let mut moved = false;
        for m in r.take(ch) {
            if xgress::XgMessage::is_xgress(m.content_type) {
                far.handle_message(now, &m).unwrap();
                moved = true;
            }
        }
        while let Some(m) = far.poll_transmit(now) {
            r.send(ch, now, &m);
            moved = true;
        }
        if !moved {
            return;
        }
    }
    panic!("the circuit never settled");
}

/// Dials with 1028 and confirms it; returns the connection and the far end's circuit.
fn xgress_dialed(ch: &mut Channel, r: &mut Router, now: Instant) -> (u32, xgress::Circuit) {
    let conn = ch.dial(now, &dial_params()).unwrap();
    let connect = r.take(ch).remove(0);
    assert!(connect.headers.flag(header::USE_XGRESS_TO_SDK));
    let mut ok = reply(ContentType::StateConnected, &connect, conn, "");
    ok.headers.put_str(header::CIRCUIT_ID, "circ-1");
    ok.headers.put_bool(header::USE_XGRESS_TO_SDK, true);
    r.send(ch, now, &ok);
    assert!(matches!(&events(ch)[..], [Event::DialSucceeded { .. }]));
    assert!(ch.is_xgress(conn));
    let far = xgress::Circuit::new(
        "circ-1",
        0x8000_0001,
        xgress::Originator::Terminator,
        xgress::Options::default(),
        now,
        1_700_000_000_000,
    );
    (conn, far)
}

#[test]
fn a_router_that_does_not_confirm_xgress_gets_legacy_data() {
    let now = Instant::now();
    let (mut ch, mut r) = open_xgress(now);
    let conn = ch.dial(now, &dial_params()).unwrap();
    let connect = r.take(&mut ch).remove(0);
    assert!(connect.headers.flag(header::USE_XGRESS_TO_SDK));
    r.send(
        &mut ch,
        now,
        &reply(ContentType::StateConnected, &connect, conn, ""),
    );
    events(&mut ch);
    assert!(!ch.is_xgress(conn));
    ch.send(now, conn, b"plain data").unwrap();
    let sent = r.take(&mut ch);
    assert_eq!(sent[0].content_type, ContentType::Data as i32);
}

#[test]
fn xgress_carries_data_both_ways_and_half_closes() {
    let now = Instant::now();
    let (mut ch, mut r) = open_xgress(now);
    let (conn, mut far) = xgress_dialed(&mut ch, &mut r, now);
    ch.send(now, conn, b"request").unwrap();
    ch.close_write(now, conn).unwrap();
    shuttle(&mut ch, &mut r, &mut far, now);
    let mut got = Vec::new();
    loop {
        match far.read(1024) {
            Some(xgress::Delivery::Data { data, .. }) => got.extend_from_slice(&data),
            Some(xgress::Delivery::Fin) => break,
            None => panic!("far end saw no end of stream; got {got:?}"),
        }
    }
    assert_eq!(got, b"request");

    far.send(Bytes::from_static(b"response")).unwrap();
    far.finish(now);
    shuttle(&mut ch, &mut r, &mut far, now);
    assert!(events(&mut ch).contains(&Event::Readable { conn }));
    let (body, end) = read_all(&mut ch, conn);
    assert_eq!(body, b"response");
    assert_eq!(end, Recv::Fin);
}

#[test]
fn xgress_a_reader_that_stops_closes_only_its_own_window() {
    let now = Instant::now();
    let (mut ch, mut r) = open_xgress(now);
    let (conn, mut far) = xgress_dialed(&mut ch, &mut r, now);
    // The far end sends until its window says stop.
    let chunk = Bytes::from(vec![3u8; 32 * 1024]);
    let mut sent = 0usize;
    for _ in 0..1000 {
        match far.send(chunk.clone()) {
            Ok(n) => sent += n,
            Err(xgress::SendError::Blocked) => break,
            Err(e) => panic!("{e:?}"),
        }
        shuttle(&mut ch, &mut r, &mut far, now);
    }
    assert!(
        far.is_blocked(),
        "the sender was never stopped ({sent} bytes sent)"
    );
    // The channel holds the unread data (in the circuit and a small pull), no more than the
    // circuit's receive buffer plus one pull.
    assert!(
        sent <= 4 * 1024 * 1024 + 256 * 1024,
        "{sent} bytes accepted from a stopped reader"
    );
    // Another circuit on the same channel is unaffected.
    let plain = ch.dial(now, &dial_params()).unwrap();
    let connect = r.take(&mut ch).remove(0);
    r.send(
        &mut ch,
        now,
        &reply(ContentType::StateConnected, &connect, plain, ""),
    );
    r.send(&mut ch, now, &data(plain, b"other", 0));
    events(&mut ch);
    assert_eq!(
        ch.recv(now, plain, 100),
        Recv::Data(Bytes::from_static(b"other"))
    );
    // The reader reads: the window opens again.
    let (body, _) = read_all(&mut ch, conn);
    assert!(body.len() >= sent / 2, "read {} of {sent}", body.len());
    let mut total = body.len();
    let mut t = now;
    for _ in 0..50 {
        // Anything dropped for lack of room comes again after a retransmission timeout.
        t += Duration::from_millis(300);
        far.handle_timeout(t);
        ch.handle_timeout(t);
        shuttle(&mut ch, &mut r, &mut far, t);
        total += read_all(&mut ch, conn).0.len();
        if total == sent {
            break;
        }
    }
    assert_eq!(total, sent);
    assert!(!far.is_blocked(), "the window did not open after reading");
}

#[test]
fn xgress_close_by_the_application_ends_the_circuit() {
    let now = Instant::now();
    let (mut ch, mut r) = open_xgress(now);
    let (conn, mut far) = xgress_dialed(&mut ch, &mut r, now);
    shuttle(&mut ch, &mut r, &mut far, now);
    ch.close_conn(now, conn, "done");
    shuttle(&mut ch, &mut r, &mut far, now);
    assert_eq!(far.read(100), Some(xgress::Delivery::Fin));
    // The slot goes once the circuit has drained (after the close linger).
    let mut t = now;
    for _ in 0..100 {
        t += Duration::from_millis(200);
        ch.handle_timeout(t);
        far.handle_timeout(t);
        shuttle(&mut ch, &mut r, &mut far, t);
    }
    assert_eq!(ch.connection_count(), 0);
}

#[test]
fn xgress_our_writer_waits_for_the_peers_window_and_a_lost_payload_is_sent_again() {
    let now = Instant::now();
    let (mut ch, mut r) = open_xgress(now);
    let (conn, mut far) = xgress_dialed(&mut ch, &mut r, now);
    shuttle(&mut ch, &mut r, &mut far, now);
    // The far application does not read: our writes stop at its window.
    let chunk = vec![5u8; 32 * 1024];
    let mut sent = 0usize;
    let blocked = loop {
        match ch.send(now, conn, &chunk) {
            Ok(n) => sent += n,
            Err(SendError::WouldBlock) => break true,
            Err(e) => panic!("{e:?}"),
        }
        shuttle(&mut ch, &mut r, &mut far, now);
        if sent > 64 * 1024 * 1024 {
            break false;
        }
    };
    assert!(blocked, "never blocked after {sent} bytes");
    events(&mut ch);
    // The far side reads everything: our writer is told it may write again.
    let mut got = 0usize;
    while let Some(xgress::Delivery::Data { data, .. }) = far.read(usize::MAX) {
        got += data.len();
    }
    let mut t = now;
    let mut writable = false;
    for _ in 0..50 {
        t += Duration::from_millis(100);
        far.handle_timeout(t);
        ch.handle_timeout(t);
        shuttle(&mut ch, &mut r, &mut far, t);
        while let Some(xgress::Delivery::Data { data, .. }) = far.read(usize::MAX) {
            got += data.len();
        }
        writable |= events(&mut ch).contains(&Event::ConnWritable { conn });
        if writable && got == sent {
            break;
        }
    }
    assert!(writable, "no ConnWritable after the peer read");
    assert_eq!(got, sent);

    // A payload lost on the way is retransmitted after the timeout.
    ch.send(t, conn, b"lost once").unwrap();
    let lost = r.take(&mut ch);
    assert!(lost.iter().any(|m| m.content_type == 1100), "{lost:?}");
    let mut seen = Vec::new();
    for _ in 0..100 {
        t += Duration::from_millis(100);
        ch.handle_timeout(t);
        far.handle_timeout(t);
        shuttle(&mut ch, &mut r, &mut far, t);
        while let Some(xgress::Delivery::Data { data, .. }) = far.read(usize::MAX) {
            seen.extend_from_slice(&data);
        }
        if !seen.is_empty() {
            break;
        }
    }
    assert_eq!(seen, b"lost once");
}
