//! Saving and restoring the reactor's groups: each group's track is stored
//! as a record by key, with what its rule was, so a restarted master goes
//! on with the windows and holds it had, and a changed rule starts over.

use std::collections::HashMap;

use prost::Message;
use tend_proto::v1::Event;

use super::{Reactor, StateChange};
use crate::policy::{Clock, SavedTrack, Track};
use crate::rules::Rule;

/// A group's state as stored: its track, and what the rule was when it
/// was saved (a rule changed across a restart starts over, as on reload).
#[derive(Clone, PartialEq, Message)]
struct TrackRecord {
    #[prost(string, tag = "1")]
    rule: String,
    #[prost(int64, repeated, tag = "2")]
    hits: Vec<i64>,
    #[prost(int64, optional, tag = "3")]
    holding_since: Option<i64>,
    #[prost(message, optional, tag = "4")]
    hold_event: Option<Event>,
    #[prost(bool, tag = "5")]
    hold_fired: bool,
    #[prost(int64, optional, tag = "6")]
    debounce_until: Option<i64>,
    #[prost(message, optional, tag = "7")]
    debounce_event: Option<Event>,
    #[prost(int64, optional, tag = "8")]
    last_acted: Option<i64>,
    #[prost(int64, repeated, tag = "9")]
    rate: Vec<i64>,
    #[prost(uint64, tag = "10")]
    suppressed: u64,
    #[prost(int64, tag = "11")]
    last_touch: i64,
}

/// What a saved group state is valid for: the parts of the rule that
/// decide what the state means.
fn fingerprint(rule: &Rule) -> String {
    format!(
        "{:?}|{:?}|{:?}|{}",
        rule.policy, rule.when, rule.group_by, rule.caused
    )
}

/// The key a group's state is saved under.
pub(super) fn saved_key(rule: &Rule, group: &str) -> String {
    format!("{}\u{1f}{group}", rule.name)
}

impl Reactor {
    /// What changed since the last call, to be stored: whether every saved
    /// state is to be forgotten first, then each changed group's state (by
    /// key), or None for a group that is gone.
    pub fn take_changes(&mut self, clock: Clock) -> (bool, Vec<StateChange>) {
        let mut out: Vec<StateChange> = self.gone.drain(..).map(|k| (k, None)).collect();
        for key in self.dirty.drain() {
            let Some(track) = self.tracks.get(&key) else {
                continue;
            };
            let rule = self.rules.get(key.0);
            let s = track.save(clock);
            let record = TrackRecord {
                rule: fingerprint(rule),
                hits: s.hits,
                holding_since: s.holding_since,
                hold_event: s.hold_event,
                hold_fired: s.hold_fired,
                debounce_until: s.debounce_until,
                debounce_event: s.debounce_event,
                last_acted: s.last_acted,
                rate: s.rate,
                suppressed: s.suppressed,
                last_touch: s.last_touch,
            };
            out.push((saved_key(rule, &key.1), Some(record.encode_to_vec())));
        }
        (std::mem::take(&mut self.cleared), out)
    }

    /// Takes back saved group states (after a restart). States of rules
    /// that are gone or changed are dropped, and returned as keys to
    /// forget. Returns how many were restored.
    pub fn restore(&mut self, saved: Vec<(String, Vec<u8>)>, clock: Clock) -> usize {
        let by_name: HashMap<&str, usize> = self
            .rules
            .iter()
            .enumerate()
            .map(|(i, r)| (r.name.as_ref(), i))
            .collect();
        let mut restored = 0;
        for (key, bytes) in saved {
            let found = key.split_once('\u{1f}').and_then(|(name, group)| {
                let rule = *by_name.get(name)?;
                let record = TrackRecord::decode(bytes.as_slice()).ok()?;
                (record.rule == fingerprint(self.rules.get(rule)))
                    .then(|| (rule, group.to_string(), record))
            });
            let Some((rule, group, r)) = found else {
                self.gone.push(key);
                continue;
            };
            let track = Track::restore(
                SavedTrack {
                    hits: r.hits,
                    holding_since: r.holding_since,
                    hold_event: r.hold_event,
                    hold_fired: r.hold_fired,
                    debounce_until: r.debounce_until,
                    debounce_event: r.debounce_event,
                    last_acted: r.last_acted,
                    rate: r.rate,
                    suppressed: r.suppressed,
                    last_touch: r.last_touch,
                },
                clock,
            );
            if self.tracks.insert((rule, group), track).is_none() {
                *self.per_rule.entry(rule).or_default() += 1;
            }
            restored += 1;
        }
        restored
    }
}
