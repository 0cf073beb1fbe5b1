//! tend-daemon: what both daemons share and nothing else needs: reading a
//! config file with errors that name the file and the key, logging set up
//! from config and `RUST_LOG`, and shutdown on SIGTERM or SIGINT.
//!
//! DESIGN.md has no crate for this; without one, tend-master and
//! tend-minion would each carry a copy.

mod logging;
/// The `GET /metrics` endpoint both daemons serve, and its text format.
pub mod metrics;
/// sd_notify: ready, stopping, and the watchdog.
pub mod systemd;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use logging::{LogConfig, LogError, LogFormat, init_logging};
use tokio_util::sync::CancellationToken;

/// A config file that cannot be used: unreadable, or not what it must be.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

/// Why a private directory or a socket file could not be prepared.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// Creating `path` (or one of its parents) failed.
    #[error("cannot create the directory {}: {error}", path.display())]
    Create {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Reading the mode of `path` failed.
    #[error("cannot stat {}: {error}", path.display())]
    Stat {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Taking others' access away from `path` failed.
    #[error("cannot make {} private: {error} (chmod 700 it, or run as its owner)", path.display())]
    MakePrivate {
        path: PathBuf,
        error: std::io::Error,
    },
    /// A socket file left by an earlier process could not be removed.
    #[error("cannot remove the stale socket {}: {error} (remove it by hand, or run as its owner)", path.display())]
    RemoveStale {
        path: PathBuf,
        error: std::io::Error,
    },
    /// Setting a bound socket file to 0600 failed.
    #[error("cannot restrict {}: {error}", path.display())]
    Restrict {
        path: PathBuf,
        error: std::io::Error,
    },
}

/// Reads and parses TOML config `path`. A typo, a wrong type or a missing
/// key is an error naming the file, the line and the key.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Invalid {
        path: path.to_path_buf(),
        message: e.to_string().trim_end().to_string(),
    })
}

/// A path from a config file: relative paths are relative to the file's
/// directory, so a config works wherever it is started from.
pub fn relative_to(config: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        return path.to_path_buf();
    }
    // Sockets and logs should say where things are, whatever the cwd was.
    let config = std::path::absolute(config).unwrap_or_else(|_| config.to_path_buf());
    config.parent().unwrap_or(Path::new("/")).join(path)
}

/// Makes every file, directory and socket this process creates private to
/// its user (umask 077), whatever umask it was started with: the store,
/// keys, outbox and backups hold secrets, and a socket bound under a loose
/// umask is open to others until it is chmodded. Call it first thing in
/// `main`, before any thread starts. Returns the umask the process was
/// started with (the commands a minion runs get that one back).
pub fn private_umask() -> libc::mode_t {
    // SAFETY: umask(2) cannot fail and touches no memory.
    unsafe { libc::umask(0o077) }
}

/// Creates the daemon's own directory `dir` (and missing parents) private
/// to this process's user, and takes away others' access when it already
/// exists with a looser mode (a data dir made by hand, or by an earlier
/// version, 0755).
pub fn private_dir(dir: &Path) -> Result<(), DirError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|error| DirError::Create {
            path: dir.to_path_buf(),
            error,
        })?;
    let mode = std::fs::metadata(dir)
        .map_err(|error| DirError::Stat {
            path: dir.to_path_buf(),
            error,
        })?
        .permissions()
        .mode();
    if mode & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o7700)).map_err(
            |error| DirError::MakePrivate {
                path: dir.to_path_buf(),
                error,
            },
        )?;
    }
    Ok(())
}

/// For an `ipc://` endpoint about to be bound: creates its directory
/// (private, when it is missing) and removes a stale socket file left by a
/// process that did not stop cleanly. Returns the socket's path (None for
/// other transports).
pub fn prepare_ipc(endpoint: &str) -> Result<Option<PathBuf>, DirError> {
    use std::os::unix::fs::DirBuilderExt;
    let Some(path) = endpoint.strip_prefix("ipc://") else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|error| DirError::Create {
                path: dir.to_path_buf(),
                error,
            })?;
    }
    if path.exists() {
        std::fs::remove_file(&path).map_err(|error| DirError::RemoveStale {
            path: path.clone(),
            error,
        })?;
    }
    Ok(Some(path))
}

/// Makes a bound socket file usable by its owner only: whoever can write to
/// it can command the daemon. (Under `private_umask` it is bound 0700
/// already; this says so on the file too.)
pub fn restrict_socket(path: &Path) -> Result<(), DirError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(|error| {
        DirError::Restrict {
            path: path.to_path_buf(),
            error,
        }
    })
}

/// A token cancelled on the first SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> std::io::Result<CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let token = CancellationToken::new();
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let t = token.clone();
    tokio::spawn(async move {
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutting down");
        t.cancel();
    });
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Cfg {
        port: u16,
        #[serde(default)]
        log: LogConfig,
    }

    #[test]
    fn errors_name_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "port = 1\nprot = 2\n").unwrap();
        let e = load::<Cfg>(&path).unwrap_err().to_string();
        assert!(
            e.contains("m.toml") && e.contains("prot") && e.contains("line 2"),
            "{e}"
        );
        std::fs::write(&path, "port = \"x\"\n").unwrap();
        let e = load::<Cfg>(&path).unwrap_err().to_string();
        assert!(e.contains("port"), "{e}");
        std::fs::write(&path, "port = 1\n[log]\nformat = \"xml\"\n").unwrap();
        let e = load::<Cfg>(&path).unwrap_err().to_string();
        assert!(e.contains("xml"), "{e}");
        let e = load::<Cfg>(&dir.path().join("nope.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope.toml"), "{e}");
    }

    #[test]
    fn a_private_dir_is_created_and_tightened_0700() {
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
        let fresh = tmp.path().join("a/b");
        private_dir(&fresh).unwrap();
        assert_eq!(mode(&fresh), 0o700);
        let loose = tmp.path().join("loose");
        std::fs::create_dir(&loose).unwrap();
        std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
        private_dir(&loose).unwrap();
        assert_eq!(mode(&loose), 0o700);
    }

    #[test]
    fn relative_paths_follow_the_config_file() {
        assert_eq!(
            relative_to(Path::new("/etc/tend/master.toml"), Path::new("reactor.d")),
            PathBuf::from("/etc/tend/reactor.d")
        );
        assert_eq!(
            relative_to(Path::new("/etc/tend/master.toml"), Path::new("/srv")),
            PathBuf::from("/srv")
        );
    }
}
