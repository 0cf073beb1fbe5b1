//! Asking the master over a control connection: a request and every part
//! of its answer (`call`), a question with one answer (`ask`), and the
//! lists more than one command reads (events, page by page; minions).

use std::time::Duration;

use tend_bus::{BusError, ControlClient};
use tend_proto::v1::{
    ListEvents, ListMinions, MinionInfo, StoredEvent, control_reply, control_request,
};

use crate::errors::RequestError;

/// How long to wait for the master on anything but a job (apply, run, ping).
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one request and hands every part of the answer to `on_body`; a
/// failure from the master becomes the error.
pub fn call(
    client: &mut ControlClient,
    body: control_request::Body,
    timeout: Duration,
    mut on_body: impl FnMut(control_reply::Body),
) -> Result<(), RequestError> {
    let mut failure = None;
    let endpoint = client.endpoint().to_string();
    client
        .call(body, Some(timeout), |reply| {
            match reply.body {
                Some(control_reply::Body::Failure(f)) => failure = Some(f.message),
                Some(b) => on_body(b),
                None => {}
            }
            true
        })
        .map_err(|e| match e {
            BusError::Timeout { .. } => RequestError::NoAnswer {
                endpoint: endpoint.clone(),
                secs: timeout.as_secs(),
            },
            error => RequestError::Bus {
                endpoint: endpoint.clone(),
                error,
            },
        })?;
    match failure {
        Some(message) => Err(RequestError::MasterSaid(message)),
        None => Ok(()),
    }
}

/// Asks a question with one answer, within [`QUERY_TIMEOUT`]: the answer
/// is the last part of the reply that `pick` takes; none when no part was.
pub fn ask<T>(
    client: &mut ControlClient,
    body: control_request::Body,
    mut pick: impl FnMut(control_reply::Body) -> Option<T>,
) -> Result<Option<T>, RequestError> {
    let mut answer = None;
    call(client, body, QUERY_TIMEOUT, |body| {
        if let Some(a) = pick(body) {
            answer = Some(a);
        }
    })?;
    Ok(answer)
}

/// Events matching `query`, newest first: the master answers a long list
/// in pages, and each next page is asked for in turn.
pub fn list_events(
    client: &mut ControlClient,
    mut query: ListEvents,
) -> Result<Vec<StoredEvent>, RequestError> {
    let mut events = Vec::new();
    // 0 is the master's default, answered in one page.
    let total = query.limit as usize;
    loop {
        let mut next = 0;
        call(
            client,
            control_request::Body::ListEvents(query.clone()),
            QUERY_TIMEOUT,
            |body| {
                if let control_reply::Body::Events(list) = body {
                    events.extend(list.events);
                    if list.next_before_id > 0 {
                        next = list.next_before_id;
                    }
                }
            },
        )?;
        if next == 0 || total == 0 || events.len() >= total {
            return Ok(events);
        }
        query.before_id = next;
        query.limit = (total - events.len()) as u32;
    }
}

/// Every minion the master knows.
pub fn list_minions(client: &mut ControlClient) -> Result<Vec<MinionInfo>, RequestError> {
    Ok(ask(
        client,
        control_request::Body::ListMinions(ListMinions {}),
        |body| match body {
            control_reply::Body::Minions(list) => Some(list.minions),
            _ => None,
        },
    )?
    .unwrap_or_default())
}
