//! The ingest benchmark's workload: events shaped like the file beacon's
//! and rules whose condition evaluates both of its clauses on each of them.
//!
//! An earlier version sent 8-byte payloads (`{"v":N}`) through a condition
//! whose first clause was false, so CEL never looked at the second and the
//! figure was the cost of a toy event through half a condition. Here the
//! first clause is true on every event and the second decides (it is never
//! true, so no job runs): `check` proves it before anything is measured.

use anyhow::bail;
use tend_proto::v1::Event;

/// The condition of every benchmark rule: a content change (true for every
/// benchmark event) that left the content as it was (never true).
pub const CONDITION: &str =
    r#"event.data.kind == "modified" && event.data.sha256 == event.data.old_sha256"#;

/// The SHA-256 of the content after and before the change (any two
/// different digests: the benchmark's events all carry these).
const SHA_NOW: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
const SHA_OLD: &str = "60303ae22b998861bce3b28f33eec1be758a213c86c93c076dbe9f558c11c752";

/// `n` rules, each matching one hundredth of the benchmark's tags
/// (`…/event/bench/<seq % 100>`) and evaluating `CONDITION`.
pub fn rules(n: usize, action: &str) -> String {
    rules_with(n, CONDITION, action)
}

fn rules_with(n: usize, condition: &str, action: &str) -> String {
    let mut text = String::new();
    for i in 0..n {
        text.push_str(&format!(
            "[[rule]]\nname = \"bench-{i}\"\non = \"minion/*/event/bench/{}\"\nwhen = '{condition}'\n[[rule.action]]\n{action}\n\n",
            i % 100
        ));
    }
    text
}

/// An event's data as the file beacon sends it for an edit of a
/// configuration file (about 330 bytes of JSON), a different path per seq.
pub fn data(seq: u64) -> Vec<u8> {
    data_with(seq, SHA_OLD)
}

fn data_with(seq: u64, old_sha256: &str) -> Vec<u8> {
    format!(
        r#"{{"path":"/etc/app/conf.d/site-{:05}.conf","kind":"modified","ops":["modified","closed_write"],"sha256":"{SHA_NOW}","old_sha256":"{old_sha256}","mode":"0644","old_mode":"0644","uid":0,"gid":0}}"#,
        seq % 100_000
    )
    .into_bytes()
}

/// Proves the workload does what the figure says, in this process with the
/// real reactor: a benchmark event does not fire, and the same event with
/// its second clause made true does, so the first clause is true on every
/// benchmark event and CEL evaluates the second.
pub fn check() -> anyhow::Result<()> {
    check_condition(CONDITION)
}

fn check_condition(condition: &str) -> anyhow::Result<()> {
    let text = rules_with(1, condition, "fire = \"x\"");
    let rules = tend_reactor::Rules::from_texts(&[("bench.toml".into(), text)])?;
    let mut reactor = tend_reactor::Reactor::new(std::sync::Arc::new(rules));
    let event = |data: Vec<u8>| Event {
        minion: "sim-0".into(),
        seq: 100,
        tag: "minion/sim-0/event/bench/0".into(),
        time_us: 1,
        data,
        cause: 0,
        local_orders: Default::default(),
    };
    let now = tokio::time::Instant::now();
    let fired = reactor.on_event(&event(data(100)), now).len();
    if fired != 0 {
        bail!("the benchmark condition is true on a benchmark event ({fired} fired)");
    }
    let fired = reactor.on_event(&event(data_with(100, SHA_NOW)), now).len();
    if fired != 1 {
        bail!(
            "the benchmark condition stayed false with its second clause true: its first clause does not hold on the benchmark's events"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ingest_workload_evaluates_both_clauses_on_file_sized_events() {
        check().unwrap();
        let size = data(12_345).len();
        assert!((250..=400).contains(&size), "{size} bytes");
        // The condition the benchmark used before: its first clause is
        // false on every event, so the second is never evaluated.
        let before = r#"event.data.v < 0 && event.minion == "nobody""#;
        assert!(check_condition(before).is_err());
    }
}
