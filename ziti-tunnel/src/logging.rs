//! Logging for the tunneler: to stderr, or to a file (one per session, e.g.
//! `--log-file /var/log/zt/session-42.log`). `RUST_LOG` refines the level per module.

use std::path::Path;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::BoxMakeWriter;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LoggingError {
    /// The log file could not be opened.
    #[error("cannot open log file {path}")]
    File {
        /// The path given.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// A global subscriber was already installed.
    #[error("logging is already initialised")]
    AlreadySet,
}

/// Installs the global subscriber. `level` is a default such as `info` or `debug`; `RUST_LOG`
/// takes precedence when set. With `file`, logs are appended there (created 0600) instead of
/// stderr.
/// `json`: one JSON object per line, as `--log-formatter json`.
pub fn init(level: &str, file: Option<&Path>, json: bool) -> Result<(), LoggingError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        EnvFilter::new(format!(
            "{level},hyper=warn,reqwest=warn,rustls=warn,h2=warn"
        ))
    });
    let writer = match file {
        Some(path) => {
            use std::os::unix::fs::OpenOptionsExt;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .mode(0o600)
                .open(path)
                .map_err(|source| LoggingError::File {
                    path: path.display().to_string(),
                    source,
                })?;
            BoxMakeWriter::new(std::sync::Mutex::new(f))
        }
        None => BoxMakeWriter::new(std::io::stderr),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    if json {
        return builder
            .json()
            .try_init()
            .map_err(|_| LoggingError::AlreadySet);
    }
    builder
        .with_ansi(file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init()
        .map_err(|_| LoggingError::AlreadySet)
}
