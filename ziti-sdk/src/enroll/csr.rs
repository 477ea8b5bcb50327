//! Key generation and the PKCS#10 certificate request sent at enrollment.

use rcgen::{CertificateParams, DnType, KeyPair};

/// Which key to generate for the new identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum EnrollKeyType {
    /// ECDSA P-256 (what the C SDK generates; the default).
    #[default]
    EcP256,
    /// ECDSA P-384 (what the Go SDK generates).
    EcP384,
    /// RSA 2048.
    Rsa2048,
    /// RSA 4096 (what `ziti edge enroll` generates by default). Slow to generate in debug builds.
    Rsa4096,
}

/// Why the identity's key or its certificate request could not be made.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeyGenError {
    /// RSA key generation failed.
    #[error("RSA key generation failed")]
    Rsa(#[source] rsa::Error),
    /// The RSA key could not be encoded as PKCS#8.
    #[error("RSA key encoding failed")]
    RsaEncoding(#[source] rsa::pkcs8::Error),
    /// rcgen could not create or load the key.
    #[error("key generation failed")]
    Key(#[source] rcgen::Error),
    /// The certificate request could not be built or encoded.
    #[error("certificate request encoding failed")]
    Csr(#[source] rcgen::Error),
    /// The blocking task generating the key panicked or was cancelled.
    #[error("key generation task failed")]
    Task(#[source] tokio::task::JoinError),
}

/// A generated private key: PKCS#8 PEM plus an rcgen handle for signing the CSR.
pub(crate) struct GeneratedKey {
    pub pem: String,
    pub pair: KeyPair,
}

/// Generates a key. RSA generation takes a while; call it from a blocking thread.
pub(crate) fn generate(kind: EnrollKeyType) -> Result<GeneratedKey, KeyGenError> {
    let pair = match kind {
        EnrollKeyType::EcP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        EnrollKeyType::EcP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        EnrollKeyType::Rsa2048 | EnrollKeyType::Rsa4096 => {
            // ring (and so rcgen on ring) can sign with RSA but not generate RSA keys.
            use rsa::pkcs8::{EncodePrivateKey, LineEnding};
            let bits = if kind == EnrollKeyType::Rsa2048 {
                2048
            } else {
                4096
            };
            let key =
                rsa::RsaPrivateKey::new(&mut rand_core::OsRng, bits).map_err(KeyGenError::Rsa)?;
            let pem = key
                .to_pkcs8_pem(LineEnding::LF)
                .map_err(KeyGenError::RsaEncoding)?;
            KeyPair::from_pem(&pem)
        }
    }
    .map_err(KeyGenError::Key)?;
    Ok(GeneratedKey {
        pem: pair.serialize_pem(),
        pair,
    })
}

/// A PEM CSR with subject `O=OpenZiti, CN=<common_name>` (the controller keeps the subject and adds
/// its own SPIFFE SAN).
pub(crate) fn csr_pem(key: &KeyPair, common_name: &str) -> Result<String, KeyGenError> {
    let mut params = CertificateParams::new(Vec::<String>::new()).map_err(KeyGenError::Csr)?;
    params
        .distinguished_name
        .push(DnType::OrganizationName, "OpenZiti");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params
        .serialize_request(key)
        .and_then(|csr| csr.pem())
        .map_err(KeyGenError::Csr)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::FromDer;

    #[test]
    fn ec_csr_carries_the_common_name() {
        for kind in [EnrollKeyType::EcP256, EnrollKeyType::EcP384] {
            let key = generate(kind).unwrap();
            assert!(key.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
            let csr = csr_pem(&key.pair, "ident-42").unwrap();
            assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
            let der = rustls_pki_types::pem::PemObject::from_pem_slice(csr.as_bytes())
                .map(|d: rustls_pki_types::CertificateSigningRequestDer<'static>| d)
                .unwrap();
            let (_, req) = x509_parser::certification_request::X509CertificationRequest::from_der(
                der.as_ref(),
            )
            .unwrap();
            let cn = req
                .certification_request_info
                .subject
                .iter_common_name()
                .next()
                .unwrap()
                .as_str()
                .unwrap()
                .to_string();
            assert_eq!(cn, "ident-42");
        }
    }

    #[test]
    fn rsa_key_generates_and_signs() {
        let key = generate(EnrollKeyType::Rsa2048).unwrap();
        assert!(key.pem.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(matches!(key.pair.algorithm(), a if *a == rcgen::PKCS_RSA_SHA256));
        let csr = csr_pem(&key.pair, "rsa-ident").unwrap();
        assert!(csr.contains("CERTIFICATE REQUEST"));
    }
}
