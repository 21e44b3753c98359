//! `roleplay judge RUN_DIR JUDGE.toml`: plan (or re-plan) the judge stage `RUN_DIR/judge/NAME/`,
//! run every shard here (unless `--plan-only`), and merge the run's judgements. Running it again
//! resumes, and judges only what is new.

use super::RanHere;
use crate::cli::JudgeArgs;
use crate::error::{Result, exit};
use crate::judge;
use crate::rundir::RunDir;
use crate::rundir::plans::Status;
use std::sync::Arc;

pub fn run(args: JudgeArgs) -> Result<i32> {
    let parent = RunDir::new(&args.run_dir);
    let file = judge::config::load(&args.judge_file)?;
    for w in &file.warnings {
        eprintln!("warning: {w}");
    }
    let planned = judge::plan::plan_stage(&parent, &file)?;
    if planned.status != Status::Unchanged || args.plan_only {
        crate::outln!("{}", planned.summary());
    }
    let rd = RunDir::new(&planned.stage_dir);
    if args.plan_only {
        crate::outln!("judge stage: {}", rd.root.display());
        eprintln!(
            "hint: run it here with `roleplay judge {} {}`, or on Slurm with `roleplay submit {} --merge-job`",
            args.run_dir.display(),
            args.judge_file.display(),
            rd.root.display()
        );
        return Ok(exit::OK);
    }
    let plan = Arc::new(rd.load_plan()?);
    let RanHere {
        ran,
        progress,
        elapsed,
        runtime: _runtime,
    } = super::run_here(
        &rd,
        &plan,
        super::Here {
            retry_failed: args.retry_failed,
            no_fsync: args.no_fsync,
            parallel_shards: args.parallel_shards,
            no_progress: args.no_progress,
        },
    )?;
    let after = super::offline_totals(&rd)?;
    let now = progress.finished.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{} of {} units judged ({now} in this run, {:.1}s), {} failed",
        after.done + after.failed,
        after.units,
        elapsed.as_secs_f64(),
        after.failed
    );
    crate::ui::print_failures(&progress, &ran.trips);
    if let Some(e) = ran.errors.into_iter().next() {
        return Err(e);
    }
    if ran.cancelled && after.done + after.failed < after.units {
        eprintln!("interrupted: run the same command again to resume");
        return Ok(exit::INTERRUPTED);
    }
    match crate::merge::judgements::merge_judgements(&parent) {
        Ok(m) => crate::ui::print_judgements(&m),
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::FAILURES);
        }
    }
    if after.failed > 0 {
        eprintln!(
            "hint: `roleplay judge {} {} --retry-failed` asks the failed judges again",
            args.run_dir.display(),
            args.judge_file.display()
        );
        return Ok(exit::FAILURES);
    }
    if ran.trips.iter().len() > 0 || after.done < after.units {
        return Ok(exit::FAILURES);
    }
    Ok(exit::OK)
}
