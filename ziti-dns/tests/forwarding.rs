//! Forwarding against a real resolver: dnsmasq on loopback, started by each test.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use ziti_dns::{
    AnswerPolicy, ClientTransport, DnsConfig, DnsCore, DnsServer, DnsTable, Forwarder, Ipv4Cidr,
    Outcome, Upstreams,
};

const TXT_RECORDS: usize = 8;

fn dnsmasq() -> Dnsmasq {
    let mut records = vec!["--address=/fwd.test/10.1.2.3".to_owned()];
    // Eight 200-byte TXT records: ~1.8 KB, far over the 512-byte UDP limit.
    for i in 0..TXT_RECORDS {
        records.push(format!("--txt-record=big.test,{}{}", i, "x".repeat(200)));
    }
    Dnsmasq::start(&records).expect("start dnsmasq")
}

fn config(upstreams: Vec<SocketAddr>, timeout: Duration) -> DnsConfig {
    DnsConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        pool: "100.64.0.0/24".parse().unwrap(),
        upstreams: Upstreams::List(upstreams),
        upstream_timeout: timeout,
        ..DnsConfig::default()
    }
}

async fn server(
    upstreams: Vec<SocketAddr>,
    timeout: Duration,
) -> (ziti_dns::RunningServer, DnsTable) {
    let cfg = config(upstreams, timeout);
    let table = DnsTable::new(cfg.pool);
    table.add_name("app.example").unwrap();
    let server = DnsServer::bind(&cfg, table.clone()).await.unwrap().spawn();
    (server, table)
}

#[tokio::test]
async fn forwards_other_names_and_answers_intercepted_ones() {
    let upstream = dnsmasq();
    let (srv, table) = server(vec![upstream.addr], Duration::from_secs(2)).await;
    let addr = srv.local_addr();

    let m = udp_query(addr, &query_bytes("fwd.test.", RecordType::A, 0x1111, None))
        .await
        .unwrap();
    assert_eq!(
        m.metadata.id, 0x1111,
        "upstream id rewritten back to the client's"
    );
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 1, 2, 3)]);

    let m = tcp_query(addr, &query_bytes("FWD.test.", RecordType::A, 0x2222, None))
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 0x2222);
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 1, 2, 3)]);

    let m = udp_query(addr, &query_bytes("app.example.", RecordType::A, 3, None))
        .await
        .unwrap();
    assert_eq!(
        a_records(&m),
        vec![table.resolve_name("app.example").unwrap()]
    );

    // dnsmasq has no data for this one and no upstream of its own: it refuses,
    // which counts as a failed upstream, so the client gets SERVFAIL.
    let m = udp_query(addr, &query_bytes("unknown.test.", RecordType::A, 4, None))
        .await
        .unwrap();
    assert_eq!(m.metadata.id, 4);
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    srv.shutdown().await;
}

#[tokio::test]
async fn truncated_udp_answer_is_retried_over_tcp() {
    let upstream = dnsmasq();
    let query = query_bytes("big.test.", RecordType::TXT, 0x3333, None);

    // The setup really truncates: dnsmasq's own UDP answer has TC=1.
    let direct = udp_query(upstream.addr, &query).await.unwrap();
    assert!(
        direct.metadata.truncation,
        "dnsmasq should truncate a ~1.8 KB answer over UDP"
    );
    assert!(txt_count(&direct) < TXT_RECORDS);

    // The forwarder alone: UDP gets TC, so it asks again over TCP and returns the whole answer.
    let table = DnsTable::new(Ipv4Cidr::DEFAULT);
    let core = DnsCore::new(table, AnswerPolicy::default());
    let Outcome::Forward(req) = core.handle(&query) else {
        panic!("should forward")
    };
    let fwd = Forwarder::new(vec![upstream.addr], Duration::from_secs(2), 16)
        .await
        .unwrap();
    let answer = fwd.resolve(&req, ClientTransport::Udp).await.unwrap();
    let m = hickory_proto::op::Message::from_vec(&answer).unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(m.metadata.id, 0x3333);
    assert_eq!(txt_count(&m), TXT_RECORDS);
    assert!(answer.len() > 512);

    // Through the server: a UDP client without EDNS gets TC=1 (the answer is too
    // big for it), then the same query over TCP gets everything.
    let (srv, _table) = server(vec![upstream.addr], Duration::from_secs(2)).await;
    let m = udp_query(srv.local_addr(), &query).await.unwrap();
    assert!(m.metadata.truncation);
    assert_eq!(m.metadata.id, 0x3333);
    let m = tcp_query(srv.local_addr(), &query).await.unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(txt_count(&m), TXT_RECORDS);
    // A UDP client announcing 4096 bytes of EDNS gets the whole answer over UDP.
    let m = udp_query(
        srv.local_addr(),
        &query_bytes("big.test.", RecordType::TXT, 5, Some(4096)),
    )
    .await
    .unwrap();
    assert!(!m.metadata.truncation);
    assert_eq!(txt_count(&m), TXT_RECORDS);
    srv.shutdown().await;
}

#[tokio::test]
async fn fails_over_from_a_dead_first_upstream() {
    let upstream = dnsmasq();
    let timeout = Duration::from_millis(300);
    let (srv, _table) = server(vec![dead_upstream(), upstream.addr], timeout).await;
    let started = Instant::now();
    let m = udp_query(
        srv.local_addr(),
        &query_bytes("fwd.test.", RecordType::A, 0x4444, None),
    )
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 1, 2, 3)]);
    assert!(
        took >= timeout,
        "the dead upstream was tried first ({took:?})"
    );
    // Given up on after its timeout, not tried again and again (generous for a loaded machine).
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Over TCP too (connection refused, then the next upstream).
    let m = tcp_query(
        srv.local_addr(),
        &query_bytes("fwd.test.", RecordType::A, 0x4545, None),
    )
    .await
    .unwrap();
    assert_eq!(a_records(&m), vec![Ipv4Addr::new(10, 1, 2, 3)]);
    srv.shutdown().await;
}

#[tokio::test]
async fn servfail_when_every_upstream_fails() {
    let (srv, _table) = server(
        vec![dead_upstream(), dead_upstream()],
        Duration::from_millis(200),
    )
    .await;
    let m = udp_query(
        srv.local_addr(),
        &query_bytes("fwd.test.", RecordType::A, 0x5555, None),
    )
    .await
    .unwrap();
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(m.metadata.id, 0x5555);
    assert_eq!(m.queries.len(), 1);
    srv.shutdown().await;
}
