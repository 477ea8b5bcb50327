//! Logging for the tunneler: to stderr, or to a file (one per session, e.g.
//! `--log-file /var/log/zt/session-42.log`). `RUST_LOG` refines the level per module; a running
//! tunnel's filter can be replaced through its status socket ([`set_level`]).

use std::path::Path;
use std::sync::OnceLock;

use tracing_subscriber::fmt::writer::BoxMakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Registry, reload};

/// Replaces the filter of the installed subscriber.
static RELOAD: OnceLock<reload::Handle<EnvFilter, Registry>> = OnceLock::new();

/// Noisy dependencies kept at `warn` whatever the level.
const QUIET: &str = "hyper=warn,reqwest=warn,rustls=warn,h2=warn";

/// Why logging could not be set up or changed.
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
    /// A log level or filter that does not parse.
    #[error(
        "invalid log level {0:?} (trace, debug, info, warn, error, off, or RUST_LOG directives such as info,ziti_sdk=debug)"
    )]
    Level(String),
    /// The filter could not be replaced (logging not set up by [`init`]).
    #[error("the log filter cannot be changed")]
    Reload,
}

/// The filter for `level`: a plain level (`debug`) or `RUST_LOG`-style directives
/// (`info,ziti_sdk=debug`), with the noisy dependencies kept quiet.
fn filter_for(level: &str) -> Result<EnvFilter, LoggingError> {
    let level = level.trim();
    let plain = !level.contains(['=', ',', '[', ':']);
    if level.is_empty()
        || (plain
            && level
                .parse::<tracing_subscriber::filter::LevelFilter>()
                .is_err())
    {
        // A bare word that is not a level would be taken as a target name and enable
        // everything it logs: refuse it.
        return Err(LoggingError::Level(level.to_string()));
    }
    EnvFilter::try_new(format!("{level},{QUIET}")).map_err(|_| LoggingError::Level(level.into()))
}

/// Installs the global subscriber. `level` is a default such as `info` or `debug`; `RUST_LOG`
/// takes precedence when set. With `file`, logs are appended there (created 0600) instead of
/// stderr.
/// `json`: one JSON object per line, as `--log-formatter json`.
pub fn init(level: &str, file: Option<&Path>, json: bool) -> Result<(), LoggingError> {
    let filter = match EnvFilter::try_from_default_env() {
        Ok(f) => f,
        Err(_) => filter_for(level)
            .or_else(|_| EnvFilter::try_new(format!("{level},{QUIET}")))
            .map_err(|_| LoggingError::Level(level.to_string()))?,
    };
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
    let (filter, handle) = reload::Layer::new(filter);
    let ansi = file.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
    let installed = if json {
        registry
            .with(tracing_subscriber::fmt::layer().json().with_writer(writer))
            .try_init()
    } else {
        registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(writer)
                    .with_ansi(ansi),
            )
            .try_init()
    };
    installed.map_err(|_| LoggingError::AlreadySet)?;
    let _ = RELOAD.set(handle);
    Ok(())
}

/// Replaces the log filter of the running process with `level` (see [`init`]); `RUST_LOG` no
/// longer applies afterwards.
pub fn set_level(level: &str) -> Result<(), LoggingError> {
    let filter = filter_for(level)?;
    RELOAD
        .get()
        .ok_or(LoggingError::Reload)?
        .reload(filter)
        .map_err(|_| LoggingError::Reload)
}

#[cfg(test)]
mod tests {
    use super::filter_for;

    #[test]
    fn levels_and_directives_parse_and_bare_words_do_not() {
        for ok in [
            "debug",
            "INFO",
            "off",
            "info,ziti_sdk=debug",
            "ziti_tunnel=trace",
        ] {
            assert!(filter_for(ok).is_ok(), "{ok}");
        }
        for bad in ["", "verbose", "  ", "info,=="] {
            assert!(filter_for(bad).is_err(), "{bad}");
        }
    }
}
