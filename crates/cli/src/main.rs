//! tend: the operator's command line. Lists and filters events, applies
//! states, shows minions and jobs, by asking the master over its control
//! socket.
//!
//! Each command is one file under `commands/`; this file parses the
//! command line and turns the outcome into an exit status.

mod commands;
mod complete;
mod connection;
mod context;
mod errors;
mod follow;
mod job;
mod output;
mod request;
mod salt;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use context::{Ctx, Global};

#[derive(Parser)]
#[command(
    name = "tend",
    version,
    about = "Operate a tend master: events, states, minions, jobs",
    after_help = "Examples:\n  tend events --tag 'minion/*/beacon/*' --since 10m\n  tend events --follow --minion web1\n  tend apply web1 motd --test\n  tend minions\n  tend jobs show 12\n\nExit status: 0 when everything worked, 1 when a minion failed or did not\nanswer, 2 when tend itself could not do what was asked (bad arguments,\nno master).\n\nColour: only on a terminal, and never when NO_COLOR is set."
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: commands::Command,
}

fn main() -> ExitCode {
    // Rust ignores SIGPIPE, so printing into a closed pipe (`tend events |
    // head`) would panic; like any Unix tool, just end instead.
    // SAFETY: setting a signal disposition to its default, before any
    // thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // `COMPLETE=bash tend ...`: the shell asks for completions (minion
    // ids, states, jobs from the master); answered, and nothing else run.
    clap_complete::CompleteEnv::with_factory(Cli::command).complete();
    let cli = Cli::parse();
    output::colour::init();
    let ctx = Ctx {
        global: cli.global,
        definition: Cli::command,
    };
    match commands::exec(&ctx, cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("tend: {e:#}");
            ExitCode::from(2)
        }
    }
}
