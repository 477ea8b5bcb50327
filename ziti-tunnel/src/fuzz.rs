//! Fuzzing entry point for the packet path, shared by the cargo-fuzz target in `fuzz/` and by
//! ordinary tests (so CI exercises it without cargo-fuzz too).

use std::time::{Duration, Instant};

use smoltcp::wire::{IpAddress, IpProtocol, Ipv4Packet, TcpPacket};

use crate::stack::{NetStack, StackConfig};

/// An invariant the fuzzed code broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fuzz invariant violated: {0}")]
pub struct Violation(pub &'static str);

/// Feeds a sequence of packets to a fresh [`NetStack`] and drives every flow.
///
/// The input is a series of records `[len_lo, len_hi, flags, packet bytes...]`. Where a packet
/// parses as IPv4/TCP its checksums are filled in, so the fuzzer reaches the TCP state machine
/// instead of stopping at checksum validation. `flags` picks what the "service side" does next
/// (send, finish, abort, read) and how far the clock moves. Returns how many flows were opened.
pub fn packets(data: &[u8]) -> Result<usize, Violation> {
    let start = Instant::now();
    let config = StackConfig {
        max_flows: 8,
        max_rx_queue: 32,
        max_tx_queue: 32,
        tcp_buffer: 4096,
        mtu: 1500,
        ..StackConfig::default()
    };
    let mut stack = NetStack::new(config, start, 1);
    let mut now = start;
    let mut rest = data;
    let mut buf = [0u8; 512];
    let mut opened = 0;
    while rest.len() >= 3 {
        let len = usize::from(u16::from_le_bytes([rest[0], rest[1]])) % 1600;
        let flags = rest[2];
        rest = &rest[3..];
        let (raw, tail) = rest.split_at(len.min(rest.len()));
        rest = tail;
        let mut packet = raw.to_vec();
        fix_checksums(&mut packet);
        stack.receive_packet(&packet, now, |_, dst| dst.port() % 2 == 0 || flags & 1 == 0);
        stack.poll(now);
        while let Some(flow) = stack.poll_new_flow() {
            opened += 1;
            if stack.endpoints(flow.id).is_none() {
                return Err(Violation("a new flow has no endpoints"));
            }
            // The dial's outcome: most succeed, some are refused.
            if flags & 0x40 == 0 || opened % 3 != 0 {
                stack.accept_flow(flow.id);
            } else {
                stack.refuse_flow(flow.id);
            }
        }
        let mut seen = std::collections::HashSet::new();
        while let Some(id) = stack.poll_ready() {
            if stack.endpoints(id).is_some() && !seen.insert(id) {
                return Err(Violation("a ready flow was reported twice"));
            }
        }
        for id in stack.flow_ids() {
            match flags >> 5 {
                0 => {
                    let _ = stack.send(id, raw);
                }
                1 => stack.finish(id),
                2 => stack.abort(id),
                _ => {
                    let cap = stack.send_capacity(id);
                    if let Ok(n) = stack.send(id, &buf[..cap.min(buf.len())])
                        && n > cap
                    {
                        return Err(Violation("sent more than the capacity"));
                    }
                }
            }
            if let Ok(n) = stack.recv(id, &mut buf)
                && n > buf.len()
            {
                return Err(Violation("received more than the buffer"));
            }
            if stack.is_closed(id) {
                stack.remove(id);
            }
        }
        stack.poll(now);
        let mut out = 0;
        while stack.pop_transmit().is_some() {
            out += 1;
        }
        if out > 32 {
            return Err(Violation("transmit queue exceeded its bound"));
        }
        if stack.flow_count() > 8 {
            return Err(Violation("flow count exceeded its bound"));
        }
        now += Duration::from_millis(u64::from(flags & 0x1e) * 100);
    }
    Ok(opened)
}

/// Fills in the IPv4 and TCP checksums of a packet that parses as such.
fn fix_checksums(packet: &mut [u8]) {
    let Ok(mut ip) = Ipv4Packet::new_checked(&mut packet[..]) else {
        return;
    };
    ip.fill_checksum();
    if ip.next_header() != IpProtocol::Tcp {
        return;
    }
    let (src, dst) = (ip.src_addr(), ip.dst_addr());
    if let Ok(mut tcp) = TcpPacket::new_checked(ip.payload_mut()) {
        tcp.fill_checksum(&IpAddress::Ipv4(src), &IpAddress::Ipv4(dst));
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn syn(src_port: u16, dst_port: u16, flags: u8) -> Vec<u8> {
        let mut p = vec![0u8; 40];
        p[0] = 0x45;
        p[2..4].copy_from_slice(&40u16.to_be_bytes());
        p[8] = 64;
        p[9] = 6;
        p[12..16].copy_from_slice(&[100, 64, 0, 1]);
        p[16..20].copy_from_slice(&[100, 64, 0, 9]);
        p[20..22].copy_from_slice(&src_port.to_be_bytes());
        p[22..24].copy_from_slice(&dst_port.to_be_bytes());
        p[24..28].copy_from_slice(&1000u32.to_be_bytes());
        p[32] = 5 << 4;
        p[33] = flags;
        p[34..36].copy_from_slice(&8192u16.to_be_bytes());
        p
    }

    fn record(packet: &[u8], flags: u8) -> Vec<u8> {
        let mut r = (packet.len() as u16).to_le_bytes().to_vec();
        r.push(flags);
        r.extend_from_slice(packet);
        r
    }

    #[test]
    fn syns_open_flows_and_arbitrary_input_keeps_invariants() {
        let mut input = Vec::new();
        for port in 0..20u16 {
            input.extend(record(&syn(40000 + port, 80, 0x02), (port as u8) << 5));
        }
        input.extend(record(&syn(40001, 80, 0x10), 0x40));
        input.extend(record(&[0xff; 7], 0xff));
        // Flows are opened up to the limit, and closed ones make room for later SYNs.
        let opened = packets(&input).unwrap();
        assert!(opened >= 8, "opened {opened}");

        // The checksum fixer makes the SYN acceptable to the stack.
        let mut p = syn(1, 80, 0x02);
        fix_checksums(&mut p);
        assert!(crate::stack::tcp_syn(&p).is_some());

        // Pseudo-random inputs.
        let mut x: u32 = 0x1234_5678;
        for _ in 0..200 {
            let data: Vec<u8> = (0..600)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    (x >> 24) as u8
                })
                .collect();
            packets(&data).unwrap();
        }
    }
}
