//! `tend reactor test`: what one event would do under a set of rules, on
//! its own, and why, in words.

use std::time::Duration;

use tend_proto::v1::Event;

use super::Reactor;
use crate::rules::{Action, Rules};

impl Reactor {
    /// What one event would do under `rules`, on its own, and why: for
    /// `tend reactor test`.
    pub fn explain(rules: &Rules, event: &Event) -> Vec<String> {
        let matches = rules.matches(event);
        // Rules whose glob matches but that do not see events caused by a
        // job: the tag is not why they stay quiet.
        let skipped: Vec<String> = rules
            .tag_matches(&event.tag)
            .into_iter()
            .filter(|i| !matches.iter().any(|m| m.rule == *i))
            .map(|i| {
                let r = rules.get(i);
                format!(
                    "rule {:?} ({}): the tag matches {:?}, but the event was caused by job {}, \
                     so the rule does not act on it (`caused = true` makes it act on events \
                     caused by jobs)",
                    r.name, r.file, r.on, event.cause
                )
            })
            .collect();
        if matches.is_empty() && skipped.is_empty() {
            return vec![format!("no rule's `on` matches the tag {:?}", event.tag)];
        }
        let mut out = skipped;
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
