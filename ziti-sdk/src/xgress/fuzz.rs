//! Fuzz entry point for [`Circuit`]: arbitrary messages, application calls and time steps.

use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use crate::channel::{FrameDecoder, Headers, Limits, Message};

use super::messages::{
    Acknowledgement, Control, ControlType, Flags, Originator, Payload, PayloadHeaders, XgMessage,
    content_type, control_header, header, payload_header,
};
use super::{Circuit, Delivery, Options};

/// Small bounds so that the fuzzer reaches full buffers, closed windows and close timers.
fn fuzz_options() -> Options {
    Options {
        tx_portal_start_size: 4096,
        tx_portal_min_size: 512,
        tx_portal_max_size: 8192,
        tx_portal_increase_thresh: 4,
        tx_portal_retx_thresh: 4,
        tx_portal_dup_ack_thresh: 4,
        rx_buffer_size: 8192,
        retx_start: Duration::from_millis(50),
        retx_max: Duration::from_millis(2000),
        max_close_wait: Duration::from_millis(3000),
        close_linger: Duration::from_millis(300),
        circuit_start_timeout: Duration::from_millis(5000),
        max_payload_size: 2048,
        max_rx_payloads: 32,
        max_tx_payloads: 32,
        ..Options::default()
    }
}

const CIRCUIT: &str = "fz";

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn u8(&mut self) -> Option<u8> {
        let (b, rest) = self.0.split_first()?;
        self.0 = rest;
        Some(*b)
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8().unwrap_or(0), self.u8().unwrap_or(0)])
    }
    fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | (u32::from(self.u16()) << 16)
    }
    fn bytes(&mut self, max: usize) -> Bytes {
        let n = usize::from(self.u8().unwrap_or(0))
            .min(max)
            .min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Bytes::copy_from_slice(head)
    }
    /// Mostly small sequences near the start, sometimes anything.
    fn sequence(&mut self) -> i32 {
        let b = self.u8().unwrap_or(0);
        if b == 0xff {
            self.u32() as i32
        } else {
            i32::from(b) - 2
        }
    }
}

/// Feeds a [`Circuit`] with messages, application calls and time steps decoded from `data`,
/// checking invariants after every step: outgoing messages decode and survive channel framing,
/// buffers stay within their bounds, and after `handle_timeout(now)` the next timer is in the
/// future. Panics only on a real bug.
#[doc(hidden)]
pub fn fuzz_circuit(data: &[u8]) {
    let mut input = Input(data);
    let opts = fuzz_options();
    let base = Instant::now();
    let mut now = base;
    let originator = if input.u8().unwrap_or(0) & 1 == 0 {
        Originator::Initiator
    } else {
        Originator::Terminator
    };
    let peer = originator.invert();
    let unix_ms = u64::from(input.u32()) * 1000;
    let mut c = Circuit::new(CIRCUIT, 1, originator, opts, now, unix_ms);
    let mut sent: Vec<i32> = Vec::new();
    let mut delivered: u64 = 0;

    while let Some(op) = input.u8() {
        match op % 12 {
            0 => {
                now += Duration::from_millis(u64::from(input.u16() % 4000));
            }
            1 | 2 => {
                let mut flags = Flags(input.u32() & 0x7f);
                if op & 0x80 == 0 {
                    // Mostly from the right end, so that it is not dropped as a loop.
                    flags = Flags(flags.0 & !Flags::ORIGINATOR.0) | peer.flag();
                }
                let mut headers = PayloadHeaders::new();
                let hsel = input.u8().unwrap_or(0);
                if hsel & 1 != 0 {
                    headers.insert(payload_header::CAPABILITIES, input.bytes(6));
                }
                if hsel & 2 != 0 {
                    headers.insert(payload_header::EDGE_FLAGS, input.bytes(6));
                }
                if hsel & 4 != 0 {
                    headers.insert(input.u8().unwrap_or(0), input.bytes(8));
                }
                let p = Payload {
                    circuit_id: if hsel & 8 != 0 { "other" } else { CIRCUIT }.into(),
                    flags,
                    rtt: input.u16(),
                    sequence: input.sequence(),
                    headers,
                    data: if op % 12 == 2 {
                        Bytes::from(vec![op; usize::from(input.u16() % 3000)])
                    } else {
                        input.bytes(255)
                    },
                };
                let _ = c.handle_message(now, &p.to_message(Some(1)));
            }
            3 => {
                let n = usize::from(input.u8().unwrap_or(0) % 8);
                let sequences = (0..n).map(|_| input.sequence()).collect();
                let ack = Acknowledgement {
                    circuit_id: CIRCUIT.into(),
                    flags: peer.flag(),
                    recv_buffer_size: input.u32() % 20000,
                    rtt: input.u16(),
                    sequences,
                };
                let _ = c.handle_message(now, &ack.to_message(Some(1)));
            }
            4 => {
                // Acknowledge what we sent, like a well-behaved peer.
                let n = usize::from(input.u8().unwrap_or(0)).min(sent.len());
                let ack = Acknowledgement {
                    circuit_id: CIRCUIT.into(),
                    flags: peer.flag(),
                    recv_buffer_size: u32::from(input.u16()),
                    rtt: input.u16(),
                    sequences: sent.drain(..n).collect(),
                };
                let _ = c.handle_message(now, &ack.to_message(Some(1)));
            }
            5 => {
                // Arbitrary headers and body under an xgress (or other) content type.
                let ct = content_type::PAYLOAD + i32::from(input.u8().unwrap_or(0) % 5);
                let block = input.bytes(255);
                let headers = Headers::decode(&block, 64).unwrap_or_default();
                let mut m = Message::new(ct, input.bytes(255));
                m.headers = headers;
                let _ = c.handle_message(now, &m);
            }
            6 => {
                let mut headers = Headers::new();
                headers.put_u32(control_header::HOP_COUNT, input.u32());
                headers.put_u32(control_header::USER_VAL, input.u32());
                let ctrl = Control {
                    control_type: ControlType::from_byte(input.u8().unwrap_or(0) % 4),
                    circuit_id: CIRCUIT.into(),
                    headers,
                };
                let _ = c.handle_message(now, &ctrl.to_message());
            }
            7 => {
                let n = usize::from(input.u16() % 5000);
                let _ = c.send(Bytes::from(vec![0x5a; n]));
            }
            8 => {
                let max = usize::from(input.u16());
                while let Some(d) = c.read(max) {
                    match d {
                        Delivery::Data { data, .. } => delivered += data.len() as u64,
                        Delivery::Fin => break,
                    }
                }
            }
            9 => match input.u8().unwrap_or(0) % 8 {
                0 => c.abort(now),
                1 | 2 => c.close(now),
                3 => c.handle_router_closed(now),
                _ => c.finish(now),
            },
            10 => {
                // A frame from raw bytes, through the channel decoder.
                let raw = input.bytes(255);
                let mut buf = BytesMut::from(&raw[..]);
                if let Ok(Some(m)) = FrameDecoder::new(Limits::default()).decode(&mut buf) {
                    let _ = c.handle_message(now, &m);
                }
            }
            _ => while c.poll_event().is_some() {},
        }

        if c.poll_timeout().is_some_and(|t| t <= now) {
            c.handle_timeout(now);
            if let Some(t) = c.poll_timeout() {
                assert!(t > now, "timer at {t:?} not after handle_timeout({now:?})");
            }
        }
        drain(&mut c, now, &mut sent);
        check_bounds(&c, &opts);
    }
    let _ = delivered;
}

fn drain(c: &mut Circuit, now: Instant, sent: &mut Vec<i32>) {
    while let Some(m) = c.poll_transmit(now) {
        assert!(XgMessage::is_xgress(m.content_type), "{m:?}");
        // Whatever we send must frame, unframe, and decode.
        let bytes = m.to_bytes();
        assert!(bytes.is_ok(), "unencodable {m:?}");
        if let Ok(bytes) = bytes {
            let mut buf = BytesMut::from(&bytes[..]);
            let back = FrameDecoder::new(Limits::default()).decode(&mut buf);
            assert_eq!(back.ok().flatten().as_ref(), Some(&m));
        }
        let decoded = XgMessage::decode(&m);
        assert!(decoded.is_ok(), "undecodable {m:?}: {decoded:?}");
        if let Ok(XgMessage::Payload(p)) = decoded {
            assert_eq!(p.circuit_id, CIRCUIT);
            assert_eq!(m.headers.get_u32(header::CONN_ID), Some(1));
            if sent.len() < 4096 {
                sent.push(p.sequence);
            }
        }
    }
}

fn check_bounds(c: &Circuit, opts: &Options) {
    let s = c.stats();
    // Gap fillers are taken up to twice the buffer, plus one overshoot and one payload that
    // unblocks the reader; fuzz payloads carry at most 3000 bytes.
    assert!(
        s.recv_buffered <= 2 * u64::from(opts.rx_buffer_size) + 2 * 3000,
        "receive buffer {} over its bound",
        s.recv_buffered
    );
    assert!(
        s.unacked_bytes <= u64::from(opts.tx_portal_max_size) + opts.max_payload_size as u64,
        "send buffer {} over its bound",
        s.unacked_bytes
    );
    // Control payloads (start, capabilities, EOF/FIN, WriteFailed, CircuitEnd) bypass the
    // window.
    assert!(s.unacked_payloads <= opts.max_tx_payloads + 5);
    assert!(s.window >= opts.tx_portal_min_size.min(opts.tx_portal_start_size));
    assert!(s.window <= opts.tx_portal_max_size.max(opts.tx_portal_start_size));
}
