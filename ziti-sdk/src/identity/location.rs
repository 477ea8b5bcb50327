//! Credential location strings used in `id.cert`, `id.key` and `id.ca`.
//!
//! Both upstream SDK families accept the same forms (edge-client-api.md §1.2): `pem:` + PEM text,
//! raw PEM text, `file://` URLs and bare filesystem paths. The Go SDK writes `pem:` and we do the same.

use std::path::{Path, PathBuf};

use super::IdentityError;

/// Where a PEM blob comes from, after classifying a location string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Location {
    /// The PEM text itself (from `pem:` or raw `-----BEGIN`).
    Inline(String),
    /// A file to read.
    File(PathBuf),
}

/// Prefix the Go SDK writes before inline PEM.
pub(crate) const PEM_PREFIX: &str = "pem:";

/// Classifies a location string. Relative paths are resolved against `base_dir` when that file
/// exists (identity files are often shipped next to their PEM files), else used as given (the
/// upstream loaders resolve against the working directory).
pub(crate) fn classify(value: &str, base_dir: Option<&Path>) -> Result<Location, IdentityError> {
    let trimmed = value.trim_start();
    if let Some(rest) = trimmed.strip_prefix(PEM_PREFIX) {
        return Ok(Location::Inline(rest.to_string()));
    }
    if trimmed.starts_with("-----BEGIN") {
        return Ok(Location::Inline(trimmed.to_string()));
    }
    if trimmed.starts_with("file:") {
        let url = url::Url::parse(trimmed).map_err(|source| IdentityError::UnparsableLocation {
            location: redact_location(trimmed),
            source,
        })?;
        let path = url
            .to_file_path()
            .map_err(|()| IdentityError::InvalidLocation {
                location: redact_location(trimmed),
                reason: "not a local file URL".into(),
            })?;
        return Ok(Location::File(path));
    }
    for unsupported in ["engine:", "pkcs11:", "keychain:"] {
        if trimmed.starts_with(unsupported) {
            return Err(IdentityError::InvalidLocation {
                location: redact_location(trimmed),
                reason: format!("`{unsupported}` key stores are not supported"),
            });
        }
    }
    if trimmed.is_empty() {
        return Err(IdentityError::InvalidLocation {
            location: String::new(),
            reason: "empty".into(),
        });
    }
    let path = PathBuf::from(trimmed);
    if path.is_relative()
        && let Some(dir) = base_dir
    {
        let joined = dir.join(&path);
        if joined.exists() {
            return Ok(Location::File(joined));
        }
    }
    Ok(Location::File(path))
}

/// Reads the PEM text a location points at.
pub(crate) fn load(value: &str, base_dir: Option<&Path>) -> Result<String, IdentityError> {
    match classify(value, base_dir)? {
        Location::Inline(pem) => Ok(pem),
        Location::File(path) => {
            std::fs::read_to_string(&path).map_err(|source| IdentityError::Io { path, source })
        }
    }
}

/// A location string safe to print: inline PEM (possibly a private key) is never echoed.
fn redact_location(value: &str) -> String {
    if value.contains("-----BEGIN") {
        "<inline PEM>".into()
    } else {
        value.chars().take(200).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_every_form() {
        let pem = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert_eq!(
            classify(&format!("pem:{pem}"), None).ok(),
            Some(Location::Inline(pem.to_string()))
        );
        assert_eq!(
            classify(pem, None).ok(),
            Some(Location::Inline(pem.to_string()))
        );
        assert_eq!(
            classify("file:///etc/ziti/id.pem", None).ok(),
            Some(Location::File(PathBuf::from("/etc/ziti/id.pem")))
        );
        assert_eq!(
            classify("/etc/ziti/id.pem", None).ok(),
            Some(Location::File(PathBuf::from("/etc/ziti/id.pem")))
        );
        assert!(matches!(
            classify("engine:pkcs11?x", None),
            Err(IdentityError::InvalidLocation { .. })
        ));
        assert!(classify("", None).is_err());
    }

    #[test]
    fn relative_path_prefers_identity_dir() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.pem");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(
            classify("c.pem", Some(dir.path())).ok(),
            Some(Location::File(file))
        );
        assert_eq!(
            classify("missing.pem", Some(dir.path())).ok(),
            Some(Location::File(PathBuf::from("missing.pem")))
        );
    }

    #[test]
    fn errors_never_echo_inline_key_material() {
        let msg = redact_location("-----BEGIN PRIVATE KEY-----secret");
        assert!(!msg.contains("secret"));
    }
}
