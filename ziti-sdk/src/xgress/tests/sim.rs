//! The simulated network: links between two sets of circuit ends, applications on top, and a
//! virtual clock that jumps to the next due event.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};

use super::{Rng, UNIX_MS};
use crate::channel::{FrameDecoder, Limits, Message};
use crate::xgress::messages::{content_type, header};
use crate::xgress::*;

/// Decides to drop a message on a link (targeted loss).
pub(super) type DropFilter = Box<dyn FnMut(&Message) -> bool>;

/// One direction: the routers between the two circuit ends. Messages cross the channel framing
/// (encode, decode), wait `latency` plus up to `jitter` (so they reorder), and are dropped or
/// duplicated at the given rates. Close (1103) is consumed, as the router does.
pub(super) struct Link {
    pub(super) queue: BinaryHeap<Reverse<(Instant, u64, Vec<u8>)>>,
    pub(super) order: u64,
    pub(super) rng: Rng,
    pub(super) latency: Duration,
    pub(super) jitter_us: u64,
    pub(super) loss: u64,
    pub(super) dup: u64,
    pub(super) drop_filter: Option<DropFilter>,
    /// Like a router's `Payload.Marshall`: re-stamp forwarded payloads with the router's Unix
    /// clock, this many ms off ours.
    pub(super) restamp_skew_ms: Option<i64>,
    pub(super) start: Option<Instant>,
    pub(super) closes: usize,
    pub(super) sent: usize,
}

impl Link {
    pub(super) fn new(seed: u64, latency: Duration, jitter: Duration, loss: u64, dup: u64) -> Self {
        Self {
            queue: BinaryHeap::new(),
            order: 0,
            rng: Rng(seed | 1),
            latency,
            jitter_us: jitter.as_micros() as u64,
            loss,
            dup,
            drop_filter: None,
            restamp_skew_ms: None,
            start: None,
            closes: 0,
            sent: 0,
        }
    }

    pub(super) fn send(&mut self, now: Instant, m: Message) {
        self.sent += 1;
        if m.content_type == content_type::CLOSE {
            self.closes += 1;
            return;
        }
        if let Some(f) = self.drop_filter.as_mut()
            && f(&m)
        {
            return;
        }
        if self.rng.per_mille(self.loss) {
            return;
        }
        let mut m = m;
        if let (Some(skew), Some(start), content_type::PAYLOAD) =
            (self.restamp_skew_ms, self.start, m.content_type)
        {
            let router_ms = UNIX_MS as i64 + (now - start).as_millis() as i64 + skew;
            m.headers.put_u16(header::RTT, router_ms as u16);
        }
        let bytes = m.to_bytes().unwrap().to_vec();
        let copies = if self.rng.per_mille(self.dup) { 2 } else { 1 };
        for _ in 0..copies {
            let jitter = if self.jitter_us > 0 {
                self.rng.next() % self.jitter_us
            } else {
                0
            };
            let at = now + self.latency + Duration::from_micros(jitter);
            self.order += 1;
            self.queue.push(Reverse((at, self.order, bytes.clone())));
        }
    }

    pub(super) fn next_due(&self) -> Option<Instant> {
        self.queue.peek().map(|Reverse((t, _, _))| *t)
    }

    pub(super) fn pop_due(&mut self, now: Instant) -> Option<Message> {
        if self.next_due()? > now {
            return None;
        }
        let Reverse((_, _, bytes)) = self.queue.pop()?;
        let mut buf = BytesMut::from(&bytes[..]);
        Some(
            FrameDecoder::new(Limits::default())
                .decode(&mut buf)
                .unwrap()
                .unwrap(),
        )
    }
}

/// The application on one end of one circuit.
#[derive(Default)]
pub(super) struct App {
    pub(super) to_send: Vec<u8>,
    pub(super) sent: usize,
    pub(super) finish_when_sent: bool,
    pub(super) finished: bool,
    pub(super) reading: bool,
    pub(super) received: Vec<u8>,
    pub(super) fin: bool,
    pub(super) events: Vec<Event>,
}

/// Circuit pairs (`a` dials, `b` hosts) sharing one link per direction, dispatched by conn id
/// (header 1000) like a router connection does.
pub(super) struct Net {
    pub(super) now: Instant,
    pub(super) a: Vec<(Circuit, App)>,
    pub(super) b: Vec<(Circuit, App)>,
    pub(super) ab: Link,
    pub(super) ba: Link,
}

impl Net {
    pub(super) fn new(pairs: usize, opts: Options, mut ab: Link, mut ba: Link) -> Self {
        let now = Instant::now();
        ab.start = Some(now);
        ba.start = Some(now);
        let mk = |o: Originator| {
            (0..pairs)
                .map(|i| {
                    let c = Circuit::new(format!("circuit-{i}"), i as u32, o, opts, now, UNIX_MS);
                    (
                        c,
                        App {
                            reading: true,
                            ..App::default()
                        },
                    )
                })
                .collect::<Vec<_>>()
        };
        Net {
            now,
            a: mk(Originator::Initiator),
            b: mk(Originator::Terminator),
            ab,
            ba,
        }
    }

    fn conn_of(m: &Message) -> usize {
        m.headers.get_u32(header::CONN_ID).unwrap() as usize
    }

    /// Does everything that is due now; returns whether anything happened.
    fn turn(&mut self) -> bool {
        let now = self.now;
        let mut busy = false;
        for (side, link) in [(&mut self.a, &mut self.ab), (&mut self.b, &mut self.ba)] {
            for (c, app) in side.iter_mut() {
                busy |= drive_app(c, app, now);
                while let Some(m) = c.poll_transmit(now) {
                    link.send(now, m);
                    busy = true;
                }
                if c.poll_timeout().is_some_and(|t| t <= now) {
                    c.handle_timeout(now);
                    busy = true;
                }
            }
        }
        while let Some(m) = self.ab.pop_due(now) {
            let (c, _) = &mut self.b[Self::conn_of(&m)];
            c.handle_message(now, &m).unwrap();
            busy = true;
        }
        while let Some(m) = self.ba.pop_due(now) {
            let (c, _) = &mut self.a[Self::conn_of(&m)];
            c.handle_message(now, &m).unwrap();
            busy = true;
        }
        busy
    }

    fn next_time(&self) -> Option<Instant> {
        let circuits = self
            .a
            .iter()
            .chain(self.b.iter())
            .map(|(c, _)| c.poll_timeout());
        circuits
            .chain([self.ab.next_due(), self.ba.next_due()])
            .flatten()
            .min()
    }

    /// Runs until `done` holds or `limit` of virtual time passes; returns whether `done` held.
    pub(super) fn run_until(
        &mut self,
        limit: Duration,
        mut done: impl FnMut(&Net) -> bool,
    ) -> bool {
        let end = self.now + limit;
        for _ in 0..2_000_000 {
            while self.turn() {}
            if done(self) {
                return true;
            }
            match self.next_time() {
                Some(t) if t <= end => self.now = self.now.max(t),
                _ => {
                    self.now = end;
                    return done(self);
                }
            }
        }
        panic!("simulation did not settle");
    }
}

/// One step of an application: write what it can, read what it may.
pub(super) fn drive_app(c: &mut Circuit, app: &mut App, now: Instant) -> bool {
    let mut busy = false;
    while let Some(e) = c.poll_event() {
        app.events.push(e);
        busy = true;
    }
    while app.sent < app.to_send.len() {
        let end = app.to_send.len().min(app.sent + 64 * 1024);
        let chunk = Bytes::copy_from_slice(&app.to_send[app.sent..end]);
        match c.send(chunk) {
            Ok(n) => {
                app.sent += n;
                busy = true;
            }
            Err(SendError::Blocked) => break,
            Err(e) => panic!("send failed: {e}"),
        }
    }
    if app.finish_when_sent && !app.finished && app.sent == app.to_send.len() {
        c.finish(now);
        app.finished = true;
        busy = true;
    }
    if app.reading && !app.fin {
        while let Some(d) = c.read(16 * 1024) {
            busy = true;
            match d {
                Delivery::Data { data, .. } => app.received.extend_from_slice(&data),
                Delivery::Fin => {
                    app.fin = true;
                    break;
                }
            }
        }
    }
    busy
}
