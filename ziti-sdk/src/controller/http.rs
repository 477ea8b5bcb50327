//! HTTP plumbing shared by enrollment and the controller client: reqwest clients over our own
//! rustls configurations, and transport errors a person can act on.

use std::error::Error as _;
use std::time::Duration;

use url::Url;

/// The controller could not be reached (DNS, TCP, TLS or timeout), as opposed to answering with
/// an error.
#[derive(Debug, thiserror::Error)]
#[error("cannot reach controller at {origin}: {reason}")]
pub struct Unreachable {
    /// `scheme://host:port` that was tried.
    pub origin: String,
    /// Short cause, e.g. `connection refused`.
    pub reason: String,
    #[source]
    source: reqwest::Error,
}

impl Unreachable {
    /// Wraps a reqwest transport error for a request to `url`.
    pub(crate) fn new(url: &Url, source: reqwest::Error) -> Self {
        let host = url.host_str().unwrap_or("?");
        let origin = match url.port_or_known_default() {
            Some(p) => format!("{}://{host}:{p}", url.scheme()),
            None => format!("{}://{host}", url.scheme()),
        };
        Self {
            origin,
            reason: describe(&source),
            source,
        }
    }
}

/// Finds the most telling cause in a reqwest error chain.
fn describe(err: &reqwest::Error) -> String {
    if err.is_timeout() {
        return "timed out".into();
    }
    let mut deepest: Option<String> = None;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = err.source();
    // Bounded: error chains are short, this guards against a cyclic one.
    for _ in 0..16 {
        let Some(e) = cur else { break };
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
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return format!("TLS handshake failed: {tls}");
        }
        deepest = Some(e.to_string());
        cur = e.source();
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
        .https_only(true)
        .build()
}

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
    }
}
