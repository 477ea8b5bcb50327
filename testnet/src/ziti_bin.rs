//! Obtaining the `ziti` binary for the pinned release.
//!
//! Order:
//! 1. `ZITI_BIN` (explicit override);
//! 2. the cache (`$ZT_CACHE_DIR` or `~/.cache/zt-tunnel/ziti-<version>/ziti`);
//! 3. a prebuilt archive in `ZITI_ARCHIVE_DIR` (default: `../shared/ziti` beside the workspace
//!    root, when present): `ziti-<version>-linux-amd64.xz`, checked against the `SHA256SUMS` next
//!    to it (archive and decompressed binary), then decompressed into the cache;
//! 4. a build from the Go module `github.com/openziti/ziti/v2@<version>` downloaded through the Go
//!    module proxy. The module has a `replace` directive, so `go install pkg@ver` cannot build it:
//!    we `go mod download -json` the module, copy its directory somewhere writable and run
//!    `go build ./ziti` there.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::TestNetError;

/// The OpenZiti release the test network runs.
pub const ZITI_VERSION: &str = "v2.0.3";

const MODULE: &str = "github.com/openziti/ziti/v2";

/// Where the cached binary for [`ZITI_VERSION`] lives.
pub fn cache_path() -> PathBuf {
    let base = std::env::var_os("ZT_CACHE_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("zt-tunnel")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/zt-tunnel")))
        .unwrap_or_else(|| PathBuf::from("/tmp/zt-tunnel-cache"));
    base.join(format!("ziti-{ZITI_VERSION}")).join("ziti")
}

/// Where a prebuilt archive of the pinned release is looked for: `ZITI_ARCHIVE_DIR`, else
/// `../shared/ziti` beside the workspace root.
pub fn archive_dir() -> PathBuf {
    std::env::var_os("ZITI_ARCHIVE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../shared/ziti")
                .components()
                .collect()
        })
}

/// The archive's file name inside [`archive_dir`].
fn archive_name() -> String {
    format!("ziti-{ZITI_VERSION}-linux-amd64.xz")
}

/// How to get the binary by hand; part of every "cannot obtain ziti" error.
pub fn how_to_obtain() -> String {
    format!(
        "set ZITI_BIN=/path/to/ziti (an OpenZiti {ZITI_VERSION} build), or put one at {}, \
         or put the prebuilt archive {} with its SHA256SUMS in {} (or set ZITI_ARCHIVE_DIR), \
         or make the Go module proxy reachable so that `cargo run -p testnet --bin obtain-ziti` \
         can build it from {MODULE}@{ZITI_VERSION} (needs `go` on PATH)",
        cache_path().display(),
        archive_name(),
        archive_dir().display(),
    )
}

/// Returns a usable `ziti` binary, building and caching it when needed.
pub fn obtain() -> Result<PathBuf, TestNetError> {
    if let Some(p) = std::env::var_os("ZITI_BIN") {
        let p = PathBuf::from(p);
        return if is_executable(&p) {
            Ok(p)
        } else {
            Err(TestNetError::ZitiUnavailable(format!(
                "ZITI_BIN={} is not an executable file; {}",
                p.display(),
                how_to_obtain()
            )))
        };
    }
    let cached = cache_path();
    if is_executable(&cached) {
        return Ok(cached);
    }
    // Serialise concurrent builders (several test binaries may start at once).
    let lock_dir = cached.parent().unwrap_or(Path::new("/tmp")).to_path_buf();
    std::fs::create_dir_all(&lock_dir).map_err(|e| io_err("create cache dir", e))?;
    let _lock = FileLock::acquire(&lock_dir.join(".build.lock"))?;
    if is_executable(&cached) {
        return Ok(cached);
    }
    let archive = archive_dir().join(archive_name());
    if archive.is_file() {
        install_from_archive(&archive, &cached)?;
        eprintln!(
            "testnet: installed ziti {ZITI_VERSION} from {} into {}",
            archive.display(),
            cached.display()
        );
        return Ok(cached);
    }
    build_from_module(&cached)?;
    Ok(cached)
}

/// The expected SHA-256 of the archive and of the binary inside it, from `SHA256SUMS` lines
/// `<hex>  <archive name>` and `<hex>  <binary name> (decompressed)`.
#[derive(Debug, PartialEq, Eq)]
struct ArchiveSums {
    archive: String,
    decompressed: Option<String>,
}

fn parse_sums(text: &str, archive_name: &str) -> Option<ArchiveSums> {
    let mut archive = None;
    let mut decompressed = None;
    for line in text.lines() {
        let mut parts = line.split_whitespace();
        let (Some(hex), Some(name)) = (parts.next(), parts.next()) else {
            continue;
        };
        let rest: Vec<&str> = parts.collect();
        let name = name.trim_start_matches('*');
        if name == archive_name && rest.is_empty() {
            archive = Some(hex.to_ascii_lowercase());
        } else if rest == ["(decompressed)"] && archive_name.strip_suffix(".xz") == Some(name) {
            decompressed = Some(hex.to_ascii_lowercase());
        }
    }
    Some(ArchiveSums {
        archive: archive?,
        decompressed,
    })
}

fn sha256_file(path: &Path) -> Result<String, TestNetError> {
    use sha2::Digest;
    use std::io::Read;
    let mut f =
        std::fs::File::open(path).map_err(|e| io_err(&format!("open {}", path.display()), e))?;
    let mut hasher = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| io_err(&format!("read {}", path.display()), e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Verifies `archive` against the `SHA256SUMS` beside it, decompresses it (with `xz`) and
/// verifies the binary, then moves it to `dest` atomically.
fn install_from_archive(archive: &Path, dest: &Path) -> Result<(), TestNetError> {
    let unavailable = |why: String| {
        TestNetError::ZitiUnavailable(format!(
            "cannot use the prebuilt archive {}: {why}",
            archive.display()
        ))
    };
    let sums_path = archive.with_file_name("SHA256SUMS");
    let sums_text = std::fs::read_to_string(&sums_path)
        .map_err(|e| unavailable(format!("cannot read {}: {e}", sums_path.display())))?;
    let name = archive
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    let sums = parse_sums(&sums_text, name)
        .ok_or_else(|| unavailable(format!("{} has no line for {name}", sums_path.display())))?;
    let got = sha256_file(archive)?;
    if got != sums.archive {
        return Err(TestNetError::ChecksumMismatch {
            file: archive.display().to_string(),
            expected: sums.archive,
            actual: got,
        });
    }
    let tmp_dest = dest.with_extension("partial");
    let out = std::fs::File::create(&tmp_dest)
        .map_err(|e| io_err(&format!("create {}", tmp_dest.display()), e))?;
    let status = Command::new("xz")
        .arg("-dc")
        .arg(archive)
        .stdout(out)
        .status()
        .map_err(|e| unavailable(format!("cannot run `xz` (install xz-utils): {e}")))?;
    if !status.success() {
        let _ = std::fs::remove_file(&tmp_dest);
        return Err(unavailable(format!("`xz -dc` exited with {status}")));
    }
    if let Some(want) = sums.decompressed {
        let got = sha256_file(&tmp_dest)?;
        if got != want {
            let _ = std::fs::remove_file(&tmp_dest);
            return Err(TestNetError::ChecksumMismatch {
                file: format!("{} (decompressed)", archive.display()),
                expected: want,
                actual: got,
            });
        }
    }
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp_dest, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| io_err("chmod ziti", e))?;
    }
    std::fs::rename(&tmp_dest, dest).map_err(|e| io_err("install ziti binary", e))?;
    Ok(())
}

fn build_from_module(dest: &Path) -> Result<(), TestNetError> {
    let unavailable = |why: String| {
        TestNetError::ZitiUnavailable(format!(
            "could not build ziti {ZITI_VERSION}: {why}; {}",
            how_to_obtain()
        ))
    };
    eprintln!("testnet: building ziti {ZITI_VERSION} from {MODULE} (one time, cached)");
    let out = Command::new("go")
        .args([
            "mod",
            "download",
            "-json",
            &format!("{MODULE}@{ZITI_VERSION}"),
        ])
        .output()
        .map_err(|e| unavailable(format!("cannot run `go`: {e}")))?;
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| unavailable(format!("unexpected `go mod download` output: {e}")))?;
    if let Some(err) = info.get("Error").and_then(|e| e.as_str()) {
        return Err(unavailable(format!("go mod download failed: {err}")));
    }
    let module_dir = info
        .get("Dir")
        .and_then(|d| d.as_str())
        .ok_or_else(|| unavailable("go mod download reported no Dir".into()))?;

    let work = tempfile::Builder::new()
        .prefix("ziti-build-")
        .tempdir()
        .map_err(|e| io_err("temp dir", e))?;
    let src = work.path().join("src");
    // The module cache is read-only; copy it so the build may write go.sum and friends.
    let status = Command::new("cp")
        .args(["-r", module_dir])
        .arg(&src)
        .status()
        .map_err(|e| io_err("cp", e))?;
    if !status.success() {
        return Err(unavailable("copying the module directory failed".into()));
    }
    let _ = Command::new("chmod").args(["-R", "u+w"]).arg(&src).status();
    let tmp_dest = dest.with_extension("partial");
    let status = Command::new("go")
        .current_dir(&src)
        .env("GOFLAGS", "-mod=mod -buildvcs=false")
        .args(["build", "-o"])
        .arg(&tmp_dest)
        .arg("./ziti")
        .status()
        .map_err(|e| unavailable(format!("cannot run `go build`: {e}")))?;
    if !status.success() {
        return Err(unavailable(format!(
            "`go build ./ziti` exited with {status}"
        )));
    }
    std::fs::rename(&tmp_dest, dest).map_err(|e| io_err("install ziti binary", e))?;
    Ok(())
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn io_err(what: &str, e: std::io::Error) -> TestNetError {
    TestNetError::Io(format!("{what}: {e}"))
}

/// An exclusive `flock` held until dropped.
struct FileLock(std::fs::File);

impl FileLock {
    fn acquire(path: &Path) -> Result<Self, TestNetError> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| io_err("open lock file", e))?;
        // SAFETY: flock on a valid, owned file descriptor.
        let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
        if rc != 0 {
            return Err(io_err("flock", std::io::Error::last_os_error()));
        }
        Ok(FileLock(f))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        use std::os::fd::AsRawFd;
        // SAFETY: unlocking the descriptor we locked; it is still open.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMS: &str = "\
2ac07ea95b6900a343a22c6edfb086b8d9686cce66d486ce468bfeb7b5b4e46e  ziti-v2.0.3-linux-amd64.xz
1fdccd1f56315bf3d48b08184a682a0e03dd92c37d3897997d62f69a6aeea19f  ziti-v2.0.3-linux-amd64 (decompressed)
";

    #[test]
    fn sums_name_archive_and_binary() {
        let sums = parse_sums(SUMS, "ziti-v2.0.3-linux-amd64.xz");
        assert_eq!(
            sums,
            Some(ArchiveSums {
                archive: "2ac07ea95b6900a343a22c6edfb086b8d9686cce66d486ce468bfeb7b5b4e46e".into(),
                decompressed: Some(
                    "1fdccd1f56315bf3d48b08184a682a0e03dd92c37d3897997d62f69a6aeea19f".into()
                ),
            })
        );
        assert_eq!(parse_sums(SUMS, "ziti-v9-linux-amd64.xz"), None);
    }

    #[test]
    fn a_corrupted_archive_is_refused_with_a_checksum_error() {
        let dir = tempfile::tempdir().unwrap();
        let archive = dir.path().join("ziti-v2.0.3-linux-amd64.xz");
        std::fs::write(&archive, b"not the release").unwrap();
        std::fs::write(dir.path().join("SHA256SUMS"), SUMS).unwrap();
        let dest = dir.path().join("ziti");
        let err = install_from_archive(&archive, &dest).unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(err, TestNetError::ChecksumMismatch { .. }),
            "{text}"
        );
        assert!(text.contains("checksum mismatch"), "{text}");
        assert!(!dest.exists());
    }
}
