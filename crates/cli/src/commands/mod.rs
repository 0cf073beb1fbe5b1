//! Every `tend` command, one file each: the file holds the command's clap
//! definition (`Args`, whose doc comment is its `--help` summary) and its
//! `exec`. This list registers them, in the order `tend --help` shows
//! them: adding a command is one new file here and one line below.

use std::process::ExitCode;

use crate::context::Ctx;

/// Declares the command modules, the subcommand enum and its dispatch from
/// one list of `Variant => module` lines.
macro_rules! commands {
    ($($variant:ident => $module:ident,)*) => {
        $(mod $module;)*

        /// A `tend` command and its arguments.
        #[derive(clap::Subcommand)]
        pub enum Command {
            $($variant($module::Args),)*
        }

        /// Runs `command`; its exit status, or an error for `tend: ...` and
        /// exit status 2.
        pub fn exec(ctx: &Ctx, command: Command) -> anyhow::Result<ExitCode> {
            match command {
                $(Command::$variant(args) => $module::exec(ctx, args),)*
            }
        }
    };
}

commands! {
    Events => events,
    Apply => apply,
    Minions => minions,
    Minion => minion,
    Ping => ping,
    Jobs => jobs,
    Status => status,
    Run => run,
    Reactor => reactor,
    Rules => rules,
    Keys => keys,
    Completions => completions,
    Man => man,
}
