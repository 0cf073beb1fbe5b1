//! `tend keys`: the operator's side of key acceptance (salt-key's job).
//!
//! A glob accepts pending keys only, and only after the operator saw which:
//! the master is asked what the glob would accept, the list is shown, and
//! on a terminal the operator confirms (`--yes` for scripts). Without a
//! terminal and without `--yes` nothing is accepted: a script that used to
//! accept a glob blindly fails loudly instead of admitting an impostor.
//! What was confirmed is then accepted key by key, by name and fingerprint,
//! so a key that arrived after the list was shown is never taken with it.
//! A reject or delete by glob is shown and confirmed the same way, and
//! carried out name by name.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{anyhow, bail};
use clap::Subcommand;
use tend_bus::ControlClient;
use tend_proto::v1::{ChangeKeys, KeyInfo, KeysChanged, ListKeys, control_reply, control_request};

use crate::context::Ctx;
use crate::output::{self, json};
use crate::{connection, request};

/// Manage minion and operator keys (like salt-key).
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend keys list\n  tend keys list 'web*'\n  tend keys accept 'web*'\n  tend keys accept web2 --fingerprint sha256:0f3c...\n  tend keys reject db3\n  tend keys accept --operator alice\n  tend keys label db1 role=db"
)]
pub struct Args {
    #[command(subcommand)]
    what: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Every key the master knows, by state, with fingerprints and labels,
    /// and the master's own.
    List {
        /// Only keys whose name matches this glob (`web*`, `db?`), or this
        /// name.
        pattern: Option<String>,
    },
    /// Accept keys. A glob (`web*`) takes pending keys only, shows them and
    /// asks first; a rejected or denied key, or one of several keys for a
    /// name, is accepted by its name and `--fingerprint`.
    #[command(
        after_help = "Examples:\n  tend keys accept web3\n  tend keys accept 'web*'          # shows the keys, asks\n  tend keys accept 'web*' --yes    # scripts\n  tend keys accept web2 --fingerprint sha256:0f3c...\n  tend keys accept --operator alice"
    )]
    Accept {
        /// A minion id or operator name (`web3`), or a glob of pending
        /// ones (`web*`, `db?`, `{web1,web2}`): quote a glob from the shell.
        pattern: String,
        /// An operator key, not a minion's.
        #[arg(long)]
        operator: bool,
        /// Only the key with this fingerprint (`sha256:...`), as `tend keys
        /// list` shows it and the peer's own `--fingerprint` prints it.
        #[arg(long)]
        fingerprint: Option<String>,
        /// Accept what a glob matches without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Reject every key of the names matching a glob; their sessions end.
    /// A glob shows the names and asks first (`--yes` for scripts).
    Reject {
        /// A name (`web3`) or a glob of names (`web*`): quote a glob from
        /// the shell.
        pattern: String,
        /// An operator key, not a minion's.
        #[arg(long)]
        operator: bool,
        /// Reject what a glob matches without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Forget keys of names matching a glob, in every state (or only the
    /// key with `--fingerprint`); their sessions end. A glob shows the
    /// names and asks first (`--yes` for scripts).
    Delete {
        /// A name (`web3`) or a glob of names (`web*`): quote a glob from
        /// the shell.
        pattern: String,
        /// An operator key, not a minion's.
        #[arg(long)]
        operator: bool,
        /// Only the key with this fingerprint (`sha256:...`).
        #[arg(long)]
        fingerprint: Option<String>,
        /// Delete what a glob matches without asking.
        #[arg(long, short)]
        yes: bool,
    },
    /// Set labels on an accepted minion, kept with its key on the master:
    /// targets match them as `key.<label>:<value>`, and unlike facts a
    /// minion cannot claim them.
    #[command(
        after_help = "Examples:\n  tend keys label db1 role=db env=prod\n  tend keys label db1 env=        # removes env\n  tend apply key.role:db"
    )]
    Label {
        name: String,
        /// `key=value` sets a label; `key=` removes it.
        #[arg(required = true)]
        labels: Vec<String>,
    },
}

fn kind(operator: bool) -> String {
    if operator { "operator" } else { "minion" }.into()
}

fn change(client: &mut ControlClient, req: ChangeKeys) -> anyhow::Result<KeysChanged> {
    request::ask(
        client,
        control_request::Body::ChangeKeys(req),
        |body| match body {
            control_reply::Body::KeysChanged(k) => Some(k),
            _ => None,
        },
    )?
    .ok_or_else(|| anyhow!("the master sent no answer to the key change"))
}

fn is_glob(pattern: &str) -> bool {
    pattern.contains(['*', '?', '[', ']', '{', '}', '\\'])
}

fn describe(keys: &[KeyInfo]) -> String {
    keys.iter()
        .map(|k| format!("  {}  {}  {}", k.name, k.kind, k.fingerprint))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Asks on the terminal; false when the operator did not say yes.
fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(matches!(line.trim(), "y" | "Y" | "yes" | "YES" | "Yes"))
}

/// For a reject or delete by glob: the names it matches now, shown, and
/// confirmed on a terminal (or by `--yes`); they are then changed name by
/// name, so a key that arrives after the list was shown is never taken
/// with it. None for one name: it is sent as it is.
fn confirmed_names(
    client: &mut ControlClient,
    verb: &str,
    operator: bool,
    pattern: &str,
    yes: bool,
) -> anyhow::Result<Option<Vec<String>>> {
    if !is_glob(pattern) {
        return Ok(None);
    }
    let glob = globset::Glob::new(pattern)
        .map_err(|e| anyhow!("tend keys {verb} {pattern:?}: not a glob: {e}"))?
        .compile_matcher();
    let keys: Vec<KeyInfo> = request::ask(
        client,
        control_request::Body::ListKeys(ListKeys {}),
        |body| match body {
            control_reply::Body::Keys(k) => Some(k.keys),
            _ => None,
        },
    )?
    .unwrap_or_default()
    .into_iter()
    .filter(|k| k.kind == kind(operator) && glob.is_match(&k.name))
    .collect();
    if keys.is_empty() {
        bail!("tend keys {verb} {pattern:?}: no {} key matches", kind(operator));
    }
    let mut names: Vec<String> = keys.iter().map(|k| k.name.clone()).collect();
    names.sort();
    names.dedup();
    if !yes {
        let list = describe(&keys);
        if !std::io::stdin().is_terminal() {
            bail!(
                "tend keys {verb} {pattern:?} would {verb} these keys:\n{list}\n\
                 Nothing was changed: there is no terminal to confirm on. Run again with --yes."
            );
        }
        eprintln!("{pattern:?} matches these keys:\n{list}");
        if !confirm(&format!("{verb} every key of these {} name(s)?", names.len()))? {
            bail!("nothing changed: the operator did not confirm");
        }
    }
    Ok(Some(names))
}

/// Sends `req` once for its pattern, or (`names`) once for each name.
fn change_each(
    client: &mut ControlClient,
    req: ChangeKeys,
    names: Option<Vec<String>>,
) -> anyhow::Result<KeysChanged> {
    let Some(names) = names else {
        return change(client, req);
    };
    let mut done = KeysChanged::default();
    for name in names {
        let one = change(
            client,
            ChangeKeys {
                pattern: name,
                ..req.clone()
            },
        )?;
        done.names.extend(one.names);
        done.keys.extend(one.keys);
    }
    Ok(done)
}

/// Runs `tend keys`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let json = ctx.json();
    let client = &mut connection::connect(&ctx.global)?;
    let (action, changed) = match args.what {
        KeysCommand::List { pattern } => {
            let matcher = pattern
                .as_deref()
                .map(|p| {
                    globset::Glob::new(p)
                        .map(|g| g.compile_matcher())
                        .map_err(|e| anyhow!("tend keys list {p:?}: not a glob: {e}"))
                })
                .transpose()?;
            let mut keys = request::ask(
                client,
                control_request::Body::ListKeys(ListKeys {}),
                |body| match body {
                    control_reply::Body::Keys(k) => Some(k),
                    _ => None,
                },
            )?
            .ok_or_else(|| anyhow!("the master sent no keys"))?;
            if let Some(m) = &matcher {
                keys.keys.retain(|k| m.is_match(&k.name));
            }
            if json {
                println!("{}", json::keys(&keys));
            } else {
                output::keys::list(&keys);
            }
            return Ok(ExitCode::SUCCESS);
        }
        KeysCommand::Accept {
            pattern,
            operator,
            fingerprint,
            yes,
        } if is_glob(&pattern) && fingerprint.is_none() => {
            let preview = change(
                client,
                ChangeKeys {
                    action: "accept".into(),
                    kind: kind(operator),
                    pattern: pattern.clone(),
                    dry_run: true,
                    ..Default::default()
                },
            )?;
            let list = describe(&preview.keys);
            let notes: String = preview
                .notes
                .iter()
                .map(|n| format!("\n  passed over: {n}"))
                .collect();
            if !yes {
                if !std::io::stdin().is_terminal() {
                    bail!(
                        "tend keys accept {pattern:?} would accept these pending keys:\n{list}{notes}\n\
                         Nothing was accepted: there is no terminal to confirm on. Compare the \
                         fingerprints with each peer's own, then run again with --yes."
                    );
                }
                eprintln!("{pattern:?} matches these pending keys:\n{list}{notes}");
                if !confirm(&format!("Accept these {}?", preview.keys.len()))? {
                    bail!("nothing accepted: the operator did not confirm");
                }
            }
            // Exactly what was shown: by name and fingerprint each.
            let mut done = KeysChanged::default();
            for k in preview.keys {
                let one = change(
                    client,
                    ChangeKeys {
                        action: "accept".into(),
                        kind: kind(operator),
                        pattern: k.name.clone(),
                        fingerprint: k.fingerprint.clone(),
                        ..Default::default()
                    },
                )?;
                done.names.extend(one.names);
                done.keys.extend(one.keys);
            }
            ("accept", done)
        }
        KeysCommand::Accept {
            pattern,
            operator,
            fingerprint,
            yes: _,
        } => (
            "accept",
            change(
                client,
                ChangeKeys {
                    action: "accept".into(),
                    kind: kind(operator),
                    pattern,
                    fingerprint: fingerprint.unwrap_or_default(),
                    ..Default::default()
                },
            )?,
        ),
        KeysCommand::Reject {
            pattern,
            operator,
            yes,
        } => {
            let names = confirmed_names(client, "reject", operator, &pattern, yes)?;
            let req = ChangeKeys {
                action: "reject".into(),
                kind: kind(operator),
                pattern,
                ..Default::default()
            };
            ("reject", change_each(client, req, names)?)
        }
        KeysCommand::Delete {
            pattern,
            operator,
            fingerprint,
            yes,
        } => {
            // With a fingerprint one key goes: nothing to confirm.
            let names = match fingerprint {
                Some(_) => None,
                None => confirmed_names(client, "delete", operator, &pattern, yes)?,
            };
            let req = ChangeKeys {
                action: "delete".into(),
                kind: kind(operator),
                pattern,
                fingerprint: fingerprint.unwrap_or_default(),
                ..Default::default()
            };
            ("delete", change_each(client, req, names)?)
        }
        KeysCommand::Label { name, labels } => (
            "label",
            change(
                client,
                ChangeKeys {
                    action: "label".into(),
                    kind: "minion".into(),
                    pattern: name,
                    labels,
                    ..Default::default()
                },
            )?,
        ),
    };
    if json {
        println!("{}", json::keys_changed(action, &changed));
    } else {
        output::keys::changed(action, &changed);
    }
    Ok(ExitCode::SUCCESS)
}
