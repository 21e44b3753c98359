//! `roleplay run FILE_OR_RUN_DIR`: the local executor. Plans if needed, runs every shard on this
//! machine, shows progress, survives Ctrl-C, and resumes when run again.

use super::RanHere;
use crate::cli::RunArgs;
use crate::error::{Result, exit};
use crate::rundir::RunDir;
use crate::rundir::plans::{self, Status};
use std::sync::Arc;

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

    // The counts `roleplay status RUN_DIR --offline` gives, from the run's own records.
    let units = super::offline_totals(&rd)?;
    let reasons = progress.end_reasons.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let finished_now: u64 = reasons.values().sum();
    let reasons: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "{} of {} dialogues finished ({finished_now} in this run, {:.1}s), {} failed",
        units.done + units.failed,
        units.units,
        elapsed.as_secs_f64(),
        units.failed
    );
    if !reasons.is_empty() {
        eprintln!("end reasons (this run): {}", reasons.join(", "));
    }
    crate::ui::print_failures(&progress, &ran.trips);
    let budget_stops: Vec<(u32, &crate::worker::BudgetStop)> = ran
        .outcomes
        .iter()
        .filter_map(|o| o.budget.as_ref().map(|b| (o.shard, b)))
        .collect();
    crate::ui::print_budget_stops(&budget_stops);
    crate::outln!("run directory: {}", rd.root.display());
    if let Some(e) = ran.errors.into_iter().next() {
        return Err(e);
    }
    let (total, failed) = (units.units, units.failed);
    if ran.cancelled && units.done + units.failed < total {
        eprintln!("interrupted: run the same command again to resume");
        return Ok(exit::INTERRUPTED);
    }
    // The dataset is what the user came for: merge what finished (a partial merge is fine here;
    // missing and failed units are listed, and this command's exit code says whether all is done).
    let merged = if plan.judge.is_some() {
        // A judge stage: the run's judgements.
        crate::merge::judgements::parent_of_stage(&rd)
            .and_then(|p| crate::merge::judgements::merge_judgements(&p))
            .map(|m| crate::ui::print_judgements(&m))
    } else {
        crate::merge::merge_run(&rd, true).map(|m| crate::ui::print_merge(&m))
    };
    match merged {
        Ok(()) => {}
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::FAILURES);
        }
    }
    if !budget_stops.is_empty() {
        return Ok(exit::FAILURES);
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
