//! Printing and inspecting error chains.
//!
//! Every error type of this workspace either says its cause in its own text or hands it out
//! through [`source()`](std::error::Error::source), never both, so a chain printed link by link
//! names each cause once: `dial db: no edge router available: ...: TCP connection failed:
//! Connection refused (os error 111)`. A bare `%e` in a log line shows only the first link; log
//! errors with [`error_chain`] instead.
//!
//! ```
//! use ziti_sdk::error_report::{error_chain, find_cause};
//!
//! #[derive(Debug, thiserror::Error)]
//! #[error("cannot open the identity file")]
//! struct Load(#[source] std::io::Error);
//!
//! let err = Load(std::io::Error::from(std::io::ErrorKind::NotFound));
//! assert_eq!(error_chain(&err).to_string(), "cannot open the identity file: entity not found");
//! let io = find_cause::<std::io::Error>(&err).map(|e| e.kind());
//! assert_eq!(io, Some(std::io::ErrorKind::NotFound));
//! ```

use std::error::Error;
use std::fmt;

/// Longest chain printed or searched: chains are short, this guards against a cyclic one.
const MAX_LINKS: usize = 32;

/// Displays an error followed by each of its sources, separated by `: ` (what anyhow's `{:#}`
/// prints). Build it with [`error_chain`].
#[derive(Clone, Copy)]
pub struct ErrorChain<'a>(&'a (dyn Error + 'static));

impl fmt::Display for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        for cause in causes(self.0).skip(1) {
            write!(f, ": {cause}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for ErrorChain<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `err` and its whole `source()` chain as one line, `a: b: c`; use it wherever an error is
/// logged (`tracing::warn!(reason = %error_chain(&e), ...)`).
pub fn error_chain<'a>(err: &'a (dyn Error + 'static)) -> ErrorChain<'a> {
    ErrorChain(err)
}

/// `err` itself, then each `source()` in turn.
pub fn causes<'a>(
    err: &'a (dyn Error + 'static),
) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    std::iter::successors(Some(err), |e: &&'a (dyn Error + 'static)| {
        let e: &'a (dyn Error + 'static) = *e;
        e.source()
    })
    .take(MAX_LINKS)
}

/// The first link of the chain (starting with `err` itself) that is a `T`.
///
/// `std::io::Error` shows the error it wraps in its text but skips it in `source()`; this looks
/// inside such wrappers too (also nested ones), so a `rustls::Error` carried by an I/O error is
/// found. A source held as `Box<T>` is found as a `T`.
pub fn find_cause<'a, T: Error + 'static>(err: &'a (dyn Error + 'static)) -> Option<&'a T> {
    causes(err).find_map(|link| {
        let mut cur: &'a (dyn Error + 'static) = link;
        for _ in 0..MAX_LINKS {
            if let Some(found) = cur.downcast_ref::<T>() {
                return Some(found);
            }
            // A boxed source (`source: Box<E>`, used where an error type contains itself) is a
            // `Box<E>` to `downcast_ref`.
            if let Some(found) = cur.downcast_ref::<Box<T>>() {
                return Some(found.as_ref());
            }
            let wrapped = cur
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .map(|inner| -> &'a (dyn Error + 'static) { inner })?;
            cur = wrapped;
        }
        None
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("middle")]
    struct Middle(#[source] std::io::Error);

    #[derive(Debug, thiserror::Error)]
    #[error("wrapped")]
    struct Wrapped;

    #[test]
    fn prints_every_link_once() {
        let e = Outer(Middle(std::io::Error::other("inner")));
        assert_eq!(error_chain(&e).to_string(), "outer: middle: inner");
        assert_eq!(causes(&e).count(), 3);
    }

    /// The house rule: a link's text never contains its source's text.
    fn assert_no_repeats(err: &(dyn Error + 'static)) {
        for link in causes(err) {
            if let Some(source) = link.source() {
                let (outer, inner) = (link.to_string(), source.to_string());
                assert!(
                    !outer.contains(&inner),
                    "`{outer}` repeats its source `{inner}`"
                );
            }
        }
    }

    #[test]
    fn sdk_errors_say_each_cause_once() {
        use crate::controller::{ApiError, ControllerError};
        use crate::edge::{ConnError, DialFailure};
        use crate::router::{ConnectError, RouterError};
        use crate::{DialCause, DialError, E2eeError, EnrollError, ListenError};

        let io = || std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
        let refused = || RouterError::Connect {
            router: "er1".into(),
            url: "tls://h:1".into(),
            source: ConnectError::Tcp(io()),
        };
        let api = ApiError::from_body(401, br#"{"error":{"code":"INVALID_AUTH","message":"no"}}"#);
        let errors: Vec<Box<dyn Error>> = vec![
            Box::new(refused()),
            Box::new(RouterError::NoneReachable {
                source: Box::new(refused()),
                others: vec![refused()],
            }),
            Box::new(RouterError::Connect {
                router: "er1".into(),
                url: "tls://h:1".into(),
                source: ConnectError::Tls(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer,
                )),
            }),
            Box::new(RouterError::Protocol {
                router: "er1".into(),
                source: ConnError::Crypto(E2eeError::WeakPeerKey),
            }),
            Box::new(RouterError::Crypto(E2eeError::Decrypt)),
            Box::new(DialError::NoEdgeRouters {
                service: "db".into(),
                source: DialCause::Router(refused()),
            }),
            Box::new(DialError::NotAuthorized {
                service: "db".into(),
                source: DialCause::Router(RouterError::Dial {
                    router: "er1".into(),
                    failure: DialFailure::NotAuthorized("no access to service".into()),
                }),
            }),
            Box::new(DialError::Failed {
                service: "db".into(),
                source: DialCause::Controller(ControllerError::Api(api.clone())),
            }),
            Box::new(ListenError::Bind {
                service: "db".into(),
                source: refused(),
                others: Vec::new(),
            }),
            Box::new(ControllerError::Authentication {
                kind: "OIDC",
                cause: Box::new(ControllerError::Api(api.clone())),
            }),
            Box::new(EnrollError::Controller(api)),
            Box::new(crate::identity::IdentityError::Io {
                path: "/x".into(),
                source: io(),
            }),
        ];
        for err in &errors {
            assert_no_repeats(err.as_ref());
        }
        // A boxed source is still found by its type.
        let first = errors[1].source().and_then(find_cause::<RouterError>);
        assert!(
            matches!(first, Some(RouterError::Connect { .. })),
            "{first:?}"
        );
        // The dial failure keeps the wording the README documents, with the cause after it.
        let text = error_chain(errors[5].as_ref()).to_string();
        assert!(
            text.starts_with("dial db: no edge router available: cannot connect to edge router er1 at tls://h:1: TCP connection failed: "),
            "{text}"
        );
        let text = error_chain(errors[6].as_ref()).to_string();
        assert!(text.starts_with("dial db: not authorized: "), "{text}");
        let text = errors[9].to_string();
        assert!(text.contains("did not accept this identity"), "{text}");
    }

    #[test]
    fn finds_causes_inside_io_errors() {
        let e = Outer(Middle(std::io::Error::other(Wrapped)));
        assert!(find_cause::<Wrapped>(&e).is_some());
        let nested = Middle(std::io::Error::other(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            Wrapped,
        )));
        assert!(find_cause::<Wrapped>(&nested).is_some());
        assert!(find_cause::<Middle>(&e).is_some());
        assert!(find_cause::<std::fmt::Error>(&e).is_none());
    }
}
