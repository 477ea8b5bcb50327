//! Fuzzing entry points, shared by the cargo-fuzz targets in `fuzz/` and by
//! ordinary tests (so CI exercises them without cargo-fuzz).
//!
//! Each takes arbitrary bytes, runs them through a real code path and checks
//! invariants; a violated invariant is returned as an error for the caller
//! to turn into a crash.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::OnceLock;

use hickory_proto::op::{Message, Query};
use hickory_proto::rr::{Name, RData, RecordType};

use crate::answer::{AnswerPolicy, DnsCore, Outcome};
use crate::pool::Ipv4Cidr;
use crate::pool6::Ipv6Cidr;
use crate::table::DnsTable;
use crate::upstream::{AnswerMatch, PendingTable, answer_matches};
use crate::wire::{self, Question, RawHeader};

/// An invariant the fuzzed code broke.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("fuzz invariant violated: {0}")]
pub struct Violation(pub &'static str);

fn check(ok: bool, what: &'static str) -> Result<(), Violation> {
    if ok { Ok(()) } else { Err(Violation(what)) }
}

/// The IPv4 pool of both fuzzed tables: small, so exhaustion (SERVFAIL) is reached too.
fn pool4() -> Ipv4Cidr {
    Ipv4Cidr::new(Ipv4Addr::new(100, 64, 0, 0), 22).unwrap_or_default()
}

/// The IPv6 pool of the dual-stack table: smaller than the IPv4 one, so that
/// its own exhaustion is reached as well.
fn pool6() -> Ipv6Cidr {
    Ipv6Cidr::new(Ipv6Addr::new(0xfd7a, 0x7a7a, 0x7a7a, 0, 0, 0, 0, 0), 120).unwrap_or_default()
}

fn core_with(table: DnsTable) -> DnsCore {
    // Constant, valid names: cannot fail.
    let _ = table.set_names(["app.example", "*.corp.example", "a"]);
    DnsCore::new(table, AnswerPolicy::default())
}

/// The cores every input runs through: IPv4 only, and with an IPv6 pool.
fn cores() -> [&'static DnsCore; 2] {
    static V4: OnceLock<DnsCore> = OnceLock::new();
    static DUAL: OnceLock<DnsCore> = OnceLock::new();
    [
        V4.get_or_init(|| core_with(DnsTable::new(pool4()))),
        DUAL.get_or_init(|| core_with(DnsTable::with_ipv6_pool(pool4(), pool6()))),
    ]
}

/// Query handling through the cores: replies must decode and carry the query's id,
/// an answer record must be the queried A or AAAA, from the table's pool and
/// held by a name; only headerless input or responses may be dropped, forwards
/// keep the query.
pub fn query(data: &[u8]) -> Result<(), Violation> {
    for core in cores() {
        query_core(core, data)?;
    }
    Ok(())
}

fn query_core(core: &DnsCore, data: &[u8]) -> Result<(), Violation> {
    let header = RawHeader::read(data);
    match core.handle(data) {
        Outcome::Drop => check(
            header.is_none_or(|h| h.is_response()),
            "dropped a readable query",
        ),
        Outcome::Reply(reply) => {
            let h = header.ok_or(Violation("replied without a header"))?;
            check(!h.is_response(), "answered a response")?;
            let m = Message::from_vec(&reply).map_err(|_| Violation("reply does not decode"))?;
            check(m.metadata.id == h.id, "reply id differs from query id")?;
            check(
                m.queries.len() <= 1 && m.answers.len() <= 1,
                "unexpected record counts",
            )?;
            match (m.answers.first(), m.queries.first()) {
                (None, _) => Ok(()),
                (Some(_), None) => Err(Violation("answer without a question")),
                (Some(record), Some(q)) => {
                    check(
                        record.record_type() == q.query_type,
                        "answer type differs from the question",
                    )?;
                    let table = core.table();
                    let ip = match &record.data {
                        RData::A(a) if table.pool().contains(a.0) => IpAddr::V4(a.0),
                        RData::AAAA(a) if table.ipv6_pool().is_some_and(|p| p.contains(a.0)) => {
                            IpAddr::V6(a.0)
                        }
                        _ => return Err(Violation("answer is no address of the table's pools")),
                    };
                    check(
                        table.lookup_ip(ip).is_some(),
                        "answered address held by no name",
                    )
                }
            }
        }
        Outcome::Forward(req) => {
            let h = header.ok_or(Violation("forwarded without a header"))?;
            check(
                req.client_id == h.id && req.query == data,
                "forward lost the query",
            )?;
            let up = req.upstream_query(h.id ^ 0x5555);
            check(
                RawHeader::read(&up).map(|u| u.id) == Some(h.id ^ 0x5555),
                "upstream id not rewritten",
            )?;
            let servfail = req.error_reply(crate::wire::rcode::SERVFAIL);
            let m =
                Message::from_vec(&servfail).map_err(|_| Violation("SERVFAIL does not decode"))?;
            check(m.metadata.id == h.id, "SERVFAIL id differs")?;
            let fitted = req.fit_udp(vec![0; 70_000]);
            check(
                Message::from_vec(&fitted).is_ok_and(|m| m.metadata.truncation),
                "truncated reply broken",
            )
        }
    }
}

/// Upstream answer matching: a packet from the upstream is accepted only if its
/// id and question are those of the pending query, and then exactly once.
pub fn upstream_answer(data: &[u8]) -> Result<(), Violation> {
    let upstream = SocketAddr::from(([127, 0, 0, 1], 53));
    let name = Name::from_ascii("www.Example.com.").map_err(|_| Violation("constant name"))?;
    let question = Question::from_query(&Query::query(name, RecordType::A));
    // The pending id comes from the input so the fuzzer can reach the match path.
    let id = RawHeader::read(data).map_or(0, |h| h.id);
    let mut table = PendingTable::new(2);
    table
        .insert(upstream, question.clone(), 7u8, || id)
        .map_err(|_| Violation("insert into empty table failed"))?;
    // From another address it must never match.
    let other = SocketAddr::from(([127, 0, 0, 2], 53));
    check(
        matches!(table.match_answer(other, data), AnswerMatch::Rejected(_)),
        "matched a foreign upstream",
    )?;
    match table.match_answer(upstream, data) {
        AnswerMatch::Matched { value, .. } => {
            check(value == 7 && table.is_empty(), "wrong value or entry kept")?;
            check(
                answer_matches(data, id, &question),
                "matched a non-matching answer",
            )?;
            check(
                matches!(table.match_answer(upstream, data), AnswerMatch::Rejected(_)),
                "matched twice",
            )?;
            let mut rewritten = data.to_vec();
            wire::set_id(&mut rewritten, id.wrapping_add(1));
            check(
                RawHeader::read(&rewritten).map(|h| h.id) == Some(id.wrapping_add(1)),
                "id rewrite",
            )
        }
        AnswerMatch::Rejected(_) => check(table.len() == 1, "rejected answer removed the entry"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::MessageType;
    use proptest::prelude::*;

    fn msg(name: &str, rtype: RecordType, response: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x0102;
        m.metadata.message_type = if response {
            MessageType::Response
        } else {
            MessageType::Query
        };
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    fn edge_inputs() -> Vec<Vec<u8>> {
        let mut v = vec![
            vec![],
            vec![0; 11],
            vec![0; 12],
            vec![0xff; 12],
            vec![0xff; 512],
            vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1],
            vec![0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 2, 0, 1, 0, 1],
            vec![0, 1, 1, 0, 0, 1, 0xff, 0xff, 0, 0, 0, 1, 0],
            msg("app.example.", RecordType::A, false),
            msg("x.corp.example.", RecordType::AAAA, false),
            msg("app.example.", RecordType::AAAA, false),
            msg("y.corp.example.", RecordType::A, false),
            msg("www.example.com.", RecordType::A, false),
            msg("www.example.com.", RecordType::A, true),
            msg("WWW.EXAMPLE.COM.", RecordType::A, true),
        ];
        let full = msg("app.example.", RecordType::A, false);
        v.extend((0..full.len()).map(|n| full[..n].to_vec()));
        v
    }

    #[test]
    fn edge_inputs_hold_invariants() {
        for input in edge_inputs() {
            assert_eq!(query(&input), Ok(()), "query {input:?}");
            assert_eq!(upstream_answer(&input), Ok(()), "upstream {input:?}");
        }
    }

    #[test]
    fn dual_stack_core_answers_aaaa() {
        // Sanity: the query entry point does reach the AAAA answer path.
        let q = msg("app.example.", RecordType::AAAA, false);
        let answers = |core: &DnsCore| match core.handle(&q) {
            Outcome::Reply(r) => Message::from_vec(&r).unwrap().answers.len(),
            other => panic!("{other:?}"),
        };
        let [v4, dual] = cores();
        assert_eq!(answers(v4), 0);
        assert_eq!(answers(dual), 1);
        assert_eq!(query(&q), Ok(()));
    }

    #[test]
    fn matching_answer_is_reached() {
        // Sanity: the upstream entry point does reach its match path.
        let answer = msg("www.example.com.", RecordType::A, true);
        let mut t = PendingTable::new(1);
        let q = Question::from_query(&Query::query(
            Name::from_ascii("www.example.com.").unwrap(),
            RecordType::A,
        ));
        t.insert(SocketAddr::from(([127, 0, 0, 1], 53)), q, (), || 0x0102)
            .unwrap();
        assert!(matches!(
            t.match_answer(SocketAddr::from(([127, 0, 0, 1], 53)), &answer),
            AnswerMatch::Matched { .. }
        ));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes(data in proptest::collection::vec(any::<u8>(), 0..700)) {
            prop_assert_eq!(query(&data), Ok(()));
            prop_assert_eq!(upstream_answer(&data), Ok(()));
        }

        #[test]
        fn mutated_valid_messages(pos in 0usize..40, byte in any::<u8>(), resp in any::<bool>()) {
            let mut data = msg("a.corp.example.", RecordType::A, resp);
            if let Some(b) = data.get_mut(pos) { *b = byte; }
            prop_assert_eq!(query(&data), Ok(()));
            prop_assert_eq!(upstream_answer(&data), Ok(()));
        }
    }
}
