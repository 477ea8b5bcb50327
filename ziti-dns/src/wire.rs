//! Small, allocation-light pieces of the DNS wire format that hickory-proto does
//! not offer on raw bytes: reading the fixed header without trusting the rest,
//! the question as a matching key, id rewriting and header-only replies.

use hickory_proto::op::Query;
use hickory_proto::rr::Name;
use hickory_proto::serialize::binary::{BinDecodable, BinDecoder};

/// Length of the fixed DNS header.
pub const HEADER_LEN: usize = 12;

/// DNS response codes used by this crate (RFC 1035 §4.1.1).
pub mod rcode {
    /// No error.
    pub const NOERROR: u8 = 0;
    /// The query could not be interpreted.
    pub const FORMERR: u8 = 1;
    /// The server failed to get an answer.
    pub const SERVFAIL: u8 = 2;
    /// The opcode is not supported.
    pub const NOTIMP: u8 = 4;
    /// The server will not answer (here: no upstream configured).
    pub const REFUSED: u8 = 5;
}

const FLAG_QR: u16 = 0x8000;
const FLAG_AA: u16 = 0x0400;
const FLAG_TC: u16 = 0x0200;
const FLAG_RD: u16 = 0x0100;
const FLAG_RA: u16 = 0x0080;
const FLAG_CD: u16 = 0x0010;
const OPCODE_MASK: u16 = 0x7800;

/// Why a packet could not be read far enough.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// Shorter than a DNS header.
    #[error("packet shorter than a DNS header")]
    Short,
    /// Not exactly one question.
    #[error("expected exactly one question, found {0}")]
    QuestionCount(u16),
    /// The question section does not decode.
    #[error("malformed question section")]
    BadQuestion,
}

/// The fixed 12-byte header, read without looking at anything else.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RawHeader {
    /// Message id.
    pub id: u16,
    /// Flags word (QR, opcode, AA, TC, RD, RA, Z, AD, CD, RCODE).
    pub flags: u16,
    /// Question count.
    pub qdcount: u16,
    /// Answer record count.
    pub ancount: u16,
    /// Authority record count.
    pub nscount: u16,
    /// Additional record count.
    pub arcount: u16,
}

impl RawHeader {
    /// Reads the header; `None` if fewer than 12 bytes.
    pub fn read(packet: &[u8]) -> Option<Self> {
        let h: &[u8; HEADER_LEN] = packet.get(..HEADER_LEN)?.try_into().ok()?;
        let word = |i: usize| u16::from_be_bytes([h[i], h[i + 1]]);
        Some(Self {
            id: word(0),
            flags: word(2),
            qdcount: word(4),
            ancount: word(6),
            nscount: word(8),
            arcount: word(10),
        })
    }

    /// QR bit: this is a response.
    pub fn is_response(&self) -> bool {
        self.flags & FLAG_QR != 0
    }

    /// The 4-bit opcode (0 = QUERY).
    pub fn opcode(&self) -> u8 {
        ((self.flags & OPCODE_MASK) >> 11) as u8
    }

    /// TC bit: the answer did not fit.
    pub fn truncated(&self) -> bool {
        self.flags & FLAG_TC != 0
    }

    /// The 4-bit response code of the header (without EDNS extension bits).
    pub fn rcode(&self) -> u8 {
        (self.flags & 0x000f) as u8
    }

    /// Record counts after the question, summed.
    pub fn record_count(&self) -> usize {
        usize::from(self.ancount) + usize::from(self.nscount) + usize::from(self.arcount)
    }
}

/// A question reduced to what two messages must agree on: the name (wire labels,
/// ASCII lower-cased, so DNS 0x20 case randomisation still matches), type and class.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Question {
    name: Vec<u8>,
    qtype: u16,
    qclass: u16,
}

impl Question {
    /// The matching key of a decoded query.
    pub fn from_query(query: &Query) -> Self {
        Self::new(
            &query.name,
            u16::from(query.query_type),
            u16::from(query.query_class),
        )
    }

    fn new(name: &Name, qtype: u16, qclass: u16) -> Self {
        let mut key = Vec::with_capacity(name.len().saturating_add(1));
        for label in name.iter() {
            // Labels are at most 63 bytes, so the length always fits a byte.
            key.push(label.len() as u8);
            key.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        Self {
            name: key,
            qtype,
            qclass,
        }
    }

    /// Reads header and exactly one question; returns them and the offset where
    /// the question section ends.
    pub fn parse(packet: &[u8]) -> Result<(RawHeader, Question, usize), WireError> {
        let header = RawHeader::read(packet).ok_or(WireError::Short)?;
        if header.qdcount != 1 {
            return Err(WireError::QuestionCount(header.qdcount));
        }
        // Decode over the whole packet: compression pointers are absolute offsets.
        let mut decoder = BinDecoder::new(packet);
        decoder
            .read_slice(HEADER_LEN)
            .map_err(|_| WireError::Short)?;
        let name = Name::read(&mut decoder).map_err(|_| WireError::BadQuestion)?;
        let qtype = decoder
            .read_u16()
            .map_err(|_| WireError::BadQuestion)?
            .unverified();
        let qclass = decoder
            .read_u16()
            .map_err(|_| WireError::BadQuestion)?
            .unverified();
        Ok((header, Self::new(&name, qtype, qclass), decoder.index()))
    }

    /// The query type number.
    pub fn qtype(&self) -> u16 {
        self.qtype
    }
}

/// Overwrites the message id (no-op on packets shorter than two bytes).
pub fn set_id(packet: &mut [u8], id: u16) {
    if let Some(slot) = packet.get_mut(..2) {
        slot.copy_from_slice(&id.to_be_bytes());
    }
}

/// A reply carrying only the header and the question of `query`: used for
/// errors (FORMERR/SERVFAIL/REFUSED/NOTIMP), empty NOERROR answers and the
/// truncated (TC=1) reply that sends a UDP client to TCP. `question_end` is the
/// offset where the question ends (`HEADER_LEN` for no question).
pub fn header_reply(query: &[u8], question_end: usize, rcode: u8, truncated: bool) -> Vec<u8> {
    let body = query.get(..question_end).filter(|b| b.len() >= HEADER_LEN);
    let mut out = match body {
        Some(b) => b.to_vec(),
        None => query
            .get(..HEADER_LEN)
            .map(<[u8]>::to_vec)
            .unwrap_or_else(|| vec![0; HEADER_LEN]),
    };
    let query_flags = RawHeader::read(&out).map_or(0, |h| h.flags);
    let mut flags = FLAG_QR | FLAG_RA | (query_flags & (OPCODE_MASK | FLAG_RD | FLAG_CD));
    flags |= u16::from(rcode & 0x0f);
    if truncated {
        flags |= FLAG_TC;
    }
    let qdcount: u16 = if out.len() > HEADER_LEN { 1 } else { 0 };
    write_header_tail(&mut out, flags, qdcount, 0, 0);
    out
}

/// Writes flags and counts (bytes 2..12) of a buffer holding at least a header.
pub(crate) fn write_header_tail(out: &mut [u8], flags: u16, qd: u16, an: u16, ar: u16) {
    if let Some(tail) = out.get_mut(2..HEADER_LEN) {
        tail[0..2].copy_from_slice(&flags.to_be_bytes());
        tail[2..4].copy_from_slice(&qd.to_be_bytes());
        tail[4..6].copy_from_slice(&an.to_be_bytes());
        tail[6..8].copy_from_slice(&0u16.to_be_bytes());
        tail[8..10].copy_from_slice(&ar.to_be_bytes());
    }
}

/// Flags for an authoritative answer to `query_flags`.
pub(crate) fn answer_flags(query_flags: u16, rcode: u8) -> u16 {
    FLAG_QR
        | FLAG_AA
        | FLAG_RA
        | (query_flags & (OPCODE_MASK | FLAG_RD | FLAG_CD))
        | u16::from(rcode & 0x0f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, ResponseCode};
    use hickory_proto::rr::RecordType;

    fn query(name: &str, rtype: RecordType, id: u16) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        m.to_vec().unwrap()
    }

    #[test]
    fn question_matches_case_insensitively() {
        let (h, q1, end) = Question::parse(&query("WwW.Example.com.", RecordType::A, 7)).unwrap();
        let (_, q2, _) = Question::parse(&query("www.example.COM.", RecordType::A, 8)).unwrap();
        let (_, q3, _) = Question::parse(&query("www.example.com.", RecordType::AAAA, 8)).unwrap();
        assert_eq!(h.id, 7);
        assert_eq!(end, HEADER_LEN + 17 + 4);
        assert_eq!(q1, q2);
        assert_ne!(q1, q3);
        assert_eq!(q3.qtype(), 28);
    }

    #[test]
    fn parse_rejects_short_and_multi_question() {
        assert_eq!(Question::parse(&[0; 11]), Err(WireError::Short));
        let mut p = query("a.b.", RecordType::A, 1);
        p[5] = 2;
        assert_eq!(Question::parse(&p), Err(WireError::QuestionCount(2)));
        let p = query("a.b.", RecordType::A, 1);
        assert_eq!(
            Question::parse(&p[..p.len() - 1]),
            Err(WireError::BadQuestion)
        );
    }

    #[test]
    fn header_reply_is_a_valid_message() {
        let q = query("x.example.", RecordType::MX, 0xbeef);
        let (_, _, end) = Question::parse(&q).unwrap();
        let r = header_reply(&q, end, rcode::SERVFAIL, false);
        let m = Message::from_vec(&r).unwrap();
        assert_eq!(m.metadata.id, 0xbeef);
        assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
        assert!(m.metadata.recursion_desired);
        assert_eq!(m.queries.len(), 1);
        let t = header_reply(&q, end, rcode::NOERROR, true);
        assert!(Message::from_vec(&t).unwrap().metadata.truncation);
        let f = header_reply(&q, HEADER_LEN, rcode::FORMERR, false);
        assert_eq!(f.len(), HEADER_LEN);
        assert_eq!(
            Message::from_vec(&f).unwrap().metadata.response_code,
            ResponseCode::FormErr
        );
        // Garbage in, still a well-formed header out.
        assert_eq!(
            header_reply(&[1, 2, 3], 99, rcode::FORMERR, false).len(),
            HEADER_LEN
        );
    }

    #[test]
    fn set_id_rewrites() {
        let mut q = query("x.", RecordType::A, 1);
        set_id(&mut q, 0x1234);
        assert_eq!(RawHeader::read(&q).unwrap().id, 0x1234);
        set_id(&mut [0u8; 1], 5);
    }
}
