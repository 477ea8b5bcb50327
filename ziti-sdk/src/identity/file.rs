//! The on-disk JSON shape of an identity file, as the Go SDK reads and writes it.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::IdentityError;

/// Top-level identity JSON (edge-client-api.md §1.1). Unknown fields are ignored on read.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct IdentityFile {
    #[serde(rename = "ztAPI", default)]
    pub zt_api: Option<String>,
    /// Go's encoder writes `null` for an empty slice, so we do too.
    #[serde(rename = "ztAPIs", default)]
    pub zt_apis: Option<Vec<String>>,
    #[serde(rename = "configTypes", default)]
    pub config_types: Option<Vec<String>>,
    pub id: IdSection,
    /// Deprecated and ignored by the Go SDK; always written for byte-level familiarity.
    #[serde(rename = "enableHa", default)]
    pub enable_ha: bool,
}

/// The `id` object: credential location strings.
#[derive(Serialize, Deserialize, Default)]
pub(crate) struct IdSection {
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub cert: Option<String>,
    #[serde(default)]
    pub ca: Option<String>,
}

/// Writes `contents` to `path` with mode 0600 from the moment the file exists.
///
/// A temporary file is created next to the target (`create_new` + mode 0600, so there is no window
/// where the key is world-readable even if the target already existed with wider permissions) and
/// then renamed over the target.
pub(crate) fn write_private(path: &Path, contents: &[u8]) -> Result<(), IdentityError> {
    let io_err = |source| IdentityError::Io {
        path: path.to_path_buf(),
        source,
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "identity.json".into());
    let tmp = dir.join(format!(
        ".{file_name}.{}.tmp",
        uuid::Uuid::new_v4().simple()
    ));
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let result = (|| {
        let mut f = opts.open(&tmp)?;
        f.write_all(contents)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if result.is_err() {
        // Best effort: do not leave a stray copy of the key behind.
        let _ = std::fs::remove_file(&tmp);
    }
    result.map_err(io_err)
}
