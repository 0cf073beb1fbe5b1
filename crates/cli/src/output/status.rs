//! The master's status for people (`tend status`): version, uptime, a
//! failing store, and every counter.

use tend_proto::v1::Status;

use super::table;

/// The master's version and start, a failing store loudly, then the
/// counters as a table.
pub fn show(s: &Status) {
    println!(
        "tend-master {} (up since {})",
        s.version,
        table::time(s.started_us)
    );
    if !s.store_error.is_empty() {
        println!(
            "STORE FAILING since {}: {} (events are not acknowledged; minions keep them)",
            table::time(s.store_failing_since_us),
            s.store_error
        );
    }
    if let Some(&dropped) = s.counters.get("pending_keys_dropped")
        && dropped > 0
    {
        println!(
            "PENDING KEYS DROPPED: {dropped} new keys turned away, oldest first, at the cap of \
             {} pending per kind (a flood of hellos?). A real minion among them says hello \
             again; pin it ahead with [[accept_fingerprints]] in master.toml, and see \
             `tend keys list`.",
            tend_bus::MAX_PENDING
        );
    }
    let count = |name: &str| s.counters.get(name).copied().unwrap_or(0);
    let (conditions, actions) = (count("rule_condition_errors"), count("rule_action_errors"));
    if conditions + actions > 0 {
        println!(
            "RULE ERRORS: {conditions} condition and {actions} action error(s); \
             `tend rules` shows which rules, and why"
        );
    }
    let mut counters: Vec<_> = s.counters.iter().collect();
    counters.sort();
    table::print(
        &["COUNTER", "VALUE"],
        counters
            .into_iter()
            .map(|(k, v)| vec![k.clone(), v.to_string()])
            .collect(),
    );
}
