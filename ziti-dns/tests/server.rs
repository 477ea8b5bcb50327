//! The server end to end on loopback: interception, live updates, malformed
//! input, upstream answer matching and the in-flight bound.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, MessageType, ResponseCode};
use hickory_proto::rr::{RData, Record, RecordType, rdata::A};
use tokio::io::AsyncWriteExt;
use tokio::net::UdpSocket;
use ziti_dns::{DnsConfig, DnsServer, DnsTable, RunningServer, Upstreams};

fn config(upstreams: Vec<SocketAddr>) -> DnsConfig {
    DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        pool: "100.64.0.0/16".parse().unwrap(),
        upstreams: Upstreams::List(upstreams),
        upstream_timeout: Duration::from_millis(500),
        ..DnsConfig::default()
    }
}

async fn start(cfg: DnsConfig) -> (RunningServer, DnsTable) {
    let table = DnsTable::new(cfg.pool);
    table.set_names(["app.example", "*.corp.example"]).unwrap();
    (
        DnsServer::bind(&cfg, table.clone()).await.unwrap().spawn(),
        table,
    )
}

#[tokio::test]
async fn intercepted_names_over_udp_and_tcp() {
    let (srv, table) = start(config(vec![])).await;
    let addr = srv.local_addr();
    let app = table.resolve_name("app.example").unwrap();
    for (name, id) in [("app.example.", 1), ("APP.EXAMPLE.", 2)] {
        let m = udp_query(addr, &query_bytes(name, RecordType::A, id, None))
            .await
            .unwrap();
        assert_eq!((m.metadata.id, a_records(&m)), (id, vec![app]));
        let m = tcp_query(addr, &query_bytes(name, RecordType::A, id, Some(1232)))
            .await
            .unwrap();
        assert_eq!((m.metadata.id, a_records(&m)), (id, vec![app]));
        assert!(m.edns.is_some());
    }
    let w = udp_query(
        addr,
        &query_bytes("Host.Corp.Example.", RecordType::A, 3, None),
    )
    .await
    .unwrap();
    let w_ip = a_records(&w)[0];
    assert!(
        ziti_dns::Ipv4Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 16)
            .unwrap()
            .contains(w_ip)
    );
    assert_eq!(
        table.lookup_ip(w_ip.into()).as_deref(),
        Some("host.corp.example")
    );
    for t in [RecordType::AAAA, RecordType::MX, RecordType::HTTPS] {
        let m = udp_query(addr, &query_bytes("host.corp.example.", t, 4, None))
            .await
            .unwrap();
        assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{t}");
        assert!(m.answers.is_empty(), "{t}");
    }
    // No upstream configured: other names are refused.
    let m = udp_query(
        addr,
        &query_bytes("www.example.com.", RecordType::A, 5, None),
    )
    .await
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    srv.shutdown().await;
}

#[tokio::test]
async fn aaaa_from_the_ipv6_pool_over_udp_and_tcp() {
    let cfg = DnsConfig {
        ipv6_pool: Some("fd00:53::/64".parse().unwrap()),
        ..config(vec![])
    };
    let table = DnsTable::from_config(&cfg);
    table.set_names(["app.example", "*.corp.example"]).unwrap();
    let srv = DnsServer::bind(&cfg, table.clone()).await.unwrap().spawn();
    let addr = srv.local_addr();
    let app6 = table.resolve_name_v6("app.example").unwrap();
    let pool6: ziti_dns::Ipv6Cidr = "fd00:53::/64".parse().unwrap();
    assert!(pool6.contains(app6));
    let q = query_bytes("App.Example.", RecordType::AAAA, 21, None);
    let m = udp_query(addr, &q).await.unwrap();
    assert_eq!((m.metadata.id, aaaa_records(&m)), (21, vec![app6]));
    let m = tcp_query(addr, &q).await.unwrap();
    assert_eq!(aaaa_records(&m), vec![app6]);
    // A wildcard-covered name: AAAA first, then A, both held by the same name.
    let q = query_bytes("db.corp.example.", RecordType::AAAA, 22, Some(1232));
    let m = udp_query(addr, &q).await.unwrap();
    let w6 = aaaa_records(&m);
    assert_eq!(w6.len(), 1, "{m:?}");
    assert!(pool6.contains(w6[0]) && w6[0] != app6);
    let again = udp_query(addr, &q).await.unwrap();
    assert_eq!(aaaa_records(&again), w6, "stable");
    let m = udp_query(
        addr,
        &query_bytes("db.corp.example.", RecordType::A, 23, None),
    )
    .await
    .unwrap();
    let w4 = a_records(&m);
    assert_eq!(w4.len(), 1);
    for ip in [IpAddr::V6(w6[0]), IpAddr::V4(w4[0])] {
        assert_eq!(
            table.lookup_ip(ip).as_deref(),
            Some("db.corp.example"),
            "{ip}"
        );
    }
    srv.shutdown().await;
}

#[tokio::test]
async fn names_change_live() {
    let (srv, table) = start(config(vec![])).await;
    let addr = srv.local_addr();
    let q = query_bytes("new.example.", RecordType::A, 9, None);
    assert_eq!(
        udp_query(addr, &q).await.unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    let ip = table.add_name("new.example").unwrap().unwrap();
    assert_eq!(a_records(&udp_query(addr, &q).await.unwrap()), vec![ip]);
    assert!(table.remove_name("new.example").unwrap());
    assert_eq!(
        udp_query(addr, &q).await.unwrap().metadata.response_code,
        ResponseCode::Refused
    );
    table.set_names(["*.example"]).unwrap();
    let m = udp_query(addr, &q).await.unwrap();
    assert_eq!(a_records(&m).len(), 1);
    assert_eq!(
        table.lookup_ip(a_records(&m)[0].into()).as_deref(),
        Some("new.example")
    );
    srv.shutdown().await;
}

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_burst_leaves_the_server_answering() {
    let (srv, table) = start(config(vec![])).await;
    let addr = srv.local_addr();
    let sock = std::sync::Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    // Read replies while sending, so the client's socket buffer does not overflow.
    let reader = tokio::spawn({
        let sock = std::sync::Arc::clone(&sock);
        async move {
            let mut buf = vec![0u8; 65535];
            let mut formerr_seen = 0usize;
            // Replies until the server has been silent for 2 s (the burst is over).
            while let Ok(Ok((n, _))) =
                tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await
            {
                let m = Message::from_vec(&buf[..n]).expect("server replies always decode");
                assert_eq!(m.metadata.message_type, MessageType::Response);
                if m.metadata.id == 0xabcd {
                    assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
                    formerr_seen += 1;
                }
            }
            formerr_seen
        }
    });
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let valid = query_bytes("app.example.", RecordType::A, 0x7777, None);
    let mut formerr_expected = 0usize;
    for i in 0..5000usize {
        let packet = match i % 5 {
            0 => {
                let n = (rng.next() % 600) as usize;
                rng.bytes(n)
            }
            1 => {
                let n = (rng.next() % 12) as usize;
                rng.bytes(n)
            }
            2 => {
                // A valid query with a few bytes flipped.
                let mut p = valid.clone();
                for _ in 0..3 {
                    let at = (rng.next() as usize) % p.len();
                    p[at] ^= rng.next() as u8;
                }
                p
            }
            3 => {
                // Readable header, garbage question, QR=0: must get FORMERR.
                formerr_expected += 1;
                let mut p = vec![0xab, 0xcd, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
                p.extend_from_slice(&[0x3f; 8]);
                p
            }
            _ => {
                // Header claiming 65535 records of every kind.
                vec![0, 1, 1, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]
            }
        };
        sock.send_to(&packet, addr).await.unwrap();
        if i % 32 == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    let formerr_seen = reader.await.unwrap();
    // UDP on loopback may drop under a burst; most FORMERRs must arrive.
    assert!(
        formerr_seen * 2 > formerr_expected,
        "{formerr_seen} of {formerr_expected} FORMERR replies"
    );

    // Garbage over TCP closes that connection only.
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(&[0, 5, 1, 2, 3, 4, 5]).await.unwrap();
    drop(s);

    let ip = table.resolve_name("app.example").unwrap();
    let m = udp_query(addr, &valid).await.unwrap();
    assert_eq!((m.metadata.id, a_records(&m)), (0x7777, vec![ip]));
    let m = tcp_query(addr, &valid).await.unwrap();
    assert_eq!(a_records(&m), vec![ip]);
    srv.shutdown().await;
}

/// An upstream written in the test: records the id it saw, then sends a
/// spoofed answer from another port, a wrong-question answer, and the real one.
#[tokio::test]
async fn upstream_answers_match_on_address_id_and_question() {
    let upstream = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let spoofer = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let (srv, _table) = start(config(vec![upstream.local_addr().unwrap()])).await;
    let client_id = 0x6262;
    let (srv_addr, q) = (
        srv.local_addr(),
        query_bytes("real.test.", RecordType::A, client_id, None),
    );
    let client = tokio::spawn(async move { udp_query(srv_addr, &q).await });

    let mut buf = vec![0u8; 2048];
    let (n, forwarder) = upstream.recv_from(&mut buf).await.unwrap();
    let q = Message::from_vec(&buf[..n]).unwrap();
    assert_ne!(
        q.metadata.id, client_id,
        "the client's id must not be reused upstream"
    );
    let answer = |ip: [u8; 4], name: &str| {
        let mut m = Message::response(q.metadata.id, q.metadata.op_code);
        let mut query = q.queries[0].clone();
        query.name = hickory_proto::rr::Name::from_ascii(name).unwrap();
        m.add_query(query.clone());
        m.add_answer(Record::from_rdata(query.name, 60, RData::A(A(ip.into()))));
        m.to_vec().unwrap()
    };
    // Right id and question, wrong source port: ignored.
    spoofer
        .send_to(&answer([6, 6, 6, 6], "real.test."), forwarder)
        .await
        .unwrap();
    // Right source and id, other question: ignored.
    upstream
        .send_to(&answer([7, 7, 7, 7], "other.test."), forwarder)
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // The real answer, with 0x20-style case change.
    upstream
        .send_to(&answer([1, 2, 3, 4], "REAL.test."), forwarder)
        .await
        .unwrap();

    let m = client.await.unwrap().unwrap();
    assert_eq!(m.metadata.id, client_id);
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(1, 2, 3, 4)]);
    srv.shutdown().await;
}

#[tokio::test]
async fn excess_forwarded_queries_get_servfail_at_once() {
    // An upstream that never answers, and room for one query in flight.
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let cfg = DnsConfig {
        max_in_flight: 1,
        upstream_timeout: Duration::from_secs(12),
        ..config(vec![silent.local_addr().unwrap()])
    };
    let (srv, table) = start(cfg).await;
    let addr = srv.local_addr();
    let q = query_bytes("slow.test.", RecordType::A, 1, None);
    let first = tokio::spawn(async move { udp_query(addr, &q).await });
    // Wait until the first query reached the upstream (so it holds the slot).
    let mut buf = [0u8; 512];
    silent.recv_from(&mut buf).await.unwrap();
    let started = Instant::now();
    let m = udp_query(addr, &query_bytes("second.test.", RecordType::A, 2, None))
        .await
        .unwrap();
    assert_eq!(
        (m.metadata.id, m.metadata.response_code),
        (2, ResponseCode::ServFail)
    );
    // At once, not after the 12 s upstream timeout (generous for a loaded machine).
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "{:?}",
        started.elapsed()
    );
    // Intercepted names are answered regardless of the forwarding limit.
    let m = udp_query(addr, &query_bytes("app.example.", RecordType::A, 3, None))
        .await
        .unwrap();
    assert_eq!(
        a_records(&m),
        vec![table.resolve_name("app.example").unwrap()]
    );
    first.abort();
    srv.shutdown().await;
}

#[tokio::test]
async fn refuses_wildcard_listen_address() {
    let cfg = DnsConfig {
        listen: "0.0.0.0:0".parse().unwrap(),
        ..config(vec![])
    };
    let err = DnsServer::bind(&cfg, DnsTable::new(cfg.pool))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("unspecified"), "{err}");
}
