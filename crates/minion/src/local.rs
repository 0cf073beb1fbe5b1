//! The minion's local socket (`ipc://<data_dir>/minion.sock`, mode 0600):
//! scripts on the server fire their own events into tend through it, as
//! Salt's `salt-call event.send` does. `tend-minion send` is its client.

use std::sync::Arc;

use serde_json::Value;
use tend_bus::{BusStats, Responder};
use tend_minion::outbox::AppendError;
use tend_proto::v1::{
    ControlRequest, Event, Failure, SendEvents, Sent, Status, control_reply, control_request,
};
use tokio::sync::{mpsc, oneshot};

use crate::publisher::Signal;

/// Events in one `SendEvents`, at most.
pub const MAX_SEND: usize = 10_000;

/// Why events sent on the local socket were not taken.
#[derive(Debug, thiserror::Error)]
enum SendError {
    #[error("tag {0:?} must be 1 to 512 printable characters")]
    BadTag(String),
    #[error("send 1 to {MAX_SEND} events at a time")]
    Count,
    /// The n-th (from 1) event's data.
    #[error("event {0} is not a JSON object")]
    NotAnObject(usize),
    #[error("the minion is shutting down")]
    ShuttingDown,
    #[error("the outbox could not write them: {0}")]
    Outbox(AppendError),
}

pub async fn serve(
    minion: String,
    mut requests: mpsc::Receiver<(Responder, ControlRequest)>,
    publisher: mpsc::Sender<Signal>,
    stats: Arc<BusStats>,
) {
    while let Some((out, req)) = requests.recv().await {
        let answer = match req.body {
            Some(control_request::Body::SendEvents(send)) => {
                match send_events(&minion, send, &publisher).await {
                    Ok((first_seq, last_seq)) => control_reply::Body::Sent(Sent {
                        first_seq,
                        last_seq,
                    }),
                    Err(e) => control_reply::Body::Failure(Failure {
                        message: e.to_string(),
                    }),
                }
            }
            Some(control_request::Body::GetStatus(_)) => control_reply::Body::Status(Status {
                version: env!("CARGO_PKG_VERSION").into(),
                started_us: 0,
                counters: stats
                    .snapshot()
                    .into_iter()
                    .map(|(k, v)| (format!("bus_{k}"), v))
                    .collect(),
                // The master's store fields.
                ..Default::default()
            }),
            _ => control_reply::Body::Failure(Failure {
                message: "this is a minion's local socket: it takes `send` and `status`; ask the master for the rest".into(),
            }),
        };
        let _ = out.finish(answer);
    }
}

async fn send_events(
    minion: &str,
    send: SendEvents,
    publisher: &mpsc::Sender<Signal>,
) -> Result<(u64, u64), SendError> {
    let tag = send.tag.trim_matches('/');
    if tag.is_empty() || tag.len() > 512 || tag.chars().any(char::is_control) {
        return Err(SendError::BadTag(send.tag.clone()));
    }
    if send.data.is_empty() || send.data.len() > MAX_SEND {
        return Err(SendError::Count);
    }
    let now = tend_proto::now_us();
    let mut events = Vec::with_capacity(send.data.len());
    for (i, data) in send.data.into_iter().enumerate() {
        let data = if data.is_empty() {
            b"{}".to_vec()
        } else {
            data
        };
        match serde_json::from_slice::<Value>(&data) {
            Ok(Value::Object(_)) => {}
            _ => return Err(SendError::NotAnObject(i + 1)),
        }
        events.push(Event {
            minion: minion.to_string(),
            seq: 0,
            tag: format!("minion/{minion}/event/{tag}"),
            time_us: now,
            data,
            cause: 0,
            local_orders: 0,
        });
    }
    let (done, result) = oneshot::channel();
    publisher
        .send(Signal::Send { events, done })
        .await
        .map_err(|_| SendError::ShuttingDown)?;
    result
        .await
        .map_err(|_| SendError::ShuttingDown)?
        .map_err(SendError::Outbox)
}
