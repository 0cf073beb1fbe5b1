//! What a minion reports about itself: the facts targets match on.

use std::collections::{BTreeMap, HashMap};

pub fn hostname() -> Option<String> {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
}

/// os, os_version, kernel, hostname, arch, and `label.<key>` per label.
pub fn gather(labels: &BTreeMap<String, String>) -> HashMap<String, String> {
    let mut facts = HashMap::new();
    if let Ok(release) = std::fs::read_to_string("/etc/os-release") {
        for line in release.lines() {
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.trim_matches('"').to_string();
            match k {
                "ID" => {
                    facts.insert("os".into(), v);
                }
                "VERSION_ID" => {
                    facts.insert("os_version".into(), v);
                }
                _ => {}
            }
        }
    }
    if let Ok(k) = std::fs::read_to_string("/proc/sys/kernel/osrelease") {
        facts.insert("kernel".into(), k.trim().to_string());
    }
    if let Some(h) = hostname() {
        facts.insert("hostname".into(), h);
    }
    facts.insert("arch".into(), std::env::consts::ARCH.into());
    for (k, v) in labels {
        facts.insert(format!("label.{k}"), v.clone());
    }
    facts
}
