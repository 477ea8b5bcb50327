#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Packet path throughput: bytes from a TCP client through `ziti_tunnel::stack::NetStack` (the
//! smoltcp stack behind the TUN) until the tunnel has read them, and back. The client is a
//! second smoltcp interface standing in for the kernel; packets move in memory, so the figure
//! is the two stacks' CPU cost per byte (the kernel's and the TUN's costs come on top).

use std::collections::VecDeque;
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::time::Instant;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use smoltcp::iface::{Config, Interface, SocketHandle, SocketSet};
use smoltcp::phy::{self, Device, DeviceCapabilities, Medium};
use smoltcp::socket::tcp;
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr};
use ziti_tunnel::stack::{FlowId, NetStack, StackConfig};

const TRANSFER: usize = 4 * 1024 * 1024;
const MTU: usize = 9000;

#[derive(Default)]
struct Queue {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
}
struct Rx(Vec<u8>);
struct Tx<'a>(&'a mut VecDeque<Vec<u8>>);
impl phy::RxToken for Rx {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}
impl phy::TxToken for Tx<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut b = vec![0; len];
        let r = f(&mut b);
        self.0.push_back(b);
        r
    }
}
impl Device for Queue {
    type RxToken<'a> = Rx;
    type TxToken<'a> = Tx<'a>;
    fn receive(&mut self, _: smoltcp::time::Instant) -> Option<(Rx, Tx<'_>)> {
        let p = self.rx.pop_front()?;
        Some((Rx(p), Tx(&mut self.tx)))
    }
    fn transmit(&mut self, _: smoltcp::time::Instant) -> Option<Tx<'_>> {
        Some(Tx(&mut self.tx))
    }
    fn capabilities(&self) -> DeviceCapabilities {
        let mut c = DeviceCapabilities::default();
        c.medium = Medium::Ip;
        c.max_transmission_unit = MTU;
        c
    }
}

struct Pair {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Queue,
    client: SocketHandle,
    stack: NetStack,
    flow: Option<FlowId>,
    epoch: Instant,
}

impl Pair {
    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.epoch.elapsed().as_micros() as i64)
    }

    fn pump(&mut self) {
        let t = self.now();
        self.iface.poll(t, &mut self.dev, &mut self.sockets);
        let now = Instant::now();
        while let Some(p) = self.dev.tx.pop_front() {
            self.stack.receive_packet(&p, now, |_, _| true);
        }
        self.stack.poll(now);
        while let Some(p) = self.stack.pop_transmit() {
            self.dev.rx.push_back(p);
        }
    }

    fn connected() -> Pair {
        let epoch = Instant::now();
        let mut dev = Queue::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = 3;
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(100, 64, 0, 1), 10));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(100, 64, 0, 1));
        let mut sockets = SocketSet::new(Vec::new());
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
            tcp::SocketBuffer::new(vec![0; 256 * 1024]),
        );
        s.set_ack_delay(None);
        s.set_nagle_enabled(false);
        s.connect(iface.context(), (IpAddress::v4(100, 64, 0, 9), 80), 40000)
            .expect("connect");
        let client = sockets.add(s);
        let stack = NetStack::new(
            StackConfig {
                mtu: MTU,
                ..StackConfig::default()
            },
            epoch,
            7,
        );
        let mut pair = Pair {
            iface,
            sockets,
            dev,
            client,
            stack,
            flow: None,
            epoch,
        };
        for _ in 0..10 {
            pair.pump();
        }
        pair.flow = pair.stack.poll_new_flow().map(|f| f.id);
        pair
    }
}

fn up(c: &mut Criterion) {
    let mut g = c.benchmark_group("tun_stack");
    g.throughput(Throughput::Bytes(TRANSFER as u64));
    g.sample_size(20);
    let data = vec![0x5au8; 64 * 1024];
    g.bench_function("client_to_tunnel_4MiB", |b| {
        b.iter_batched(
            Pair::connected,
            |mut p| {
                let flow = p.flow.expect("connected");
                let mut sent = 0;
                let mut got = 0;
                let mut buf = vec![0u8; 64 * 1024];
                while got < TRANSFER {
                    let s = p.sockets.get_mut::<tcp::Socket>(p.client);
                    if sent < TRANSFER && s.can_send() {
                        sent += s
                            .send_slice(&data[..(TRANSFER - sent).min(data.len())])
                            .unwrap_or(0);
                    }
                    p.pump();
                    while let Ok(n) = p.stack.recv(flow, &mut buf) {
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                }
                black_box(got)
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("tunnel_to_client_4MiB", |b| {
        b.iter_batched(
            Pair::connected,
            |mut p| {
                let flow = p.flow.expect("connected");
                let mut sent = 0;
                let mut got = 0;
                let mut buf = vec![0u8; 64 * 1024];
                while got < TRANSFER {
                    if sent < TRANSFER {
                        sent += p
                            .stack
                            .send(flow, &data[..(TRANSFER - sent).min(data.len())])
                            .unwrap_or(0);
                    }
                    p.pump();
                    let s = p.sockets.get_mut::<tcp::Socket>(p.client);
                    while let Ok(n) = s.recv_slice(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        got += n;
                    }
                }
                black_box(got)
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

fn syn_to_flow(c: &mut Criterion) {
    let mut g = c.benchmark_group("tun_stack");
    g.bench_function("connection_setup", |b| {
        b.iter(|| black_box(Pair::connected().flow));
    });
    g.finish();
}

criterion_group!(benches, up, syn_to_flow);
criterion_main!(benches);
