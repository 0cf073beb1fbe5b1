//! What every command is given: the global options (`--master`,
//! `--output`, the operator's key and name, the master's fingerprint) and
//! the CLI's own definition, for the commands that print it (completions,
//! man pages).

use std::path::PathBuf;

use clap::ValueEnum;

/// The options every command takes, before or after its name. Under
/// their own heading, after a command's own options: `tend apply --help`
/// shows `--test` before `--master`.
#[derive(clap::Args)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// The master's control endpoint.
    #[arg(
        long,
        global = true,
        env = "TEND_MASTER",
        default_value = "ipc:///run/tend/control.sock"
    )]
    pub master: String,
    /// Output format.
    #[arg(long, short, global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Shorthand for `--output json`.
    #[arg(long, global = true)]
    pub json: bool,
    /// Over TCP (`--master tcp://host:4511`): this operator's key, created
    /// on first use. The master must accept it: `tend keys accept
    /// --operator NAME` on the master host.
    #[arg(long, global = true, env = "TEND_KEY")]
    pub key: Option<PathBuf>,
    /// Over TCP: the operator name the key is known by.
    #[arg(long, global = true, env = "TEND_OPERATOR")]
    pub name: Option<String>,
    /// Over TCP: the master's key fingerprint. Without it, the first
    /// master's key is trusted and recorded, then required.
    #[arg(long, global = true, env = "TEND_MASTER_FINGERPRINT")]
    pub master_fingerprint: Option<String>,
}

/// `--output`: tables for people, or JSON for scripts.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// A command's surroundings.
pub struct Ctx {
    /// The global options as given.
    pub global: Global,
    /// The whole CLI's clap definition (what `--help` shows).
    pub definition: fn() -> clap::Command,
}

impl Ctx {
    /// Whether to print JSON (`--json` or `--output json`) rather than tables.
    pub fn json(&self) -> bool {
        self.global.json || self.global.output == Output::Json
    }
}
