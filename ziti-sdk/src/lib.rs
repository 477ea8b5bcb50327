//! Pure-Rust OpenZiti SDK.
//!
//! The crate is split the way quinn-proto/quinn and rustls are: a sans-IO core (channel framing,
//! edge messages, end-to-end encryption) that turns bytes into events, and thin tokio drivers
//! (controller REST client, router connections, streams) on top.

// ---- public API ----
/// [`ZitiContext`]: authenticate an identity, `dial` services, `listen` to host them.
pub mod context;
/// Printing error chains (`a: b: c`) and finding typed causes in them.
pub mod error_report;

// ---- control plane ----
/// Controller Edge Client API: HTTP client, authentication (OIDC and legacy), error envelope.
pub mod controller;
/// One-time-token enrollment: JWT verification, CA bootstrap, CSR, identity file output.
pub mod enroll;
/// Identity files (`ztAPI`, `id.cert`/`id.key`/`id.ca`) and the TLS material they hold.
pub mod identity;
/// Reachability probes (TCP + TLS against the identity's CA) for troubleshooting.
pub mod probe;
/// Services and their config types (`intercept.v1`, `host.v1`, `host.v2`, ...), change events.
pub mod services;
/// Dial/Bind sessions and edge-router lists.
pub mod session;

// ---- data plane: pure core ----
/// Channel V2 wire format: frames, headers, value encodings.
pub mod channel;
/// End-to-end encryption compatible with libsodium `crypto_kx` + `secretstream`.
pub mod e2ee;
/// Edge messages (Connect, Data, StateClosed, Bind, Dial, ...) and per-connection state.
pub mod edge;
/// SDK xgress mode (header 1028): per-circuit windows, acknowledgements and retransmission.
pub mod xgress;

// ---- data plane: tokio drivers ----
/// Router connections: TLS, hello, multiplexing edge connections, dial and bind.
pub mod router;

pub use context::{
    ContextOptions, DialCause, DialError, DialOptions, ListenError, ListenOptions, ZitiContext,
    ZitiListener,
};
pub use error_report::{ErrorChain, error_chain};
pub use identity::Identity;
pub use router::EdgeStream;

// ---- control-plane re-exports ----
pub use controller::{ApiToken, AuthMethod, Controller, ControllerConfig, ControllerError};
pub use enroll::{EnrollError, EnrollKeyType, EnrollOptions, enroll};
pub use services::{Service, ServiceEvent};
pub use session::{CurrentIdentity, EdgeRouter, Session, SessionType};

// ---- data-plane core re-exports ----
pub use channel::{FrameDecoder, FrameError, Headers, Message};
pub use e2ee::{Decryptor, E2eeError, Encryptor, KeyPair};
pub use edge::{ConnEvent, DialFailure, EdgeConn, EdgeMessage};
