//! `tend man`: tend(1) to stdout, or with a directory, tend(1) and
//! tend-COMMAND(1) for every command, from the same definitions as `--help`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;

use crate::context::Ctx;

/// Write man pages: tend(1) and one per command.
#[derive(clap::Args)]
#[command(after_help = "Example:\n  tend man --dir /usr/local/share/man/man1")]
pub struct Args {
    /// Where to write them; without it, tend(1) goes to stdout.
    #[arg(long)]
    dir: Option<PathBuf>,
}

/// Runs `tend man`; its exit status.
pub fn exec(ctx: &Ctx, args: Args) -> anyhow::Result<ExitCode> {
    let Some(dir) = args.dir else {
        clap_mangen::Man::new((ctx.definition)()).render(&mut std::io::stdout())?;
        return Ok(ExitCode::SUCCESS);
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    clap_mangen::generate_to((ctx.definition)(), &dir)
        .with_context(|| format!("cannot write man pages into {}", dir.display()))?;
    Ok(ExitCode::SUCCESS)
}
