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
        // The tunnel's dial succeeds at once.
        while let Some(f) = self.stack.poll_new_flow() {
            self.stack.accept_flow(f.id);
            self.flow = Some(f.id);
        }
        self.stack.poll(now);
        while self.stack.poll_ready().is_some() {}
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

// ------------------------------------------------------------------------------------------
// The engine at scale (issue 9 point 1): idle flows must not make a wake-up or a byte dearer.
// A virtual clock (1 us per packet-moving step, 1 ns per idle wake-up) keeps every idle flow's timers (keep-alive at 60 s) far away,
// so what is measured is the cost of the flows merely being open.

/// A client interface (the kernel's stand-in) on the virtual clock.
struct Kernel {
    iface: Interface,
    sockets: SocketSet<'static>,
    dev: Queue,
}

impl Kernel {
    fn new() -> Kernel {
        let mut dev = Queue::default();
        let mut cfg = Config::new(HardwareAddress::Ip);
        cfg.random_seed = 5;
        let mut iface = Interface::new(cfg, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|a| {
            let _ = a.push(IpCidr::new(IpAddress::v4(100, 64, 0, 1), 10));
        });
        let _ = iface
            .routes_mut()
            .add_default_ipv4_route(Ipv4Addr::new(100, 64, 0, 1));
        Kernel {
            iface,
            sockets: SocketSet::new(Vec::new()),
            dev,
        }
    }

    fn connect(&mut self, port: u16, buffer: usize) -> SocketHandle {
        let mut s = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0; buffer]),
            tcp::SocketBuffer::new(vec![0; buffer]),
        );
        s.set_ack_delay(None);
        s.set_nagle_enabled(false);
        s.connect(
            self.iface.context(),
            (IpAddress::v4(100, 64, 0, 9), 80),
            port,
        )
        .expect("connect");
        self.sockets.add(s)
    }
}

/// A tunnel stack with `idle` established, silent flows, plus a virtual clock.
struct Engine {
    stack: NetStack,
    epoch: Instant,
    micros: u64,
    /// Added to `micros`: an idle wake-up advances the clock 1 ns, so that hundreds of millions
    /// of them (a fast machine) stay far from the idle flows' keep-alive at 60 s.
    nanos: u64,
    next_port: u16,
}

impl Engine {
    fn now(&self) -> Instant {
        self.epoch
            + std::time::Duration::from_micros(self.micros)
            + std::time::Duration::from_nanos(self.nanos)
    }

    /// Moves packets between `k` and the stack until quiet; packets for other ports (the idle
    /// flows' kernel is gone) are dropped, as a kernel with no such socket would reset them
    /// otherwise.
    fn pump(&mut self, k: &mut Kernel, only_port: Option<u16>) -> Option<FlowId> {
        let mut opened = None;
        for _ in 0..64 {
            self.micros += 1;
            let now = self.now();
            let t = smoltcp::time::Instant::from_micros(self.micros as i64);
            k.iface.poll(t, &mut k.dev, &mut k.sockets);
            let mut moved = false;
            while let Some(p) = k.dev.tx.pop_front() {
                self.stack.receive_packet(&p, now, |_, _| true);
                moved = true;
            }
            self.stack.poll(now);
            while let Some(f) = self.stack.poll_new_flow() {
                self.stack.accept_flow(f.id);
                opened = Some(f.id);
            }
            self.stack.poll(now);
            while self.stack.poll_ready().is_some() {}
            while let Some(p) = self.stack.pop_transmit() {
                if only_port.is_none_or(|port| dst_port(&p) == Some(port)) {
                    k.dev.rx.push_back(p);
                    moved = true;
                }
            }
            if !moved {
                break;
            }
        }
        opened
    }

    fn with_idle(idle: usize) -> Engine {
        let epoch = Instant::now();
        let stack = NetStack::new(
            StackConfig {
                mtu: MTU,
                max_flows: idle + 16,
                max_rx_queue: 4096,
                max_tx_queue: 4096,
                ..StackConfig::default()
            },
            epoch,
            11,
        );
        let mut e = Engine {
            stack,
            epoch,
            micros: 0,
            nanos: 0,
            next_port: 1024,
        };
        // Open them 500 at a time, each batch with a kernel that is then dropped.
        let mut left = idle;
        while left > 0 {
            let batch = left.min(500);
            let mut k = Kernel::new();
            for _ in 0..batch {
                k.connect(e.next_port, 2048);
                e.next_port += 1;
            }
            e.pump(&mut k, None);
            left -= batch;
        }
        assert_eq!(e.stack.flow_count(), idle, "idle flows open");
        e
    }

    /// One new connection moving `TRANSFER` bytes client -> tunnel, then closed.
    fn one_stream(&mut self, data: &[u8], buf: &mut [u8]) -> usize {
        let mut k = Kernel::new();
        let port = self.next_port;
        self.next_port = self.next_port.wrapping_add(1).max(1024);
        let h = k.connect(port, 256 * 1024);
        let flow = self.pump(&mut k, Some(port)).expect("connected");
        let (mut sent, mut got) = (0, 0);
        while got < TRANSFER {
            let s = k.sockets.get_mut::<tcp::Socket>(h);
            if sent < TRANSFER && s.can_send() {
                sent += s
                    .send_slice(&data[..(TRANSFER - sent).min(data.len())])
                    .unwrap_or(0);
            }
            self.pump(&mut k, Some(port));
            while let Ok(n) = self.stack.recv(flow, buf) {
                if n == 0 {
                    break;
                }
                got += n;
            }
        }
        self.stack.abort(flow);
        self.pump(&mut k, Some(port));
        self.stack.remove(flow);
        got
    }
}

fn dst_port(packet: &[u8]) -> Option<u16> {
    let ip = smoltcp::wire::Ipv4Packet::new_checked(packet).ok()?;
    let tcp = smoltcp::wire::TcpPacket::new_checked(ip.payload()).ok()?;
    Some(tcp.dst_port())
}

/// Idle flows beside one stream (issue 9 point 1). `TUN_ENGINE_IDLE` (e.g. `10000,0,10000,0`)
/// sets which idle-flow counts run, in that order, in one process: the first case of a process
/// runs 10-15 % faster than the later ones whatever their idle flows, so compare neighbours.
fn engine(c: &mut Criterion) {
    let data = vec![0x5au8; 64 * 1024];
    let mut buf = vec![0u8; 64 * 1024];
    let order: Vec<usize> = std::env::var("TUN_ENGINE_IDLE")
        .ok()
        .map(|v| v.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![0, 1_000, 10_000]);
    for idle in order {
        let mut e = Engine::with_idle(idle);
        let mut g = c.benchmark_group("tun_engine");
        g.sample_size(20);
        g.bench_function(format!("idle_wakeup/{idle}_idle_flows"), |b| {
            b.iter(|| {
                e.nanos += 1;
                let now = e.now();
                let changed = e.stack.poll(now);
                while e.stack.poll_ready().is_some() {}
                black_box((changed, e.stack.poll_delay(now)))
            })
        });
        g.throughput(Throughput::Bytes(TRANSFER as u64));
        g.bench_function(format!("one_stream_4MiB/{idle}_idle_flows"), |b| {
            b.iter(|| black_box(e.one_stream(&data, &mut buf)))
        });
        g.finish();
        eprintln!("virtual clock after {idle} idle flows: {} us", e.micros);
        assert_eq!(e.stack.flow_count(), idle, "the idle flows stayed open");
    }
}

/// What a new connection adds outside the stack: its dial's app data (intercepting side) and
/// its target from a forwarding host config and that app data (hosting side). Once per
/// connection, never per packet.
fn per_connection(c: &mut Criterion) {
    use ziti_sdk::services::{InterceptV1, Protocol};
    use ziti_tunnel::app_data::{AppData, FlowAddrs};
    use ziti_tunnel::host_target::resolve;
    use ziti_tunnel::intercept::Intercept;

    let config: InterceptV1 = serde_json::from_str(
        r#"{"protocols":["tcp"],"addresses":["*.corp"],"portRanges":[{"low":1,"high":65535}],
            "sourceIp":"$src_ip:$src_port","dialOptions":{"identity":"$dst_hostname"}}"#,
    )
    .expect("intercept config");
    let intercept = Intercept::from_config("svc", &config);
    let flow = FlowAddrs {
        protocol: Protocol::Tcp,
        src: "100.64.0.1:40000".parse().expect("addr"),
        dst: "100.64.0.9:5432".parse().expect("addr"),
        hostname: Some("db.corp".into()),
    };
    let host = serde_json::from_str(
        r#"{"forwardProtocol":true,"allowedProtocols":["tcp","udp"],"forwardAddress":true,
            "allowedAddresses":["*.corp","10.0.0.0/8"],"forwardPort":true,
            "allowedPortRanges":[{"low":5432,"high":5432}]}"#,
    )
    .expect("host config");
    let mut g = c.benchmark_group("per_connection");
    g.bench_function("dial_app_data", |b| {
        b.iter(|| {
            let id = intercept.dial_identity_for(black_box(&flow));
            let json = intercept.app_data_for(black_box(&flow)).to_json();
            (id, json)
        })
    });
    let sent = intercept.app_data_for(&flow).to_json();
    g.bench_function("host_target", |b| {
        b.iter(|| {
            let app = AppData::parse(black_box(&sent)).ok()?;
            resolve(black_box(&host), &app).ok()
        })
    });
    g.finish();
}

criterion_group!(benches, up, syn_to_flow, engine, per_connection);
criterion_main!(benches);
