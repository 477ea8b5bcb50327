//! Real failures, without an OpenZiti network, printed as the binary prints them: every cause
//! appears once in the chain, and the typed cause is reachable through `source()`.
//!
//! `cargo test -p ziti-tunnel --test error_chain -- --nocapture` shows the chains.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // test code: failing loudly is the point

use std::error::Error;
use std::io;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use ziti_dns::{DnsConfig, DnsServer, DnsTable, ServerError, Upstreams};
use ziti_sdk::Identity;
use ziti_sdk::error_report::{causes, error_chain, find_cause};
use ziti_sdk::router::{ConnectError, ConnectParams, RouterConnection, RouterError};
use ziti_tunnel::tunnel::TunnelError;

/// Prints the chain and checks that `cause` (the innermost error's text) is in it exactly once,
/// that no link repeats another's text, and that the chain is what the binary prints (anyhow's
/// `{:#}`).
fn check_chain<E: Error + Send + Sync + 'static>(label: &str, err: E, cause: &str) -> String {
    let chain = error_chain(&err).to_string();
    println!("{label}: {chain}");
    assert_eq!(
        chain.matches(cause).count(),
        1,
        "`{cause}` must appear exactly once in: {chain}"
    );
    for link in causes(&err) {
        let text = link.to_string();
        assert_eq!(
            chain.matches(text.as_str()).count(),
            1,
            "`{text}` repeats in: {chain}"
        );
    }
    assert_eq!(format!("{:#}", anyhow::Error::new(err)), chain);
    chain
}

async fn bind_dns_on(listen: SocketAddr) -> ServerError {
    let cfg = DnsConfig {
        listen,
        upstreams: Upstreams::List(Vec::new()),
        ..DnsConfig::default()
    };
    DnsServer::bind(&cfg, DnsTable::new(cfg.pool))
        .await
        .expect_err("the address is taken")
}

#[tokio::test]
async fn dns_bind_on_a_busy_address_names_the_os_error_once() {
    // Hold the address with a plain UDP socket, then ask the DNS server for it.
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let busy: SocketAddr = holder.local_addr().unwrap();
    let err = bind_dns_on(busy).await;
    assert!(
        matches!(err, ServerError::Bind { proto: "UDP", addr, .. } if addr == busy),
        "{err:?}"
    );
    let io = find_cause::<io::Error>(&err).expect("an io::Error in the chain");
    assert_eq!(io.kind(), io::ErrorKind::AddrInUse);
    let os_text = io.to_string();
    check_chain("DNS server", err, &os_text);

    // As `zt-tunnel run` reports it.
    let err = TunnelError::from(bind_dns_on(busy).await);
    let chain = check_chain("zt-tunnel run", err, &os_text);
    assert!(
        chain.starts_with(&format!(
            "cannot run the DNS server: cannot bind DNS UDP listener on {busy}: "
        )),
        "{chain}"
    );
}

/// A CA with a client certificate, as an enrolled identity holds them.
fn test_identity() -> Identity {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "error-chain test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca_params, ca_key);

    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "error-chain-client");
    let cert = params.signed_by(&key, &issuer).unwrap();
    Identity::from_pem(
        "https://127.0.0.1:1280",
        &cert.pem(),
        &key.serialize_pem(),
        &ca_cert.pem(),
    )
    .unwrap()
}

fn connect_params(identity: &Identity) -> ConnectParams {
    ConnectParams {
        tls: Arc::new(identity.rustls_client_config(&[b"ziti-edge"]).unwrap()),
        token: "not-a-real-token".into(),
        token_updates: None,
        label: "error-chain test".into(),
        connect_timeout: Duration::from_secs(10),
        sdk_flow_control: true,
    }
}

/// A TLS endpoint whose certificate is self-signed (not by the identity's CA); it accepts
/// connections until the test ends.
async fn rogue_tls_endpoint() -> SocketAddr {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    let server = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![CertificateDer::from(cert.der().to_vec())],
        PrivateKeyDer::from(PrivatePkcs8KeyDer::from(key.serialize_der())),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // The client aborts the handshake; the server side's error is not the subject.
                let _ = acceptor.accept(tcp).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn router_with_a_certificate_not_from_the_identity_ca_is_a_tls_error() {
    let identity = test_identity();
    let addr = rogue_tls_endpoint().await;
    let url = format!("tls://{addr}");
    let err = RouterConnection::connect("rogue-router", &url, connect_params(&identity))
        .await
        .expect_err("the router's certificate is not signed by the identity's CA");
    assert!(
        matches!(
            &err,
            RouterError::Connect { router, source: ConnectError::Tls(_), .. } if router == "rogue-router"
        ),
        "{err:?}"
    );
    let tls = find_cause::<rustls::Error>(&err).expect("a rustls::Error in the chain");
    assert!(
        matches!(
            tls,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
        ),
        "{tls:?}"
    );
    // Reachable with plain `source()` too, not only by looking inside I/O errors.
    assert!(causes(&err).any(|e| e.is::<rustls::Error>()));
    // Not an I/O error: a caller can tell a rejected certificate from a refused connection.
    assert!(find_cause::<io::Error>(&err).is_none(), "{err:?}");
    let tls_text = tls.to_string();
    let chain = check_chain("TLS", err, &tls_text);
    assert!(
        chain.starts_with(&format!(
            "cannot connect to edge router rogue-router at {url}: TLS failed: "
        )),
        "{chain}"
    );
}

#[tokio::test]
async fn refused_router_port_is_an_io_error_connection_refused() {
    let identity = test_identity();
    // Bind then drop a listener: nothing listens on the port afterwards.
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("tls://127.0.0.1:{port}");
    let err = RouterConnection::connect("gone-router", &url, connect_params(&identity))
        .await
        .expect_err("nothing listens there");
    assert!(
        matches!(
            &err,
            RouterError::Connect {
                source: ConnectError::Tcp(_),
                ..
            }
        ),
        "{err:?}"
    );
    let io = find_cause::<io::Error>(&err).expect("an io::Error in the chain");
    assert_eq!(io.kind(), io::ErrorKind::ConnectionRefused);
    let direct = causes(&err).find_map(|e| e.downcast_ref::<io::Error>());
    assert_eq!(
        direct.map(io::Error::kind),
        Some(io::ErrorKind::ConnectionRefused)
    );
    assert!(find_cause::<rustls::Error>(&err).is_none(), "{err:?}");
    let io_text = io.to_string();
    let chain = check_chain("refused", err, &io_text);
    assert!(
        chain.starts_with(&format!(
            "cannot connect to edge router gone-router at {url}: TCP connection failed: "
        )),
        "{chain}"
    );
}
