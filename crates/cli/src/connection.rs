//! Reaching the master: over its local control socket (`ipc://`), said at
//! once when nothing listens there; or over TCP as an operator, with this
//! operator's key and the master's key pinned (given, or trusted on first
//! use and recorded).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tend_bus::{BusError, ControlClient, Identity, MasterPin};

use crate::context::Global;
use crate::errors::ConnectError;
use crate::request::QUERY_TIMEOUT;

/// A connection to the master the global options name.
pub fn connect(global: &Global) -> Result<ControlClient, ConnectError> {
    let endpoint = global.master.as_str();
    if endpoint.starts_with("tcp://") {
        return connect_operator(global);
    }
    if let Some(path) = endpoint.strip_prefix("ipc://") {
        // A socket in a directory this user may not enter does not "not
        // exist": it is refused, and the operator is told by whom.
        match std::fs::symlink_metadata(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(denied(path));
            }
            Err(_) => {
                return Err(ConnectError::NoSocket {
                    endpoint: endpoint.into(),
                    path: path.into(),
                });
            }
        }
        // ZeroMQ would wait for a listener that will never come; a plain
        // connect says at once whether one is there.
        match std::os::unix::net::UnixStream::connect(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                return Err(ConnectError::NothingListens {
                    endpoint: endpoint.into(),
                    path: path.into(),
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(denied(path));
            }
            Err(error) => {
                return Err(ConnectError::Unreachable {
                    endpoint: endpoint.into(),
                    error,
                });
            }
        }
    }
    ControlClient::connect(endpoint).map_err(|source| ConnectError::Socket {
        endpoint: endpoint.into(),
        source,
    })
}

/// The control socket at `path` is refused to this user: who this user
/// is, and who may use it (the owner and group of the socket, or of the
/// first directory on the way that this user may not enter).
fn denied(path: &str) -> ConnectError {
    use std::os::unix::fs::MetadataExt;
    let user = |uid: u32| {
        uzers::get_user_by_uid(uid)
            .map(|u| u.name().to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("uid {uid}"))
    };
    let group = |gid: u32| {
        uzers::get_group_by_gid(gid)
            .map(|g| g.name().to_string_lossy().into_owned())
            .unwrap_or_else(|| format!("gid {gid}"))
    };
    // The socket itself, else the deepest directory that can be looked at
    // (the one that lets this user no further).
    let mut at = Path::new(path);
    let found = loop {
        match std::fs::metadata(at) {
            Ok(m) => break Some((at.to_path_buf(), m)),
            Err(_) => match at.parent() {
                Some(p) if !p.as_os_str().is_empty() => at = p,
                _ => break None,
            },
        }
    };
    let who = match found {
        Some((place, m)) => {
            let mode = m.mode() & 0o777;
            let kind = if m.is_dir() { "directory" } else { "socket" };
            if mode & 0o070 != 0 {
                format!(
                    "{kind} {} lets in user {} and group {} (mode {mode:04o})",
                    place.display(),
                    user(m.uid()),
                    group(m.gid())
                )
            } else {
                format!(
                    "{kind} {} lets in user {} only (mode {mode:04o})",
                    place.display(),
                    user(m.uid())
                )
            }
        }
        None => "path cannot be looked at at all".into(),
    };
    ConnectError::SocketDenied {
        path: path.into(),
        me: user(uzers::get_effective_uid()),
        who,
    }
}

/// Where the CLI keeps its own files: `$XDG_CONFIG_HOME/tend` or
/// `~/.config/tend`.
fn config_dir() -> Result<PathBuf, ConnectError> {
    if let Some(d) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(d).join("tend"));
    }
    let home = std::env::var_os("HOME").ok_or(ConnectError::NoHome)?;
    Ok(PathBuf::from(home).join(".config/tend"))
}

/// Over TCP, as an operator: the signed handshake with this operator's key.
fn connect_operator(global: &Global) -> Result<ControlClient, ConnectError> {
    let endpoint = global.master.as_str();
    check_tcp(endpoint)?;
    let key = match &global.key {
        Some(k) => k.clone(),
        None => config_dir()?.join("operator.key"),
    };
    let identity =
        Arc::new(
            Identity::load_or_create(&key).map_err(|source| ConnectError::OperatorKey {
                path: key.clone(),
                source,
            })?,
        );
    let name = global
        .name
        .clone()
        .or_else(|| std::env::var("USER").ok())
        .unwrap_or_else(|| "operator".into());
    let pin = match &global.master_fingerprint {
        Some(fp) => MasterPin::Fingerprint(fp.clone()),
        None => {
            let safe: String = endpoint
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
                .collect();
            MasterPin::FirstUse(config_dir()?.join("masters").join(safe))
        }
    };
    match ControlClient::connect_operator(endpoint, identity.clone(), &name, &pin, QUERY_TIMEOUT) {
        Ok(c) => Ok(c),
        Err(BusError::Refused { status, .. }) if status == "pending" => {
            Err(ConnectError::NotAccepted {
                endpoint: endpoint.into(),
                fingerprint: identity.fingerprint(),
                name,
            })
        }
        Err(BusError::Timeout { .. }) => Err(ConnectError::NoHandshake {
            endpoint: endpoint.into(),
            secs: QUERY_TIMEOUT.as_secs(),
        }),
        Err(error) => Err(ConnectError::Session {
            endpoint: endpoint.into(),
            error,
        }),
    }
}

/// Says at once when nothing listens at a `tcp://` endpoint (ZeroMQ would
/// wait out the whole timeout).
fn check_tcp(endpoint: &str) -> Result<(), ConnectError> {
    use std::net::ToSocketAddrs;
    let hostport = endpoint.trim_start_matches("tcp://");
    let addrs: Vec<_> = hostport
        .to_socket_addrs()
        .map_err(|source| ConnectError::Unresolvable {
            endpoint: endpoint.into(),
            source,
        })?
        .collect();
    let mut last = None;
    for addr in addrs {
        match std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(3)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    match last {
        Some(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            Err(ConnectError::Refused {
                endpoint: endpoint.into(),
            })
        }
        Some(error) => Err(ConnectError::Unreachable {
            endpoint: endpoint.into(),
            error,
        }),
        None => Err(ConnectError::NoAddress {
            endpoint: endpoint.into(),
        }),
    }
}
