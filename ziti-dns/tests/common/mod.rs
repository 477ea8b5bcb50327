//! Test helpers: a dnsmasq child process on loopback and small DNS client calls.
#![allow(dead_code)]

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hickory_proto::op::{Edns, Message, MessageType, Query};
use hickory_proto::rr::{Name, RData, RecordType};

/// A free loopback port for both UDP and TCP (free at the time of the call).
pub fn free_port() -> u16 {
    for _ in 0..50 {
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = udp.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port");
}

/// A loopback address where nothing listens (UDP datagrams vanish).
pub fn dead_upstream() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], free_port()))
}

/// A dnsmasq process serving local records on 127.0.0.1; killed on drop.
pub struct Dnsmasq {
    child: Child,
    pub addr: SocketAddr,
    pid_file: std::path::PathBuf,
}

impl Dnsmasq {
    /// Starts dnsmasq with `records` options (e.g. `--address=/a.test/10.0.0.1`) and
    /// waits until it answers. Fails the test, not skips it, if dnsmasq is missing.
    pub fn start(records: &[String]) -> anyhow::Result<Self> {
        let binary = ["dnsmasq", "/usr/sbin/dnsmasq"]
            .into_iter()
            .find(|b| {
                Command::new(b)
                    .arg("--version")
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok()
            })
            .unwrap_or_else(|| {
                panic!(
                    "dnsmasq is not installed: run `apt-get install dnsmasq` (these tests need it)"
                )
            });
        let port = free_port();
        let pid_file = std::env::temp_dir().join(format!(
            "ziti-dns-test-dnsmasq-{}-{port}.pid",
            std::process::id()
        ));
        let mut cmd = Command::new(binary);
        cmd.args([
            "--keep-in-foreground",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
            "--log-facility=-",
        ])
        .arg(format!("--port={port}"))
        .arg(format!("--pid-file={}", pid_file.display()))
        .args(records)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().context("spawning dnsmasq")?;
        let mut me = Self {
            child,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            pid_file,
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let sock = UdpSocket::bind("127.0.0.1:0")?;
        sock.set_read_timeout(Some(Duration::from_millis(100)))?;
        let probe = query_bytes("ready.probe.", RecordType::A, 1, None);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                bail!("dnsmasq exited early with {status}");
            }
            sock.send_to(&probe, self.addr)?;
            let mut buf = [0u8; 512];
            if sock.recv_from(&mut buf).is_ok() {
                return Ok(());
            }
        }
        bail!("dnsmasq did not answer on {} within 30 s", self.addr)
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.pid_file);
    }
}

/// A query packet; `edns` sets an OPT record with that UDP size.
pub fn query_bytes(name: &str, rtype: RecordType, id: u16, edns: Option<u16>) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = id;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        m.set_edns(e);
    }
    m.to_vec().unwrap()
}

/// Sends one UDP query and waits for the reply.
pub async fn udp_query(server: SocketAddr, packet: &[u8]) -> anyhow::Result<Message> {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    sock.send_to(packet, server).await?;
    let mut buf = vec![0u8; 65535];
    let (n, from) = tokio::time::timeout(Duration::from_secs(15), sock.recv_from(&mut buf))
        .await
        .context("no UDP reply within 15 s")??;
    anyhow::ensure!(from == server, "reply from {from}");
    Ok(Message::from_vec(&buf[..n])?)
}

/// Sends one TCP query and reads the reply.
pub async fn tcp_query(server: SocketAddr, packet: &[u8]) -> anyhow::Result<Message> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server).await?;
    let mut frame = (packet.len() as u16).to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    s.write_all(&frame).await?;
    let reply = async {
        let len = s.read_u16().await?;
        let mut buf = vec![0u8; usize::from(len)];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf)
    };
    let buf = tokio::time::timeout(Duration::from_secs(15), reply)
        .await
        .context("no TCP reply within 15 s")??;
    Ok(Message::from_vec(&buf)?)
}

/// The A addresses of a reply.
pub fn a_records(m: &Message) -> Vec<Ipv4Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// The AAAA addresses of a reply.
pub fn aaaa_records(m: &Message) -> Vec<Ipv6Addr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

/// Number of TXT records of a reply.
pub fn txt_count(m: &Message) -> usize {
    m.answers
        .iter()
        .filter(|r| matches!(r.data, RData::TXT(_)))
        .count()
}

/// Asserts it is a response (QR=1).
pub fn is_response(m: &Message) -> bool {
    m.metadata.message_type == MessageType::Response
}
