//! `roleplay cancel RUN_DIR`: scancel every job of the run still queued or running.

use crate::cli::CancelArgs;
use crate::error::Result;
use crate::slurm::SlurmCli;
use crate::slurm::render::RunCtx;

pub fn run(args: CancelArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    let cancelled = crate::slurm::submit::cancel(&ctx, &SlurmCli::new())?;
    if cancelled.is_empty() {
        eprintln!("no job of `{}` is queued or running", ctx.root_display());
    } else {
        eprintln!(
            "cancelled {} job{} of `{}`; finished work is kept, `roleplay resume` continues",
            cancelled.len(),
            if cancelled.len() == 1 { "" } else { "s" },
            ctx.root_display()
        );
        for id in cancelled {
            crate::outln!("{id}");
        }
    }
    Ok(0)
}
