//! Identity files: controller URLs plus the client certificate, key and CA bundle.
//!
//! ```no_run
//! # fn main() -> Result<(), ziti_sdk::identity::IdentityError> {
//! let id = ziti_sdk::identity::Identity::load("client.json")?;
//! println!("controller: {}", id.client_api_url());
//! let tls = id.rustls_client_config(&[b"h2"])?; // roots = id.ca only, client cert = id.cert
//! # let _ = tls; Ok(()) }
//! ```

mod file;
mod location;
mod tls;

use std::fmt;
use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use url::Url;

pub(crate) use file::write_private;
pub use tls::ring_provider;
pub(crate) use tls::{
    AcceptAnyServerCert, PinnedLeafVerifier, config_with_roots as tls_config_with_roots,
    config_with_verifier as tls_config_with_verifier,
};

/// Path of the Edge Client API below a controller's root URL.
pub const CLIENT_API_PATH: &str = "/edge/client/v1";

/// Errors while loading, validating or saving an identity.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// Reading or writing a file failed.
    #[error("cannot access {path}")]
    Io {
        /// The file involved.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The identity file is not valid JSON of the expected shape.
    #[error("identity file is not valid identity JSON")]
    Json(#[from] serde_json::Error),
    /// Neither `ztAPI` nor `ztAPIs` holds a controller URL.
    #[error("identity has no controller URL (ztAPI/ztAPIs are empty)")]
    NoControllerUrl,
    /// A controller URL is not https or has no host.
    #[error("invalid controller URL `{url}`: {reason}")]
    InvalidUrl {
        /// The offending URL.
        url: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A controller URL does not parse.
    #[error("invalid controller URL `{url}`")]
    UnparsableUrl {
        /// The offending URL.
        url: String,
        /// The parser's error.
        #[source]
        source: url::ParseError,
    },
    /// One of `id.cert`, `id.key`, `id.ca` is missing.
    #[error("identity is missing `id.{0}`")]
    MissingField(&'static str),
    /// A location string could not be interpreted.
    #[error("invalid credential location `{location}`: {reason}")]
    InvalidLocation {
        /// The location (inline PEM is redacted).
        location: String,
        /// Why it was rejected.
        reason: String,
    },
    /// A `file:` location is not a valid URL.
    #[error("invalid credential location `{location}`")]
    UnparsableLocation {
        /// The location.
        location: String,
        /// The parser's error.
        #[source]
        source: url::ParseError,
    },
    /// PEM content is not what was expected (e.g. no certificate in it).
    #[error("invalid {what}: {reason}")]
    InvalidPem {
        /// Which field (`certificate`, `key`, `CA bundle`).
        what: &'static str,
        /// Details.
        reason: String,
    },
    /// PEM text does not parse.
    #[error("invalid {what}: malformed PEM")]
    Pem {
        /// Which field (`certificate`, `key`, `CA bundle`).
        what: &'static str,
        /// The PEM parser's error.
        #[source]
        source: rustls_pki_types::pem::Error,
    },
    /// The identity's certificate is not valid X.509.
    #[error("invalid certificate")]
    Certificate(#[source] x509_parser::error::X509Error),
    /// The private key is not usable with rustls/ring (e.g. EC P-521).
    #[error("unsupported private key (supported: EC P-256, EC P-384, RSA 2048-8192)")]
    UnsupportedKey(#[source] rustls::Error),
    /// The certificate's public key is of a type or size rustls/ring cannot use.
    #[error("unsupported certificate key: {0} (supported: EC P-256, EC P-384, RSA 2048-8192)")]
    UnsupportedCertificateKey(String),
    /// rustls rejected the material (e.g. key does not match certificate).
    #[error("TLS configuration failed")]
    Tls(#[from] rustls::Error),
}

/// Algorithm of the identity's key, as read from its certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    /// ECDSA on NIST P-256.
    EcP256,
    /// ECDSA on NIST P-384.
    EcP384,
    /// RSA with the given modulus size in bits.
    Rsa(usize),
}

/// When a certificate may be used: its `notBefore` and `notAfter` dates as Unix time (seconds,
/// UTC), both inclusive as in X.509.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CertificateValidity {
    /// First second the certificate is valid (`notBefore`).
    pub not_before: i64,
    /// Last second the certificate is valid (`notAfter`).
    pub not_after: i64,
}

impl CertificateValidity {
    /// `true` if `unix_secs` lies within the validity period.
    pub fn contains(&self, unix_secs: i64) -> bool {
        self.not_before <= unix_secs && unix_secs <= self.not_after
    }
}

/// A loaded OpenZiti identity.
///
/// `Debug` never prints the private key.
#[derive(Clone)]
pub struct Identity {
    /// Effective controller Client API URLs (`ztAPIs` if non-empty, else `[ztAPI]`), each ending in
    /// `/edge/client/v1`. Never empty.
    api_urls: Vec<Url>,
    /// `api_urls[0]`, kept separately so no accessor has to index.
    primary_url: Url,
    /// `ztAPIs` as found (kept so a save round-trips).
    zt_apis: Vec<Url>,
    config_types: Option<Vec<String>>,
    cert_pem: String,
    key_pem: String,
    ca_pem: String,
    name: String,
    key_type: KeyType,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field(
                "api_urls",
                &self.api_urls.iter().map(Url::as_str).collect::<Vec<_>>(),
            )
            .field("key_type", &self.key_type)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Loads an identity JSON file. Relative credential paths are resolved against its directory
    /// first.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, IdentityError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| IdentityError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path.parent())
    }

    /// Parses identity JSON; `base_dir` resolves relative credential paths.
    pub fn from_json(text: &str, base_dir: Option<&Path>) -> Result<Self, IdentityError> {
        let f: file::IdentityFile = serde_json::from_str(text)?;
        let cert = f.id.cert.ok_or(IdentityError::MissingField("cert"))?;
        let key = f.id.key.ok_or(IdentityError::MissingField("key"))?;
        let ca = f.id.ca.ok_or(IdentityError::MissingField("ca"))?;
        let cert_pem = location::load(&cert, base_dir)?;
        let key_pem = location::load(&key, base_dir)?;
        let ca_pem = location::load(&ca, base_dir)?;
        let zt_apis = f
            .zt_apis
            .unwrap_or_default()
            .iter()
            .filter(|s| !s.trim().is_empty())
            .map(|s| normalize_api_url(s))
            .collect::<Result<Vec<_>, _>>()?;
        let zt_api = match f.zt_api.as_deref().map(str::trim) {
            Some(s) if !s.is_empty() => Some(normalize_api_url(s)?),
            _ => None,
        };
        let api_urls = if zt_apis.is_empty() {
            zt_api.into_iter().collect::<Vec<_>>()
        } else {
            zt_apis.clone()
        };
        Self::build(api_urls, zt_apis, f.config_types, cert_pem, key_pem, ca_pem)
    }

    /// Builds an identity from PEM text and one controller URL (with or without
    /// `/edge/client/v1`).
    pub fn from_pem(
        controller_url: &str,
        cert_chain_pem: &str,
        key_pem: &str,
        ca_pem: &str,
    ) -> Result<Self, IdentityError> {
        let url = normalize_api_url(controller_url)?;
        Self::build(
            vec![url],
            Vec::new(),
            None,
            cert_chain_pem.to_string(),
            key_pem.to_string(),
            ca_pem.to_string(),
        )
    }

    fn build(
        api_urls: Vec<Url>,
        zt_apis: Vec<Url>,
        config_types: Option<Vec<String>>,
        cert_pem: String,
        key_pem: String,
        ca_pem: String,
    ) -> Result<Self, IdentityError> {
        let primary_url = api_urls
            .first()
            .cloned()
            .ok_or(IdentityError::NoControllerUrl)?;
        let chain = parse_certs(&cert_pem, "certificate")?;
        let _ = parse_certs(&ca_pem, "CA bundle")?;
        let leaf = chain.first().ok_or(IdentityError::InvalidPem {
            what: "certificate",
            reason: "no certificate found".into(),
        })?;
        let (name, key_type) = tls::leaf_summary(leaf)?;
        let id = Self {
            api_urls,
            primary_url,
            zt_apis,
            config_types,
            cert_pem,
            key_pem,
            ca_pem,
            name,
            key_type,
        };
        // Fails early on unreadable keys, unsupported curves and key/cert mismatches.
        id.rustls_client_config(&[])?;
        Ok(id)
    }

    /// Serialises to Go-compatible identity JSON (`pem:` prefixes, full `ztAPI` URL).
    pub fn to_json(&self) -> Result<String, IdentityError> {
        let f = file::IdentityFile {
            zt_api: self.api_urls.first().map(|u| u.to_string()),
            zt_apis: (!self.zt_apis.is_empty())
                .then(|| self.zt_apis.iter().map(Url::to_string).collect()),
            config_types: self.config_types.clone(),
            id: file::IdSection {
                key: Some(format!("{}{}", location::PEM_PREFIX, self.key_pem)),
                cert: Some(format!("{}{}", location::PEM_PREFIX, self.cert_pem)),
                ca: Some(format!("{}{}", location::PEM_PREFIX, self.ca_pem)),
            },
            enable_ha: false,
        };
        Ok(serde_json::to_string_pretty(&f)?)
    }

    /// Writes the identity JSON with mode 0600 (atomically replacing `path`).
    pub fn save(&self, path: impl AsRef<Path>) -> Result<(), IdentityError> {
        write_private(path.as_ref(), self.to_json()?.as_bytes())
    }

    /// The identity's name as the controller knows it: the leaf certificate's common name
    /// (the identity id for enrolled identities).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Key algorithm of the client certificate.
    pub fn key_type(&self) -> KeyType {
        self.key_type
    }

    /// Primary Client API URL, e.g. `https://ctrl:1280/edge/client/v1`.
    pub fn client_api_url(&self) -> &Url {
        &self.primary_url
    }

    /// All Client API URLs to try, in order.
    pub fn client_api_urls(&self) -> &[Url] {
        &self.api_urls
    }

    /// Config types requested in the identity file (Go SDK extension), if any.
    pub fn config_types(&self) -> Option<&[String]> {
        self.config_types.as_deref()
    }

    /// Client certificate chain PEM (leaf first).
    pub fn cert_chain_pem(&self) -> &str {
        &self.cert_pem
    }

    /// CA bundle PEM: the only trust roots for controller and routers.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// Client certificate chain as DER (leaf first).
    pub fn cert_chain_der(&self) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        parse_certs(&self.cert_pem, "certificate")
    }

    /// Validity period of the client certificate (the leaf, first in `id.cert`). Loading an
    /// identity does not check the dates; a controller refuses an expired certificate.
    pub fn certificate_validity(&self) -> Result<CertificateValidity, IdentityError> {
        let chain = self.cert_chain_der()?;
        let leaf = chain.first().ok_or(IdentityError::InvalidPem {
            what: "certificate",
            reason: "no certificate found".into(),
        })?;
        tls::validity(leaf)
    }

    /// CA bundle as DER certificates.
    pub fn ca_certs_der(&self) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
        parse_certs(&self.ca_pem, "CA bundle")
    }

    pub(crate) fn private_key_der(&self) -> Result<PrivateKeyDer<'static>, IdentityError> {
        PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).map_err(|source| {
            IdentityError::Pem {
                what: "key",
                source,
            }
        })
    }

    /// A rustls client configuration for mutual TLS to the controller or an edge router: ring
    /// provider, roots = only `id.ca`, client certificate = `id.cert` + `id.key`.
    /// `alpn` may be empty.
    pub fn rustls_client_config(
        &self,
        alpn: &[&[u8]],
    ) -> Result<rustls::ClientConfig, IdentityError> {
        tls::client_config(self, alpn)
    }
}

/// Parses all `CERTIFICATE` blocks from PEM text.
pub(crate) fn parse_certs(
    pem: &str,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| IdentityError::Pem { what, source })?;
    if certs.is_empty() {
        return Err(IdentityError::InvalidPem {
            what,
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Normalises a controller URL to its Client API URL: accepts `https://h:p`, `https://h:p/` and
/// `https://h:p/edge/client/v1[/]` (the C SDK writes the first, the Go SDK the last).
pub fn normalize_api_url(raw: &str) -> Result<Url, IdentityError> {
    let invalid = |reason: &str| IdentityError::InvalidUrl {
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let mut url = Url::parse(raw.trim()).map_err(|source| IdentityError::UnparsableUrl {
        url: raw.to_string(),
        source,
    })?;
    if url.scheme() != "https" {
        return Err(invalid("scheme must be https"));
    }
    if url.host_str().is_none() {
        return Err(invalid("missing host"));
    }
    let path = url.path().trim_end_matches('/').to_string();
    let prefix = path.strip_suffix(CLIENT_API_PATH).unwrap_or(&path);
    url.set_path(&format!("{prefix}{CLIENT_API_PATH}"));
    url.set_query(None);
    url.set_fragment(None);
    Ok(url)
}

/// The controller root (`https://h:p`) for a Client API URL; OIDC endpoints live below it.
pub fn controller_root(api_url: &Url) -> Url {
    let mut root = api_url.clone();
    let path = root.path().to_string();
    let prefix = path.strip_suffix(CLIENT_API_PATH).unwrap_or("");
    root.set_path(if prefix.is_empty() { "/" } else { prefix });
    root
}

#[cfg(test)]
pub(crate) mod test_pki;
#[cfg(test)]
mod tests;
