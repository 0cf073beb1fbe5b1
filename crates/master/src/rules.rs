//! The reactor rules in force, and reading them again from reactor.d
//! (SIGHUP, `tend rules reload`): a bad file is refused and the rules in
//! force stay.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use tend_reactor::Rules;

use crate::emit::Emitter;
use crate::reactor_inbox::ReactorInbox;

/// Why the rules were not reloaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// A rule file is bad; the rules in force stay.
    #[error("{0} (the rules in force are unchanged)")]
    Refused(String),
    /// Reading the files failed to finish.
    #[error("{0}")]
    Task(tokio::task::JoinError),
}

/// The rules in force.
pub struct RuleSet {
    current: RwLock<Arc<Rules>>,
    /// Counts reloads: what depends on the rules (minions' standing
    /// orders) watches it.
    generation: tokio::sync::watch::Sender<u64>,
    /// reactor.d.
    dir: PathBuf,
    emitter: Emitter,
    reactor: ReactorInbox,
}

impl RuleSet {
    /// `rules`, read from `dir`; reloads announce themselves through
    /// `emitter` and go to the reactor's thread.
    pub fn new(rules: Arc<Rules>, dir: PathBuf, emitter: Emitter, reactor: ReactorInbox) -> Self {
        Self {
            current: RwLock::new(rules),
            generation: tokio::sync::watch::Sender::new(0),
            dir,
            emitter,
            reactor,
        }
    }

    /// Changes at every reload.
    pub fn generation(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// The rules in force.
    pub fn current(&self) -> Arc<Rules> {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Reads reactor.d again. A bad file is refused (with its file, rule
    /// and error) and the rules in force stay.
    pub async fn reload(&self) -> Result<usize, ReloadError> {
        let dir = self.dir.clone();
        let loaded = tokio::task::spawn_blocking(move || Rules::load_dir(&dir))
            .await
            .map_err(ReloadError::Task)?;
        let rules = match loaded {
            Ok(mut r) => {
                r.keep_stats_from(&self.current());
                Arc::new(r)
            }
            Err(e) => {
                tracing::error!(error = %e, "rules not reloaded; the old ones stay in force");
                self.emitter.emit(
                    "",
                    "master/reactor/reload-failed".into(),
                    serde_json::json!({"error": e.to_string()}),
                );
                return Err(ReloadError::Refused(e.to_string()));
            }
        };
        let n = rules.len();
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = rules.clone();
        self.generation.send_modify(|g| *g += 1);
        self.reactor.reload(rules).await;
        self.emitter.emit(
            "",
            "master/reactor/reloaded".into(),
            serde_json::json!({"rules": n}),
        );
        Ok(n)
    }
}
