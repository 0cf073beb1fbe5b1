//! The reactor thread's inbox: what wakes it (events stored, rules
//! reloaded). Bounded; the reactor reads the events themselves from the
//! store.

use std::sync::Arc;
use std::sync::mpsc::SyncSender;

use tend_reactor::Rules;

/// A message to the reactor's thread.
pub enum ReactorMsg {
    /// Events were stored.
    Wake,
    /// The rules were read again; these are in force.
    Reload(Arc<Rules>),
}

/// The sending side of the reactor's inbox; cheap to clone.
#[derive(Clone)]
pub struct ReactorInbox(SyncSender<ReactorMsg>);

impl ReactorInbox {
    pub fn new(tx: SyncSender<ReactorMsg>) -> Self {
        Self(tx)
    }

    /// Says events were stored. A full inbox only means the reactor is
    /// already awake.
    pub fn wake(&self) {
        let _ = self.0.try_send(ReactorMsg::Wake);
    }

    /// Hands the reactor new rules, waiting (off the runtime's threads)
    /// for room in its inbox.
    pub async fn reload(&self, rules: Arc<Rules>) {
        let tx = self.0.clone();
        let _ = tokio::task::spawn_blocking(move || tx.send(ReactorMsg::Reload(rules))).await;
    }
}
