//! rustls configurations: mutual TLS from an identity, plus the two special server verifiers that
//! enrollment needs before a CA bundle exists.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use x509_parser::error::X509Error;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

use super::{Identity, IdentityError, KeyType};

/// The ring crypto provider every TLS configuration of this crate uses (no process-global state).
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Mutual-TLS configuration from an identity: roots = only `id.ca`.
pub(super) fn client_config(
    id: &Identity,
    alpn: &[&[u8]],
) -> Result<rustls::ClientConfig, IdentityError> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(id.ca_certs_der()?);
    if added == 0 {
        return Err(IdentityError::InvalidPem {
            what: "CA bundle",
            reason: "no usable CA certificate".into(),
        });
    }
    let key = id.private_key_der()?;
    // Check the key type first so an unsupported curve gets a clear message rather than a generic
    // rustls error.
    if let Err(e) = rustls::crypto::ring::sign::any_supported_type(&key) {
        return Err(IdentityError::UnsupportedKey(e));
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(id.cert_chain_der()?, key)?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Common name and key type of a leaf certificate.
pub(super) fn leaf_summary(leaf: &CertificateDer<'_>) -> Result<(String, KeyType), IdentityError> {
    let (_, cert) = X509Certificate::from_der(leaf)
        .map_err(|e| IdentityError::Certificate(X509Error::from(e)))?;
    let name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    let key_type = match cert.public_key().parsed() {
        Ok(PublicKey::RSA(rsa)) => KeyType::Rsa(rsa.key_size()),
        Ok(PublicKey::EC(point)) => match point.key_size() {
            256 => KeyType::EcP256,
            384 => KeyType::EcP384,
            bits => {
                return Err(IdentityError::UnsupportedCertificateKey(format!(
                    "EC key of {bits} bits"
                )));
            }
        },
        Ok(_) => {
            return Err(IdentityError::UnsupportedCertificateKey(
                "unknown public key type".into(),
            ));
        }
        Err(e) => return Err(IdentityError::Certificate(e)),
    };
    Ok((name, key_type))
}

/// Validity period of a certificate.
pub(super) fn validity(
    cert: &CertificateDer<'_>,
) -> Result<super::CertificateValidity, IdentityError> {
    let (_, cert) = X509Certificate::from_der(cert)
        .map_err(|e| IdentityError::Certificate(X509Error::from(e)))?;
    let v = cert.validity();
    Ok(super::CertificateValidity {
        not_before: v.not_before.timestamp(),
        not_after: v.not_after.timestamp(),
    })
}

/// Accepts any server certificate. Only used for the very first enrollment request, whose sole
/// purpose is to learn the controller's leaf certificate; nothing secret is sent over it and the
/// leaf is then authenticated by the JWT signature.
#[derive(Debug)]
pub(crate) struct AcceptAnyServerCert(Arc<CryptoProvider>);

impl AcceptAnyServerCert {
    pub(crate) fn new() -> Self {
        Self(ring_provider())
    }
}

/// Accepts exactly one server leaf certificate (byte-equal DER), the one whose key signed the
/// enrollment JWT. webpki cannot use a leaf as its own trust anchor, so pinning is done here.
#[derive(Debug)]
pub(crate) struct PinnedLeafVerifier {
    leaf: CertificateDer<'static>,
    provider: Arc<CryptoProvider>,
}

impl PinnedLeafVerifier {
    pub(crate) fn new(leaf: CertificateDer<'static>) -> Self {
        Self {
            leaf,
            provider: ring_provider(),
        }
    }
}

fn verify12(
    p: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls12_signature(message, cert, dss, &p.signature_verification_algorithms)
}

fn verify13(
    p: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(message, cert, dss, &p.signature_verification_algorithms)
}

impl ServerCertVerifier for AcceptAnyServerCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(&self.0, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(&self.0, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl ServerCertVerifier for PinnedLeafVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.leaf.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "controller presented a different certificate than the one that signed the \
                 enrollment token"
                    .into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify12(&self.provider, message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify13(&self.provider, message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client config (no client cert) using a custom server verifier.
pub(crate) fn config_with_verifier(
    verifier: Arc<dyn ServerCertVerifier>,
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// A client config (no client cert) trusting only `roots`.
pub(crate) fn config_with_roots(
    roots: &[CertificateDer<'static>],
) -> Result<rustls::ClientConfig, rustls::Error> {
    let mut store = RootCertStore::empty();
    store.add_parsable_certificates(roots.iter().cloned());
    let mut cfg = rustls::ClientConfig::builder_with_provider(ring_provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(store)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}
