//! The reactor: events in, actions out, with each rule's correlation and
//! throttles kept per group of events.
//!
//! Every group's state can be saved and restored ([`Reactor::take_changes`],
//! [`Reactor::restore`]), so a restarted master goes on with the windows and
//! holds it had. The number of groups per rule is capped (`max_groups`):
//! groups may come from event data, and the oldest give way to new ones.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message;
use tend_proto::v1::Event;
use tokio::time::Instant;

use crate::policy::{Clock, Policy, SavedTrack, Step, Track};
use crate::rules::{Action, Rule, Rules, group_key};

/// A rule acting.
#[derive(Debug, Clone)]
pub struct Fire {
    pub rule: Arc<str>,
    /// The event it acts on (for a window, the one that completed it; for a
    /// debounce, the last of the burst).
    pub event: Event,
    pub actions: Vec<Action>,
    /// Actions throttled away for this group since the last one.
    pub suppressed: u64,
}

/// Groups kept before idle ones are forgotten.
const GC_AT: usize = 4096;

pub struct Reactor {
    rules: Arc<Rules>,
    tracks: HashMap<(usize, String), Track<Event>>,
    /// Groups tracked per rule.
    per_rule: HashMap<usize, usize>,
    events_since_gc: usize,
    /// Actions throttled away, all rules, since start.
    pub suppressed: u64,
    /// Groups forgotten to make room under a rule's `max_groups`.
    pub evicted: u64,
    /// Groups changed since the last `take_changes`.
    dirty: HashSet<(usize, String)>,
    /// Saved keys of groups forgotten since then.
    gone: Vec<String>,
    /// Every group was forgotten (new rules) since then.
    cleared: bool,
}

/// A group's saved state by key: its new bytes, or None when it is gone.
pub type StateChange = (String, Option<Vec<u8>>);

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
fn saved_key(rule: &Rule, group: &str) -> String {
    format!("{}\u{1f}{group}", rule.name)
}

fn horizon(p: &Policy) -> Duration {
    [
        p.count.map(|c| c.1),
        p.hold,
        p.debounce,
        p.once_within,
        p.max_rate.map(|r| r.1),
    ]
    .into_iter()
    .flatten()
    .max()
    .unwrap_or_default()
}

impl Reactor {
    pub fn new(rules: Arc<Rules>) -> Self {
        Self {
            rules,
            tracks: HashMap::new(),
            per_rule: HashMap::new(),
            events_since_gc: 0,
            suppressed: 0,
            evicted: 0,
            dirty: HashSet::new(),
            gone: Vec::new(),
            cleared: false,
        }
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// New rules (a reload): windows and throttles start over.
    pub fn replace_rules(&mut self, rules: Arc<Rules>) {
        self.rules = rules;
        self.tracks.clear();
        self.per_rule.clear();
        self.dirty.clear();
        self.gone.clear();
        self.cleared = true;
    }

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

    /// Makes room for one more group of `rule` under its `max_groups`: the
    /// groups touched longest ago are forgotten, and counted. A 64th of the
    /// cap goes at once, so a flood of new groups costs one scan per that
    /// many, not one per event.
    fn make_room(&mut self, rule: usize) {
        let max = self.rules.get(rule).max_groups;
        if self.per_rule.get(&rule).copied().unwrap_or(0) < max {
            return;
        }
        let mut groups: Vec<(Instant, (usize, String))> = self
            .tracks
            .iter()
            .filter(|((r, _), _)| *r == rule)
            .map(|(k, t)| (t.last_touch, k.clone()))
            .collect();
        let n = (max / 64).clamp(1, groups.len().max(1));
        if groups.len() > n {
            groups.select_nth_unstable_by_key(n - 1, |(touched, _)| *touched);
            groups.truncate(n);
        }
        for (_, key) in groups {
            self.forget(&key);
            self.evicted += 1;
        }
    }

    fn forget(&mut self, key: &(usize, String)) {
        if self.tracks.remove(key).is_some() {
            if let Some(n) = self.per_rule.get_mut(&key.0) {
                *n = n.saturating_sub(1);
            }
            self.dirty.remove(key);
            self.gone.push(saved_key(self.rules.get(key.0), &key.1));
        }
    }

    fn fire(&self, rule: usize, event: Event, suppressed: u64) -> Fire {
        let r = self.rules.get(rule);
        Fire {
            rule: r.name.clone(),
            event,
            actions: r.actions.clone(),
            suppressed,
        }
    }

    /// An event arrived; what acts now.
    pub fn on_event(&mut self, event: &Event, now: Instant) -> Vec<Fire> {
        let matches = self.rules.matches(event);
        if matches.is_empty() {
            return Vec::new();
        }
        let mut out = Vec::new();
        for m in matches {
            let rules = self.rules.clone();
            let rule = rules.get(m.rule);
            if rule.policy == Policy::default() {
                // No window, no throttle: nothing to remember.
                if m.holds {
                    out.push(self.fire(m.rule, event.clone(), 0));
                }
                continue;
            }
            let key = (m.rule, group_key(rule, event));
            if !self.tracks.contains_key(&key) {
                self.make_room(m.rule);
                *self.per_rule.entry(m.rule).or_default() += 1;
            }
            self.dirty.insert(key.clone());
            let track = self.tracks.entry(key).or_insert_with(|| Track::new(now));
            match rule.policy.on_event(track, event.clone(), m.holds, now) {
                Step::Act(e) => {
                    let suppressed = std::mem::take(&mut track.suppressed);
                    out.push(self.fire(m.rule, e, suppressed));
                }
                Step::Suppressed => self.suppressed += 1,
                Step::Wait => {}
            }
        }
        self.events_since_gc += 1;
        if self.tracks.len() > GC_AT && self.events_since_gc > 1024 {
            self.gc(now);
        }
        out
    }

    /// Time passed; what acts now (a hold completed, a burst settled).
    pub fn on_timer(&mut self, now: Instant) -> Vec<Fire> {
        let mut out = Vec::new();
        let rules = self.rules.clone();
        let mut suppressed = 0;
        for ((rule, group), track) in &mut self.tracks {
            let policy = &rules.get(*rule).policy;
            if policy.deadline(track).is_none_or(|d| d > now) {
                continue;
            }
            self.dirty.insert((*rule, group.clone()));
            match policy.on_timer(track, now) {
                Step::Act(e) => {
                    let r = rules.get(*rule);
                    out.push(Fire {
                        rule: r.name.clone(),
                        event: e,
                        actions: r.actions.clone(),
                        suppressed: std::mem::take(&mut track.suppressed),
                    });
                }
                Step::Suppressed => suppressed += 1,
                Step::Wait => {}
            }
        }
        self.suppressed += suppressed;
        out
    }

    /// When `on_timer` next has something to do.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.tracks
            .iter()
            .filter_map(|((rule, _), t)| self.rules.get(*rule).policy.deadline(t))
            .min()
    }

    /// Groups being tracked.
    pub fn groups(&self) -> usize {
        self.tracks.len()
    }

    /// Forgets groups with nothing pending that were idle longer than
    /// anything their rule remembers.
    fn gc(&mut self, now: Instant) {
        self.events_since_gc = 0;
        let rules = self.rules.clone();
        let idle: Vec<(usize, String)> = self
            .tracks
            .iter()
            .filter(|((rule, _), t)| {
                !t.pending() && now.duration_since(t.last_touch) > horizon(&rules.get(*rule).policy)
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in idle {
            self.forget(&key);
        }
    }

    /// What one event would do under `rules`, on its own, and why: for
    /// `tend reactor test`.
    pub fn explain(rules: &Rules, event: &Event) -> Vec<String> {
        let matches = rules.matches(event);
        if matches.is_empty() {
            let mut why = vec![format!("no rule's `on` matches the tag {:?}", event.tag)];
            if event.cause != 0 {
                why.push(format!(
                    "(the event is caused by job {}; only rules with `caused = true` see it)",
                    event.cause
                ));
            }
            return why;
        }
        let mut out = Vec::new();
        for m in matches {
            let r = rules.get(m.rule);
            let mut lines = vec![format!(
                "rule {:?} ({}): the tag matches {:?}",
                r.name, r.file, r.on
            )];
            match (&r.when, m.holds, &m.error) {
                (None, _, _) => lines.push("  no condition".into()),
                (Some(w), true, _) => lines.push(format!("  condition `{w}` is true")),
                (Some(w), false, None) => {
                    lines.push(format!("  condition `{w}` is false: no action"))
                }
                (Some(w), false, Some(e)) => lines.push(format!(
                    "  condition `{w}` could not be evaluated ({e}): no action"
                )),
            }
            if m.holds {
                let p = &r.policy;
                let fmt = |d: Duration| humantime::format_duration(d).to_string();
                if let Some((n, w)) = p.count {
                    lines.push(format!(
                        "  acts when {n} such events arrive within {} (this is one)",
                        fmt(w)
                    ));
                }
                if let Some(h) = p.hold {
                    lines.push(format!(
                        "  acts if the condition still holds {} from now (no event breaking it)",
                        fmt(h)
                    ));
                }
                if let Some(d) = p.debounce {
                    lines.push(format!(
                        "  acts after {} without another such event",
                        fmt(d)
                    ));
                }
                if let Some(o) = p.once_within {
                    lines.push(format!("  then stays quiet for {}", fmt(o)));
                }
                if let Some((n, per)) = p.max_rate {
                    lines.push(format!("  at most {n} actions per {}", fmt(per)));
                }
                let now =
                    p.count.is_none_or(|(n, _)| n <= 1) && p.hold.is_none() && p.debounce.is_none();
                for a in &r.actions {
                    lines.push(format!(
                        "  {} {}",
                        if now { "would act:" } else { "its action:" },
                        describe(a)
                    ));
                }
            }
            out.extend(lines);
        }
        out
    }
}

fn describe(a: &Action) -> String {
    let on = |t: &Option<String>| t.clone().unwrap_or_else(|| "the event's minion".into());
    match a {
        Action::Apply {
            target,
            states,
            test,
        } => format!(
            "apply {} to {}{}",
            states.join(", "),
            on(target),
            if *test { " (dry run)" } else { "" }
        ),
        Action::Run {
            target, command, ..
        } => format!("run `{}` on {}", command.display(), on(target)),
        Action::Fire { tag, .. } => format!("fire an event tagged {tag:?}"),
        Action::Webhook { url, .. } => format!("POST the event to {url}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::advance;

    fn rules(text: &str) -> Arc<Rules> {
        Arc::new(Rules::from_texts(&[("r.toml".into(), text.into())]).unwrap())
    }

    fn login(minion: &str, kind: &str) -> Event {
        Event {
            minion: minion.into(),
            seq: 1,
            tag: format!("minion/{minion}/beacon/login/btmp"),
            time_us: 0,
            data: format!(r#"{{"kind":"{kind}"}}"#).into_bytes(),
            cause: 0,
        }
    }

    const BRUTE: &str = r#"
        [[rule]]
        name = "brute-force"
        on = "minion/*/beacon/login/*"
        when = 'event.data.kind == "failed"'
        count = 5
        window = "60s"
        [[rule.action]]
        fire = "alert"
    "#;

    #[tokio::test(start_paused = true)]
    async fn windows_count_per_minion() {
        let mut r = Reactor::new(rules(BRUTE));
        let mut fired = Vec::new();
        for _ in 0..4 {
            fired.extend(r.on_event(&login("web1", "failed"), Instant::now()));
            fired.extend(r.on_event(&login("web2", "failed"), Instant::now()));
            advance(Duration::from_secs(5)).await;
        }
        // A success does not count.
        fired.extend(r.on_event(&login("web1", "ok"), Instant::now()));
        assert!(fired.is_empty(), "four failures each: nothing yet");
        fired.extend(r.on_event(&login("web1", "failed"), Instant::now()));
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].event.minion, "web1");
    }

    #[tokio::test(start_paused = true)]
    async fn a_sustained_condition_fires_from_the_timer() {
        let mut r = Reactor::new(rules(
            r#"
            [[rule]]
            name = "hot"
            on = "minion/*/beacon/cpu"
            when = "event.data.percent > 90"
            for = "30s"
            [[rule.action]]
            fire = "hot"
            "#,
        ));
        let cpu = |p: u32| Event {
            minion: "web1".into(),
            tag: "minion/web1/beacon/cpu".into(),
            data: format!(r#"{{"percent":{p}}}"#).into_bytes(),
            ..Default::default()
        };
        assert!(r.on_event(&cpu(95), Instant::now()).is_empty());
        advance(Duration::from_secs(10)).await;
        assert!(r.on_event(&cpu(20), Instant::now()).is_empty()); // a short spike
        assert_eq!(r.next_deadline(), None);
        assert!(r.on_event(&cpu(97), Instant::now()).is_empty());
        let due = r.next_deadline().unwrap();
        assert_eq!(due, Instant::now() + Duration::from_secs(30));
        advance(Duration::from_secs(30)).await;
        let fired = r.on_timer(Instant::now());
        assert_eq!(fired.len(), 1);
    }

    fn user_login(user: &str) -> Event {
        Event {
            minion: "web1".into(),
            tag: "minion/web1/beacon/login/btmp".into(),
            data: format!(r#"{{"user":"{user}"}}"#).into_bytes(),
            ..Default::default()
        }
    }

    /// A count rule grouped by a user from event data, keeping at most
    /// `max_groups` groups.
    fn per_user(max_groups: usize) -> Reactor {
        Reactor::new(rules(&format!(
            r#"
            [[rule]]
            name = "per-user"
            on = "minion/*/beacon/login/*"
            group_by = ["data.user"]
            count = 2
            window = "1h"
            max_groups = {max_groups}
            [[rule.action]]
            fire = "twice"
            "#
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn groups_per_rule_are_capped_and_the_oldest_give_way() {
        // A cap of 3: one group goes at a time.
        let mut r = per_user(3);
        // A thousand users from event data: no more than 3 groups kept.
        for i in 0..1000 {
            r.on_event(&user_login(&format!("u{i}")), Instant::now());
            advance(Duration::from_millis(10)).await;
        }
        assert_eq!(r.groups(), 3);
        assert_eq!(r.evicted, 997);
        // The newest kept their count; the oldest (u0) started over.
        assert_eq!(r.on_event(&user_login("u999"), Instant::now()).len(), 1);
        assert!(r.on_event(&user_login("u0"), Instant::now()).is_empty());
        // What was forgotten is forgotten in the store too.
        let (cleared, changes) = r.take_changes(Clock {
            now: Instant::now(),
            now_us: 1,
        });
        assert!(!cleared);
        assert!(changes.iter().filter(|(_, v)| v.is_none()).count() >= 997);

        // A cap of 640: the oldest 10 (a 64th) go together, never
        // more groups than the cap, never a new one.
        let mut r = per_user(640);
        for i in 0..5000 {
            r.on_event(&user_login(&format!("u{i}")), Instant::now());
            advance(Duration::from_millis(10)).await;
            assert!(r.groups() <= 640);
        }
        assert_eq!(r.groups() as u64 + r.evicted, 5000);
        assert_eq!(r.on_event(&user_login("u4999"), Instant::now()).len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn saved_windows_and_holds_go_on_in_a_new_reactor() {
        const RULES: &str = r#"
            [[rule]]
            name = "brute-force"
            on = "minion/*/beacon/login/*"
            when = 'event.data.kind == "failed"'
            count = 3
            window = "60s"
            [[rule.action]]
            fire = "alert"

            [[rule]]
            name = "hot"
            on = "minion/*/beacon/cpu"
            when = "event.data.percent > 90"
            for = "30s"
            [[rule.action]]
            fire = "hot"
            "#;
        let cpu = Event {
            minion: "web1".into(),
            tag: "minion/web1/beacon/cpu".into(),
            data: br#"{"percent":95}"#.to_vec(),
            ..Default::default()
        };
        let mut r = Reactor::new(rules(RULES));
        r.on_event(&login("web1", "failed"), Instant::now());
        r.on_event(&login("web1", "failed"), Instant::now());
        r.on_event(&cpu, Instant::now());
        let clock = |us| Clock {
            now: Instant::now(),
            now_us: us,
        };
        let (_, saved) = r.take_changes(clock(1_000_000_000));
        drop(r);
        // Restarted 10 s later.
        advance(Duration::from_secs(10)).await;
        let mut r = Reactor::new(rules(RULES));
        let saved: Vec<(String, Vec<u8>)> = saved
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        assert_eq!(r.restore(saved, clock(1_010_000_000)), 2);
        assert_eq!(
            r.on_event(&login("web1", "failed"), Instant::now()).len(),
            1
        );
        assert_eq!(
            r.next_deadline(),
            Some(Instant::now() + Duration::from_secs(20))
        );
        advance(Duration::from_secs(20)).await;
        assert_eq!(r.on_timer(Instant::now()).len(), 1);
        // A rule changed across the restart starts over.
        let (_, saved) = r.take_changes(clock(1_030_000_000));
        let mut r = Reactor::new(rules(&RULES.replace("count = 3", "count = 4")));
        let saved = saved
            .into_iter()
            .filter_map(|(k, v)| Some((k, v?)))
            .collect();
        assert_eq!(r.restore(saved, clock(1_030_000_000)), 1);
    }

    #[test]
    fn explains_what_one_event_would_do() {
        let rs = rules(BRUTE);
        let why = Reactor::explain(&rs, &login("web1", "failed")).join("\n");
        assert!(
            why.contains("\"brute-force\"")
                && why.contains("is true")
                && why.contains("5 such events"),
            "{why}"
        );
        let why = Reactor::explain(&rs, &login("web1", "ok")).join("\n");
        assert!(why.contains("is false"), "{why}");
        let why = Reactor::explain(
            &rs,
            &Event {
                tag: "x".into(),
                ..Default::default()
            },
        )
        .join("\n");
        assert!(why.contains("no rule"), "{why}");
    }
}
