//! Pure upstream bookkeeping: which queries are waiting for which upstream, and
//! whether a packet that arrived is the answer to one of them.
//!
//! An answer is accepted only if it comes from the upstream the query went to,
//! carries the random id that query was sent with, and repeats its question.
//! The C tunneler matched on the id alone, which let any packet with a guessed
//! id answer any query.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::net::SocketAddr;

use crate::wire::{Question, RawHeader, WireError};

/// Tries for a free random id before giving up (only likely with ~65k pending
/// queries to a single upstream, which the capacity bound prevents).
const ID_ATTEMPTS: usize = 64;

/// Why a query could not be registered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PendingError {
    /// The table holds `capacity` queries already.
    #[error("too many upstream queries in flight (limit {0})")]
    Full(usize),
    /// No unused id was found for this upstream.
    #[error("no free query id for upstream")]
    NoFreeId,
}

/// Why an arriving packet was not accepted as an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rejection {
    /// Header or question unreadable, or it is not a response to a QUERY.
    Malformed,
    /// Nothing pending from that address with that id (late, duplicate or spoofed).
    Unknown,
    /// Pending id, but the question differs: not our answer (the query stays pending).
    QuestionMismatch,
}

/// Result of offering a packet to the [`PendingTable`].
#[derive(Debug, PartialEq, Eq)]
pub enum AnswerMatch<T> {
    /// The answer to a pending query, which is now removed from the table.
    Matched {
        /// What was registered with the query.
        value: T,
        /// TC was set: the full answer must be fetched over TCP.
        truncated: bool,
        /// The response code from the header.
        rcode: u8,
    },
    /// Not an answer to anything pending.
    Rejected(Rejection),
}

#[derive(Debug)]
struct Pending<T> {
    question: Question,
    value: T,
}

/// Queries sent to upstreams and not yet answered, keyed by (upstream, id),
/// at most `capacity` of them.
#[derive(Debug)]
pub struct PendingTable<T> {
    entries: HashMap<(SocketAddr, u16), Pending<T>>,
    capacity: usize,
}

impl<T> PendingTable<T> {
    /// An empty table holding at most `capacity` queries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::new(),
            capacity,
        }
    }

    /// Pending queries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Registers a query to `upstream` and returns the id to send it with, drawn
    /// from `random_id` until one is free for that upstream.
    pub fn insert(
        &mut self,
        upstream: SocketAddr,
        question: Question,
        value: T,
        mut random_id: impl FnMut() -> u16,
    ) -> Result<u16, PendingError> {
        if self.entries.len() >= self.capacity {
            return Err(PendingError::Full(self.capacity));
        }
        for _ in 0..ID_ATTEMPTS {
            let id = random_id();
            if let Entry::Vacant(slot) = self.entries.entry((upstream, id)) {
                slot.insert(Pending { question, value });
                return Ok(id);
            }
        }
        Err(PendingError::NoFreeId)
    }

    /// Forgets a query (timed out or failed to send); returns its value.
    pub fn remove(&mut self, upstream: SocketAddr, id: u16) -> Option<T> {
        self.entries.remove(&(upstream, id)).map(|p| p.value)
    }

    /// Forgets a query only if `still_ours` says the entry is the caller's (used
    /// when the same (upstream, id) may have been reused after a match).
    pub fn remove_if(
        &mut self,
        upstream: SocketAddr,
        id: u16,
        still_ours: impl FnOnce(&T) -> bool,
    ) -> Option<T> {
        match self.entries.entry((upstream, id)) {
            Entry::Occupied(slot) if still_ours(&slot.get().value) => Some(slot.remove().value),
            _ => None,
        }
    }

    /// Offers a packet received from `from`; removes and returns the query it answers.
    pub fn match_answer(&mut self, from: SocketAddr, packet: &[u8]) -> AnswerMatch<T> {
        let (header, question) = match read_answer(packet) {
            Ok(parts) => parts,
            Err(_) => return AnswerMatch::Rejected(Rejection::Malformed),
        };
        let Entry::Occupied(slot) = self.entries.entry((from, header.id)) else {
            return AnswerMatch::Rejected(Rejection::Unknown);
        };
        if slot.get().question != question {
            return AnswerMatch::Rejected(Rejection::QuestionMismatch);
        }
        AnswerMatch::Matched {
            value: slot.remove().value,
            truncated: header.truncated(),
            rcode: header.rcode(),
        }
    }
}

/// Reads the header and question of an upstream answer and checks it is a
/// response to a standard query.
pub fn read_answer(packet: &[u8]) -> Result<(RawHeader, Question), WireError> {
    let (header, question, _) = Question::parse(packet)?;
    if !header.is_response() || header.opcode() != 0 {
        return Err(WireError::BadQuestion);
    }
    Ok((header, question))
}

/// Checks a TCP answer (one query per connection, so only id and question matter).
pub fn answer_matches(packet: &[u8], id: u16, question: &Question) -> bool {
    matches!(read_answer(packet), Ok((h, q)) if h.id == id && &q == question)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::{Name, RecordType};
    use proptest::prelude::*;

    fn answer(name: &str, id: u16, tc: bool) -> Vec<u8> {
        let mut m = Message::query();
        m.metadata.id = id;
        m.metadata.message_type = MessageType::Response;
        m.metadata.truncation = tc;
        m.add_query(Query::query(Name::from_ascii(name).unwrap(), RecordType::A));
        m.to_vec().unwrap()
    }

    fn question(name: &str) -> Question {
        Question::from_query(&Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::A,
        ))
    }

    fn addr(port: u16) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], port))
    }

    #[test]
    fn matches_only_on_address_id_and_question() {
        let mut t = PendingTable::new(8);
        let id = t
            .insert(addr(53), question("a.example."), "client-a", || 1000)
            .unwrap();
        assert_eq!(id, 1000);
        // Right id, wrong upstream address.
        assert_eq!(
            t.match_answer(addr(54), &answer("a.example.", id, false)),
            AnswerMatch::Rejected(Rejection::Unknown)
        );
        // Right upstream, wrong id.
        assert_eq!(
            t.match_answer(addr(53), &answer("a.example.", id + 1, false)),
            AnswerMatch::Rejected(Rejection::Unknown)
        );
        // Right upstream and id, different question: rejected, still pending.
        assert_eq!(
            t.match_answer(addr(53), &answer("b.example.", id, false)),
            AnswerMatch::Rejected(Rejection::QuestionMismatch)
        );
        // A query (QR=0) echoed back is not an answer.
        let mut echoed = answer("a.example.", id, false);
        echoed[2] &= 0x7f;
        assert_eq!(
            t.match_answer(addr(53), &echoed),
            AnswerMatch::Rejected(Rejection::Malformed)
        );
        assert_eq!(t.len(), 1);
        // The real answer, with 0x20 case changes.
        assert_eq!(
            t.match_answer(addr(53), &answer("A.EXAMPLE.", id, true)),
            AnswerMatch::Matched {
                value: "client-a",
                truncated: true,
                rcode: 0
            }
        );
        assert!(t.is_empty());
        // A duplicate is unknown now.
        assert_eq!(
            t.match_answer(addr(53), &answer("a.example.", id, false)),
            AnswerMatch::Rejected(Rejection::Unknown)
        );
    }

    #[test]
    fn ids_are_unique_per_upstream_and_bounded() {
        let mut t = PendingTable::new(3);
        let mut ids = [7u16, 7, 7, 8].into_iter().cycle();
        let a = t
            .insert(addr(53), question("a."), 1, || ids.next().unwrap_or(0))
            .unwrap();
        let b = t
            .insert(addr(53), question("b."), 2, || ids.next().unwrap_or(0))
            .unwrap();
        assert_eq!((a, b), (7, 8), "colliding id redrawn");
        // The same id to another upstream is fine.
        assert_eq!(t.insert(addr(5353), question("c."), 3, || 7), Ok(7));
        assert_eq!(
            t.insert(addr(53), question("d."), 4, || 9),
            Err(PendingError::Full(3))
        );
        assert_eq!(t.remove_if(addr(53), 7, |v| *v == 99), None);
        assert_eq!(t.remove_if(addr(53), 7, |v| *v == 1), Some(1));
        assert_eq!(
            t.insert(addr(53), question("e."), 5, || 8),
            Err(PendingError::NoFreeId)
        );
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn tcp_answer_check() {
        let q = question("a.example.");
        assert!(answer_matches(&answer("a.example.", 5, false), 5, &q));
        assert!(!answer_matches(&answer("a.example.", 6, false), 5, &q));
        assert!(!answer_matches(&answer("b.example.", 5, false), 5, &q));
        assert!(!answer_matches(&[], 5, &q));
    }

    proptest! {
        #[test]
        fn arbitrary_packets_never_panic_nor_match_wrongly(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let mut t = PendingTable::new(4);
            let q = question("a.example.");
            let id = t.insert(addr(53), q.clone(), (), || 77).unwrap();
            match t.match_answer(addr(53), &data) {
                AnswerMatch::Matched { .. } => prop_assert!(answer_matches(&data, id, &q)),
                AnswerMatch::Rejected(_) => prop_assert_eq!(t.len(), 1),
            }
        }
    }
}
