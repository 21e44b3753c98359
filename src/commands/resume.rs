//! `roleplay resume RUN_DIR [--dry-run] [--retry-failed]`: resubmits, as a new round, the shards
//! that are neither done nor queued or running, within their attempt budget (see `slurm::submit`).

use crate::cli::ResumeArgs;
use crate::error::{Result, exit};
use crate::slurm::SlurmCli;
use crate::slurm::render::{RunCtx, compact_ranges};
use crate::slurm::shell::quote as shell_quote;
use crate::slurm::status::StatusOptions;
use crate::slurm::submit::{self, ResumeOptions, SubmitOptions};

pub fn run(args: ResumeArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    let render = super::slurm_ui::options(&args.render)?.merged_with_stored(&ctx.rd, false)?;
    let sched = SlurmCli::new();
    let opts = ResumeOptions {
        submit: SubmitOptions {
            dry_run: args.dry_run,
            merge_job: args.merge_job,
            ..SubmitOptions::default()
        },
        status: StatusOptions {
            lost_after_secs: args.lost_after,
            offline: false,
        },
        retry_failed: args.retry_failed,
    };
    let report = submit::resume(&ctx, &sched, &render, &opts)?;
    let dir = shell_quote(&args.run_dir.display().to_string());
    let before = &report.before;
    for w in report.notes.iter().chain(&before.warnings) {
        eprintln!("warning: {w}");
    }
    let states: Vec<String> = before.states.iter().map(|(k, v)| format!("{v} {k}")).collect();
    eprintln!(
        "`{}`: {} of {} units done; shards: {}",
        before.run_dir,
        before.units.done,
        before.units.units,
        states.join(", ")
    );
    for &s in &report.over_budget {
        let sh = &before.shards[s as usize];
        let causes: Vec<String> = sh
            .history
            .iter()
            .filter(|a| a.counts)
            .map(|a| format!("{} ({})", a.reason.as_deref().unwrap_or("?"), a.job))
            .collect();
        eprintln!(
            "shard {s}: {} ({}): {} failed runs of {} ({}): not resubmitted; {}",
            sh.state.as_str(),
            sh.reason.as_deref().unwrap_or("no reason"),
            sh.failed_attempts,
            sh.max_attempts,
            causes.join(", "),
            match &sh.log {
                Some(log) => format!("read `{log}`"),
                None => "no task of it ever started, so there is no log".to_string(),
            }
        );
    }
    if !report.failed_units.is_empty() && !args.retry_failed {
        eprintln!(
            "shards {} finished with failed units: `roleplay resume {dir} --retry-failed` runs those units again",
            compact_ranges(&report.failed_units)
        );
    }
    match &report.submitted {
        None if before.complete => eprintln!("every shard is done: nothing to resubmit"),
        None => eprintln!("nothing to resubmit: every shard not done is queued, running or over its budget"),
        Some(sub) => {
            eprintln!(
                "{} {} shard{} ({}) as round {}",
                if args.dry_run { "would resubmit" } else { "resubmitting" },
                report.resubmitted.len(),
                if report.resubmitted.len() == 1 { "" } else { "s" },
                compact_ranges(&report.resubmitted),
                sub.round
            );
            super::slurm_ui::print_jobs(&ctx, sub);
        }
    }
    let attention = !report.over_budget.is_empty() || (!report.failed_units.is_empty() && !args.retry_failed);
    Ok(if attention { exit::FAILURES } else { exit::OK })
}
