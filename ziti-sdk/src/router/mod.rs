//! Router connections (tokio drivers over the sans-IO [`crate::channel`] and [`crate::edge`]
//! cores): TLS to edge routers, the hello, multiplexing edge connections on one channel per
//! router, dialing and hosting.

mod bind;
mod connection;
mod dial;
mod pool;
mod stream;

pub use bind::{BindOptions, Binding, IncomingDial};
pub use connection::{ConnectParams, RouterConnection};
pub use dial::DialRequest;
pub use pool::{RouterAddr, RouterPool};
pub use stream::{EdgeStream, PeerInfo};

use std::time::Duration;

/// Failures of a router channel.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RouterError {
    /// TCP, TLS or the hello failed.
    #[error("cannot connect to edge router {router} at {url}: {reason}")]
    Connect {
        /// Router name.
        router: String,
        /// URL tried.
        url: String,
        /// What failed.
        reason: String,
    },
    /// The channel closed (router gone, authentication rejected after hello, or closed locally).
    #[error("connection to edge router {router} closed")]
    Closed {
        /// Router name.
        router: String,
    },
    /// A request got no answer in time.
    #[error("edge router {router} did not answer within {after:?}")]
    Timeout {
        /// Router name.
        router: String,
        /// The timeout.
        after: Duration,
    },
    /// An edge-router URL we cannot use.
    #[error("unusable edge router address {0:?}")]
    BadUrl(String),
    /// None of the offered routers could be reached.
    #[error("no edge router reachable ({0})")]
    NoneReachable(String),
    /// The router refused an operation (body text of its StateClosed).
    #[error("edge router {router} refused: {reason}")]
    Refused {
        /// Router name.
        router: String,
        /// Router's text.
        reason: String,
    },
    /// The router refused a dial; the reason is classified.
    #[error("edge router {router} refused the dial: {failure}")]
    Dial {
        /// Router name.
        router: String,
        /// Why.
        failure: crate::edge::DialFailure,
    },
    /// End-to-end encryption could not be set up.
    #[error("end-to-end encryption: {0}")]
    Crypto(#[from] crate::e2ee::E2eeError),
}
