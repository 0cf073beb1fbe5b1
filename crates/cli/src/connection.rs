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
        if !Path::new(path).exists() {
            return Err(ConnectError::NoSocket {
                endpoint: endpoint.into(),
                path: path.into(),
            });
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
                return Err(ConnectError::SocketDenied { path: path.into() });
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
