//! The sans-IO answering core: one query packet in, one [`Outcome`] out.
//!
//! No sockets and no clocks: the server shells feed it bytes and act on the
//! outcome. Intercepted names are answered here; everything else becomes a
//! [`ForwardRequest`] for the [`crate::Forwarder`] (or REFUSED when there is no
//! upstream). Malformed input gets FORMERR when a header could be read and is
//! dropped otherwise; responses are never answered (no reflection loops).

use std::net::IpAddr;

use hickory_proto::op::{Message, OpCode, Query};
use hickory_proto::rr::{DNSClass, RecordType};
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};
use tracing::warn;

use crate::table::DnsTable;
use crate::wire::{self, HEADER_LEN, Question, RawHeader, rcode};

/// The smallest a resource record can be on the wire (root name, type, class, TTL, rdlength).
const MIN_RECORD_LEN: usize = 11;
/// UDP payload size we advertise in our own OPT records (the DNS flag day 2020 value).
pub const EDNS_UDP_SIZE: u16 = 1232;
/// Classic DNS limit on UDP answers for clients without EDNS.
pub const MIN_UDP_PAYLOAD: u16 = 512;

/// How the core answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnswerPolicy {
    /// TTL of intercepted A and AAAA records, seconds. Short, so that clients notice
    /// removed services and recycled addresses soon.
    pub ttl: u32,
    /// Whether an upstream exists; without one, other names get REFUSED.
    pub forwarding: bool,
}

impl Default for AnswerPolicy {
    fn default() -> Self {
        Self {
            ttl: 60,
            forwarding: true,
        }
    }
}

/// A query to be answered by an upstream resolver.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ForwardRequest {
    /// The id the client used; the upstream answer is rewritten back to it.
    pub client_id: u16,
    /// The question an upstream answer must repeat to be accepted.
    pub question: Question,
    /// The client's query exactly as received (EDNS options included).
    pub query: Vec<u8>,
    /// Offset where the question section of `query` ends.
    pub question_end: usize,
    /// The largest UDP answer the client accepts (512 without EDNS).
    pub max_udp_payload: u16,
}

impl ForwardRequest {
    /// The query to send upstream under a fresh `id`.
    pub fn upstream_query(&self, id: u16) -> Vec<u8> {
        let mut q = self.query.clone();
        wire::set_id(&mut q, id);
        q
    }

    /// A header-and-question reply to the client with `rcode` (e.g. SERVFAIL).
    pub fn error_reply(&self, rcode: u8) -> Vec<u8> {
        wire::header_reply(&self.query, self.question_end, rcode, false)
    }

    /// The TC=1 reply telling a UDP client to retry over TCP.
    pub fn truncated_reply(&self) -> Vec<u8> {
        wire::header_reply(&self.query, self.question_end, rcode::NOERROR, true)
    }

    /// `answer` as it may go back to a UDP client: itself, or the truncated
    /// reply if it is larger than the client accepts.
    pub fn fit_udp(&self, answer: Vec<u8>) -> Vec<u8> {
        if answer.len() > usize::from(self.max_udp_payload) {
            self.truncated_reply()
        } else {
            answer
        }
    }
}

/// What to do with a packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Send these bytes back to the client.
    Reply(Vec<u8>),
    /// Ask an upstream resolver.
    Forward(ForwardRequest),
    /// Send nothing (not even a header could be read, or it was a response).
    Drop,
}

/// The answering core: the live name table plus the answer policy.
#[derive(Debug, Clone)]
pub struct DnsCore {
    table: DnsTable,
    policy: AnswerPolicy,
}

/// The query parts the core needs, read from a validated message.
struct ParsedQuery {
    header: RawHeader,
    query: Query,
    question_end: usize,
    /// The table key of the queried name (see [`question_name_key`]).
    key: Option<String>,
    /// `Some((udp payload size, version))` when the client sent an OPT record.
    edns: Option<(u16, u8)>,
}

impl DnsCore {
    /// A core answering from `table`.
    pub fn new(table: DnsTable, policy: AnswerPolicy) -> Self {
        Self { table, policy }
    }

    /// The name table this core answers from.
    pub fn table(&self) -> &DnsTable {
        &self.table
    }

    /// The answer policy.
    pub fn policy(&self) -> AnswerPolicy {
        self.policy
    }

    /// Decides what to do with one query packet. Never panics on any input.
    pub fn handle(&self, packet: &[u8]) -> Outcome {
        let Some(header) = RawHeader::read(packet) else {
            return Outcome::Drop;
        };
        if header.is_response() {
            return Outcome::Drop;
        }
        let header_only =
            |code| Outcome::Reply(wire::header_reply(packet, HEADER_LEN, code, false));
        if header.opcode() != u8::from(OpCode::Query) {
            return header_only(rcode::NOTIMP);
        }
        let parsed = match parse_query(packet, header) {
            Some(p) => p,
            None => return header_only(rcode::FORMERR),
        };
        let q = &parsed.query;
        let intercepted = if q.query_class == DNSClass::IN {
            match &parsed.key {
                Some(key) => match self.table.resolve_normalized(key) {
                    Ok(ip) => ip,
                    Err(e) => {
                        warn!(name = %key, error = %e, "cannot answer intercepted name");
                        return self.reply(packet, &parsed, rcode::SERVFAIL, None);
                    }
                },
                None => None,
            }
        } else {
            None
        };
        match intercepted {
            Some(addrs) if q.query_type == RecordType::A => {
                self.reply(packet, &parsed, rcode::NOERROR, Some(IpAddr::V4(addrs.v4)))
            }
            Some(addrs) if q.query_type == RecordType::AAAA => {
                // Without an IPv6 pool: NOERROR without records, so that clients
                // (musl especially) use the A answer.
                let ip = addrs.v6.map(IpAddr::V6);
                self.reply(packet, &parsed, rcode::NOERROR, ip)
            }
            // Every other type of an intercepted name: NOERROR without records.
            Some(_) => self.reply(packet, &parsed, rcode::NOERROR, None),
            None if !self.policy.forwarding => self.reply(packet, &parsed, rcode::REFUSED, None),
            None => Outcome::Forward(ForwardRequest {
                client_id: parsed.header.id,
                question: Question::from_query(q),
                query: packet.to_vec(),
                question_end: parsed.question_end,
                max_udp_payload: parsed
                    .edns
                    .map_or(MIN_UDP_PAYLOAD, |(size, _)| size.max(MIN_UDP_PAYLOAD)),
            }),
        }
    }

    /// Builds the reply by hand: the client's header and question bytes (its exact
    /// name case, for 0x20 randomisation), at most one A or AAAA record, and an
    /// OPT record if the client sent one.
    fn reply(&self, packet: &[u8], parsed: &ParsedQuery, code: u8, ip: Option<IpAddr>) -> Outcome {
        let Some(question) = packet.get(..parsed.question_end) else {
            return Outcome::Drop;
        };
        let mut out = Vec::with_capacity(question.len() + 28 + MIN_RECORD_LEN);
        out.extend_from_slice(question);
        let an = u16::from(ip.is_some());
        let ar = u16::from(parsed.edns.is_some());
        wire::write_header_tail(
            &mut out,
            wire::answer_flags(parsed.header.flags, code),
            1,
            an,
            ar,
        );
        if let Some(ip) = ip {
            let rtype = match ip {
                IpAddr::V4(_) => RecordType::A,
                IpAddr::V6(_) => RecordType::AAAA,
            };
            out.extend_from_slice(&[0xc0, HEADER_LEN as u8]); // pointer to the question name
            out.extend_from_slice(&u16::from(rtype).to_be_bytes());
            out.extend_from_slice(&u16::from(DNSClass::IN).to_be_bytes());
            out.extend_from_slice(&self.policy.ttl.to_be_bytes());
            match ip {
                IpAddr::V4(v4) => {
                    out.extend_from_slice(&4u16.to_be_bytes());
                    out.extend_from_slice(&v4.octets());
                }
                IpAddr::V6(v6) => {
                    out.extend_from_slice(&16u16.to_be_bytes());
                    out.extend_from_slice(&v6.octets());
                }
            }
        }
        if let Some((_, version)) = parsed.edns {
            // RFC 6891 §6.1.3: we speak version 0; a higher one gets BADVERS (extended rcode 1).
            let ext_rcode: u8 = if version > 0 { 1 } else { 0 };
            out.push(0); // root owner name
            out.extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
            out.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
            out.extend_from_slice(&[ext_rcode, 0, 0, 0]); // ext rcode, version 0, no flags
            out.extend_from_slice(&0u16.to_be_bytes()); // no options
        }
        Outcome::Reply(out)
    }
}

/// Decodes and validates the whole query. `None` means FORMERR.
fn parse_query(packet: &[u8], header: RawHeader) -> Option<ParsedQuery> {
    if header.qdcount != 1 {
        return None;
    }
    // Reject impossible record counts before anything allocates per record.
    let body = packet.len().saturating_sub(HEADER_LEN);
    if header.record_count().saturating_mul(MIN_RECORD_LEN) > body {
        return None;
    }
    let mut decoder = BinDecoder::new(packet);
    decoder.read_slice(HEADER_LEN).ok()?;
    let query = Query::read(&mut decoder).ok()?;
    let question_end = decoder.index();
    // The reply copies the question bytes under a rewritten header, so a
    // compression pointer in them (which could only point into the header)
    // would change meaning: the name must be uncompressed.
    let (key, name_end) = question_name_key(packet)?;
    if question_end != name_end + 4 {
        return None;
    }
    let op = OpCode::Query;
    // Answer and authority records are unusual in a query but legal; they are
    // still decoded so that a malformed one gets FORMERR.
    for (count, additional) in [(header.ancount, false), (header.nscount, false)] {
        if count > 0 {
            Message::read_records(&mut decoder, usize::from(count), additional, op).ok()?;
        }
    }
    let edns = match header.arcount {
        0 => None,
        n => {
            Message::read_records(&mut decoder, usize::from(n), true, op)
                .ok()?
                .1
        }
    };
    Some(ParsedQuery {
        header,
        query,
        question_end,
        key,
        edns: edns.map(|e| (e.max_payload(), e.version())),
    })
}

/// Walks the (uncompressed) question name straight from the packet: returns
/// the table key (lower-case labels joined by dots) and the offset after the
/// name. The key is `None` for names that cannot be configured (root, labels
/// holding dots, non-UTF-8 bytes), so such a name never matches an intercepted
/// one. `None` overall if the name is compressed or runs past the packet.
pub(crate) fn question_name_key(packet: &[u8]) -> Option<(Option<String>, usize)> {
    let mut pos = HEADER_LEN;
    let mut key = Vec::with_capacity(64);
    let mut usable = true;
    loop {
        let len = usize::from(*packet.get(pos)?);
        pos += 1;
        if len == 0 {
            break;
        }
        if len > 63 {
            return None; // a compression pointer or a reserved label type
        }
        let label = packet.get(pos..pos + len)?;
        pos += len;
        usable &= !label.contains(&b'.');
        if !key.is_empty() {
            key.push(b'.');
        }
        key.extend(label.iter().map(u8::to_ascii_lowercase));
    }
    let key = if usable && !key.is_empty() {
        String::from_utf8(key).ok()
    } else {
        None
    };
    Some((key, pos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pool::Ipv4Cidr;
    use crate::pool6::Ipv6Cidr;
    use hickory_proto::op::{Edns, ResponseCode};
    use hickory_proto::rr::{Name, RData};
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn core(forwarding: bool) -> DnsCore {
        let table = DnsTable::new(Ipv4Cidr::new(Ipv4Addr::new(10, 20, 0, 0), 24).unwrap());
        table.set_names(["app.example", "*.corp.example"]).unwrap();
        DnsCore::new(
            table,
            AnswerPolicy {
                ttl: 30,
                forwarding,
            },
        )
    }

    /// A core whose table also has the IPv6 pool `pool6`.
    fn dual_core(pool4: &str, pool6: &str) -> DnsCore {
        let table = DnsTable::with_ipv6_pool(pool4.parse().unwrap(), pool6.parse().unwrap());
        table.set_names(["app.example", "*.corp.example"]).unwrap();
        DnsCore::new(
            table,
            AnswerPolicy {
                ttl: 30,
                forwarding: true,
            },
        )
    }

    fn query(name: &str, rtype: RecordType) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = 0x4242;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    fn reply(core: &DnsCore, packet: &[u8]) -> Message {
        match core.handle(packet) {
            Outcome::Reply(bytes) => Message::from_vec(&bytes).unwrap(),
            other => panic!("expected a reply, got {other:?}"),
        }
    }

    fn a_records(m: &Message) -> Vec<Ipv4Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    fn aaaa_records(m: &Message) -> Vec<Ipv6Addr> {
        m.answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::AAAA(a) => Some(a.0),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn exact_name_a_answer() {
        let c = core(true);
        let ip = c.table().resolve_name("app.example").unwrap();
        for name in ["app.example.", "APP.Example.", "app.example"] {
            let m = reply(&c, &query(name, RecordType::A));
            assert_eq!(m.metadata.id, 0x4242);
            assert_eq!(m.metadata.response_code, ResponseCode::NoError);
            assert!(m.metadata.authoritative && m.metadata.recursion_desired);
            assert_eq!(a_records(&m), vec![ip], "{name}");
            assert_eq!(m.answers[0].ttl, 30);
            let labels = |n: &Name| n.iter().map(<[u8]>::to_vec).collect::<Vec<_>>();
            assert_eq!(
                labels(&m.queries[0].name),
                labels(&Name::from_ascii(name).unwrap()),
                "case echoed"
            );
        }
    }

    #[test]
    fn wildcard_answers_are_per_name_and_stable() {
        let c = core(true);
        let a1 = a_records(&reply(&c, &query("one.corp.example.", RecordType::A)));
        let a2 = a_records(&reply(&c, &query("Two.Corp.Example.", RecordType::A)));
        let bare = a_records(&reply(&c, &query("corp.example.", RecordType::A)));
        let again = a_records(&reply(&c, &query("ONE.corp.example.", RecordType::A)));
        assert_eq!(a1.len(), 1);
        assert_ne!(a1, a2);
        assert_ne!(a1, bare);
        assert_eq!(a1, again);
        assert_eq!(
            c.table().lookup_ip(a2[0].into()).as_deref(),
            Some("two.corp.example")
        );
    }

    #[test]
    fn aaaa_and_other_types_are_empty_noerror() {
        let c = core(true);
        for t in [
            RecordType::AAAA,
            RecordType::MX,
            RecordType::TXT,
            RecordType::SRV,
            RecordType::ANY,
        ] {
            for name in ["app.example.", "x.corp.example."] {
                let m = reply(&c, &query(name, t));
                assert_eq!(
                    m.metadata.response_code,
                    ResponseCode::NoError,
                    "{t} {name}"
                );
                assert!(m.answers.is_empty(), "{t} {name}");
                assert_eq!(m.queries[0].query_type, t);
            }
        }
    }

    #[test]
    fn aaaa_answers_exact_and_wildcard_names_from_the_ipv6_pool() {
        let c = dual_core("10.20.0.0/24", "fd00:20::/64");
        let pool6 = Ipv6Cidr::new("fd00:20::".parse().unwrap(), 64).unwrap();
        let app6 = c.table().resolve_name_v6("app.example").unwrap();
        assert_eq!(app6, "fd00:20::2".parse::<Ipv6Addr>().unwrap());
        for name in ["app.example.", "APP.Example."] {
            let m = reply(&c, &query(name, RecordType::AAAA));
            assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
            assert!(m.metadata.authoritative);
            assert_eq!(aaaa_records(&m), vec![app6], "{name}");
            assert_eq!(m.answers.len(), 1);
            assert_eq!(m.answers[0].ttl, 30);
            assert_eq!(m.answers[0].record_type(), RecordType::AAAA);
        }
        // A wildcard-covered name: its first query (here AAAA) allocates both
        // addresses; the A query then answers the IPv4 one of the same name.
        let w6 = aaaa_records(&reply(&c, &query("Db.Corp.Example.", RecordType::AAAA)));
        assert_eq!(w6.len(), 1);
        assert!(pool6.contains(w6[0]));
        assert_ne!(w6[0], app6);
        let w4 = a_records(&reply(&c, &query("db.corp.example.", RecordType::A)));
        assert_eq!(w4.len(), 1);
        let bare6 = aaaa_records(&reply(&c, &query("corp.example.", RecordType::AAAA)));
        assert_eq!(bare6.len(), 1);
        assert_ne!(bare6, w6);
        for ip in [IpAddr::V6(w6[0]), IpAddr::V4(w4[0])] {
            assert_eq!(
                c.table().lookup_ip(ip).as_deref(),
                Some("db.corp.example"),
                "{ip}"
            );
        }
        // The A answer of an exact name is unchanged by the IPv6 pool.
        let app4 = c.table().resolve_name("app.example").unwrap();
        assert_eq!(
            a_records(&reply(&c, &query("app.example.", RecordType::A))),
            vec![app4]
        );
        // Other types stay empty; names not intercepted still go upstream.
        let m = reply(&c, &query("app.example.", RecordType::MX));
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert!(matches!(
            c.handle(&query("www.example.com.", RecordType::AAAA)),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn same_name_gets_the_same_ipv6_address_again() {
        let c = dual_core("10.20.0.0/24", "fd00:20::/64");
        let first = aaaa_records(&reply(&c, &query("x.corp.example.", RecordType::AAAA)));
        let other = aaaa_records(&reply(&c, &query("y.corp.example.", RecordType::AAAA)));
        for _ in 0..3 {
            for name in ["x.corp.example.", "X.CORP.EXAMPLE.", "x.corp.example"] {
                let again = aaaa_records(&reply(&c, &query(name, RecordType::AAAA)));
                assert_eq!(again, first, "{name}");
            }
        }
        assert_ne!(first, other);
        assert_eq!(c.table().allocated(), 3, "app + x + y");
    }

    #[test]
    fn aaaa_with_edns_carries_the_record_and_opt() {
        let c = dual_core("10.20.0.0/24", "fd00:20::/64");
        let mut m = Message::from_vec(&query("app.example.", RecordType::AAAA)).unwrap();
        m.set_edns(Edns::new());
        let r = reply(&c, &m.to_vec().unwrap());
        assert_eq!(
            aaaa_records(&r),
            vec![c.table().resolve_name_v6("app.example").unwrap()]
        );
        assert_eq!(
            r.edns.as_ref().map(|e| e.max_payload()),
            Some(EDNS_UDP_SIZE)
        );
    }

    #[test]
    fn exhausted_ipv6_pool_gives_servfail_and_release_recovers() {
        // /24 IPv4 (253 names) but only two IPv6 addresses: the IPv6 pool runs out first.
        let c = dual_core("10.30.0.0/24", "fd00:30::/126");
        let table = c.table().clone();
        let app6 = table.resolve_name_v6("app.example").unwrap();
        let a6 = aaaa_records(&reply(&c, &query("a.corp.example.", RecordType::AAAA)));
        assert_eq!(a6, vec!["fd00:30::3".parse::<Ipv6Addr>().unwrap()]);
        let in_use = table.allocated();
        for t in [RecordType::AAAA, RecordType::A] {
            let m = reply(&c, &query("b.corp.example.", t));
            assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "{t}");
            assert!(m.answers.is_empty(), "{t}");
        }
        assert_eq!(table.allocated(), in_use, "a failed name holds nothing");
        assert!(matches!(
            table.try_resolve_addrs("b.corp.example"),
            Err(crate::PoolError::Ipv6Exhausted { capacity: 2, .. })
        ));
        // Names that hold addresses keep answering.
        assert_eq!(
            aaaa_records(&reply(&c, &query("a.corp.example.", RecordType::AAAA))),
            a6
        );
        // Removing a name frees its IPv6 address for the next one.
        table.remove_name("app.example").unwrap();
        assert_eq!(table.lookup_ip(IpAddr::V6(app6)), None);
        let b6 = aaaa_records(&reply(&c, &query("b.corp.example.", RecordType::AAAA)));
        assert_eq!(b6, vec![app6]);
        assert_eq!(
            table.lookup_ip(IpAddr::V6(app6)).as_deref(),
            Some("b.corp.example")
        );
    }

    #[test]
    fn exhausted_ipv4_pool_with_ipv6_pool_gives_servfail() {
        let c = dual_core("10.30.0.0/30", "fd00:30::/64"); // one IPv4 address
        let m = reply(&c, &query("a.corp.example.", RecordType::AAAA));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(matches!(
            c.table().try_resolve_addrs("a.corp.example"),
            Err(crate::PoolError::Exhausted { capacity: 1, .. })
        ));
        assert_eq!(c.table().allocated(), 1, "only app.example");
        assert_eq!(c.table().ipv6_pool().map(|p| p.prefix()), Some(64));
    }

    #[test]
    fn exhausted_pool_gives_servfail_and_release_recovers() {
        let table = DnsTable::new(Ipv4Cidr::new(Ipv4Addr::new(10, 30, 0, 0), 30).unwrap()); // one address
        table.add_name("*.w.example").unwrap();
        let c = DnsCore::new(table.clone(), AnswerPolicy::default());
        let first = a_records(&reply(&c, &query("a.w.example.", RecordType::A)));
        assert_eq!(first, vec![Ipv4Addr::new(10, 30, 0, 2)]);
        let m = reply(&c, &query("b.w.example.", RecordType::A));
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.answers.is_empty());
        // The first name keeps answering; after the wildcard goes and comes back, b gets the address.
        assert_eq!(
            a_records(&reply(&c, &query("a.w.example.", RecordType::A))),
            first
        );
        table.remove_name("*.w.example").unwrap();
        table.add_name("*.w.example").unwrap();
        assert_eq!(
            a_records(&reply(&c, &query("b.w.example.", RecordType::A))),
            first
        );
    }

    #[test]
    fn other_names_forward_or_refuse() {
        let q = query("www.example.com.", RecordType::A);
        match core(true).handle(&q) {
            Outcome::Forward(f) => {
                assert_eq!(f.client_id, 0x4242);
                assert_eq!(f.query, q);
                assert_eq!(f.max_udp_payload, 512);
                let up = f.upstream_query(7);
                assert_eq!(RawHeader::read(&up).unwrap().id, 7);
                let sf = Message::from_vec(&f.error_reply(rcode::SERVFAIL)).unwrap();
                assert_eq!(sf.metadata.response_code, ResponseCode::ServFail);
                assert_eq!(sf.metadata.id, 0x4242);
                assert_eq!(f.fit_udp(vec![0; 600]), f.truncated_reply());
                assert_eq!(f.fit_udp(vec![0; 100]), vec![0; 100]);
            }
            other => panic!("{other:?}"),
        }
        let m = reply(&core(false), &q);
        assert_eq!(m.metadata.response_code, ResponseCode::Refused);
        // A name in another class is not intercepted.
        let mut m = Message::from_vec(&query("app.example.", RecordType::A)).unwrap();
        m.queries[0].query_class = DNSClass::CH;
        assert!(matches!(
            core(true).handle(&m.to_vec().unwrap()),
            Outcome::Forward(_)
        ));
    }

    #[test]
    fn edns_is_echoed_and_sizes_the_udp_limit() {
        let mut m = Message::from_vec(&query("app.example.", RecordType::A)).unwrap();
        let mut edns = Edns::new();
        edns.set_max_payload(4000);
        m.set_edns(edns);
        let r = reply(&core(true), &m.to_vec().unwrap());
        assert_eq!(
            r.edns.as_ref().map(|e| e.max_payload()),
            Some(EDNS_UDP_SIZE)
        );
        assert_eq!(a_records(&r).len(), 1);
        m.queries[0].name = Name::from_ascii("other.example.").unwrap();
        match core(true).handle(&m.to_vec().unwrap()) {
            Outcome::Forward(f) => assert_eq!(f.max_udp_payload, 4000),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn malformed_input() {
        let c = core(true);
        assert_eq!(c.handle(&[]), Outcome::Drop);
        assert_eq!(c.handle(&[1, 2, 3]), Outcome::Drop);
        // A response is never answered.
        let mut resp = query("app.example.", RecordType::A);
        resp[2] |= 0x80;
        assert_eq!(c.handle(&resp), Outcome::Drop);
        // Header only, claims one question: FORMERR with the client's id.
        let m = reply(&c, &[0xab, 0xcd, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(
            (m.metadata.id, m.metadata.response_code),
            (0xabcd, ResponseCode::FormErr)
        );
        // Huge record counts are refused without parsing.
        let m = reply(
            &c,
            &[0, 1, 1, 0, 0, 1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0],
        );
        assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
        // Two questions.
        let mut two = query("app.example.", RecordType::A);
        two[5] = 2;
        assert_eq!(
            reply(&c, &two).metadata.response_code,
            ResponseCode::FormErr
        );
        // Truncated question.
        let q = query("app.example.", RecordType::A);
        assert_eq!(
            reply(&c, &q[..q.len() - 2]).metadata.response_code,
            ResponseCode::FormErr
        );
        // Compression loop in the question name.
        let lp = [0, 9, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 12, 0, 1, 0, 1];
        assert_eq!(reply(&c, &lp).metadata.response_code, ResponseCode::FormErr);
        // Non-QUERY opcode.
        let mut notify = query("app.example.", RecordType::SOA);
        notify[2] |= 4 << 3;
        assert_eq!(
            reply(&c, &notify).metadata.response_code,
            ResponseCode::NotImp
        );
    }

    #[test]
    fn name_keys() {
        let key = |labels: &[u8]| {
            let mut p = vec![0u8; HEADER_LEN];
            p.extend_from_slice(labels);
            question_name_key(&p)
        };
        assert_eq!(
            key(b"\x01A\x01b\x01C\x00"),
            Some((Some("a.b.c".to_owned()), HEADER_LEN + 7))
        );
        assert_eq!(key(b"\x00"), Some((None, HEADER_LEN + 1)), "root");
        assert_eq!(
            key(b"\x03a.b\x01c\x00"),
            Some((None, HEADER_LEN + 7)),
            "dot inside a label"
        );
        assert_eq!(
            key(b"\x02\xff\xfe\x00"),
            Some((None, HEADER_LEN + 4)),
            "not UTF-8"
        );
        assert_eq!(key(b"\xc0\x0c"), None, "compressed");
        assert_eq!(key(b"\x05ab"), None, "runs past the end");
        assert_eq!(key(b""), None);
    }
}
