//! Keys for people: the table `tend keys list` prints (with the names that
//! have more than one key), and what a key change did.

use tend_proto::v1::{KeyList, KeysChanged};

use super::colour::word;
use super::table;

/// Every key by state, the master's own first, then any conflicts.
pub fn list(k: &KeyList) {
    println!("master key: {}", k.master_fingerprint);
    if k.keys.is_empty() {
        println!("no minion or operator keys yet");
        return;
    }
    let rows = k
        .keys
        .iter()
        .map(|k| {
            vec![
                k.name.clone(),
                k.kind.clone(),
                word(&k.state),
                k.fingerprint.clone(),
                sorted_labels(k).join(","),
            ]
        })
        .collect();
    table::print(&["NAME", "KIND", "STATE", "FINGERPRINT", "LABELS"], rows);
    // A name with more than one key is a conflict the operator settles.
    let mut names: Vec<(&str, &str)> = k
        .keys
        .iter()
        .filter(|k| k.state != "preapproved")
        .map(|k| (k.kind.as_str(), k.name.as_str()))
        .collect();
    names.sort();
    let conflicts: Vec<&str> = names
        .windows(2)
        .filter(|w| w[0] == w[1])
        .map(|w| w[0].1)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    for name in conflicts {
        println!(
            "conflict: {name} has more than one key; accept the right one with `tend keys accept {name} --fingerprint sha256:...` after comparing with the peer's own"
        );
    }
    // Denied keys pushed out of a name's list: the right one may be among
    // them, and accepting its fingerprint works whether it is listed or not.
    let mut dropped: Vec<(&str, u64)> = k
        .keys
        .iter()
        .filter(|k| k.denied_dropped > 0)
        .map(|k| (k.name.as_str(), k.denied_dropped))
        .collect();
    dropped.sort();
    dropped.dedup();
    for (name, n) in dropped {
        println!(
            "dropped: {n} more denied key(s) of {name} are no longer listed (only the ones heard from most recently are; a key that keeps saying hello is listed again); `tend keys accept {name} --fingerprint sha256:...` accepts the right one even when it is not listed"
        );
    }
}

/// What `tend keys accept|reject|delete|label` changed, a line a key,
/// then the master's notes.
pub fn changed(action: &str, changed: &KeysChanged) {
    let done = match action {
        "accept" => "accepted",
        "reject" => "rejected",
        "label" => "labelled",
        _ => "deleted",
    };
    if changed.keys.is_empty() {
        println!("nothing to change");
    }
    for k in &changed.keys {
        if k.state == "preapproved" {
            let done = match action {
                "accept" => "pre-approved (accepted at its first hello)",
                _ => "pre-approval deleted",
            };
            println!("{done}: {} ({})", k.name, k.fingerprint);
        } else if action == "label" {
            println!("{done}: {} ({})", k.name, sorted_labels(k).join(" "));
        } else {
            println!("{done}: {} ({})", k.name, k.fingerprint);
        }
    }
    for n in &changed.notes {
        println!("note: {n}");
    }
}

/// A key's labels as `key=value`, sorted.
fn sorted_labels(k: &tend_proto::v1::KeyInfo) -> Vec<String> {
    let mut labels: Vec<String> = k.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    labels.sort();
    labels
}
