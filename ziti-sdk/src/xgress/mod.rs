//! SDK xgress mode (edge header 1028 `UseXgressToSdk`), sans IO: the SDK is its circuits' xgress
//! endpoint, so flow control is per circuit. A full receive buffer closes the peer's window of
//! that circuit only; the router channel and every other circuit keep moving.
//!
//! * [`messages`]: the wire format of content types 1100 payload, 1101 acknowledgement,
//!   1102 control and 1103 close, to and from [`channel::Message`], with typed
//!   [`DecodeError`]s.
//! * [`Circuit`]: one endpoint's state machine: send window, retransmission with an RTT-based
//!   timeout, ordered and bounded receive buffer, acknowledgements reporting what the
//!   application has not read, EOF/close. Built from [`Options`] (Go's `DefaultOptions`).
//!
//! Protocol source: sdk-golang `xgress/*.go` (v1.7.0, embedded in v2.0.x routers, and v2) and
//! the router's `router/xgress_edge/listener.go` (`handleXgPayload`, `xgEdgeForwarder`).
//!
//! # Driving a circuit (the shell's job)
//!
//! Nothing in this module does I/O or reads a clock. A router-connection task drives each
//! circuit like quinn drives `quinn-proto`:
//!
//! 1. **Create.** Dial with header 1028 = true in Connect (or Bind when hosting). When the
//!    router's StateConnected (or its Dial, when hosting) confirms 1028 and names the circuit in
//!    header 1026, create `Circuit::new(circuit_id, conn_id, Originator::Initiator /
//!    Terminator, Options::default(), now, unix_ms)`, `unix_ms` being the wall clock read
//!    once (RTT stamps are Unix milliseconds). Register the connection id for dispatch
//!    **before** the first [`Circuit::poll_transmit`]: the initiator's CircuitStart releases
//!    the far end's data (Go does the same, `conn_xgress.go` `start`).
//! 2. **Feed.** A router message with header 1000 = the connection id and a content type for
//!    which [`XgMessage::is_xgress`] holds goes to [`Circuit::handle_message`]. StateClosed
//!    for the connection goes to [`Circuit::handle_router_closed`]. A dead channel:
//!    [`Circuit::abort`].
//! 3. **Flush.** After every call into the circuit, send each [`Circuit::poll_transmit`]
//!    message on the channel (the channel driver stamps the channel sequence), then act on each
//!    [`Circuit::poll_event`], then re-arm one timer at [`Circuit::poll_timeout`] and call
//!    [`Circuit::handle_timeout`] when it fires.
//! 4. **Write side** (`AsyncWrite`): [`Circuit::send`] takes up to `max_payload_size` bytes or
//!    returns [`SendError::Blocked`]; then park the writer until [`Event::Writable`].
//!    `poll_shutdown` is [`Circuit::finish`]. [`Event::SendClosed`] fails pending writes.
//! 5. **Read side** (`AsyncRead`): [`Circuit::read`] with the caller's buffer size; copy
//!    [`Delivery::Data`] (its `headers` carry the edge flags, see [`edge_flags`]), report EOF on
//!    [`Delivery::Fin`], and park the reader on `None` until [`Event::Readable`]. Only reading
//!    frees receive buffer, which is what makes a slow reader slow only its own sender.
//! 6. **Drop.** Dropping the stream calls [`Circuit::close`]. Keep the circuit until
//!    [`Event::Closed`] and [`Circuit::is_drained`]: it still acknowledges late payloads and
//!    sends the final CircuitEnd and Close (1103); then forget the connection id. A late
//!    EOF/CircuitEnd for a forgotten id can be answered with [`orphan_end_ack`].
//!
//! Connections without 1028 keep the legacy Data/StateClosed path; nothing here is used.
//!
//! ```
//! use std::time::{Duration, Instant};
//! use bytes::Bytes;
//! use ziti_sdk::xgress::{Circuit, Delivery, Options, Originator};
//!
//! let mut now = Instant::now();
//! let unix_ms = 1_700_000_000_000; // SystemTime::now() in a real shell
//! let opts = Options::default();
//! let mut dialer = Circuit::new("circ-1", 7, Originator::Initiator, opts, now, unix_ms);
//! let mut host = Circuit::new("circ-1", 9, Originator::Terminator, opts, now, unix_ms);
//! assert_eq!(dialer.send(Bytes::from_static(b"hello"))?, 5);
//! dialer.finish(now);
//!
//! // Stand-in for the routers: forward every message unchanged, 1 ms later.
//! let mut got = Vec::new();
//! 'run: for _ in 0..100 {
//!     now += Duration::from_millis(1);
//!     while let Some(m) = dialer.poll_transmit(now) {
//!         host.handle_message(now, &m)?;
//!     }
//!     while let Some(m) = host.poll_transmit(now) {
//!         dialer.handle_message(now, &m)?;
//!     }
//!     while let Some(d) = host.read(1024) {
//!         match d {
//!             Delivery::Data { data, .. } => got.extend_from_slice(&data),
//!             Delivery::Fin => break 'run,
//!         }
//!     }
//! }
//! assert_eq!(got, b"hello");
//! assert!(host.peer_supports_eof() && dialer.peer_supports_eof());
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! [`channel::Message`]: crate::channel::Message
//! [`Circuit::abort`]: crate::xgress::Circuit::abort
//! [`Circuit::close`]: crate::xgress::Circuit::close
//! [`Circuit::finish`]: crate::xgress::Circuit::finish
//! [`Circuit::handle_message`]: crate::xgress::Circuit::handle_message
//! [`Circuit::handle_router_closed`]: crate::xgress::Circuit::handle_router_closed
//! [`Circuit::handle_timeout`]: crate::xgress::Circuit::handle_timeout
//! [`Circuit::is_drained`]: crate::xgress::Circuit::is_drained
//! [`Circuit::poll_event`]: crate::xgress::Circuit::poll_event
//! [`Circuit::poll_timeout`]: crate::xgress::Circuit::poll_timeout
//! [`Circuit::poll_transmit`]: crate::xgress::Circuit::poll_transmit
//! [`Circuit::read`]: crate::xgress::Circuit::read
//! [`Circuit::send`]: crate::xgress::Circuit::send
//! [`Circuit`]: crate::xgress::Circuit
//! [`DecodeError`]: crate::xgress::DecodeError
//! [`Delivery::Data`]: crate::xgress::Delivery::Data
//! [`Delivery::Fin`]: crate::xgress::Delivery::Fin
//! [`Event::Closed`]: crate::xgress::Event::Closed
//! [`Event::Readable`]: crate::xgress::Event::Readable
//! [`Event::SendClosed`]: crate::xgress::Event::SendClosed
//! [`Event::Writable`]: crate::xgress::Event::Writable
//! [`Options`]: crate::xgress::Options
//! [`SendError::Blocked`]: crate::xgress::SendError::Blocked
//! [`XgMessage::is_xgress`]: crate::xgress::XgMessage::is_xgress
//! [`edge_flags`]: crate::xgress::edge_flags
//! [`messages`]: crate::xgress::messages
//! [`orphan_end_ack`]: crate::xgress::orphan_end_ack

mod circuit;
mod error;
mod events;
pub mod messages;
mod options;
mod receive_buffer;
mod rtt;
mod send_buffer;

#[cfg(any(test, feature = "fuzzing"))]
mod fuzz;

pub use circuit::Circuit;
pub use error::{CircuitError, SendError};
pub use events::{Event, Stats};
pub use messages::{
    Acknowledgement, CloseCircuit, Control, ControlType, DecodeError, Flags, Originator, Payload,
    PayloadHeaders, XgMessage, edge_flags, orphan_end_ack,
};
pub use options::Options;
pub use receive_buffer::{Delivery, ProtocolError};

#[doc(hidden)]
#[cfg(any(test, feature = "fuzzing"))]
pub use fuzz::fuzz_circuit;

#[cfg(test)]
mod tests;
