//! `roleplay judge RUN_DIR JUDGE.toml`: plan (or re-plan) the judge stage `RUN_DIR/judge/NAME/`,
//! run every shard here (unless `--plan-only`), and merge the run's judgements. Running it again
//! resumes, and judges only what is new.

use crate::cli::JudgeArgs;
use crate::error::{Result, exit};
use crate::judge;
use crate::rundir::RunDir;
use crate::rundir::plans::Status;
use crate::ui::progress::Display;
use crate::worker::{self, Options, Shared, local, signals::Cancel};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    let parallel = local::parallel_shards(&plan, args.parallel_shards);
    let options = Options {
        retry_failed: args.retry_failed,
        durable: !args.no_fsync,
        grace: Duration::from_secs_f64(plan.experiment.worker.grace_secs),
        slurm_job_id: None,
    };
    let before = totals(&rd)?;
    let start = crate::ui::progress::Start {
        total: before.units,
        done_before: before.done + if args.retry_failed { 0 } else { before.failed },
        shards: plan.shards.len() as u64,
    };
    let rt = super::runtime()?;
    let started = Instant::now();
    let (ran, progress) = rt.block_on(async {
        let cancel = Cancel::new();
        worker::signals::install(&cancel)?;
        let shared = Shared::new(rd.clone(), plan.clone(), options, cancel, crate::llm::client_for)?;
        let display = Display::start(shared.progress.clone(), start, args.no_progress);
        let ran = local::run_all(&shared, parallel, |e| display.println(&e.to_string())).await;
        display.finish();
        Ok::<_, crate::Error>((ran, shared.progress.clone()))
    })?;
    let after = totals(&rd)?;
    let now = progress.finished.load(std::sync::atomic::Ordering::Relaxed);
    eprintln!(
        "{} of {} units judged ({now} in this run, {:.1}s), {} failed",
        after.done + after.failed,
        after.units,
        started.elapsed().as_secs_f64(),
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

/// Unit totals from the stage's records, as `status --offline` counts them.
fn totals(rd: &RunDir) -> Result<crate::slurm::status::Totals> {
    let ctx = crate::slurm::render::RunCtx::open(&rd.root)?;
    let subs = crate::slurm::records::Submissions::read(&ctx.rd)?;
    let opts = crate::slurm::status::StatusOptions {
        offline: true,
        ..Default::default()
    };
    Ok(crate::slurm::status::collect(&ctx, None, &subs, &opts).units)
}
