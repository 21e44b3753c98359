//! `roleplay worker RUN_DIR`: run one shard (what a Slurm array task executes).

use crate::cli::WorkerArgs;
use crate::error::{Error, Result, exit};
use crate::rundir::RunDir;
use crate::worker::{self, Options, Shared, signals::Cancel};
use std::sync::Arc;
use std::time::Duration;

/// Which shard to run: `--shard`, or the Slurm array task id through the array map.
fn shard_number(args: &WorkerArgs) -> Result<u32> {
    if let Some(s) = args.shard {
        return Ok(s);
    }
    let task = std::env::var("SLURM_ARRAY_TASK_ID").map_err(|_| {
        Error::config("no shard given")
            .with_hint("pass `--shard N`, or run inside a Slurm array task (SLURM_ARRAY_TASK_ID)")
    })?;
    let index: usize = task.trim().parse().map_err(|_| {
        Error::config(format!("SLURM_ARRAY_TASK_ID=`{task}` is not a number")).with_hint("pass `--shard N`")
    })?;
    let Some(map) = &args.array_map else {
        return u32::try_from(index).map_err(|_| Error::config(format!("array index {index} is too large")));
    };
    let text = fs_err::read_to_string(map)?;
    let parsed: serde_json::Value = serde_json::from_str(&text).map_err(|e| {
        Error::config(format!("`{}` is not valid JSON ({e})", map.display()))
            .with_hint("the array map is written by `roleplay render`; render again")
    })?;
    let shards = parsed.get("shards").and_then(|v| v.as_array()).ok_or_else(|| {
        Error::config(format!("`{}` has no `shards` list", map.display())).with_hint("render the run again")
    })?;
    shards
        .get(index)
        .and_then(|v| v.as_u64())
        .and_then(|v| u32::try_from(v).ok())
        .ok_or_else(|| {
            Error::config(format!(
                "array index {index} is not in `{}` ({} entries)",
                map.display(),
                shards.len()
            ))
            .with_hint("the array was submitted with more tasks than its map; render and submit again")
        })
}

pub fn run(args: WorkerArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    let shard = shard_number(&args)?;
    // The manifest and this shard's part of the plan: start-up does not grow with the plan.
    let mut plan = crate::rundir::plans::load_for_shard(&rd, shard)?;
    if let Some(n) = args.rate_share.filter(|n| *n > 1) {
        let named = |name: &str| {
            args.rate_share_models
                .as_ref()
                .is_none_or(|list| list.iter().any(|n| n == name))
        };
        for m in plan
            .experiment
            .models
            .iter_mut()
            .filter(|m| m.transport.limits.has_rates() && named(&m.name))
        {
            let l = m.transport.limits.shared_by(n);
            let per = |v: Option<f64>, unit: &str| v.map(|v| format!("{v:.1} {unit}/min"));
            let rates: Vec<String> = [
                per(l.requests_per_minute, "requests"),
                per(l.tokens_per_minute, "tokens"),
            ]
            .into_iter()
            .flatten()
            .collect();
            eprintln!(
                "rate limits of `{}`: this worker's share (1/{n}): {}",
                m.name,
                rates.join(", ")
            );
            m.transport.limits = l;
        }
    }
    let plan = Arc::new(plan);
    let options = Options {
        retry_failed: args.retry_failed,
        durable: !args.no_fsync,
        grace: Duration::from_secs_f64(plan.experiment.worker.grace_secs),
        slurm_job_id: std::env::var("SLURM_JOB_ID").ok(),
    };
    let rt = super::runtime()?;
    let (outcome, shared) = rt.block_on(async {
        let cancel = Cancel::new();
        worker::signals::install(&cancel)?;
        let shared = Shared::new(rd.clone(), plan.clone(), options, cancel, crate::llm::client_for)?;
        let outcome = worker::run_shard(&shared, shard).await?;
        Ok::<_, crate::Error>((outcome, shared))
    })?;
    crate::ui::print_failures(&shared.progress, &shared.breaker.trips());
    if let Some(b) = &outcome.budget {
        crate::ui::print_budget_stops(&[(shard, b)]);
    }
    eprintln!(
        "shard {shard}: {} of {} dialogues finished ({} in this run), {} failed{}",
        outcome.already_done + outcome.finished,
        outcome.units,
        outcome.finished,
        outcome.failed,
        if outcome.interrupted {
            "; interrupted, run again to resume"
        } else {
            ""
        }
    );
    Ok(if outcome.interrupted {
        exit::INTERRUPTED
    } else if outcome.failed > 0 || outcome.halted > 0 || outcome.budget.is_some() {
        exit::FAILURES
    } else {
        exit::OK
    })
}
