//! tend-beacons: what a minion watches on its server.
//!
//! Every beacon is one module with the same three parts: a `Config`
//! (`deny_unknown_fields`), a `build` that validates it and returns a
//! [`Beacon`], and the beacon's `run`, which produces events until shutdown.
//! A registry maps the `type` written in minion.toml to the builder, so
//! adding a beacon is one new file and one line in [`registry`].

mod coalesce;
mod file;
mod registry;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tend_state::Ledger;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use registry::{BeaconError, BeaconSpec, build_all};

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A running source of events.
pub trait Beacon: Send + 'static {
    /// Runs until `ctx.shutdown` is cancelled. A failure at run time (a
    /// path vanished, permission denied) is reported as an error event and
    /// the beacon keeps going where it can; it never brings the minion down.
    fn run(self: Box<Self>, ctx: BeaconCtx) -> BoxFuture<()>;
}

/// What a beacon is given to run.
pub struct BeaconCtx {
    pub emit: Emitter,
    pub shutdown: CancellationToken,
    /// What the state engine wrote: lets the file beacon mark a restore as
    /// caused by its job.
    pub ledger: Arc<Ledger>,
}

/// One event from a beacon, before the minion numbers it.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The beacon instance's name.
    pub beacon: Arc<str>,
    /// Appended to the beacon's tag (`minion/<id>/beacon/<name>/<subject>`);
    /// may be empty.
    pub subject: String,
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The job whose state run caused this, 0 if none.
    pub cause: u64,
    pub time_us: i64,
}

/// Where a beacon sends its events.
#[derive(Clone)]
pub struct Emitter {
    beacon: Arc<str>,
    tx: mpsc::Sender<Emitted>,
}

impl Emitter {
    pub fn new(beacon: &str, tx: mpsc::Sender<Emitted>) -> Self {
        Self {
            beacon: beacon.into(),
            tx,
        }
    }

    pub fn beacon(&self) -> &str {
        &self.beacon
    }

    /// Sends an event; waits when the minion is behind (backpressure on the
    /// beacon rather than a silent drop). Returns false once the minion is
    /// shutting down.
    pub async fn emit(
        &self,
        subject: impl Into<String>,
        data: serde_json::Map<String, serde_json::Value>,
        cause: u64,
    ) -> bool {
        self.tx
            .send(Emitted {
                beacon: self.beacon.clone(),
                subject: subject.into(),
                data,
                cause,
                time_us: tend_proto::now_us(),
            })
            .await
            .is_ok()
    }

    /// Reports a run-time failure of the beacon as an event tagged
    /// `.../error`.
    pub async fn error(&self, message: impl Into<String>) -> bool {
        let message = message.into();
        tracing::warn!(beacon = %self.beacon, %message, "beacon error");
        let mut data = serde_json::Map::new();
        data.insert("error".into(), message.into());
        self.emit("error", data, 0).await
    }
}
