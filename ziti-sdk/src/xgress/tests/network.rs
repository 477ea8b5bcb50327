//! Circuits over the simulated network: bulk transfer with loss and reordering, a stalled
//! reader next to a flowing circuit, retransmission, RTT.

use std::time::Duration;

use super::pattern;
use super::sim::{Link, Net};
use crate::channel::Message;
use crate::xgress::*;

const MIB: usize = 1024 * 1024;

#[test]
fn moves_megabytes_both_ways_over_a_lossy_reordering_link() {
    let opts = Options::default();
    let mut net = Net::new(
        1,
        opts,
        Link::new(
            1,
            Duration::from_millis(5),
            Duration::from_millis(8),
            20,
            30,
        ),
        Link::new(
            2,
            Duration::from_millis(5),
            Duration::from_millis(8),
            20,
            30,
        ),
    );
    let up = pattern(4 * MIB, 11);
    let down = pattern(MIB + 12345, 12);
    net.a[0].1.to_send = up.clone();
    net.a[0].1.finish_when_sent = true;
    net.b[0].1.to_send = down.clone();
    net.b[0].1.finish_when_sent = true;

    let done = net.run_until(Duration::from_secs(120), |n| {
        n.a[0].1.fin && n.b[0].1.fin && n.a[0].0.is_closed() && n.b[0].0.is_closed()
    });
    assert!(
        done,
        "fin {}/{} closed {}/{} sent {}/{} received {}/{}\na: {:?}\nb: {:?}",
        net.a[0].1.fin,
        net.b[0].1.fin,
        net.a[0].0.is_closed(),
        net.b[0].0.is_closed(),
        net.a[0].1.sent,
        net.b[0].1.sent,
        net.a[0].1.received.len(),
        net.b[0].1.received.len(),
        net.a[0].0.stats(),
        net.b[0].0.stats()
    );
    assert!(net.b[0].1.received == up, "upstream bytes differ");
    assert!(net.a[0].1.received == down, "downstream bytes differ");

    let (sa, sb) = (net.a[0].0.stats(), net.b[0].0.stats());
    // The link lost and duplicated some messages (seeded, so this is deterministic).
    assert!(sa.retransmits > 0, "{sa:?}");
    assert!(
        sa.duplicate_payloads + sb.duplicate_payloads > 0,
        "{sa:?} {sb:?}"
    );
    assert!(net.a[0].0.peer_supports_eof() && net.b[0].0.peer_supports_eof());
    // Both ends told their router to tear the circuit down.
    assert_eq!((net.ab.closes, net.ba.closes), (1, 1));
    assert!(net.a[0].1.events.contains(&Event::Closed));
    while net.a[0].0.poll_transmit(net.now).is_some() {}
    assert!(net.a[0].0.is_drained());
}

#[test]
fn a_slow_reader_closes_only_its_own_circuit_window() {
    let opts = Options::default();
    let mut net = Net::new(
        2,
        opts,
        Link::new(3, Duration::from_millis(10), Duration::ZERO, 0, 0),
        Link::new(4, Duration::from_millis(10), Duration::ZERO, 0, 0),
    );
    let stalled = pattern(16 * MIB, 21);
    let flowing = pattern(8 * MIB, 22);
    net.a[0].1.to_send = stalled.clone();
    net.b[0].1.reading = false;
    net.a[1].1.to_send = flowing.clone();
    net.a[1].1.finish_when_sent = true;

    // Circuit 1 completes while circuit 0's reader sleeps.
    assert!(net.run_until(Duration::from_secs(30), |n| n.b[1].1.fin));
    assert!(net.b[1].1.received == flowing);

    // Circuit 0 is stuck at a bounded amount: the receiver holds at most ~4 MiB plus a
    // payload, the sender at most its window plus a payload, and it is blocked.
    net.run_until(Duration::from_secs(1), |_| false);
    let retransmits = net.a[0].0.stats().retransmits;
    let link_messages = net.ab.sent;
    net.run_until(Duration::from_secs(5), |_| false);
    // While stalled, the sender retransmits at most once per timeout (what it resends is
    // dropped by the full receiver).
    let probes = net.a[0].0.stats().retransmits - retransmits;
    assert!((1..=5000 / 64).contains(&probes), "{probes} probes in 5 s");
    assert!(net.ab.sent - link_messages <= 2 * probes as usize + 2);
    let (sender, receiver) = (&net.a[0], &net.b[0]);
    let rx = receiver.0.stats().recv_buffered as usize;
    let tx = sender.0.stats().unacked_bytes as usize;
    assert!(sender.0.is_blocked());
    assert!(rx <= 4 * MIB + opts.max_payload_size, "receiver holds {rx}");
    assert!(tx <= 4 * MIB + opts.max_payload_size, "sender holds {tx}");
    assert!(sender.1.sent < stalled.len());
    assert!(
        sender.1.sent <= rx + tx,
        "nothing else is buffered anywhere"
    );
    assert!(receiver.0.stats().peer_recv_buffer == 0);
    assert!(sender.0.stats().peer_recv_buffer as usize > 4 * MIB);

    // The reader wakes up: everything arrives, and the writer was told it could go on.
    net.b[0].1.reading = true;
    assert!(
        net.run_until(Duration::from_secs(60), |n| n.b[0].1.received.len()
            == stalled.len())
    );
    assert!(net.b[0].1.received == stalled);
    assert!(net.a[0].1.events.contains(&Event::Writable));
}

#[test]
fn a_dropped_payload_is_retransmitted() {
    let opts = Options::default();
    let mut ab = Link::new(5, Duration::from_millis(20), Duration::ZERO, 0, 0);
    let mut dropped = 0;
    ab.drop_filter = Some(Box::new(move |m: &Message| {
        // Drop the first copy of payload 2 (0 is CircuitStart).
        let p = Payload::from_message(m).ok();
        if dropped == 0 && p.is_some_and(|p| p.sequence == 2) {
            dropped += 1;
            return true;
        }
        false
    }));
    let mut net = Net::new(
        1,
        opts,
        ab,
        Link::new(6, Duration::from_millis(20), Duration::ZERO, 0, 0),
    );
    let data = pattern(200_000, 31);
    net.a[0].1.to_send = data.clone();
    assert!(net.run_until(Duration::from_secs(5), |n| {
        n.b[0].1.received.len() == data.len() && n.a[0].0.stats().unacked_payloads == 0
    }));
    assert!(net.b[0].1.received == data);
    let s = net.a[0].0.stats();
    assert_eq!(s.retransmits, 1, "{s:?}");
    assert_eq!(s.unacked_payloads, 0);
}

#[test]
fn rtt_estimate_follows_the_link() {
    let opts = Options::default();
    let mut net = Net::new(
        1,
        opts,
        Link::new(7, Duration::from_millis(40), Duration::ZERO, 0, 0),
        Link::new(8, Duration::from_millis(40), Duration::ZERO, 0, 0),
    );
    assert_eq!(net.a[0].0.stats().rtt, None);
    assert_eq!(
        net.a[0].0.stats().retransmit_timeout,
        Duration::from_millis(200)
    );
    net.a[0].1.to_send = pattern(300_000, 41);
    assert!(net.run_until(Duration::from_secs(10), |n| {
        n.b[0].1.received.len() == 300_000 && n.a[0].0.stats().unacked_payloads == 0
    }));
    let s = net.a[0].0.stats();
    let rtt = s.rtt.unwrap();
    assert!(
        (Duration::from_millis(79)..=Duration::from_millis(81)).contains(&rtt),
        "{rtt:?}"
    );
    let rto = s.retransmit_timeout.as_millis();
    assert!((118..=122).contains(&rto), "{rto}");
    assert_eq!(s.retransmits, 0);
}

#[test]
fn rtt_is_the_senders_own_measure_whatever_the_routers_clocks() {
    let run = |skew_ms: i64| {
        let mut ab = Link::new(9, Duration::from_millis(40), Duration::ZERO, 0, 0);
        let mut ba = Link::new(10, Duration::from_millis(40), Duration::ZERO, 0, 0);
        ab.restamp_skew_ms = Some(skew_ms);
        ba.restamp_skew_ms = Some(skew_ms);
        let mut net = Net::new(1, Options::default(), ab, ba);
        net.a[0].1.to_send = pattern(300_000, 51);
        assert!(net.run_until(Duration::from_secs(10), |n| {
            n.b[0].1.received.len() == 300_000 && n.a[0].0.stats().unacked_payloads == 0
        }));
        net.a[0].0.stats()
    };
    // Routers that re-stamp payloads with a clock 15 ms behind ours, or 10 s ahead, change
    // nothing: the sender times its own payloads from transmission to acknowledgement.
    for skew in [-15, 10_000] {
        let s = run(skew);
        let rtt = s.rtt.unwrap().as_millis();
        assert!((79..=81).contains(&rtt), "skew {skew}: {rtt}");
        assert_eq!(s.retransmits, 0, "skew {skew}");
    }
}
