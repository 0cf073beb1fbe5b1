//! The events the master makes itself (presence, job results, rule
//! reloads, the store recovering) on their way into the store and the
//! reactor. Queued, never waited for: a full queue is counted and logged.

use std::sync::Arc;

use tend_proto::v1::Event;
use tokio::sync::mpsc;

use crate::stats::{Stats, add};

/// Where the master's own events go; cheap to clone.
#[derive(Clone)]
pub struct Emitter {
    queue: mpsc::Sender<Event>,
    stats: Arc<Stats>,
}

impl Emitter {
    /// Events go to `queue`, which ingestion reads.
    pub fn new(queue: mpsc::Sender<Event>, stats: Arc<Stats>) -> Self {
        Self { queue, stats }
    }

    /// Queues an event made by the master. Never waits: a full queue is
    /// counted and logged.
    pub fn emit(&self, minion: &str, tag: String, data: serde_json::Value) {
        self.queue_event(Event {
            minion: minion.to_string(),
            seq: 0,
            tag,
            time_us: tend_proto::now_us(),
            data: data.to_string().into_bytes(),
            cause: 0,
            local_orders: Default::default(),
        });
    }

    /// Queues an event the master made, as `emit` does.
    pub fn queue_event(&self, event: Event) {
        if self.queue.try_send(event).is_err() {
            add(&self.stats.counters.local_events_dropped, 1);
            tracing::warn!("ingest queue full: a master event was dropped");
        }
    }

    /// Events waiting in the queue.
    pub fn waiting(&self) -> usize {
        self.queue.max_capacity() - self.queue.capacity()
    }
}
