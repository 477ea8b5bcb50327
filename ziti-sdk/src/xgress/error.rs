//! Errors of the [`Circuit`] API.
//!
//! [`Circuit`]: crate::xgress::Circuit

use super::messages::DecodeError;
use super::receive_buffer::ProtocolError;

/// Why `Circuit::send` or `Circuit::send_payload` refused data.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// The send window is full; wait for [`Event::Writable`](crate::xgress::Event::Writable).
    #[error("xgress send window is full")]
    Blocked,
    /// The send side is closed (`Circuit::finish`, WriteFailed from the peer, router close).
    #[error("xgress send side is closed")]
    Closed,
    /// `Circuit::send_payload` got more than `max_payload_size` bytes.
    #[error("payload of {len} bytes exceeds the {max}-byte limit")]
    TooLarge {
        /// Offered length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// All 2^31 sequence numbers are used.
    #[error("xgress sequence numbers are exhausted")]
    SequenceExhausted,
}

/// Why [`Circuit::handle_message`](crate::xgress::Circuit::handle_message) rejected a message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CircuitError {
    /// Not a valid xgress message. A bad payload or acknowledgement also closes the circuit
    /// (Go closes the xgress); other kinds are just ignored.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The message names another circuit; it was ignored.
    #[error("xgress message for circuit {got:?} reached circuit {expected:?}")]
    WrongCircuit {
        /// This circuit.
        expected: String,
        /// The message's.
        got: String,
    },
    /// The peer sent payloads that cannot be reassembled; the circuit was closed.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}
