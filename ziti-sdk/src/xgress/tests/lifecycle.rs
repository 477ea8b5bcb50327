//! Two circuits wired directly: duplicates, EOF and close, start, trace route, bad input.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::UNIX_MS;
use crate::channel::{Headers, Message};
use crate::xgress::messages::{content_type, control_header, header, payload_header};
use crate::xgress::*;

/// Moves every pending message between two directly wired circuits until quiet.
fn pump(a: &mut Circuit, b: &mut Circuit, now: Instant) {
    loop {
        let mut moved = false;
        while let Some(m) = a.poll_transmit(now) {
            if m.content_type != content_type::CLOSE {
                b.handle_message(now, &m).unwrap();
            }
            moved = true;
        }
        while let Some(m) = b.poll_transmit(now) {
            if m.content_type != content_type::CLOSE {
                a.handle_message(now, &m).unwrap();
            }
            moved = true;
        }
        if !moved {
            return;
        }
    }
}

fn pair(now: Instant) -> (Circuit, Circuit) {
    let mut a = Circuit::new(
        "c",
        1,
        Originator::Initiator,
        Options::default(),
        now,
        UNIX_MS,
    );
    let mut b = Circuit::new(
        "c",
        1,
        Originator::Terminator,
        Options::default(),
        now,
        UNIX_MS,
    );
    pump(&mut a, &mut b, now);
    (a, b)
}

fn read_data(c: &mut Circuit) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    while let Some(d) = c.read(usize::MAX) {
        match d {
            Delivery::Data { data, .. } => out.extend_from_slice(&data),
            Delivery::Fin => return (out, true),
        }
    }
    (out, false)
}

#[test]
fn duplicates_are_acknowledged_again_and_dropped() {
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    a.send(Bytes::from_static(b"once")).unwrap();
    let m = a.poll_transmit(t).unwrap();
    b.handle_message(t, &m).unwrap();
    b.handle_message(t, &m).unwrap();
    assert_eq!(b.poll_event(), Some(Event::Readable));
    assert_eq!(read_data(&mut b), (b"once".to_vec(), false));
    assert_eq!(b.stats().duplicate_payloads, 1);
    // Both copies are acknowledged (in one batched acknowledgement).
    let ack = Acknowledgement::from_message(&b.poll_transmit(t).unwrap()).unwrap();
    assert_eq!(ack.sequences, vec![1, 1]);
    a.handle_message(t, &ack.to_message(None)).unwrap();
    assert_eq!(a.stats().duplicate_acks, 1);
    assert_eq!(a.stats().unacked_payloads, 0);
}

#[test]
fn eof_both_ways_then_close() {
    let mut t = Instant::now();
    let (mut a, mut b) = pair(t);
    assert!(a.peer_supports_eof() && b.peer_supports_eof());
    a.send(Bytes::from_static(b"request")).unwrap();
    a.finish(t);
    assert_eq!(a.send(Bytes::from_static(b"x")), Err(SendError::Closed));
    let mut eof_seen = false;
    while let Some(m) = a.poll_transmit(t) {
        let p = Payload::from_message(&m).unwrap();
        eof_seen |= p.flags.contains(Flags::EOF);
        b.handle_message(t, &m).unwrap();
    }
    assert!(eof_seen, "native EOF, the peer announced the capability");
    assert_eq!(read_data(&mut b), (b"request".to_vec(), true));
    // b still talks back after a's half close.
    b.send(Bytes::from_static(b"response")).unwrap();
    b.finish(t);
    pump(&mut a, &mut b, t);
    assert_eq!(read_data(&mut a), (b"response".to_vec(), true));
    assert!(!a.is_closed() && !b.is_closed(), "send sides linger");
    // All acknowledged: each send side closes after the linger, then the circuit.
    t += Duration::from_secs(5);
    assert!(a.poll_timeout().is_some_and(|d| d <= t));
    a.handle_timeout(t);
    b.handle_timeout(t);
    assert!(a.is_closed() && b.is_closed());
    let finals: Vec<Message> = std::iter::from_fn(|| a.poll_transmit(t)).collect();
    assert_eq!(finals.len(), 2);
    let end = Payload::from_message(&finals[0]).unwrap();
    assert!(end.flags.contains(Flags::CIRCUIT_END));
    assert_eq!(
        finals[1],
        CloseCircuit {
            circuit_id: "c".into()
        }
        .to_message()
    );
    assert!(a.is_drained());
    assert_eq!(a.poll_timeout(), None);
}

#[test]
fn finish_without_peer_eof_support_sends_the_edge_fin() {
    let t = Instant::now();
    let mut a = Circuit::new(
        "c",
        1,
        Originator::Initiator,
        Options::default(),
        t,
        UNIX_MS,
    );
    // The peer (an old router xgress) acknowledges CircuitStart but announces nothing.
    let start = Payload::from_message(&a.poll_transmit(t).unwrap()).unwrap();
    assert!(start.flags.contains(Flags::CIRCUIT_START));
    assert_eq!(start.sequence, 0);
    assert_eq!(
        start
            .headers
            .get(&payload_header::CAPABILITIES)
            .map(|v| v.to_vec()),
        Some(vec![0, 0, 1, 0])
    );
    assert!(!a.peer_supports_eof());
    a.finish(t);
    let fin = Payload::from_message(&a.poll_transmit(t).unwrap()).unwrap();
    assert_eq!(fin.sequence, 1);
    assert!(!fin.flags.intersects(Flags::EOF | Flags::CIRCUIT_END));
    assert_eq!(edge_flags(&fin.headers), Some(1));
    assert!(fin.data.is_empty());
}

#[test]
fn terminator_holds_data_until_circuit_start_and_times_out_without_it() {
    let t = Instant::now();
    let mut b = Circuit::new(
        "c",
        1,
        Originator::Terminator,
        Options::default(),
        t,
        UNIX_MS,
    );
    assert!(!b.is_started());
    b.send(Bytes::from_static(b"early")).unwrap();
    assert!(b.poll_transmit(t).is_none(), "held until CircuitStart");
    let mut a = Circuit::new(
        "c",
        1,
        Originator::Initiator,
        Options::default(),
        t,
        UNIX_MS,
    );
    pump(&mut a, &mut b, t);
    assert!(b.is_started());
    assert_eq!(read_data(&mut a), (b"early".to_vec(), false));

    let mut lonely = Circuit::new(
        "c",
        1,
        Originator::Terminator,
        Options::default(),
        t,
        UNIX_MS,
    );
    let deadline = lonely.poll_timeout().unwrap();
    assert_eq!(deadline, t + Duration::from_secs(180));
    lonely.handle_timeout(deadline);
    assert!(lonely.is_closed());
    assert_eq!(lonely.poll_event(), Some(Event::Closed));
}

#[test]
fn closing_without_reading_stops_the_peer() {
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    a.send(Bytes::from_static(b"unwanted")).unwrap();
    pump(&mut a, &mut b, t);
    b.close(t);
    pump(&mut a, &mut b, t);
    // a learns that nobody reads (WriteFailed) and that b is done sending (EOF).
    assert!(std::iter::from_fn(|| a.poll_event()).any(|e| e == Event::SendClosed));
    assert_eq!(a.send(Bytes::from_static(b"more")), Err(SendError::Closed));
    assert_eq!(read_data(&mut a), (Vec::new(), true));
    assert!(a.is_closed(), "both halves done");
    assert_eq!(b.stats().recv_buffered, 0);
}

#[test]
fn router_close_keeps_received_data_then_ends() {
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    a.send(Bytes::from_static(b"last words")).unwrap();
    pump(&mut a, &mut b, t);
    b.handle_router_closed(t);
    assert_eq!(b.send(Bytes::from_static(b"x")), Err(SendError::Closed));
    assert!(!b.is_closed());
    assert_eq!(read_data(&mut b), (b"last words".to_vec(), true));
    assert!(b.is_closed());
    let events: Vec<_> = std::iter::from_fn(|| b.poll_event()).collect();
    assert!(events.contains(&Event::SendClosed) && events.contains(&Event::Closed));
}

#[test]
fn reading_a_full_buffer_sends_a_window_update() {
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    for _ in 0..4 {
        a.send(Bytes::from(vec![1u8; 30_000])).unwrap();
    }
    pump(&mut a, &mut b, t);
    // The acknowledgement goes out once the oldest payload has waited `ack_delay`.
    pump(&mut a, &mut b, t + Options::default().ack_delay);
    // b holds 120,000 bytes and reports four times that (`rx_report_multiplier`).
    assert_eq!(Options::default().rx_report_multiplier, 4);
    assert_eq!(b.stats().recv_buffered, 120_000);
    assert_eq!(a.stats().peer_recv_buffer, 480_000);
    // Reading more than half of it produces an acknowledgement without sequences.
    b.read(70_000);
    b.read(70_000);
    b.read(70_000);
    let upd = Acknowledgement::from_message(&b.poll_transmit(t).unwrap()).unwrap();
    assert!(upd.sequences.is_empty());
    assert_eq!(upd.recv_buffer_size, 120_000);
    assert_eq!(upd.rtt, 0);
    a.handle_message(t, &upd.to_message(None)).unwrap();
    assert_eq!(a.stats().peer_recv_buffer, 120_000);
}

#[test]
fn reading_back_under_a_go_senders_stop_sends_a_window_update() {
    // 1.25 MiB held reports 5 MiB: a Go sender (4 MiB portal) has stopped. Reading down to
    // just under 1 MiB (reported 4 MiB, not yet half of 5) tells it to go on.
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    for _ in 0..20 {
        a.send(Bytes::from(vec![1u8; 64 * 1024])).unwrap();
    }
    pump(&mut a, &mut b, t);
    assert_eq!(a.stats().peer_recv_buffer, 5 * 1024 * 1024);
    for reported in [4.75, 4.5, 4.25] {
        b.read(64 * 1024);
        assert!(
            b.poll_transmit(t).is_none(),
            "{reported} MiB reported: still stopped"
        );
    }
    b.read(64 * 1024);
    let upd = Acknowledgement::from_message(&b.poll_transmit(t).unwrap()).unwrap();
    assert!(upd.sequences.is_empty());
    assert_eq!(upd.recv_buffer_size, 4 * 1024 * 1024);
}

#[test]
fn report_multiplier_one_reports_the_buffer_as_go_does() {
    let t = Instant::now();
    let opts = Options {
        rx_report_multiplier: 1,
        ..Options::default()
    };
    let mut a = Circuit::new("c", 1, Originator::Initiator, opts, t, UNIX_MS);
    let mut b = Circuit::new("c", 1, Originator::Terminator, opts, t, UNIX_MS);
    for _ in 0..4 {
        a.send(Bytes::from(vec![1u8; 30_000])).unwrap();
    }
    pump(&mut a, &mut b, t);
    assert_eq!(a.stats().peer_recv_buffer, 120_000);
}

#[test]
fn a_go_sender_stops_early_so_what_is_in_flight_still_fits() {
    // A Go sender stops once our report exceeds its tx_portal_max_size (4 MiB, as ours). At
    // the default multiplier that happens when we hold a quarter of rx_buffer_size, so the
    // rest is free for the payloads it sent before it saw the report.
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    let opts = Options::default();
    let chunk = 64 * 1024;
    let mut sent = 0;
    while a.stats().peer_recv_buffer <= opts.tx_portal_max_size {
        assert!(sent < opts.rx_buffer_size as usize, "report never crossed");
        a.send(Bytes::from(vec![7u8; chunk])).unwrap();
        sent += chunk;
        pump(&mut a, &mut b, t);
    }
    let held = b.stats().recv_buffered;
    let quarter = u64::from(opts.rx_buffer_size / 4);
    assert!(
        held > quarter && held <= quarter + chunk as u64,
        "the report crossed at {held} bytes held"
    );
}

#[test]
fn trace_route_is_answered() {
    let t = Instant::now();
    let mut b = Circuit::new(
        "c",
        4,
        Originator::Terminator,
        Options::default(),
        t,
        UNIX_MS,
    );
    let mut headers = Headers::new();
    headers.put_u32(control_header::HOP_COUNT, 5);
    headers.put_u32(control_header::USER_VAL, 1234);
    let req = Control {
        control_type: ControlType::TraceRoute,
        circuit_id: "c".into(),
        headers,
    };
    b.handle_message(t, &req.to_message()).unwrap();
    let m = b.poll_transmit(t).unwrap();
    let resp = Control::from_message(&m).unwrap();
    assert_eq!(resp.control_type, ControlType::TraceRouteResponse);
    assert_eq!(m.reply_for(), Some(1234));
    assert_eq!(m.headers.get_u32(header::CONN_ID), Some(4));
    assert_eq!(
        m.headers.get_str(control_header::HOP_TYPE),
        Some("sdk/rust")
    );
}

#[test]
fn foreign_and_looped_messages_are_ignored() {
    let t = Instant::now();
    let (mut a, mut b) = pair(t);
    a.send(Bytes::from_static(b"x")).unwrap();
    let m = a.poll_transmit(t).unwrap();
    // Our own payload coming back is dropped, unacknowledged.
    a.handle_message(t, &m).unwrap();
    assert!(a.poll_transmit(t).is_none());
    let mut other = Payload::from_message(&m).unwrap();
    other.circuit_id = "elsewhere".into();
    assert!(matches!(
        b.handle_message(t, &other.to_message(None)),
        Err(CircuitError::WrongCircuit { .. })
    ));
    // A malformed payload closes the circuit, as in Go.
    let mut bad = m.clone();
    bad.headers.remove(header::SEQUENCE);
    assert!(matches!(
        b.handle_message(t, &bad),
        Err(CircuitError::Decode(DecodeError::MissingSequence))
    ));
    assert!(b.is_closed());
}

fn data_payload(seq: i32, stamp: u16, flags: Flags, len: usize) -> Message {
    Payload {
        circuit_id: "c".into(),
        flags,
        rtt: stamp,
        sequence: seq,
        headers: PayloadHeaders::new(),
        data: Bytes::from(vec![7u8; len]),
    }
    .to_message(None)
}

fn ack_from(c: &mut Circuit, now: Instant) -> Option<Acknowledgement> {
    while let Some(m) = c.poll_transmit(now) {
        if m.content_type == content_type::ACKNOWLEDGEMENT {
            return Some(Acknowledgement::from_message(&m).unwrap());
        }
    }
    None
}

/// A receiver that has seen CircuitStart (so it is past its own start-up acknowledgements).
fn started_receiver(t: Instant) -> Circuit {
    let mut b = Circuit::new(
        "c",
        1,
        Originator::Terminator,
        Options::default(),
        t,
        UNIX_MS,
    );
    b.handle_message(t, &data_payload(0, 0, Flags::CIRCUIT_START, 0))
        .unwrap();
    while b.poll_transmit(t).is_some() {}
    b
}

#[test]
fn acknowledgements_wait_for_the_delay_and_echo_the_oldest_stamp() {
    let t = Instant::now();
    let delay = Options::default().ack_delay;
    let mut b = started_receiver(t);
    b.handle_message(t, &data_payload(1, 100, Flags::empty(), 1000))
        .unwrap();
    let later = t + delay / 2;
    b.handle_message(later, &data_payload(2, 112, Flags::empty(), 1000))
        .unwrap();
    // Nothing yet: the timer says when.
    assert!(ack_from(&mut b, later).is_none());
    assert_eq!(b.poll_timeout(), Some(t + delay));
    let ack = ack_from(&mut b, t + delay).expect("due");
    assert_eq!(ack.sequences, vec![1, 2]);
    assert_eq!(ack.rtt, 100, "the oldest payload's stamp");
    assert!(b.poll_timeout().is_none());
}

#[test]
fn a_megabyte_waiting_is_acknowledged_at_once() {
    let t = Instant::now();
    let opts = Options::default();
    let mut b = started_receiver(t);
    let size = 64 * 1024;
    let count = (opts.ack_bytes as usize).div_ceil(size);
    for i in 0..count {
        assert!(
            ack_from(&mut b, t).is_none(),
            "not before {} bytes",
            opts.ack_bytes
        );
        b.handle_message(t, &data_payload(i as i32 + 1, 50, Flags::empty(), size))
            .unwrap();
        // Read as we go, so the receive buffer stays small.
        while b.read(usize::MAX).is_some() {}
    }
    let ack = ack_from(&mut b, t).expect("ack_bytes reached");
    assert_eq!(ack.sequences.len(), count);
    assert_eq!(ack.rtt, 50);
}

#[test]
fn duplicates_and_retransmissions_are_acknowledged_at_once_without_a_sample() {
    let t = Instant::now();
    let mut b = started_receiver(t);
    let m = data_payload(1, 300, Flags::empty(), 10);
    b.handle_message(t, &m).unwrap();
    b.handle_message(t, &m).unwrap();
    let ack = ack_from(&mut b, t).expect("a duplicate is answered at once");
    assert_eq!(ack.sequences, vec![1, 1]);
    assert_eq!(ack.rtt, 0, "an early acknowledgement carries no RTT sample");
    // Karn: a retransmission's stamp is never echoed, even in a regular acknowledgement.
    b.handle_message(t, &data_payload(3, 400, Flags::RETRANSMIT, 10))
        .unwrap();
    let ack = ack_from(&mut b, t).expect("a retransmission is answered at once");
    assert_eq!((ack.sequences, ack.rtt), (vec![3], 0));
    assert_eq!(b.stats().duplicate_payloads, 1);
    assert_eq!(
        b.stats().recovered_payloads,
        1,
        "3 came only as a retransmission"
    );
    let delay = Options::default().ack_delay;
    b.handle_message(t, &data_payload(2, 500, Flags::RETRANSMIT, 10))
        .unwrap();
    b.handle_message(t, &data_payload(4, 600, Flags::empty(), 10))
        .unwrap();
    let ack = ack_from(&mut b, t + delay).expect("due");
    assert_eq!(ack.sequences, vec![2, 4]);
    assert_eq!(ack.rtt, 600, "4 is the oldest payload sent once");
}

#[test]
fn filling_past_a_go_senders_stop_is_reported_at_once() {
    let t = Instant::now();
    let opts = Options::default();
    let mut b = started_receiver(t);
    let size = 64 * 1024;
    // Unread: 16 payloads (1 MiB) report 4 MiB, the 17th crosses a Go sender's stop.
    for i in 1..=16 {
        b.handle_message(t, &data_payload(i, 9, Flags::empty(), size))
            .unwrap();
    }
    assert!(ack_from(&mut b, t).is_some(), "1 MiB waiting: ack_bytes");
    b.handle_message(t, &data_payload(17, 9, Flags::empty(), size))
        .unwrap();
    let ack = ack_from(&mut b, t).expect("past the stop: at once");
    assert!(ack.recv_buffer_size > opts.tx_portal_max_size);
    assert_eq!(ack.sequences, vec![17]);
}

#[test]
fn a_closed_circuit_flushes_its_waiting_acknowledgement() {
    let t = Instant::now();
    let mut b = started_receiver(t);
    b.handle_message(t, &data_payload(1, 9, Flags::empty(), 10))
        .unwrap();
    b.close(t);
    let mut acked = Vec::new();
    while let Some(m) = b.poll_transmit(t) {
        if m.content_type == content_type::ACKNOWLEDGEMENT {
            acked.extend(Acknowledgement::from_message(&m).unwrap().sequences);
        }
    }
    assert!(acked.contains(&1));
}
