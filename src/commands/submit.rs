//! `roleplay submit RUN_DIR [--dry-run] [--test-only] [--merge-job]`: the run's arrays to Slurm
//! (see `slurm::submit`). What happened on stderr; job ids (or, dry, the sbatch commands) on stdout.

use crate::cli::SubmitArgs;
use crate::error::Result;
use crate::slurm::SlurmCli;
use crate::slurm::records::{JobKind, Via};
use crate::slurm::render::{RunCtx, shell_quote};
use crate::slurm::submit::{self, JobResult, SubmitOptions, SubmitReport};

pub fn print_jobs(ctx: &RunCtx, report: &SubmitReport) {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(l) = &report.limits {
        eprintln!("array limits: {}", super::render::describe_limits(l));
    }
    for (r, result) in &report.jobs {
        let what = match r.slot.kind {
            JobKind::Array => format!(
                "round {} array {} (--array={}, shards {})",
                r.slot.round,
                r.slot.array,
                r.array_spec.as_deref().unwrap_or("-"),
                r.shard_list()
            ),
            JobKind::Merge => format!("the merge job of round {}", r.slot.round),
        };
        match result {
            JobResult::Submitted { job_id, via } => {
                eprintln!(
                    "submitted {what} as job {job_id}{}",
                    if *via == Via::Queue {
                        " (found in the queue after an sbatch error)"
                    } else {
                        ""
                    }
                );
                crate::outln!("{job_id}");
            }
            JobResult::AlreadySubmitted { job_id } => {
                eprintln!("{what} was submitted already as job {job_id}");
                crate::outln!("{job_id}");
            }
            JobResult::WouldSubmit { command } => {
                eprintln!("would submit {what}:");
                crate::outln!("{command}");
            }
            JobResult::Tested { answer } => {
                eprintln!("{what}: {}", ctx.relative(&r.script_path));
                crate::outln!("{answer}");
            }
        }
    }
}

pub fn run(args: SubmitArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    let render = super::render::options(&args.render)?.merged_with_stored(&ctx.rd, false)?;
    let sched = SlurmCli::new();
    let opts = SubmitOptions {
        dry_run: args.dry_run,
        test_only: args.test_only,
        merge_job: args.merge_job,
        ..SubmitOptions::default()
    };
    let report = submit::submit(&ctx, &sched, &render, &opts)?;
    print_jobs(&ctx, &report);
    let all_there = report
        .jobs
        .iter()
        .all(|(_, r)| matches!(r, JobResult::AlreadySubmitted { .. }));
    let dir = shell_quote(&args.run_dir.display().to_string());
    if args.dry_run || args.test_only {
        eprintln!(
            "nothing was submitted; the scripts are in `{}`",
            crate::slurm::records::slurm_dir(&ctx.rd).display()
        );
    } else if all_there {
        eprintln!("nothing new to submit: see `roleplay status {dir}`; `roleplay resume {dir}` resubmits what stopped");
    } else {
        eprintln!("follow it with `roleplay status {dir} --watch`");
    }
    Ok(0)
}
