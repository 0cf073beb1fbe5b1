//! tend-beacons: what a minion watches on its server.
//!
//! Every beacon is one module with the same three parts: a `Config`
//! (`deny_unknown_fields`), a `build` that validates it and returns a
//! [`Beacon`], and the beacon's `run`, which produces events until shutdown.
//! A registry maps the `type` written in minion.toml to the builder, so
//! adding a beacon is one new file and one line in `registry.rs`
//! (docs/architecture.md, "Add a beacon", says how).
//!
//! What the minion uses: [`build_all`] turns the `[[beacon]]` tables into
//! [`BeaconSpec`]s, each [`Beacon`] runs with a [`BeaconCtx`], and its
//! events arrive as [`Emitted`] through an [`Emitter`].

mod config;
mod emit;
mod file;
mod looker;
mod poll;
mod rate_limit;
mod registry;
mod system;
mod threshold;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tend_host::ledger::Ledger;
use tokio_util::sync::CancellationToken;

pub use config::ConfigError;
pub use emit::{Emitted, Emitter};
pub use poll::LookError;
pub use registry::{BeaconError, BeaconSpec, build_all};
/// One utmp record as the `login` beacon reads it from wtmp and btmp
/// (tests write them).
pub use system::login::Record as LoginRecord;
/// The `process` beacon's look at /proc (the bench times it).
pub use system::process::Processes;

/// What [`Beacon::run`] returns: the beacon's whole life as one future.
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
    /// Where its events go.
    pub emit: Emitter,
    /// Cancelled when the minion stops or reloads its beacons.
    pub shutdown: CancellationToken,
    /// What the state engine wrote: lets the file beacon mark a restore as
    /// caused by its job.
    pub ledger: Arc<Ledger>,
}
