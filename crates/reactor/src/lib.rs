//! tend-reactor: rules that turn events into actions.
//!
//! Rules live in `reactor.d/*.toml`. Each has tag globs (`on`), an optional
//! condition in CEL (`when`) and actions. Every rule's globs are compiled
//! into one [`globset::GlobSet`], so an event is matched against all rules
//! in one pass; only the rules whose globs matched evaluate their condition.
//!
//! ```toml
//! [[rule]]
//! name = "restore-motd"
//! on = ["minion/*/beacon/motd/*"]
//! when = 'event.data.kind != "deleted"'
//!
//! [[rule.action]]
//! apply = ["motd"]          # to the event's minion unless `target` is set
//! ```
//!
//! Events caused by a job (a restore's own file write) carry the job as
//! their cause; rules skip them unless they set `caused = true`. That is
//! what stops a restore from triggering itself.

mod rules;

pub use rules::{Action, Reaction, RuleError, Rules};
