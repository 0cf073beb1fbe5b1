//! The stable JSON shapes of `--output json`: one object per event, job or
//! minion, one per line for lists. Documented in docs/cli.md; fields are
//! only ever added.

use serde_json::{Value, json};
use tend_proto::v1::{
    Event, Job, KeyInfo, KeyList, KeysChanged, MinionInfo, MinionResult, Outcome, PingResult,
    StateResult, Status, StoredEvent,
};

/// A time as RFC 3339 to the microsecond; null for none.
pub fn time(us: i64) -> Value {
    if us <= 0 {
        return Value::Null;
    }
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_micros(us as u64);
    json!(humantime::format_rfc3339_micros(t).to_string())
}

fn data(bytes: &[u8]) -> Value {
    if bytes.is_empty() {
        return json!({});
    }
    serde_json::from_slice(bytes).unwrap_or_else(|_| json!(String::from_utf8_lossy(bytes)))
}

/// A stored event.
pub fn event(e: &StoredEvent) -> Value {
    let ev = e.event.clone().unwrap_or_default();
    json!({
        "id": e.id,
        "stored": time(e.stored_us),
        "minion": ev.minion,
        "seq": ev.seq,
        "tag": ev.tag,
        "time": time(ev.time_us),
        "cause": if ev.cause == 0 { Value::Null } else { json!(ev.cause) },
        // The minion, cut off, evaluated its standing orders (this
        // version) on the event itself.
        "local": if ev.local_orders == 0 { Value::Null } else { json!(ev.local_orders) },
        "data": data(&ev.data),
    })
}

/// A state result's outcome as a word.
pub fn outcome(o: i32) -> &'static str {
    match Outcome::try_from(o).unwrap_or(Outcome::Unspecified) {
        Outcome::Ok => "ok",
        Outcome::Changed => "changed",
        Outcome::Failed => "failed",
        Outcome::Skipped => "skipped",
        Outcome::WouldChange => "would-change",
        Outcome::Unspecified => "unknown",
    }
}

fn state(s: &StateResult) -> Value {
    json!({
        "id": s.id,
        "type": s.kind,
        "name": s.name,
        "result": outcome(s.outcome),
        "comment": s.comment,
        "diff": s.diff,
        "changes": data(&s.changes_json),
        "duration_ms": s.duration_us as f64 / 1000.0,
    })
}

/// One minion's part of a job, with every state result.
pub fn minion_result(r: &MinionResult) -> Value {
    json!({
        "minion": r.minion,
        "status": r.status,
        "error": r.error,
        "comment": r.comment,
        "duration_ms": r.duration_us as f64 / 1000.0,
        "states": r.results.iter().map(state).collect::<Vec<_>>(),
    })
}

/// A job with every minion's result.
pub fn job(j: &Job) -> Value {
    json!({
        "id": j.id,
        "kind": j.kind,
        "status": j.status,
        "target": j.target,
        "states": j.states,
        "test": j.test,
        "rule": if j.rule.is_empty() { Value::Null } else { json!(j.rule) },
        "operator": if j.operator.is_empty() { Value::Null } else { json!(j.operator) },
        "trigger": if j.trigger_tag.is_empty() { Value::Null } else {
            json!({"minion": j.trigger_minion, "seq": j.trigger_seq, "tag": j.trigger_tag})
        },
        "created": time(j.created_us),
        "finished": time(j.finished_us),
        "minions": j.minions.iter().map(minion_result).collect::<Vec<_>>(),
        // Run by the minion itself while cut off (its standing orders),
        // with its number in the minion's own space.
        "local": j.local_id != 0,
        "local_id": if j.local_id == 0 { Value::Null } else { json!(j.local_id) },
    })
}

/// A minion as `tend minions` lists it.
pub fn minion(m: &MinionInfo) -> Value {
    json!({
        "id": m.id,
        "key": m.key_state,
        "connected": m.connected,
        "last_seen": time(m.last_seen_us),
        "version": m.version,
        "acked_seq": m.acked_seq,
        "facts": m.facts,
        "orders": {
            "version": m.orders_version,
            "received": time(m.orders_received_us),
        },
        "autonomy": if m.autonomy.is_empty() { Value::Null } else {
            json!({"mode": m.autonomy, "since": time(m.autonomy_since_us)})
        },
    })
}

/// The master's status and counters.
pub fn status(s: &Status) -> Value {
    let counters: std::collections::BTreeMap<_, _> = s.counters.iter().collect();
    json!({
        "version": s.version,
        "started": time(s.started_us),
        "counters": counters,
        "store_error": if s.store_error.is_empty() { Value::Null } else { json!(s.store_error) },
        "store_failing_since": time(s.store_failing_since_us),
    })
}

/// Every key the master knows, and its own fingerprint.
pub fn keys(k: &KeyList) -> Value {
    json!({
        "master_fingerprint": k.master_fingerprint,
        "keys": k.keys.iter().map(key).collect::<Vec<_>>(),
    })
}

/// One key.
pub fn key(k: &KeyInfo) -> Value {
    let labels: std::collections::BTreeMap<_, _> = k.labels.iter().collect();
    json!({
        "name": k.name, "kind": k.kind, "state": k.state, "fingerprint": k.fingerprint,
        "labels": labels, "denied_dropped": k.denied_dropped,
    })
}

/// One minion's answer to a ping.
pub fn pong(p: &PingResult) -> Value {
    json!({
        "minion": p.minion,
        "ok": p.ok,
        "version": p.version,
        "rtt_ms": p.rtt_us as f64 / 1000.0,
        "error": if p.error.is_empty() { Value::Null } else { json!(p.error) },
    })
}

/// `tend minion show`: the minion as listed, with its key's fingerprint,
/// its recent events and its last jobs.
pub fn minion_detail(
    m: &MinionInfo,
    fingerprint: &str,
    events: &[StoredEvent],
    jobs: &[Job],
    orders: &tend_proto::v1::OrdersBody,
) -> Value {
    let mut v = minion(m);
    v["fingerprint"] = json!(fingerprint);
    v["orders"]["now"] = json!({
        "version": orders.version,
        "enabled": orders.enabled,
        "rules": orders.orders.iter().map(|o| o.rule.clone()).collect::<Vec<_>>(),
        "on_master": orders.held.iter().map(|h| json!({"rule": h.rule, "why": h.why})).collect::<Vec<_>>(),
    });
    v["events"] = events.iter().map(event).collect();
    v["jobs"] = jobs.iter().map(job).collect();
    v
}

/// What `tend keys accept|reject|delete|label` changed.
pub fn keys_changed(action: &str, changed: &KeysChanged) -> Value {
    json!({
        "action": action,
        "names": changed.names,
        "keys": changed.keys.iter().map(key).collect::<Vec<_>>(),
        "notes": changed.notes,
    })
}

/// `tend reactor reload`: how many rules are in force.
pub fn reloaded(rules: u32) -> Value {
    json!({"rules": rules})
}

/// `tend reactor test`: the rules the event's tag matched, whether each
/// condition holds, their actions, and the explanation in words.
pub fn reactor_test(rules: &tend_reactor::Rules, event: &Event, explanation: &[String]) -> Value {
    let matched: Vec<Value> = rules
        .matches(event)
        .iter()
        .map(|m| {
            let r = rules.get(m.rule);
            json!({
                "rule": &*r.name,
                "file": r.file,
                "condition": r.when,
                "holds": m.holds,
                "error": m.error,
                "actions": r.actions.iter().map(|a| a.kind()).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({"tag": event.tag, "matched": matched, "explanation": explanation})
}
