//! The enrollment JWT: parsing without trust, then verifying the signature with the controller's
//! TLS leaf certificate (edge-client-api.md §2.1-2.2). Pure: no I/O.

use std::fmt;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{self, UnparsedPublicKey};
use serde::Deserialize;
use sha1::{Digest, Sha1};
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::public_key::PublicKey;

/// Why a JWT could not be parsed or verified.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three dot-separated parts.
    #[error("not a valid enrollment JWT: {0}")]
    Malformed(String),
    /// A part is not base64url.
    #[error("not a valid enrollment JWT: the {part} is not base64url")]
    Base64 {
        /// `header`, `claims` or `signature`.
        part: &'static str,
        /// The decoder's error.
        #[source]
        source: base64::DecodeError,
    },
    /// The header or the claims are not the expected JSON.
    #[error("not a valid enrollment JWT: unexpected {part}")]
    Json {
        /// `header` or `claims`.
        part: &'static str,
        /// The decoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// `alg` is `none`, HMAC, or something ring cannot verify.
    #[error("unsupported JWT signature algorithm `{0}` (accepted: RS256, ES256, ES384)")]
    UnsupportedAlgorithm(String),
    /// The signature does not verify with the controller certificate's key.
    #[error(
        "the enrollment token was not signed by the controller at its issuer URL (signature \
         mismatch{kid_note})"
    )]
    SignatureMismatch {
        /// Extra context when the `kid` did not match either.
        kid_note: String,
    },
    /// The controller's certificate could not be read.
    #[error("cannot read the controller certificate")]
    BadCertificate(#[source] x509_parser::error::X509Error),
}

/// JOSE header fields we use.
#[derive(Debug, Clone, Deserialize)]
pub struct JwtHeader {
    /// Signature algorithm.
    pub alg: String,
    /// Hex SHA-1 of the signing certificate's DER.
    #[serde(default)]
    pub kid: Option<String>,
}

/// Claims of an enrollment token.
#[derive(Clone, Deserialize)]
pub struct EnrollmentClaims {
    /// `https://host:port` of the controller's Client API.
    pub iss: String,
    /// Identity id.
    pub sub: String,
    /// The one-time enrollment token.
    pub jti: String,
    /// Expiry (seconds since the Unix epoch).
    #[serde(default)]
    pub exp: Option<i64>,
    /// Enrollment method (`ott`, `ottca`, `updb`, ...).
    #[serde(default)]
    pub em: String,
    /// Controller control-plane addresses (routers only).
    #[serde(default)]
    pub ctrls: Option<Vec<String>>,
}

impl fmt::Debug for EnrollmentClaims {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentClaims")
            .field("iss", &self.iss)
            .field("sub", &self.sub)
            .field("jti", &"<redacted>")
            .field("exp", &self.exp)
            .field("em", &self.em)
            .finish()
    }
}

/// A parsed, not yet verified, enrollment JWT.
#[derive(Clone)]
pub struct EnrollmentToken {
    header: JwtHeader,
    claims: EnrollmentClaims,
    signing_input: String,
    signature: Vec<u8>,
}

impl fmt::Debug for EnrollmentToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EnrollmentToken")
            .field("header", &self.header)
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

fn b64(text: &str, part: &'static str) -> Result<Vec<u8>, JwtError> {
    URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|source| JwtError::Base64 { part, source })
}

impl EnrollmentToken {
    /// Parses the compact JWT serialisation (surrounding whitespace is ignored).
    pub fn parse(text: &str) -> Result<Self, JwtError> {
        let text = text.trim();
        let mut parts = text.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed(
                "expected three dot-separated parts".into(),
            ));
        };
        let header: JwtHeader =
            serde_json::from_slice(&b64(h, "header")?).map_err(|source| JwtError::Json {
                part: "header",
                source,
            })?;
        let claims: EnrollmentClaims =
            serde_json::from_slice(&b64(p, "claims")?).map_err(|source| JwtError::Json {
                part: "claims",
                source,
            })?;
        let signature = b64(s, "signature")?;
        Ok(Self {
            header,
            claims,
            signing_input: format!("{h}.{p}"),
            signature,
        })
    }

    /// The JOSE header.
    pub fn header(&self) -> &JwtHeader {
        &self.header
    }

    /// The claims (unverified until [`verify_with_cert`](Self::verify_with_cert) succeeds).
    pub fn claims(&self) -> &EnrollmentClaims {
        &self.claims
    }

    /// True when `exp` lies before `now_unix` (a token without `exp` never expires).
    pub fn is_expired_at(&self, now_unix: i64) -> bool {
        self.claims.exp.is_some_and(|exp| exp < now_unix)
    }

    /// `Some(true)` when `kid` equals lowercase hex SHA-1 of `cert_der`, `None` without `kid`.
    pub fn kid_matches(&self, cert_der: &[u8]) -> Option<bool> {
        let kid = self.header.kid.as_deref()?;
        Some(kid.eq_ignore_ascii_case(&hex::encode(Sha1::digest(cert_der))))
    }

    /// Verifies the signature with the public key of `cert_der` (the controller's TLS leaf).
    pub fn verify_with_cert(&self, cert_der: &[u8]) -> Result<(), JwtError> {
        let (_, cert) =
            X509Certificate::from_der(cert_der).map_err(|e| JwtError::BadCertificate(e.into()))?;
        let spki = cert.public_key();
        let key_bytes: &[u8] = &spki.subject_public_key.data;
        let parsed = spki.parsed().map_err(JwtError::BadCertificate)?;
        let alg: &'static dyn signature::VerificationAlgorithm =
            match (self.header.alg.as_str(), &parsed) {
                ("RS256", PublicKey::RSA(_)) => &signature::RSA_PKCS1_2048_8192_SHA256,
                ("ES256", PublicKey::EC(_)) => &signature::ECDSA_P256_SHA256_FIXED,
                ("ES384", PublicKey::EC(_)) => &signature::ECDSA_P384_SHA384_FIXED,
                ("RS256" | "ES256" | "ES384", _) => return Err(self.mismatch(cert_der)),
                (other, _) => return Err(JwtError::UnsupportedAlgorithm(other.to_string())),
            };
        UnparsedPublicKey::new(alg, key_bytes)
            .verify(self.signing_input.as_bytes(), &self.signature)
            .map_err(|_| self.mismatch(cert_der))
    }

    fn mismatch(&self, cert_der: &[u8]) -> JwtError {
        let kid_note = match self.kid_matches(cert_der) {
            Some(false) => "; its key id does not match the controller's certificate either".into(),
            _ => String::new(),
        };
        JwtError::SignatureMismatch { kid_note }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_pki::{TestCa, keys};
    use ring::rand::SystemRandom;
    use ring::signature::{EcdsaKeyPair, KeyPair as _, RsaKeyPair};

    fn encode(header: &serde_json::Value, claims: &serde_json::Value) -> String {
        format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(header.to_string()),
            URL_SAFE_NO_PAD.encode(claims.to_string())
        )
    }

    fn claims() -> serde_json::Value {
        serde_json::json!({"iss":"https://127.0.0.1:1280","sub":"id1","jti":"tok-1","exp":2000000000,
            "em":"ott","aud":[""]})
    }

    /// A cert for `key_pkcs8_pem` and a signer for `header.payload`.
    fn cert_for(key_pkcs8_pem: &str) -> Vec<u8> {
        let ca = TestCa::new("ctrl-ca");
        let key = rcgen::KeyPair::from_pem(key_pkcs8_pem).unwrap();
        ca.server_cert(&key).1
    }

    fn pkcs8_der(pem: &str) -> Vec<u8> {
        use rustls_pki_types::PrivatePkcs8KeyDer;
        use rustls_pki_types::pem::PemObject;
        PrivatePkcs8KeyDer::from_pem_slice(pem.as_bytes())
            .unwrap()
            .secret_pkcs8_der()
            .to_vec()
    }

    fn sign_es(alg: &str, key_pem: &str, kid: Option<&str>) -> String {
        let rng = SystemRandom::new();
        let ring_alg = if alg == "ES256" {
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING
        } else {
            &signature::ECDSA_P384_SHA384_FIXED_SIGNING
        };
        let kp = EcdsaKeyPair::from_pkcs8(ring_alg, &pkcs8_der(key_pem), &rng).unwrap();
        let _ = kp.public_key();
        let input = encode(
            &serde_json::json!({"alg":alg,"typ":"JWT","kid":kid}),
            &claims(),
        );
        let sig = kp.sign(&rng, input.as_bytes()).unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()))
    }

    fn sign_rs256(key_pem: &str, kid: Option<&str>) -> String {
        let kp = RsaKeyPair::from_pkcs8(&pkcs8_der(key_pem)).unwrap();
        let input = encode(
            &serde_json::json!({"alg":"RS256","typ":"JWT","kid":kid}),
            &claims(),
        );
        let mut sig = vec![0; kp.public().modulus_len()];
        kp.sign(
            &signature::RSA_PKCS1_SHA256,
            &SystemRandom::new(),
            input.as_bytes(),
            &mut sig,
        )
        .unwrap();
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    #[test]
    fn es256_es384_and_rs256_verify_against_the_right_cert() {
        for (jwt, key) in [
            (sign_es("ES256", keys::P256_PKCS8, None), keys::P256_PKCS8),
            (sign_es("ES384", keys::P384_PKCS8, None), keys::P384_PKCS8),
            (sign_rs256(keys::RSA_PKCS8, None), keys::RSA_PKCS8),
        ] {
            let cert = cert_for(key);
            let tok = EnrollmentToken::parse(&jwt).unwrap();
            assert_eq!(tok.claims().sub, "id1");
            assert_eq!(tok.claims().jti, "tok-1");
            tok.verify_with_cert(&cert).unwrap();
            // Another controller's certificate must not verify it.
            let other = cert_for(if key == keys::P256_PKCS8 {
                keys::P384_PKCS8
            } else {
                keys::P256_PKCS8
            });
            assert!(matches!(
                tok.verify_with_cert(&other),
                Err(JwtError::SignatureMismatch { .. })
            ));
        }
    }

    #[test]
    fn flipped_signature_byte_is_rejected() {
        let jwt = sign_es("ES256", keys::P256_PKCS8, None);
        let cert = cert_for(keys::P256_PKCS8);
        let (input, sig) = jwt.rsplit_once('.').unwrap();
        let mut raw = URL_SAFE_NO_PAD.decode(sig).unwrap();
        raw[5] ^= 1;
        let bad = format!("{input}.{}", URL_SAFE_NO_PAD.encode(raw));
        let tok = EnrollmentToken::parse(&bad).unwrap();
        let err = tok.verify_with_cert(&cert).unwrap_err();
        assert!(err.to_string().contains("not signed by the controller"));
    }

    #[test]
    fn kid_is_sha1_of_cert_der() {
        let cert = cert_for(keys::RSA_PKCS8);
        let kid = hex::encode(Sha1::digest(&cert));
        let tok = EnrollmentToken::parse(&sign_rs256(keys::RSA_PKCS8, Some(&kid))).unwrap();
        assert_eq!(tok.kid_matches(&cert), Some(true));
        assert_eq!(tok.kid_matches(b"other"), Some(false));
        let tok = EnrollmentToken::parse(&sign_rs256(keys::RSA_PKCS8, None)).unwrap();
        assert_eq!(tok.kid_matches(&cert), None);
    }

    #[test]
    fn none_and_hmac_are_refused() {
        let cert = cert_for(keys::P256_PKCS8);
        for alg in ["none", "HS256", "ES512", "PS256"] {
            let jwt = format!(
                "{}.{}",
                encode(&serde_json::json!({"alg":alg}), &claims()),
                URL_SAFE_NO_PAD.encode(b"sig")
            );
            let tok = EnrollmentToken::parse(&jwt).unwrap();
            assert!(
                matches!(tok.verify_with_cert(&cert), Err(JwtError::UnsupportedAlgorithm(a)) if a == alg)
            );
        }
        // Empty signature part with alg none is just as unsupported.
        let jwt = format!("{}.", encode(&serde_json::json!({"alg":"none"}), &claims()));
        let tok = EnrollmentToken::parse(&jwt).unwrap();
        assert!(tok.verify_with_cert(&cert).is_err());
    }

    #[test]
    fn malformed_tokens_and_expiry() {
        assert!(EnrollmentToken::parse("a.b").is_err());
        assert!(EnrollmentToken::parse("a.b.c.d").is_err());
        assert!(EnrollmentToken::parse("!!.??.x").is_err());
        let tok = EnrollmentToken::parse(&sign_es("ES256", keys::P256_PKCS8, None)).unwrap();
        assert!(!tok.is_expired_at(1_999_999_999));
        assert!(tok.is_expired_at(2_000_000_001));
        assert!(!format!("{tok:?}").contains("tok-1"));
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(s in "[A-Za-z0-9_.=-]{0,200}") {
            if let Ok(tok) = EnrollmentToken::parse(&s) {
                let _ = tok.verify_with_cert(b"not a cert");
            }
        }
    }
}
