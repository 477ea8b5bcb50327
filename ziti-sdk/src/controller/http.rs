//! HTTP plumbing shared by enrollment and the controller client: reqwest clients over our own
//! rustls configurations, and transport errors a person can act on.

use std::time::Duration;

use url::Url;

/// The controller could not be reached (DNS, TCP, TLS or timeout), as opposed to answering with
/// an error.
///
/// The text ends with a short summary of the cause (`connection refused`, `TLS handshake
/// failed: invalid peer certificate: UnknownIssuer`, ...), so the transport error is not also
/// given as `source()`; [`io_error_kind`](Self::io_error_kind), [`tls_error`](Self::tls_error)
/// and [`transport_error`](Self::transport_error) hand out the typed cause.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach controller at {origin}: {reason}")]
pub struct Unreachable {
    /// `scheme://host:port` that was tried.
    pub origin: String,
    /// Short cause, e.g. `connection refused`.
    pub reason: String,
    transport: reqwest::Error,
}

impl Unreachable {
    /// Wraps a reqwest transport error for a request to `url`.
    pub(crate) fn new(url: &Url, transport: reqwest::Error) -> Self {
        let host = url.host_str().unwrap_or("?");
        let origin = match url.port_or_known_default() {
            Some(p) => format!("{}://{host}:{p}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        Self {
            origin,
            reason: describe(&transport),
            transport,
        }
    }

    /// The transport error as reqwest reported it, with its own cause chain.
    pub fn transport_error(&self) -> &reqwest::Error {
        &self.transport
    }

    /// The kind of the underlying I/O error (e.g. `ConnectionRefused`), if there is one.
    pub fn io_error_kind(&self) -> Option<std::io::ErrorKind> {
        crate::error_report::find_cause::<std::io::Error>(&self.transport).map(|e| e.kind())
    }

    /// The TLS error, when TLS failed (e.g. the controller's certificate is not signed by the
    /// identity's CA).
    pub fn tls_error(&self) -> Option<&rustls::Error> {
        crate::error_report::find_cause::<rustls::Error>(&self.transport)
    }
}

/// Finds the most telling cause in a reqwest error chain.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".into();
    }
    // TLS errors travel inside (possibly nested) I/O errors, which skip them in `source()`.
    if let Some(tls) = crate::error_report::find_cause::<rustls::Error>(err) {
        return format!("TLS handshake failed: {tls}");
    }
    let mut deepest: Option<String> = None;
    for e in crate::error_report::causes(err).skip(1) {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            use std::io::ErrorKind as K;
            let short = match io.kind() {
                K::ConnectionRefused => Some("connection refused"),
                K::ConnectionReset => Some("connection reset"),
                K::TimedOut => Some("timed out"),
                K::HostUnreachable => Some("host unreachable"),
                K::NetworkUnreachable => Some("network unreachable"),
                _ => None,
            };
            if let Some(s) = short {
                return s.into();
            }
        }
        deepest = Some(e.to_string());
    }
    deepest.unwrap_or_else(|| err.to_string())
}

/// Builds a reqwest client over a ready rustls configuration. Redirects are never followed: the
/// OIDC flow reads `Location` headers itself, and nothing else redirects.
pub(crate) fn client(
    tls: rustls::ClientConfig,
    timeout: Duration,
    tls_info: bool,
) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .tls_info(tls_info)
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(timeout)
        .timeout(timeout)
        // Controllers close keep-alive connections idle for 5 s (xweb's default `idleTimeout`);
        // a request sent on one just as it closes fails with "connection closed before message
        // completed" (seen with a 5 s service poll). Idle connections are dropped sooner here.
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .https_only(true)
        .build()
}

/// How long an idle connection to a controller is kept for reuse: under the controller's own
/// 5 s idle timeout, so we never reuse one the controller is closing.
pub(crate) const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(3);

/// Upper bound for bodies we read into memory from the controller.
pub(crate) const MAX_BODY: usize = 16 * 1024 * 1024;

/// Reads a response body, refusing absurd sizes.
pub(crate) async fn read_body(
    url: &Url,
    mut resp: reqwest::Response,
) -> Result<Vec<u8>, Unreachable> {
    let mut out = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| Unreachable::new(url, e))? {
        if out.len() + chunk.len() > MAX_BODY {
            break;
        }
        out.extend_from_slice(&chunk);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn refused_connection_names_url_and_port() {
        // Bind then drop a listener to get a port that refuses connections.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let url = Url::parse(&format!("https://127.0.0.1:{port}/edge/client/v1/version")).unwrap();
        let tls = crate::identity::tls_config_with_roots(&[]).unwrap();
        let c = client(tls, Duration::from_secs(5), false).unwrap();
        let err = c.get(url.clone()).send().await.unwrap_err();
        let u = Unreachable::new(&url, err);
        assert_eq!(
            u.to_string(),
            format!("cannot reach controller at https://127.0.0.1:{port}: connection refused")
        );
        assert_eq!(
            u.io_error_kind(),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        assert!(u.tls_error().is_none());
        // The summary is the cause: nothing repeats it through `source()`.
        assert!(std::error::Error::source(&u).is_none());
    }

    #[tokio::test]
    async fn certificate_from_another_ca_is_a_tls_error() {
        use crate::identity::test_pki::TestCa;
        // A TLS server whose certificate comes from a CA the client does not trust.
        let other = TestCa::new("other-ca");
        let key = rcgen::KeyPair::generate().unwrap();
        let (_, cert_der) = other.server_cert(&key);
        let server = rustls::ServerConfig::builder_with_provider(crate::identity::ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls_pki_types::CertificateDer::from(cert_der)],
                rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let _ = acceptor.accept(tcp).await;
            }
        });

        let trusted = TestCa::new("identity-ca");
        let roots = [rustls_pki_types::CertificateDer::from(trusted.der.clone())];
        let tls = crate::identity::tls_config_with_roots(&roots).unwrap();
        let c = client(tls, Duration::from_secs(5), false).unwrap();
        let url = Url::parse(&format!("https://127.0.0.1:{port}/edge/client/v1/version")).unwrap();
        let err = c.get(url.clone()).send().await.unwrap_err();
        let u = Unreachable::new(&url, err);
        assert!(
            matches!(
                u.tls_error(),
                Some(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::UnknownIssuer
                ))
            ),
            "{u} / {:?}",
            u.transport_error()
        );
        assert!(u.reason.starts_with("TLS handshake failed"), "{u}");
    }
}
