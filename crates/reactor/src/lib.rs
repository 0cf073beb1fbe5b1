//! tend-reactor: rules that turn events into actions.
//!
//! Rules live in `reactor.d/*.toml`. Each has tag globs (`on`), an optional
//! condition in CEL (`when`), optional correlation (`count` within
//! `window`; a condition held `for` a while), throttles (`debounce`,
//! `once_within`, `max_rate`), grouped per minion or any event field
//! (`group_by`), and actions (`apply` states, `run` a command given as an
//! argument list, `shell` for a script whose `{{ }}` are quoted for the
//! shell, `fire` an event, call a `webhook`). Every rule's globs are compiled into one
//! [`globset::GlobSet`], so an event is matched against all rules in one
//! pass; only the rules whose globs matched evaluate their condition.
//!
//! ```toml
//! [[rule]]
//! name = "brute-force"
//! on = "minion/*/beacon/login/*"
//! when = 'event.data.kind == "failed"'
//! count = 5
//! window = "60s"
//! once_within = "10m"
//!
//! [[rule.action]]
//! run = ["nft", "add", "element", "inet", "filter", "blocked", "{ {{ event.data.host }} }"]
//! ```
//!
//! Events caused by a job (a restore's own file write) carry the job as
//! their cause; rules skip them unless they set `caused = true`. That is
//! what stops a restore from triggering itself.

mod policy;
mod reactor;
mod rules;
mod stats;

/// The clock saved reactor state is kept against; a rule's throttles as configured.
pub use policy::{Clock, Policy};
/// The reactor, a rule acting, and a group's saved state as it changes.
pub use reactor::{Fire, Reactor, StateChange};
/// The group an event falls in under a rule (for the fuzz targets and the CLI).
pub use rules::group_key;
/// What a rule does when it acts, and what a `run` or `shell` action runs.
pub use rules::{Action, RunCommand};
/// Compiled rules, one of them, a rule an event matched, and why files
/// were refused (every problem, each with its file and line).
pub use rules::{Match, Rule, RuleError, RuleErrors, Rules, identity};
/// What each rule did while in force (fires, failures, the last failure).
pub use stats::{RuleCounts, RuleFailure, RuleStats};
