//! Test-only PKI built with rcgen: a CA, server certificates and client certificates for every
//! key type and encoding the identity loader accepts.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};

/// Key fixtures generated once with openssl (test data, not secrets).
pub(crate) mod keys {
    pub const P256_SEC1: &str = include_str!("../../tests/fixtures/keys/p256.sec1.pem");
    pub const P256_PKCS8: &str = include_str!("../../tests/fixtures/keys/p256.pkcs8.pem");
    pub const P384_SEC1: &str = include_str!("../../tests/fixtures/keys/p384.sec1.pem");
    pub const P384_PKCS8: &str = include_str!("../../tests/fixtures/keys/p384.pkcs8.pem");
    pub const RSA_PKCS1: &str = include_str!("../../tests/fixtures/keys/rsa2048.pkcs1.pem");
    pub const RSA_PKCS8: &str = include_str!("../../tests/fixtures/keys/rsa2048.pkcs8.pem");
    pub const P521_SEC1: &str = include_str!("../../tests/fixtures/keys/p521.sec1.pem");
}

/// A test certificate authority.
pub(crate) struct TestCa {
    pub issuer: Issuer<'static, KeyPair>,
    pub pem: String,
    pub der: Vec<u8>,
}

impl TestCa {
    pub fn new(cn: &str) -> Self {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().to_vec(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A client certificate (CN = `cn`) for the key given as PKCS#8 PEM.
    pub fn client_cert(&self, cn: &str, key_pkcs8_pem: &str) -> String {
        let key = KeyPair::from_pem(key_pkcs8_pem).unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.signed_by(&key, &self.issuer).unwrap().pem()
    }

    /// A server certificate for `localhost`/127.0.0.1 with a fresh key; returns (cert PEM, key).
    pub fn server_cert(&self, key: &KeyPair) -> (String, Vec<u8>) {
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(key, &self.issuer).unwrap();
        (cert.pem(), cert.der().to_vec())
    }
}
