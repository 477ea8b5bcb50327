//! `/.well-known/est/cacerts`: base64 of a degenerate ("certs-only") PKCS#7 SignedData.
//!
//! Parsed with the `cms` crate; because der 0.7 rejects a SET OF with duplicate elements and BER
//! encodings, a small DER walk is kept as a fallback (rust-deps.md §6). Pure: no I/O.

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use der::{Decode, Encode};
use rustls_pki_types::CertificateDer;

/// Why a CA bundle could not be read.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CaCertsError {
    /// The body is not base64.
    #[error("CA bundle is not base64")]
    Base64(#[source] base64::DecodeError),
    /// The body is not a PKCS#7 certs-only structure: `source()` is the DER decoder's error,
    /// `fallback` why the lenient fallback parser refused it too.
    #[error("CA bundle is not a PKCS#7 certificate list (fallback parser: {fallback})")]
    Pkcs7 {
        /// The `cms`/`der` decoder's error.
        #[source]
        source: der::Error,
        /// The fallback parser's reason.
        fallback: String,
    },
    /// A well-formed bundle without certificates.
    #[error("the controller returned an empty CA bundle")]
    Empty,
}

/// Decodes the HTTP body (base64, line breaks allowed) into DER certificates.
pub fn parse_cacerts_body(body: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaCertsError> {
    let compact: Vec<u8> = body
        .iter()
        .copied()
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    let der = STANDARD.decode(&compact).map_err(CaCertsError::Base64)?;
    parse_pkcs7_certs(&der)
}

/// Extracts the certificates of a DER PKCS#7 ContentInfo(SignedData).
pub fn parse_pkcs7_certs(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, CaCertsError> {
    let certs = match parse_with_cms(der) {
        Ok(c) => c,
        Err(cms_err) => walk::certificates(der).map_err(|fallback| CaCertsError::Pkcs7 {
            source: cms_err,
            fallback,
        })?,
    };
    if certs.is_empty() {
        return Err(CaCertsError::Empty);
    }
    Ok(certs)
}

fn parse_with_cms(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, der::Error> {
    use cms::cert::CertificateChoices;
    use cms::content_info::ContentInfo;
    use cms::signed_data::SignedData;
    let ci = ContentInfo::from_der(der)?;
    let sd: SignedData = ci.content.decode_as()?;
    let mut out = Vec::new();
    for choice in sd.certificates.iter().flat_map(|set| set.0.iter()) {
        if let CertificateChoices::Certificate(cert) = choice {
            out.push(CertificateDer::from(cert.to_der()?));
        }
    }
    Ok(out)
}

/// PEM text for a list of DER certificates (64-column base64).
pub fn certs_to_pem(certs: &[CertificateDer<'_>]) -> String {
    let mut out = String::new();
    for cert in certs {
        out.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = STANDARD.encode(cert.as_ref());
        let mut rest = b64.as_str();
        while !rest.is_empty() {
            let (line, tail) = rest.split_at(rest.len().min(64));
            out.push_str(line);
            out.push('\n');
            rest = tail;
        }
        out.push_str("-----END CERTIFICATE-----\n");
    }
    out
}

/// Minimal DER walk: ContentInfo -> [0] -> SignedData -> [0] IMPLICIT certificates.
mod walk {
    use rustls_pki_types::CertificateDer;

    /// One TLV: tag, contents, and the whole encoding.
    struct Tlv<'a> {
        tag: u8,
        contents: &'a [u8],
        whole: &'a [u8],
    }

    fn read(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
        let (&tag, rest) = input.split_first().ok_or("truncated tag")?;
        if tag & 0x1f == 0x1f {
            return Err("multi-byte tags are not used in PKCS#7".into());
        }
        let (&first, mut rest) = rest.split_first().ok_or("truncated length")?;
        let len = if first < 0x80 {
            usize::from(first)
        } else {
            let n = usize::from(first & 0x7f);
            if n == 0 || n > 4 {
                return Err("indefinite or oversized length (BER is not supported)".into());
            }
            let (bytes, r) = rest.split_at_checked(n).ok_or("truncated length")?;
            rest = r;
            bytes
                .iter()
                .fold(0usize, |acc, b| (acc << 8) | usize::from(*b))
        };
        let (contents, after) = rest.split_at_checked(len).ok_or("truncated contents")?;
        let header_len = input.len() - rest.len();
        let whole = input.get(..header_len + len).ok_or("truncated element")?;
        Ok((
            Tlv {
                tag,
                contents,
                whole,
            },
            after,
        ))
    }

    fn expect(input: &[u8], tag: u8) -> Result<(Tlv<'_>, &[u8]), String> {
        let (tlv, rest) = read(input)?;
        if tlv.tag != tag {
            return Err(format!("expected tag {tag:#04x}, found {:#04x}", tlv.tag));
        }
        Ok((tlv, rest))
    }

    pub(super) fn certificates(der: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
        let (content_info, _) = expect(der, 0x30)?;
        let (_oid, rest) = expect(content_info.contents, 0x06)?;
        let (explicit, _) = expect(rest, 0xa0)?;
        let (signed_data, _) = expect(explicit.contents, 0x30)?;
        let (_version, rest) = expect(signed_data.contents, 0x02)?;
        let (_digest_algs, rest) = expect(rest, 0x31)?;
        let (_encap, mut rest) = expect(rest, 0x30)?;
        let mut certs = Vec::new();
        if rest.first() == Some(&0xa0) {
            let (set, _) = read(rest)?;
            rest = set.contents;
            while !rest.is_empty() {
                let (cert, after) = read(rest)?;
                if cert.tag == 0x30 {
                    certs.push(CertificateDer::from(cert.whole.to_vec()));
                }
                rest = after;
            }
        }
        Ok(certs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::test_pki::TestCa;

    fn tlv(tag: u8, contents: &[u8]) -> Vec<u8> {
        let mut out = vec![tag];
        let len = contents.len();
        if len < 0x80 {
            out.push(len as u8);
        } else {
            let bytes = (len as u32).to_be_bytes();
            let skip = bytes.iter().take_while(|b| **b == 0).count();
            out.push(0x80 | (4 - skip) as u8);
            out.extend_from_slice(&bytes[skip..]);
        }
        out.extend_from_slice(contents);
        out
    }

    /// A degenerate SignedData as the controller (fullsailor/pkcs7) builds it: certificates are
    /// concatenated as given, no signers.
    fn degenerate(certs: &[&[u8]]) -> Vec<u8> {
        const OID_SIGNED_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x02];
        const OID_DATA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x07, 0x01];
        let cert_bytes: Vec<u8> = certs.concat();
        let sd = [
            tlv(0x02, &[1]),
            tlv(0x31, &[]),
            tlv(0x30, &tlv(0x06, OID_DATA)),
            tlv(0xa0, &cert_bytes),
            tlv(0x31, &[]),
        ]
        .concat();
        tlv(
            0x30,
            &[tlv(0x06, OID_SIGNED_DATA), tlv(0xa0, &tlv(0x30, &sd))].concat(),
        )
    }

    fn wrap64(der: &[u8]) -> Vec<u8> {
        let b64 = STANDARD.encode(der);
        b64.as_bytes()
            .chunks(64)
            .flat_map(|c| c.iter().copied().chain(*b"\r\n"))
            .collect()
    }

    #[test]
    fn parses_controller_style_bundle() {
        let a = TestCa::new("root-a");
        let b = TestCa::new("root-b");
        let body = wrap64(&degenerate(&[&a.der, &b.der]));
        let certs = parse_cacerts_body(&body).unwrap();
        assert_eq!(certs.len(), 2);
        assert!(certs.iter().any(|c| c.as_ref() == a.der.as_slice()));
        assert!(certs.iter().any(|c| c.as_ref() == b.der.as_slice()));
        // cms itself accepts this one.
        assert_eq!(
            parse_with_cms(&degenerate(&[&a.der, &b.der]))
                .unwrap()
                .len(),
            2
        );
        let pem = certs_to_pem(&certs);
        let back = crate::identity::parse_certs(&pem, "CA bundle").unwrap();
        assert_eq!(back, certs);
    }

    #[test]
    fn duplicate_certs_use_the_fallback_walk() {
        let a = TestCa::new("root-a");
        let der = degenerate(&[&a.der, &a.der]);
        assert!(
            parse_with_cms(&der).is_err(),
            "der rejects duplicate SET OF elements"
        );
        let certs = parse_pkcs7_certs(&der).unwrap();
        assert_eq!(certs.len(), 2);
    }

    #[test]
    fn rejects_garbage_and_empty_bundles() {
        assert!(matches!(
            parse_cacerts_body(b"***"),
            Err(CaCertsError::Base64(_))
        ));
        assert!(matches!(
            parse_cacerts_body(STANDARD.encode(b"hello").as_bytes()),
            Err(CaCertsError::Pkcs7 { .. })
        ));
        assert_eq!(
            parse_pkcs7_certs(&degenerate(&[])),
            Err(CaCertsError::Empty)
        );
        // Truncated input never panics.
        let full = degenerate(&[&TestCa::new("x").der]);
        for n in 0..full.len() {
            let _ = parse_pkcs7_certs(&full[..n]);
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_input_never_panics(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = parse_pkcs7_certs(&bytes);
            let _ = parse_cacerts_body(&bytes);
        }

        #[test]
        fn mutated_bundles_never_panic(pos in 0usize..2000, val in proptest::num::u8::ANY) {
            let mut der = degenerate(&[&TestCa::new("m").der]);
            let i = pos % der.len();
            der[i] = val;
            let _ = parse_pkcs7_certs(&der);
        }
    }
}
