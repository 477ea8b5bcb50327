//! Reachability probes for troubleshooting: open TCP to a controller or an edge router, complete
//! a TLS handshake with the identity's client certificate and its CA as the only trust roots,
//! measure both, and hang up. Nothing is sent beyond the handshake (no token, no hello).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! let id = ziti_sdk::Identity::load("alice.json")?;
//! let probe = ziti_sdk::probe::probe_controller(&id, id.client_api_url(), Duration::from_secs(10)).await?;
//! println!("{} in {:?} (TLS {:?})", probe.address, probe.connect, probe.handshake);
//! # Ok(()) }
//! ```

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls_pki_types::ServerName;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use url::Url;

use crate::identity::{Identity, IdentityError};

/// A successful probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TlsProbe {
    /// The address the TCP connection went to.
    pub address: SocketAddr,
    /// Time to resolve the name and open the TCP connection.
    pub connect: Duration,
    /// Time of the TLS handshake after that.
    pub handshake: Duration,
}

/// Why a probe failed. Each variant names `host:port`; `source()` gives the cause.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProbeError {
    /// The address is not `host:port` (or `tls://host:port` for a router).
    #[error("unusable address {0:?}")]
    BadAddress(String),
    /// The identity's TLS material is unusable.
    #[error("the identity's TLS material is unusable")]
    Identity(#[source] IdentityError),
    /// Name resolution or the TCP connection failed (refused, unreachable, ...).
    #[error("cannot connect ({host}:{port})")]
    Connect {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The host is not a valid DNS name or IP address for TLS.
    #[error("invalid TLS server name {host:?}")]
    HostName {
        /// Host.
        host: String,
        /// Why rustls refused it.
        #[source]
        source: rustls_pki_types::InvalidDnsNameError,
    },
    /// TLS failed: the peer's certificate was rejected (see
    /// [`certificate_rejected`](Self::certificate_rejected)), or the peer sent an alert.
    #[error("TLS with {host}:{port} failed")]
    Tls {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The TLS error.
        #[source]
        source: rustls::Error,
    },
    /// The connection broke during the handshake (e.g. reset, or closed by the peer).
    #[error("connection to {host}:{port} broke during the TLS handshake")]
    Io {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// TCP and TLS together took longer than allowed.
    #[error("no TLS connection to {host}:{port} within {after:?}")]
    Timeout {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// The timeout.
        after: Duration,
        /// `true` if the TCP connection was already open (the TLS handshake stalled).
        connected: bool,
    },
}

impl ProbeError {
    /// `true` when the peer's certificate was not accepted: it is not signed by the identity's
    /// CA, names another host, or is expired. The identity's CA does not match the peer.
    pub fn certificate_rejected(&self) -> bool {
        matches!(
            self,
            Self::Tls {
                source: rustls::Error::InvalidCertificate(_)
                    | rustls::Error::InvalidCertRevocationList(_),
                ..
            }
        )
    }

    /// `true` when TLS was never attempted because no TCP connection could be opened.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Timeout {
                    connected: false,
                    ..
                }
        )
    }
}

/// Probes the controller of a Client API URL (`https://host:port/...`) with ALPN `http/1.1`.
pub async fn probe_controller(
    identity: &Identity,
    api_url: &Url,
    timeout: Duration,
) -> Result<TlsProbe, ProbeError> {
    let host = api_url
        .host_str()
        .ok_or_else(|| ProbeError::BadAddress(api_url.to_string()))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = api_url
        .port_or_known_default()
        .ok_or_else(|| ProbeError::BadAddress(api_url.to_string()))?;
    probe_tls(identity, host, port, &[b"http/1.1"], timeout).await
}

/// Probes an edge router's `tls://host:port` listener with ALPN `ziti-edge`, as the SDK connects.
pub async fn probe_edge_router(
    identity: &Identity,
    url: &str,
    timeout: Duration,
) -> Result<TlsProbe, ProbeError> {
    let (host, port) = crate::router::parse_router_url(url)
        .map_err(|_| ProbeError::BadAddress(url.to_string()))?;
    probe_tls(identity, &host, port, &[b"ziti-edge"], timeout).await
}

/// Opens TCP to `host:port`, completes a mutual-TLS handshake (roots = only `id.ca`, client
/// certificate = `id.cert`), then closes. `timeout` bounds TCP and TLS together.
pub async fn probe_tls(
    identity: &Identity,
    host: &str,
    port: u16,
    alpn: &[&[u8]],
    timeout: Duration,
) -> Result<TlsProbe, ProbeError> {
    let config = identity
        .rustls_client_config(alpn)
        .map_err(ProbeError::Identity)?;
    let server_name =
        ServerName::try_from(host.to_string()).map_err(|source| ProbeError::HostName {
            host: host.to_string(),
            source,
        })?;
    let mut connected = false;
    let attempt = probe_inner(Arc::new(config), server_name, host, port, &mut connected);
    match tokio::time::timeout(timeout, attempt).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            host: host.to_string(),
            port,
            after: timeout,
            connected,
        }),
    }
}

async fn probe_inner(
    config: Arc<rustls::ClientConfig>,
    server_name: ServerName<'static>,
    host: &str,
    port: u16,
    connected: &mut bool,
) -> Result<TlsProbe, ProbeError> {
    let start = Instant::now();
    let tcp = TcpStream::connect((host, port))
        .await
        .map_err(|source| ProbeError::Connect {
            host: host.to_string(),
            port,
            source,
        })?;
    *connected = true;
    let connect = start.elapsed();
    let address = tcp.peer_addr().map_err(|source| ProbeError::Io {
        host: host.to_string(),
        port,
        source,
    })?;
    let _ = tcp.set_nodelay(true);
    let tls_start = Instant::now();
    let mut tls = TlsConnector::from(config)
        .connect(server_name, tcp)
        .await
        .map_err(|e| tls_io_error(host, port, e))?;
    let handshake = tls_start.elapsed();
    // Best effort: say goodbye properly so the peer does not log a broken connection.
    let _ = tls.shutdown().await;
    Ok(TlsProbe {
        address,
        connect,
        handshake,
    })
}

/// tokio-rustls reports TLS failures as I/O errors carrying a `rustls::Error`.
fn tls_io_error(host: &str, port: u16, e: io::Error) -> ProbeError {
    let (host, kind) = (host.to_string(), e.kind());
    if !e.get_ref().is_some_and(|inner| inner.is::<rustls::Error>()) {
        return ProbeError::Io {
            host,
            port,
            source: e,
        };
    }
    match e
        .into_inner()
        .map(|inner| inner.downcast::<rustls::Error>())
    {
        Some(Ok(tls)) => ProbeError::Tls {
            host,
            port,
            source: *tls,
        },
        Some(Err(other)) => ProbeError::Io {
            host,
            port,
            source: io::Error::new(kind, other),
        },
        None => ProbeError::Io {
            host,
            port,
            source: io::Error::from(kind),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_pki::{TestCa, keys};

    fn identity(ca: &TestCa, url: &str) -> Identity {
        let cert = ca.client_cert("probe", keys::P256_PKCS8);
        Identity::from_pem(url, &cert, keys::P256_PKCS8, &ca.pem).unwrap()
    }

    /// A TLS server on 127.0.0.1 with a certificate from `ca`; returns its port.
    async fn tls_server(ca: &TestCa) -> u16 {
        let key = rcgen::KeyPair::generate().unwrap();
        let (_, cert_der) = ca.server_cert(&key);
        let server = rustls::ServerConfig::builder_with_provider(crate::identity::ring_provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls_pki_types::CertificateDer::from(cert_der)],
                rustls_pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    if let Ok(mut s) = acceptor.accept(tcp).await {
                        let _ = s.shutdown().await;
                    }
                });
            }
        });
        port
    }

    #[tokio::test]
    async fn verified_refused_and_foreign_ca() {
        let ca = TestCa::new("net-ca");
        let port = tls_server(&ca).await;
        let url = Url::parse(&format!("https://127.0.0.1:{port}/edge/client/v1")).unwrap();
        let t = Duration::from_secs(10);

        let ok = probe_controller(&identity(&ca, url.as_str()), &url, t)
            .await
            .unwrap();
        assert_eq!(ok.address.port(), port);

        let other = TestCa::new("other-ca");
        let err = probe_controller(&identity(&other, url.as_str()), &url, t)
            .await
            .unwrap_err();
        assert!(err.certificate_rejected(), "{err:?}");
        assert!(!err.is_connect_failure());

        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = probe_edge_router(
            &identity(&ca, url.as_str()),
            &format!("tls://127.0.0.1:{closed}"),
            t,
        )
        .await
        .unwrap_err();
        assert!(err.is_connect_failure(), "{err:?}");
        assert_eq!(
            err.to_string(),
            format!("cannot connect (127.0.0.1:{closed})")
        );

        let err = probe_edge_router(&identity(&ca, url.as_str()), "tls://nowhere", t)
            .await
            .unwrap_err();
        assert!(matches!(err, ProbeError::BadAddress(_)), "{err:?}");
    }
}
