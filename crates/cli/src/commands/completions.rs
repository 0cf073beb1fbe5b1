//! `tend completions SHELL`: a shell completion script, from the same
//! definitions as `--help`.

use std::process::ExitCode;

use crate::context::Ctx;

/// Print a shell completion script.
#[derive(clap::Args)]
#[command(
    after_help = "Examples:\n  tend completions bash > /etc/bash_completion.d/tend\n  tend completions zsh > \"${fpath[1]}/_tend\"\n  tend completions fish > ~/.config/fish/completions/tend.fish\n\nThese complete commands and flags. To complete minion ids, state names\nand job ids too, asked of the master TEND_MASTER names:\n  echo 'source <(COMPLETE=bash tend)' >> ~/.bashrc"
)]
pub struct Args {
    shell: clap_complete::Shell,
}

/// Runs `tend completions`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    clap_complete::generate(
        args.shell,
        &mut (ctx.definition)(),
        "tend",
        &mut std::io::stdout(),
    );
    Ok(ExitCode::SUCCESS)
}
