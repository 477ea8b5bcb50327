//! Router connections (tokio drivers over the sans-IO [`crate::channel`] and [`crate::edge`]
//! cores): TLS to edge routers, the hello, multiplexing edge connections on one channel per
//! router, dialing and hosting.

mod bind;
mod connection;
mod dial;
mod pool;
mod stream;

pub use bind::{BindOptions, Binding, IncomingDial};
pub(crate) use connection::parse_router_url;
pub use connection::{ConnectParams, RouterConnection};
pub use dial::DialRequest;
pub use pool::{DEFAULT_DIAL_CHANNELS, RouterAddr, RouterPool};
pub use stream::{EdgeReadHalf, EdgeStream, EdgeWriteHalf, PeerInfo, StreamError};

use std::io;
use std::time::Duration;

/// Failures of a router channel.
///
/// Each variant says what failed; `source()` says why (see [`crate::error_report`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RouterError {
    /// TCP, TLS or the hello failed; the source tells which ([`ConnectError`]).
    #[error("cannot connect to edge router {router} at {url}")]
    Connect {
        /// Router name.
        router: String,
        /// URL tried.
        url: String,
        /// What failed.
        #[source]
        source: ConnectError,
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
    /// The session offers no edge router.
    #[error("the session lists no edge routers")]
    NoRouters,
    /// None of the offered routers could be reached: `source()` is the first failure (a
    /// `Box<RouterError>`; [`find_cause`](crate::error_report::find_cause) sees through the box),
    /// `others` the rest.
    #[error("no edge router reachable ({} tried)", 1 + others.len())]
    NoneReachable {
        /// The first failure.
        #[source]
        source: Box<RouterError>,
        /// The failures of the other routers.
        others: Vec<RouterError>,
    },
    /// The router refused an operation (body text of its StateClosed).
    #[error("edge router {router} refused: {reason}")]
    Refused {
        /// Router name.
        router: String,
        /// Router's text.
        reason: String,
    },
    /// The router refused a dial; the source is the classified reason.
    #[error("edge router {router} refused the dial")]
    Dial {
        /// Router name.
        router: String,
        /// Why.
        #[source]
        failure: crate::edge::DialFailure,
    },
    /// The router's answer does not fit the edge protocol (e.g. an encrypted service answered
    /// without the host's key).
    #[error("unusable answer from edge router {router}")]
    Protocol {
        /// Router name.
        router: String,
        /// What is wrong with it.
        #[source]
        source: crate::edge::ConnError,
    },
    /// Too many dials already wait their turn on this router connection.
    #[error("{waiting} dials already wait for edge router {router}; try again later")]
    Busy {
        /// Router name.
        router: String,
        /// Dials waiting.
        waiting: usize,
    },
    /// Every edge connection id of the channel is in use.
    #[error("no free connection id on the channel to edge router {router}")]
    NoFreeConnId {
        /// Router name.
        router: String,
    },
    /// End-to-end encryption could not be set up.
    #[error("end-to-end encryption setup failed")]
    Crypto(#[from] crate::e2ee::E2eeError),
    /// The task connecting to a router panicked or was cancelled.
    #[error("edge router connect task failed")]
    Task(#[source] tokio::task::JoinError),
    /// The pool's state is unusable (a thread panicked while holding its lock).
    #[error("edge router pool state is unavailable")]
    PoolUnavailable,
    /// The context owning the pool was dropped or closed: it opens no more router channels.
    #[error("the Ziti context is closed: it opens no more edge router channels")]
    PoolClosed,
}

/// Why a connection to an edge router could not be opened.
///
/// The variants tell a refused or unreachable router ([`Tcp`](Self::Tcp)), a rejected
/// certificate or other TLS failure ([`Tls`](Self::Tls)) and a router that does not speak the
/// protocol (the hello variants) apart.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed (refused, unreachable, timed out by the OS, ...).
    #[error("TCP connection failed")]
    Tcp(#[source] io::Error),
    /// The router host is not a valid DNS name or IP address.
    #[error("invalid router host name {host:?}")]
    HostName {
        /// The host part of the URL.
        host: String,
        /// Why rustls refused it.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// TLS failed: the router's certificate was rejected, ours was, or the router sent an alert.
    #[error("TLS failed")]
    Tls(#[source] rustls::Error),
    /// Reading or writing failed during the TLS handshake or the hello (e.g. reset).
    #[error("connection broke during the TLS handshake or hello")]
    Io(#[source] io::Error),
    /// Our hello could not be encoded.
    #[error("cannot encode the hello")]
    EncodeHello(#[source] crate::channel::FrameError),
    /// The router's answer is not a valid channel frame.
    #[error("malformed answer to the hello")]
    Frame(#[source] crate::channel::FrameError),
    /// The router answered the hello with some other message.
    #[error("expected a hello answer, got content type {0}")]
    UnexpectedAnswer(i32),
    /// The router closed the connection before answering the hello.
    #[error("router closed the connection during the hello")]
    ClosedDuringHello,
    /// The router rejected the hello; its message.
    #[error("hello rejected: {0}")]
    HelloRejected(String),
    /// The router did not answer the hello in time.
    #[error("no answer to the hello within {0:?}")]
    HelloTimeout(Duration),
    /// TCP, TLS and hello together took longer than the connect timeout.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl ConnectError {
    /// Classifies an I/O error of the TLS stream: tokio-rustls reports TLS failures as I/O
    /// errors carrying a `rustls::Error`, which becomes [`ConnectError::Tls`].
    pub(crate) fn from_tls_io(e: io::Error) -> Self {
        if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
            return Self::Io(e);
        }
        let kind = e.kind();
        match e
            .into_inner()
            .map(|inner| inner.downcast::<rustls::Error>())
        {
            Some(Ok(tls)) => Self::Tls(*tls),
            Some(Err(other)) => Self::Io(io::Error::new(kind, other)),
            None => Self::Io(io::Error::from(kind)),
        }
    }
}
