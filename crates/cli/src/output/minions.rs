//! Minions for people: the table of those the master knows, one in detail
//! (`tend minion show`), and a minion's answer to a ping.

use tend_proto::v1::{Job, MinionInfo, PingResult, StoredEvent};

use super::colour::{Paint, paint, word};
use super::{events, jobs, table};

/// Minions as a table: key, connection, last seen, system.
pub fn list(minions: &[MinionInfo]) {
    if minions.is_empty() {
        println!("no minions yet");
        return;
    }
    let rows = minions
        .iter()
        .map(|m| {
            let fact = |k: &str| m.facts.get(k).cloned().unwrap_or_default();
            vec![
                m.id.clone(),
                if m.key_state.is_empty() {
                    "-".into()
                } else {
                    word(&m.key_state)
                },
                word(if m.connected { "yes" } else { "no" }),
                table::ago(m.last_seen_us),
                m.version.clone(),
                m.acked_seq.to_string(),
                format!("{} {} {}", fact("os"), fact("os_version"), fact("kernel"))
                    .trim()
                    .to_string(),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "KEY",
            "CONNECTED",
            "LAST SEEN",
            "VERSION",
            "EVENTS",
            "SYSTEM",
        ],
        rows,
    );
}

/// `tend minion show`: the minion, its key, facts, recent jobs and events.
pub fn show(
    m: &MinionInfo,
    fingerprint: &str,
    recent: &[StoredEvent],
    recent_jobs: &[Job],
    orders: &tend_proto::v1::OrdersBody,
) {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    println!("{}", paint(&m.id, Paint::Bold));
    println!(
        "  key:         {} {}",
        word(&or_dash(&m.key_state)),
        fingerprint
    );
    println!(
        "  connected:   {}",
        word(if m.connected { "yes" } else { "no" })
    );
    println!(
        "  last seen:   {} ({})",
        table::ago(m.last_seen_us),
        table::time(m.last_seen_us)
    );
    println!("  version:     {}", or_dash(&m.version));
    println!(
        "  events:      {} stored (highest seq in order)",
        m.acked_seq
    );
    standing_orders(m, orders);
    let mut facts: Vec<_> = m.facts.iter().collect();
    facts.sort();
    if facts.is_empty() {
        println!("  facts:       none yet (sent when the minion connects)");
    } else {
        println!("  facts:");
        let w = facts.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in facts {
            println!("    {k:<w$}  {v}");
        }
    }
    println!();
    println!("recent jobs:");
    jobs::list(recent_jobs);
    println!();
    println!("recent events:");
    events::list(recent);
}

/// One minion's answer to `tend ping`, or why there was none.
pub fn pong(p: &PingResult) {
    if p.ok {
        println!(
            "{}: {} in {:.2} ms (tend {})",
            p.minion,
            paint("answered", Paint::Green),
            p.rtt_us as f64 / 1000.0,
            p.version
        );
    } else {
        println!(
            "{}: {}: {}",
            p.minion,
            paint("no answer", Paint::Red),
            p.error
        );
    }
}

/// What the minion does when cut off from every master: the orders it
/// took, whether it enforces them now (from its last word), and which
/// rules stay on the master.
fn standing_orders(m: &MinionInfo, now: &tend_proto::v1::OrdersBody) {
    if m.orders_version == 0 {
        println!("  orders:      none taken yet");
    } else {
        println!(
            "  orders:      version {:016x}, received {}{}",
            m.orders_version,
            table::time(m.orders_received_us),
            if m.orders_version == now.version {
                ""
            } else {
                " (not the current ones yet)"
            }
        );
    }
    let mode = match (m.connected, m.autonomy.as_str()) {
        (_, "enforcing") if !m.connected => format!(
            "enforcing locally since {} (its last word)",
            table::time(m.autonomy_since_us)
        ),
        (_, "expired") if !m.connected => "cut off, orders expired: enforcing nothing".into(),
        (true, _) => "no: the masters enforce".into(),
        (false, _) => "not known (cut off; it says when it hears from a master)".into(),
    };
    println!("  autonomy:    {mode}");
    if !now.enabled {
        println!("               turned off for this minion (key label autonomy=off)");
    }
    if !now.orders.is_empty() {
        println!(
            "  standing:    {}",
            now.orders
                .iter()
                .map(|o| o.rule.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for h in &now.held {
        println!("  on master:   {}: {}", h.rule, h.why);
    }
}
