//! What can go wrong reaching the master and asking it something, with the
//! messages the operator reads: each says what failed, where, and what to
//! check.

use std::path::PathBuf;

use tend_bus::{BusError, IdentityError};

/// Reaching the master failed: nothing listens, the socket is not ours, or
/// (over TCP) the operator's key or the master's is not accepted.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "cannot reach the master at {endpoint}: no socket at {path}. Is tend-master running? \
         Is the path right? (set --master or TEND_MASTER)"
    )]
    NoSocket { endpoint: String, path: String },
    #[error(
        "cannot reach the master at {endpoint}: nothing listens on {path} (left by a master \
         that stopped?). Is tend-master running?"
    )]
    NothingListens { endpoint: String, path: String },
    #[error(
        "cannot open the control socket {path}: permission denied to user {me}: the {who}. \
         Run tend as that user (sudo -u USER tend ...), or use --master tcp://HOST:PORT \
         with an operator key"
    )]
    SocketDenied {
        path: String,
        me: String,
        who: String,
    },
    #[error(
        "cannot reach the master at {endpoint}: connection refused. Is tend-master running? \
         Is the port its command port?"
    )]
    Refused { endpoint: String },
    #[error("cannot reach the master at {endpoint}: {error}")]
    Unreachable {
        endpoint: String,
        error: std::io::Error,
    },
    #[error("--master {endpoint}: not a host:port I can resolve")]
    Unresolvable {
        endpoint: String,
        #[source]
        source: std::io::Error,
    },
    #[error("--master {endpoint}: the name resolves to no address")]
    NoAddress { endpoint: String },
    #[error("cannot reach the master at {endpoint}")]
    Socket {
        endpoint: String,
        #[source]
        source: BusError,
    },
    #[error("no HOME: set --key")]
    NoHome,
    #[error("operator key {}", path.display())]
    OperatorKey {
        path: PathBuf,
        #[source]
        source: IdentityError,
    },
    #[error(
        "the master at {endpoint} has not accepted operator {name:?} (key {fingerprint}) yet. \
         On the master host run: tend keys accept --operator {name}"
    )]
    NotAccepted {
        endpoint: String,
        name: String,
        fingerprint: String,
    },
    #[error(
        "no answer from the master at {endpoint} within {secs} s. Is tend-master running? Is the port right?"
    )]
    NoHandshake { endpoint: String, secs: u64 },
    #[error("cannot open a session with the master at {endpoint}: {error}")]
    Session { endpoint: String, error: BusError },
}

/// A request to the master got no answer, broke off, or was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(
        "no answer from the master at {endpoint} within {secs} s. Is tend-master running? \
         (set --master or TEND_MASTER)"
    )]
    NoAnswer { endpoint: String, secs: u64 },
    #[error("talking to the master at {endpoint}: {error}")]
    Bus { endpoint: String, error: BusError },
    /// The master refused the request and said why (as opposed to not
    /// answering): asking again will not change it.
    #[error("{0}")]
    MasterSaid(String),
}
