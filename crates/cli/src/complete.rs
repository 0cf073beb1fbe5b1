//! Completion from the master (`source <(COMPLETE=bash tend)`; zsh, fish
//! and elvish alike): `tend ping <TAB>` offers minion ids, `tend apply
//! web1 <TAB>` state names, `tend jobs show <TAB>` recent job ids. The
//! master is the one `TEND_MASTER` names (or the local socket), with the
//! same keys as any command (`TEND_KEY`, ...): a completer sees only the
//! word being completed, not `--master`. No master, no candidates.

use std::ffi::OsStr;

use clap::Parser;
use clap_complete::engine::{ArgValueCompleter, CompletionCandidate};
use tend_proto::v1::{ListJobs, ListMinions, ListStates, control_reply, control_request};

use crate::context::Global;
use crate::{connection, request};

/// The global options as the environment gives them.
#[derive(Parser)]
struct FromEnv {
    #[command(flatten)]
    global: Global,
}

/// Asks the master; nothing when it cannot be reached.
fn ask<T>(
    body: control_request::Body,
    pick: impl FnMut(control_reply::Body) -> Option<T>,
) -> Option<T> {
    let env = FromEnv::try_parse_from(["tend"]).ok()?;
    let mut client = connection::connect(&env.global).ok()?;
    request::ask(&mut client, body, pick).ok().flatten()
}

fn starting_with(current: &OsStr, all: Vec<(String, Option<String>)>) -> Vec<CompletionCandidate> {
    let current = current.to_string_lossy();
    all.into_iter()
        .filter(|(v, _)| v.starts_with(current.as_ref()))
        .map(|(v, help)| CompletionCandidate::new(v).help(help.map(Into::into)))
        .collect()
}

/// Minion ids the master knows.
pub fn minions() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        let list = ask(
            control_request::Body::ListMinions(ListMinions {}),
            |b| match b {
                control_reply::Body::Minions(m) => Some(m.minions),
                _ => None,
            },
        )
        .unwrap_or_default();
        starting_with(
            current,
            list.into_iter()
                .map(|m| {
                    let state = if m.connected {
                        "connected"
                    } else {
                        "not connected"
                    };
                    (m.id, Some(state.to_string()))
                })
                .collect(),
        )
    })
}

/// State names in the master's state tree.
pub fn states() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        let names = ask(
            control_request::Body::ListStates(ListStates {}),
            |b| match b {
                control_reply::Body::States(s) => Some(s.names),
                _ => None,
            },
        )
        .unwrap_or_default();
        starting_with(current, names.into_iter().map(|n| (n, None)).collect())
    })
}

/// The newest jobs' ids, with what each was.
pub fn jobs() -> ArgValueCompleter {
    ArgValueCompleter::new(|current: &OsStr| {
        let jobs = ask(
            control_request::Body::ListJobs(ListJobs {
                limit: 20,
                ..Default::default()
            }),
            |b| match b {
                control_reply::Body::Jobs(j) => Some(j.jobs),
                _ => None,
            },
        )
        .unwrap_or_default();
        starting_with(
            current,
            jobs.into_iter()
                .map(|j| {
                    let what = format!(
                        "{} {} {}: {}",
                        j.kind,
                        j.target,
                        j.states.join(","),
                        j.status
                    );
                    (j.id.to_string(), Some(what))
                })
                .collect(),
        )
    })
}
