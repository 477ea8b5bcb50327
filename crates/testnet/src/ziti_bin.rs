//! Obtaining the `ziti` binary for the pinned release.
//!
//! Order: `ZITI_BIN` (explicit override), then the cache
//! (`$ZT_CACHE_DIR` or `~/.cache/zt-tunnel/ziti-<version>/ziti`), then a build from the Go module
//! `github.com/openziti/ziti/v2@<version>` downloaded through the Go module proxy. The module has a
//! `replace` directive, so `go install pkg@ver` cannot build it: we `go mod download -json` the
//! module, copy its directory somewhere writable and run `go build ./ziti` there.

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

/// How to get the binary by hand; part of every "cannot obtain ziti" error.
pub fn how_to_obtain() -> String {
    format!(
        "set ZITI_BIN=/path/to/ziti (an OpenZiti {ZITI_VERSION} build), or put one at {}, \
         or make the Go module proxy reachable so that `cargo run -p testnet --bin obtain-ziti` \
         can build it from {MODULE}@{ZITI_VERSION} (needs `go` on PATH)",
        cache_path().display()
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
    build_from_module(&cached)?;
    Ok(cached)
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
