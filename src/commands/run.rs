//! `roleplay run FILE_OR_RUN_DIR`: the local executor. Plans if needed, runs every shard on this
//! machine, shows progress, survives Ctrl-C, and resumes when run again.

use crate::cli::RunArgs;
use crate::error::{Result, exit};
use crate::rundir::RunDir;
use crate::rundir::plans::{self, Status};
use crate::ui::progress::Display;
use crate::worker::{self, Options, Shared, local, signals::Cancel};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

pub fn run(args: RunArgs) -> Result<i32> {
    // A folder is a run directory (load_plan says so if it is not one); a file is an experiment.
    let rd = if args.target.is_dir() {
        RunDir::new(&args.target)
    } else {
        let loaded = super::load_experiment(&args.target)?;
        let planned = plans::plan_experiment(loaded, args.run_dir.as_deref(), args.replan, false)?;
        if planned.status != Status::Unchanged {
            crate::outln!("{}", planned.summary());
        }
        RunDir::new(planned.run_dir)
    };
    let plan = Arc::new(rd.load_plan()?);
    let exp = &plan.experiment;
    let parallel = local::parallel_shards(&plan, args.parallel_shards);
    let options = Options {
        retry_failed: args.retry_failed,
        durable: !args.no_fsync,
        grace: Duration::from_secs_f64(exp.worker.grace_secs),
        slurm_job_id: None,
    };
    let rt = super::runtime()?;
    let started = Instant::now();
    let (ran, progress) = rt.block_on(async {
        let cancel = Cancel::new();
        worker::signals::install(&cancel)?;
        let shared = Shared::new(rd.clone(), plan.clone(), options, cancel, crate::llm::client_for)?;
        let display = Display::start(shared.progress.clone(), args.no_progress);
        let ran = local::run_all(&shared, parallel, |e| display.println(&e.to_string())).await;
        display.finish();
        Ok::<_, crate::Error>((ran, shared.progress.clone()))
    })?;

    let total: u64 = plan.total_units;
    let failed: u64 = ran.outcomes.iter().map(|o| o.failed).sum();
    let reasons = progress.end_reasons.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // From the live counters, so shards that stopped with an error still count what they finished.
    let finished_now: u64 = reasons.values().sum();
    let done: u64 = progress.done.load(Ordering::Relaxed);
    let reasons: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "{done} of {total} dialogues finished ({finished_now} in this run, {:.1}s), {failed} failed",
        started.elapsed().as_secs_f64()
    );
    if !reasons.is_empty() {
        eprintln!("end reasons (this run): {}", reasons.join(", "));
    }
    crate::outln!("run directory: {}", rd.root.display());
    if let Some(e) = ran.errors.into_iter().next() {
        return Err(e);
    }
    if ran.cancelled && done < total {
        eprintln!("interrupted: run the same command again to resume");
        return Ok(exit::INTERRUPTED);
    }
    // The dataset is what the user came for: merge what finished (a partial merge is fine here;
    // missing and failed units are listed, and this command's exit code says whether all is done).
    match crate::merge::merge_run(&rd, true) {
        Ok(m) => crate::ui::print_merge(&m),
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::FAILURES);
        }
    }
    if failed > 0 {
        eprintln!(
            "hint: `roleplay run {} --retry-failed` runs the failed dialogues again",
            rd.root.display()
        );
        return Ok(exit::FAILURES);
    }
    Ok(exit::OK)
}
