//! The reactor: events in, actions out, with each rule's correlation and
//! throttles kept per group of events.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tend_proto::v1::Event;
use tokio::time::Instant;

use crate::policy::{Policy, Step, Track};
use crate::rules::{Action, Rules, group_key};

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
    events_since_gc: usize,
    /// Actions throttled away, all rules, since start.
    pub suppressed: u64,
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
            events_since_gc: 0,
            suppressed: 0,
        }
    }

    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }

    /// New rules (a reload): windows and throttles start over.
    pub fn replace_rules(&mut self, rules: Arc<Rules>) {
        self.rules = rules;
        self.tracks.clear();
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
        for ((rule, _), track) in &mut self.tracks {
            let policy = &rules.get(*rule).policy;
            if policy.deadline(track).is_none_or(|d| d > now) {
                continue;
            }
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
        self.tracks.retain(|(rule, _), t| {
            t.pending() || now.duration_since(t.last_touch) <= horizon(&rules.get(*rule).policy)
        });
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
