//! `roleplay submit RUN_DIR [--dry-run] [--test-only] [--merge-job]`: the run's arrays to Slurm
//! (see `slurm::submit`). What happened on stderr; job ids (or, dry, the sbatch commands) on stdout.

use crate::cli::SubmitArgs;
use crate::error::Result;
use crate::slurm::SlurmCli;
use crate::slurm::render::RunCtx;
use crate::slurm::shell::quote as shell_quote;
use crate::slurm::submit::{self, JobResult, SubmitOptions};

pub fn run(args: SubmitArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    let render = super::slurm_ui::options(&args.render)?.merged_with_stored(&ctx.rd, false)?;
    let sched = SlurmCli::new();
    let opts = SubmitOptions {
        dry_run: args.dry_run,
        test_only: args.test_only,
        merge_job: args.merge_job,
        ..SubmitOptions::default()
    };
    let report = submit::submit(&ctx, &sched, &render, &opts)?;
    super::slurm_ui::print_jobs(&ctx, &report);
    let all_there = report
        .jobs
        .iter()
        .all(|(_, r)| matches!(r, JobResult::AlreadySubmitted { .. }));
    let dir = shell_quote(&args.run_dir.display().to_string());
    if args.dry_run || args.test_only {
        eprintln!(
            "nothing was submitted; the scripts are in `{}`",
            ctx.rd.slurm_dir().display()
        );
    } else if all_there {
        eprintln!("nothing new to submit: see `roleplay status {dir}`; `roleplay resume {dir}` resubmits what stopped");
    } else {
        eprintln!("follow it with `roleplay status {dir} --watch`");
    }
    Ok(0)
}
