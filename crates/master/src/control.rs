//! The control API: what `tend` asks of the master.

use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tend_bus::KeyState;
use tend_bus::Responder;
use tend_proto::v1::{
    ApplyCommand, ChangeKeys, ControlRequest, EventList, Failure, FollowEvents, JobList, KeyInfo,
    KeyList, KeysChanged, ListEvents, MinionInfo, MinionList, PeerKind, PingMinions, PingResult,
    RulesReloaded, Status, StoredEvent, Targeted, control_reply, control_request,
};
use tend_store::EventFilter;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::jobs::{ApplySpec, run_apply};
use crate::master::Master;

/// Events listed when the CLI gives no limit.
const DEFAULT_LIMIT: usize = 100;
/// Events listed at most in one request.
const MAX_LIMIT: usize = 1_000_000;
/// A reply part is cut at about this size.
const PART_BYTES: usize = 256 * 1024;
/// Jobs in one answer, at most this many bytes of them (each holds its
/// minions' output, up to 64 KiB each): the newest come first.
const JOBS_BYTES: usize = 16 << 20;
/// Events in one answer to a listing, at most: a longer one comes in
/// pages the CLI asks for in turn, so a listing of a million events never
/// sits whole in the master's memory.
const PAGE_EVENTS: usize = 5_000;

pub async fn serve(
    master: Arc<Master>,
    mut requests: mpsc::Receiver<(Responder, ControlRequest)>,
    shutdown: CancellationToken,
) {
    loop {
        let (responder, req) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = requests.recv() => match r {
                Some(r) => r,
                None => return,
            },
        };
        let master = master.clone();
        tokio::spawn(async move {
            if let Err(message) = handle(&master, &responder, req).await {
                let _ = responder.finish(control_reply::Body::Failure(Failure { message }));
            }
        });
    }
}

async fn handle(master: &Arc<Master>, out: &Responder, req: ControlRequest) -> Result<(), String> {
    let Some(body) = req.body else {
        return Err("empty request".into());
    };
    match body {
        control_request::Body::ListEvents(q) => list_events(master, out, q).await,
        control_request::Body::FollowEvents(q) => follow_events(master, out, q).await,
        control_request::Body::ListMinions(_) => {
            let mut minions: std::collections::BTreeMap<String, MinionInfo> = {
                let known = master.minions.lock().unwrap_or_else(|p| p.into_inner());
                known.iter().map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            // A minion whose key is pending has never connected, but an
            // operator needs to see it.
            let keys = with_keys(master, |keys| Ok(keys.list())).await?;
            for key in keys.into_iter().filter(|k| k.kind == PeerKind::Minion) {
                let m = minions.entry(key.name.clone()).or_insert_with(|| MinionInfo {
                    id: key.name.clone(),
                    ..Default::default()
                });
                if m.key_state.is_empty() || key.state == KeyState::Accepted {
                    m.key_state = key.state.as_str().into();
                }
            }
            let mut minions: Vec<MinionInfo> = minions.into_values().collect();
            for m in &mut minions {
                m.connected = master.bus.is_connected(&m.id);
            }
            send(out, control_reply::Body::Minions(MinionList { minions }))
        }
        control_request::Body::ListKeys(_) => {
            let keys = with_keys(master, |keys| Ok(keys.list()))
                .await?
                .into_iter()
                .map(key_info)
                .collect();
            send(
                out,
                control_reply::Body::Keys(KeyList {
                    master_fingerprint: master.fingerprint.clone(),
                    keys,
                }),
            )
        }
        control_request::Body::ChangeKeys(c) => {
            let changed = change_keys(master, c).await?;
            send(out, control_reply::Body::KeysChanged(changed))
        }
        control_request::Body::Apply(cmd) => apply(master, out, cmd).await,
        control_request::Body::ListJobs(q) => {
            let limit = if q.limit == 0 {
                DEFAULT_LIMIT
            } else {
                (q.limit as usize).min(MAX_LIMIT)
            };
            let store = master.store.clone();
            let jobs = blocking(move || store.list_jobs(limit, JOBS_BYTES)).await?;
            send(out, control_reply::Body::Jobs(JobList { jobs }))
        }
        control_request::Body::GetJob(q) => {
            let store = master.store.clone();
            match blocking(move || store.job(q.id)).await? {
                Some(job) => send(out, control_reply::Body::Job(job)),
                None => Err(format!("no job {}", q.id)),
            }
        }
        control_request::Body::Ping(p) => ping(master, out, p).await,
        control_request::Body::ReloadRules(_) => {
            let rules = master.reload_rules().await?;
            send(out, control_reply::Body::Reloaded(RulesReloaded { rules: rules as u32 }))
        }
        control_request::Body::Run(cmd) => {
            if cmd.argv.is_empty() || cmd.argv[0].is_empty() {
                return Err("give a command to run".into());
            }
            let minions = master.resolve_target(&cmd.target)?;
            targeted(out, &minions);
            let timeout = Duration::from_millis(if cmd.timeout_ms == 0 { 60_000 } else { u64::from(cmd.timeout_ms) });
            // An operator's one-word command is a shell command line, as
            // typed (`tend run web1 -- 'df -h | tail -1'`); more words are
            // an argument list.
            let argv = match <[String; 1]>::try_from(cmd.argv) {
                Ok([line]) => vec!["/bin/sh".into(), "-c".into(), line],
                Err(argv) => argv,
            };
            let (tx, mut rx) = mpsc::unbounded_channel();
            let run = {
                let master = master.clone();
                tokio::spawn(async move {
                    crate::react::run_command(&master, minions, argv, timeout, "", None, Some(tx), None).await
                })
            };
            while let Some(r) = rx.recv().await {
                let _ = out.send(control_reply::Body::MinionResult(r), true);
            }
            let job = run.await.map_err(|e| format!("the run failed: {e}"))?;
            send(out, control_reply::Body::Job(job))
        }
        control_request::Body::SendEvents(_) => Err(
            "events are sent through a minion (`tend-minion send` on that server), not to the master".into(),
        ),
        control_request::Body::GetStatus(_) => {
            let mut counters = std::collections::HashMap::new();
            for (k, v) in master.bus_stats.snapshot() {
                counters.insert(format!("bus_{k}"), v);
            }
            for (k, v) in master.counters.snapshot() {
                counters.insert(k.to_string(), v);
            }
            counters.insert(
                "minions_connected".into(),
                master.bus.connected().len() as u64,
            );
            counters.insert("rules".into(), master.rules().len() as u64);
            counters.insert("reactor_queue".into(), master.reactor_backlog());
            counters.insert("actions_running".into(), master.actions.running() as u64);
            counters.insert("actions_waiting".into(), master.actions.waiting() as u64);
            let failure = master.store_failing();
            send(
                out,
                control_reply::Body::Status(Status {
                    version: env!("CARGO_PKG_VERSION").into(),
                    started_us: master.started_us,
                    counters,
                    store_error: failure.as_ref().map(|f| f.error.clone()).unwrap_or_default(),
                    store_failing_since_us: failure.map_or(0, |f| f.since_us),
                }),
            )
        }
    }
}

fn key_info(k: tend_bus::KeyEntry) -> KeyInfo {
    KeyInfo {
        name: k.name,
        kind: tend_bus::kind_name(k.kind).into(),
        state: k.state.as_str().into(),
        fingerprint: k.fingerprint,
        labels: k.labels.into_iter().collect(),
    }
}

/// Runs `f` on the key store off the runtime: every key store call reads
/// or writes files.
async fn with_keys<T: Send + 'static>(
    master: &Arc<Master>,
    f: impl FnOnce(&tend_bus::KeyStore) -> Result<T, tend_bus::KeyError> + Send + 'static,
) -> Result<T, String> {
    let keys = master.keys.clone();
    match tokio::task::spawn_blocking(move || f(&keys)).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(e) => Err(format!("key store task failed: {e}")),
    }
}

/// `tend keys accept | reject | delete | label`. Sessions of keys no
/// longer accepted end at once (an accepted key can replace another).
async fn change_keys(master: &Arc<Master>, c: ChangeKeys) -> Result<KeysChanged, String> {
    let kind = match c.kind.as_str() {
        "" | "minion" => PeerKind::Minion,
        "operator" => PeerKind::Operator,
        other => return Err(format!("unknown key kind {other:?} (minion or operator)")),
    };
    let fp = (!c.fingerprint.is_empty()).then_some(c.fingerprint.clone());
    if let Some(fp) = &fp
        && !tend_bus::is_fingerprint(fp)
    {
        return Err(format!(
            "{fp:?} is not a fingerprint like sha256:<64 lowercase hex digits>"
        ));
    }
    let (action, pattern, dry_run) = (c.action.clone(), c.pattern.clone(), c.dry_run);
    let (entries, notes) = match action.as_str() {
        "accept" if dry_run => {
            with_keys(master, move |k| {
                k.plan_accept(kind, &pattern, fp.as_deref())
            })
            .await?
        }
        _ if dry_run => {
            return Err(format!(
                "a dry run of {action:?} is not offered (accept only)"
            ));
        }
        "accept" => {
            let accepted =
                with_keys(master, move |k| k.accept(kind, &pattern, fp.as_deref())).await?;
            (accepted, Vec::new())
        }
        "reject" if fp.is_some() => {
            return Err("reject takes a name or a glob, not a fingerprint: it refuses every key of the name (to forget one key: tend keys delete NAME --fingerprint ...)".into());
        }
        "reject" => (
            with_keys(master, move |k| k.reject(kind, &pattern)).await?,
            Vec::new(),
        ),
        "delete" => (
            with_keys(master, move |k| k.delete(kind, &pattern, fp.as_deref())).await?,
            Vec::new(),
        ),
        "label" => {
            if kind != PeerKind::Minion {
                return Err("labels are for minions".into());
            }
            let changes = c
                .labels
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((k, "")) => Ok((k.to_string(), None)),
                    Some((k, v)) => Ok((k.to_string(), Some(v.to_string()))),
                    None => Err(format!("label {l:?} is not key=value (key= removes it)")),
                })
                .collect::<Result<Vec<_>, _>>()?;
            if changes.is_empty() {
                return Err("give labels as key=value (key= removes one)".into());
            }
            let name = pattern.clone();
            let labels = with_keys(master, move |k| k.label(&name, &changes)).await?;
            let entry = KeyInfo {
                name: pattern.clone(),
                kind: "minion".into(),
                state: KeyState::Accepted.as_str().into(),
                labels: labels.into_iter().collect(),
                ..Default::default()
            };
            return Ok(KeysChanged {
                names: vec![pattern],
                keys: vec![entry],
                notes: Vec::new(),
            });
        }
        other => {
            return Err(format!(
                "unknown key action {other:?} (accept, reject, delete or label)"
            ));
        }
    };
    let mut names: Vec<String> = entries.iter().map(|e| e.name.clone()).collect();
    names.sort();
    names.dedup();
    if !dry_run {
        let (bus, revoked) = (master.clone(), names.clone());
        tokio::task::spawn_blocking(move || bus.bus.revoke(kind, &revoked))
            .await
            .map_err(|e| format!("ending sessions failed: {e}"))?;
    }
    Ok(KeysChanged {
        names,
        keys: entries.into_iter().map(key_info).collect(),
        notes,
    })
}

/// Tells the CLI which minions a job went to, so it can show progress.
fn targeted(out: &Responder, minions: &[String]) {
    let _ = out.send(
        control_reply::Body::Targeted(Targeted {
            minions: minions.to_vec(),
        }),
        true,
    );
}

fn send(out: &Responder, body: control_reply::Body) -> Result<(), String> {
    out.finish(body).map_err(|e| e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, tend_store::StoreError> + Send + 'static,
) -> Result<T, String> {
    match tokio::task::spawn_blocking(f).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(e) => Err(format!("store task failed: {e}")),
    }
}

/// The filter of a list or a tail: minion, tag glob, time, limit.
fn event_filter(minion: &str, tag: &str, since_us: i64, limit: u32) -> Result<EventFilter, String> {
    let tag = if tag.is_empty() {
        None
    } else {
        Some(
            globset::GlobBuilder::new(tag)
                .literal_separator(false)
                .build()
                .map_err(|e| format!("bad tag glob {tag:?}: {e}"))?
                .compile_matcher(),
        )
    };
    Ok(EventFilter {
        minion: (!minion.is_empty()).then(|| minion.to_string()),
        tag,
        since_us: (since_us > 0).then_some(since_us),
        before_id: None,
        limit: if limit == 0 {
            DEFAULT_LIMIT
        } else {
            (limit as usize).min(MAX_LIMIT)
        },
    })
}

async fn list_events(master: &Master, out: &Responder, q: ListEvents) -> Result<(), String> {
    let mut filter = event_filter(&q.minion, &q.tag, q.since_us, q.limit)?;
    filter.before_id = (q.before_id > 0).then_some(q.before_id);
    let store = master.store.clone();
    let (events, next) = blocking(move || store.list_events(&filter, PAGE_EVENTS)).await?;
    send_parts(out, events, 0, next.unwrap_or(0))
}

/// Sends events in parts, so a long list never makes one oversized message.
fn send_events(out: &Responder, events: Vec<StoredEvent>, last_id: u64) -> Result<(), String> {
    send_parts(out, events, last_id, 0)
}

fn send_parts(
    out: &Responder,
    events: Vec<StoredEvent>,
    last_id: u64,
    next_before_id: u64,
) -> Result<(), String> {
    let mut part = Vec::new();
    let mut bytes = 0;
    for e in events {
        let len = e.encoded_len();
        if !part.is_empty() && bytes + len > PART_BYTES {
            out.send(
                control_reply::Body::Events(EventList {
                    events: std::mem::take(&mut part),
                    last_id,
                    next_before_id: 0,
                }),
                true,
            )
            .map_err(|e| e.to_string())?;
            bytes = 0;
        }
        bytes += len;
        part.push(e);
    }
    send(
        out,
        control_reply::Body::Events(EventList {
            events: part,
            last_id,
            next_before_id,
        }),
    )
}

/// How long a tail's request waits for a matching event, by default and
/// at most.
const FOLLOW_WAIT: Duration = Duration::from_secs(2);
const FOLLOW_WAIT_MAX: Duration = Duration::from_secs(30);
/// Stored events a tail looks at in one go, matching or not.
const FOLLOW_SCAN: usize = 10_000;

/// One long poll of a live tail: the matching events stored after
/// `after_id`, at once if there are any, else as soon as some are stored,
/// else nothing when the wait is over. The master keeps no state for a
/// tail between requests.
async fn follow_events(master: &Master, out: &Responder, q: FollowEvents) -> Result<(), String> {
    // The time filter only picks where a tail starts.
    let filter = Arc::new(event_filter(
        &q.minion,
        &q.tag,
        0,
        if q.limit == 0 { 1_000 } else { q.limit },
    )?);
    let wait = match q.wait_ms {
        0 => FOLLOW_WAIT,
        ms => Duration::from_millis(u64::from(ms)).min(FOLLOW_WAIT_MAX),
    };
    let deadline = tokio::time::Instant::now() + wait;
    let mut stored = master.stored.subscribe();
    let committed = *stored.borrow_and_update();
    let mut after = match (q.after_id, q.since_us) {
        (0, 0) => return send_events(out, Vec::new(), committed),
        (0, since) => {
            let store = master.store.clone();
            blocking(move || store.first_id_since(since))
                .await?
                .saturating_sub(1)
        }
        (after, _) => after,
    };
    // A tail from before the store was replaced (a restore, a new data
    // dir) goes on from the new store's end.
    after = after.min(committed);
    loop {
        let upto = *stored.borrow_and_update();
        let (store, f) = (master.store.clone(), filter.clone());
        let (events, last) = blocking(move || store.follow(after, upto, &f, FOLLOW_SCAN)).await?;
        after = last;
        if !events.is_empty() {
            return send_events(out, events, after);
        }
        if after < upto {
            continue; // more to look at before waiting
        }
        match tokio::time::timeout_at(deadline, stored.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return send_events(out, Vec::new(), after),
        }
    }
}

async fn apply(master: &Arc<Master>, out: &Responder, cmd: ApplyCommand) -> Result<(), String> {
    let minions = master.resolve_target(&cmd.target)?;
    targeted(out, &minions);
    let timeout = if cmd.timeout_ms == 0 {
        Duration::from_millis(master.cfg.apply_timeout_ms)
    } else {
        Duration::from_millis(u64::from(cmd.timeout_ms))
    };
    let (tx, mut rx) = mpsc::channel(64);
    let spec = ApplySpec {
        target: cmd.target,
        minions,
        states: cmd.states,
        test: cmd.test,
        timeout,
        rule: String::new(),
        trigger: None,
        queued: None,
    };
    let master = master.clone();
    let job = tokio::spawn(async move { run_apply(&master, spec, Some(tx)).await });
    while let Some(result) = rx.recv().await {
        let _ = out.send(control_reply::Body::MinionResult(result), true);
    }
    let job = job.await.map_err(|e| format!("the job failed: {e}"))?;
    send(out, control_reply::Body::Job(job))
}

async fn ping(master: &Arc<Master>, out: &Responder, p: PingMinions) -> Result<(), String> {
    let minions = master.resolve_target(&p.target)?;
    targeted(out, &minions);
    let timeout = Duration::from_millis(if p.timeout_ms == 0 {
        5_000
    } else {
        u64::from(p.timeout_ms)
    });
    let mut set = tokio::task::JoinSet::new();
    for minion in minions {
        let master = master.clone();
        set.spawn(async move {
            let start = std::time::Instant::now();
            let answer = master
                .bus
                .request(
                    &minion,
                    tend_proto::v1::request::Body::Ping(tend_proto::v1::Ping {}),
                    timeout,
                )
                .await;
            let rtt_us = start.elapsed().as_micros() as u64;
            match answer {
                Ok(tend_proto::v1::Reply {
                    body: Some(tend_proto::v1::reply::Body::Pong(pong)),
                    ..
                }) => PingResult {
                    minion,
                    ok: true,
                    version: pong.version,
                    rtt_us,
                    error: String::new(),
                },
                Ok(_) => PingResult {
                    minion,
                    error: "the minion answered something other than a pong".into(),
                    ..Default::default()
                },
                Err(e) => PingResult {
                    minion,
                    error: e.to_string(),
                    ..Default::default()
                },
            }
        });
    }
    // Each answer goes out as it comes, one behind: the last must be sent
    // with `more = false`.
    let mut held: Option<PingResult> = None;
    while let Some(r) = set.join_next().await {
        let Ok(r) = r else { continue };
        if let Some(prev) = held.replace(r) {
            out.send(control_reply::Body::Pong(prev), true)
                .map_err(|e| e.to_string())?;
        }
    }
    match held {
        Some(r) => send(out, control_reply::Body::Pong(r)),
        None => Err("no minion to ping".into()),
    }
}
