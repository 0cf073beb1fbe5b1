//! The control channel between the `tend` CLI and the master: a ROUTER on
//! the master (an `ipc://` socket under its run dir by default), a DEALER in
//! the CLI. One request gets one or more replies carrying its id; the last
//! has `more = false`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use prost::Message;
use tend_proto::v1::{ControlReply, ControlRequest, control_reply};
use tokio::sync::mpsc;

use crate::BusError;
use crate::actor::SocketThread;
use crate::stats::BusStats;

/// Answers one control request, possibly in several parts.
pub struct Responder {
    route: Vec<u8>,
    id: u64,
    socket: Arc<SocketThread>,
}

impl Responder {
    /// Sends one part of the answer; `more` says whether others follow.
    pub fn send(&self, body: control_reply::Body, more: bool) -> Result<(), BusError> {
        let reply = ControlReply {
            id: self.id,
            more,
            body: Some(body),
        };
        self.socket
            .send(vec![self.route.clone(), reply.encode_to_vec()])
    }

    /// Sends the final part of the answer.
    pub fn finish(&self, body: control_reply::Body) -> Result<(), BusError> {
        self.send(body, false)
    }
}

pub struct ControlServer {
    _socket: Arc<SocketThread>,
}

impl ControlServer {
    /// Binds the control socket; requests arrive on the returned channel.
    pub fn bind(
        endpoint: &str,
        max_message_size: usize,
        stats: Arc<BusStats>,
    ) -> Result<(Self, mpsc::Receiver<(Responder, ControlRequest)>), BusError> {
        let ctx = crate::context();
        let router = ctx.socket(zmq::ROUTER)?;
        router.set_maxmsgsize(max_message_size as i64)?;
        router.set_linger(0)?;
        router.set_sndhwm(100_000)?;
        crate::bind(&router, endpoint)?;
        let (tx, rx) = mpsc::channel(256);
        // The responder needs the socket thread, which needs the callback:
        // the callback gets it through a slot filled once it exists.
        let slot: Arc<std::sync::OnceLock<std::sync::Weak<SocketThread>>> = Arc::default();
        let cb_slot = slot.clone();
        let socket = Arc::new(SocketThread::spawn(
            &ctx,
            "master-control",
            router,
            Box::new(move |parts| {
                BusStats::inc(&stats.frames_in);
                let [route, body] = parts.as_slice() else {
                    let reason = format!(
                        "control message of {} parts, not 1",
                        parts.len().saturating_sub(1)
                    );
                    BusStats::refuse(&stats.frames_bad, "control", &reason);
                    return None;
                };
                let req = match ControlRequest::decode(body.as_slice()) {
                    Ok(r) => r,
                    Err(e) => {
                        let reason = format!("undecodable control request: {e}");
                        BusStats::refuse(&stats.frames_undecodable, "control", &reason);
                        let reply = ControlReply {
                            id: 0,
                            more: false,
                            body: Some(control_reply::Body::Failure(tend_proto::v1::Failure {
                                message: format!("cannot decode the control request: {e}"),
                            })),
                        };
                        return Some(vec![route.clone(), reply.encode_to_vec()]);
                    }
                };
                let socket = cb_slot.get().and_then(std::sync::Weak::upgrade)?;
                let responder = Responder {
                    route: route.clone(),
                    id: req.id,
                    socket,
                };
                if let Err(mpsc::error::TrySendError::Full((r, _))) = tx.try_send((responder, req))
                {
                    BusStats::inc(&stats.queue_full);
                    let reply = ControlReply {
                        id: r.id,
                        more: false,
                        body: Some(control_reply::Body::Failure(tend_proto::v1::Failure {
                            message: "the master is busy; try again".into(),
                        })),
                    };
                    return Some(vec![r.route, reply.encode_to_vec()]);
                }
                None
            }),
        )?);
        let _ = slot.set(Arc::downgrade(&socket));
        Ok((Self { _socket: socket }, rx))
    }
}

/// The CLI's end: a blocking client, one request at a time.
pub struct ControlClient {
    socket: zmq::Socket,
    endpoint: String,
    next_id: u64,
}

impl ControlClient {
    pub fn connect(endpoint: &str) -> Result<Self, BusError> {
        let socket = crate::context().socket(zmq::DEALER)?;
        socket.set_linger(0)?;
        crate::connect(&socket, endpoint)?;
        Ok(Self {
            socket,
            endpoint: endpoint.to_string(),
            next_id: 1,
        })
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Sends `body` and hands every reply to `on_reply` until the last one,
    /// or until `on_reply` returns false. `timeout` bounds the wait for each
    /// reply (None waits forever).
    pub fn call(
        &mut self,
        body: tend_proto::v1::control_request::Body,
        timeout: Option<Duration>,
        mut on_reply: impl FnMut(ControlReply) -> bool,
    ) -> Result<(), BusError> {
        let id = self.next_id;
        self.next_id += 1;
        let req = ControlRequest {
            id,
            body: Some(body),
        };
        self.socket.send(req.encode_to_vec(), 0)?;
        loop {
            let deadline = timeout.map(|t| Instant::now() + t);
            let wait_ms = deadline.map_or(-1, |d| {
                d.saturating_duration_since(Instant::now()).as_millis() as i64
            });
            if self.socket.poll(zmq::POLLIN, wait_ms)? == 0 {
                return Err(BusError::Timeout {
                    minion: format!("the master at {}", self.endpoint),
                    timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
                });
            }
            let bytes = self.socket.recv_bytes(0)?;
            let reply = ControlReply::decode(bytes.as_slice())?;
            if reply.id != id && reply.id != 0 {
                continue; // an answer to an earlier, abandoned request
            }
            let more = reply.more;
            if !on_reply(reply) || !more {
                return Ok(());
            }
        }
    }
}
