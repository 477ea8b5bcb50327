//! ziti-dns: answers per second from the sans-IO core (no sockets).
//!
//! `cargo bench -p ziti-benches --bench dns_core -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::net::Ipv4Addr;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RecordType};
use ziti_dns::{AnswerPolicy, DnsCore, DnsTable, Ipv4Cidr, Outcome};

fn query(name: &str, rtype: RecordType, edns: bool) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.id = 0x1234;
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
    if edns {
        m.set_edns(Edns::new());
    }
    m.to_vec().unwrap()
}

fn core() -> DnsCore {
    let table = DnsTable::new(Ipv4Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 10).unwrap());
    // A realistic table: a few thousand services, some wildcards.
    for i in 0..2000 {
        table.add_name(&format!("svc{i}.ziti.example")).unwrap();
    }
    for i in 0..50 {
        table.add_name(&format!("*.dom{i}.corp.example")).unwrap();
    }
    DnsCore::new(table, AnswerPolicy::default())
}

fn bench(c: &mut Criterion) {
    let core = core();
    let cases = [
        (
            "exact_a",
            query("svc1234.ziti.example.", RecordType::A, false),
        ),
        (
            "exact_a_edns",
            query("svc1234.ziti.example.", RecordType::A, true),
        ),
        (
            "wildcard_a",
            query("host7.dom42.corp.example.", RecordType::A, false),
        ),
        (
            "exact_aaaa_empty",
            query("svc1234.ziti.example.", RecordType::AAAA, false),
        ),
        (
            "forward_decision",
            query("www.example.com.", RecordType::A, false),
        ),
        (
            "formerr",
            vec![0x12, 0x34, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x3f, 1, 2],
        ),
    ];
    // Sanity: the measured paths do what their names say.
    assert!(
        matches!(core.handle(&cases[0].1), Outcome::Reply(r) if r.ends_with(&core.table().resolve_name("svc1234.ziti.example").unwrap().octets()))
    );
    assert!(matches!(core.handle(&cases[2].1), Outcome::Reply(_)));
    assert!(matches!(core.handle(&cases[4].1), Outcome::Forward(_)));
    let mut g = c.benchmark_group("dns_core");
    g.throughput(Throughput::Elements(1));
    for (name, packet) in &cases {
        g.bench_function(*name, |b| {
            b.iter(|| black_box(core.handle(black_box(packet))))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
