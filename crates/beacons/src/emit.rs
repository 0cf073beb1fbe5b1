//! Where a beacon's events go: an [`Emitter`] sends each as an [`Emitted`]
//! to the minion, waiting when the minion is behind, and through the
//! beacon's rate limit when it has one.

use std::sync::{Arc, Mutex};

use tokio::sync::mpsc;

use crate::rate_limit::RateLimit;

/// One event from a beacon, before the minion numbers it.
#[derive(Debug, Clone)]
pub struct Emitted {
    /// The beacon instance's name.
    pub beacon: Arc<str>,
    /// What happened, as one word: the last part of the event's tag
    /// (`minion/<id>/beacon/<name>/<kind>`), so a tag glob selects on it
    /// (`modified`, `high`, `running`, `login`, `error`, `dropped`, ...).
    /// The data carries it too, as `kind`.
    pub kind: String,
    /// The event's data, as docs/reference.md lists it for the beacon's
    /// type; always with `kind`.
    pub data: serde_json::Map<String, serde_json::Value>,
    /// The job whose state run caused this, 0 if none.
    pub cause: u64,
    /// When it was emitted, in microseconds since the Unix epoch.
    pub time_us: i64,
}

/// Where a beacon sends its events, through its rate limit.
#[derive(Clone)]
pub struct Emitter {
    beacon: Arc<str>,
    tx: mpsc::Sender<Emitted>,
    limit: Option<Arc<Mutex<Limiter>>>,
}

struct Limiter {
    rate: RateLimit,
    /// A task will report the drops when the period ends.
    report_pending: bool,
}

impl Emitter {
    /// Events of beacon instance `beacon`, sent on `tx`, with no rate limit.
    pub fn new(beacon: &str, tx: mpsc::Sender<Emitted>) -> Self {
        Self {
            beacon: beacon.into(),
            tx,
            limit: None,
        }
    }

    /// At most `max` events per `per`; the rest are dropped, counted, and
    /// reported in one event (`<beacon>/dropped`) when the period ends.
    pub fn with_rate_limit(mut self, max: u64, per: std::time::Duration) -> Self {
        self.limit = Some(Arc::new(Mutex::new(Limiter {
            rate: RateLimit::new(max, per),
            report_pending: false,
        })));
        self
    }

    /// The beacon instance's name.
    pub fn beacon(&self) -> &str {
        &self.beacon
    }

    async fn send(
        &self,
        kind: String,
        mut data: serde_json::Map<String, serde_json::Value>,
        cause: u64,
    ) -> bool {
        // The tag's last part, in the data too: a rule may select on either.
        data.insert("kind".into(), kind.clone().into());
        self.tx
            .send(Emitted {
                beacon: self.beacon.clone(),
                kind,
                data,
                cause,
                time_us: tend_proto::now_us(),
            })
            .await
            .is_ok()
    }

    /// Sends an event of kind `kind` (the tag's last part; see
    /// [`Emitted::kind`]); waits when the minion is behind (backpressure on
    /// the beacon rather than a silent drop). Over the rate limit it is
    /// dropped and counted instead. Returns false once the minion is
    /// shutting down.
    pub async fn emit(
        &self,
        kind: impl Into<String>,
        data: serde_json::Map<String, serde_json::Value>,
        cause: u64,
    ) -> bool {
        if let Some(limit) = &self.limit {
            let (admitted, schedule) = {
                let mut l = limit.lock().unwrap_or_else(|p| p.into_inner());
                let (ok, _) = l.rate.admit(tokio::time::Instant::now());
                let schedule = !ok && !l.report_pending;
                if schedule {
                    l.report_pending = true;
                }
                (ok, schedule.then_some(l.rate.per))
            };
            if let Some(per) = schedule {
                let this = self.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(per).await;
                    let dropped = {
                        let Some(limit) = &this.limit else { return };
                        let mut l = limit.lock().unwrap_or_else(|p| p.into_inner());
                        l.report_pending = false;
                        std::mem::take(&mut l.rate.dropped)
                    };
                    if dropped > 0 {
                        tracing::warn!(beacon = %this.beacon, dropped, "rate limit: events dropped");
                        let mut data = serde_json::Map::new();
                        data.insert("dropped".into(), dropped.into());
                        data.insert("reason".into(), "the beacon's rate_limit".into());
                        this.send("dropped".into(), data, 0).await;
                    }
                });
            }
            if !admitted {
                return true;
            }
        }
        self.send(kind.into(), data, cause).await
    }

    /// Reports a run-time failure of the beacon as an event tagged
    /// `.../error`.
    pub async fn error(&self, message: impl Into<String>) -> bool {
        let message = message.into();
        tracing::warn!(beacon = %self.beacon, %message, "beacon error");
        let mut data = serde_json::Map::new();
        data.insert("error".into(), message.into());
        self.send("error".into(), data, 0).await
    }
}
