//! `roleplay status RUN_DIR [--json] [--watch]`: the run per shard (see `slurm::status`). Outcomes
//! learnt from the scheduler are recorded in the submissions journal when the submit lock is free,
//! so they outlive squeue's memory.

use crate::cli::StatusArgs;
use crate::error::Result;
use crate::slurm::SlurmCli;
use crate::slurm::records::{Record, Submissions};
use crate::slurm::render::{RunCtx, compact_ranges};
use crate::slurm::shell::quote as shell_quote;
use crate::slurm::status::{self, RunReport, State, StatusOptions};
use std::io::IsTerminal;
use std::time::Duration;

/// Shards listed one by one up to this many; beyond, only those not done.
const LIST_ALL_UP_TO: usize = 40;
const LIST_AT_MOST: usize = 100;

/// `2 h 5 min`, `3 min 20 s`, `12 s`.
pub fn human_secs(secs: u64) -> String {
    let (h, m, s) = (secs / 3600, (secs % 3600) / 60, secs % 60);
    if h > 0 {
        format!("{h} h {m} min")
    } else if m > 0 {
        format!("{m} min {s} s")
    } else {
        format!("{s} s")
    }
}

/// Appends what the report learnt, if no submit, resume or cancel holds the lock.
pub fn record_outcomes(ctx: &RunCtx, report: &RunReport) {
    if report.new_outcomes.is_empty() {
        return;
    }
    let Ok(_lock) = crate::slurm::submit::lock(ctx) else {
        return;
    };
    let records: Vec<Record> = report.new_outcomes.iter().cloned().map(Record::Outcome).collect();
    if let Err(e) = Submissions::append(&ctx.rd, &records) {
        eprintln!("warning: cannot record task outcomes: {}", e.message);
    }
}

pub fn print_report(ctx: &RunCtx, r: &RunReport) {
    let dir = shell_quote(&ctx.root_display());
    crate::outln!(
        "run `{}` (experiment {}, plan {}): {} shards, {} units",
        r.run_dir,
        r.experiment,
        &r.plan_hash[..8.min(r.plan_hash.len())],
        r.shards_total,
        r.units.units
    );
    let pct = if r.units.units == 0 {
        100.0
    } else {
        100.0 * r.units.done as f64 / r.units.units as f64
    };
    // "failed" is the word for tasks (the shards line): units end with backend errors.
    let mut line = format!(
        "units: {} done, {} with backend errors, {} left ({pct:.1}% done)",
        r.units.done, r.units.failed, r.units.left
    );
    if let Some(rate) = r.rate_units_per_sec {
        line.push_str(&format!("; {rate} units/s"));
    }
    if let Some(eta) = r.eta_secs {
        line.push_str(&format!(", ETA {}", human_secs(eta)));
    }
    crate::outln!("{line}");
    let states: Vec<String> = r.states.iter().map(|(k, v)| format!("{v} {k}")).collect();
    crate::outln!("shards: {}", states.join(", "));
    crate::outln!("queue: {}; accounting: {}", r.queue, r.accounting);
    let listed: Vec<_> = if r.shards.len() <= LIST_ALL_UP_TO {
        r.shards.iter().collect()
    } else {
        r.shards.iter().filter(|s| s.state != State::Done).collect()
    };
    if !listed.is_empty() {
        crate::outln!("");
        // `failed runs`: runs of its tasks that failed, of the attempt budget.
        crate::outln!(
            "{:>6}  {:<16} {:>9}  {:>5}  {:>11}  {:<14} reason",
            "shard",
            "state",
            "units",
            "tasks",
            "failed runs",
            "job"
        );
        for s in listed.iter().take(LIST_AT_MOST) {
            crate::outln!(
                "{:>6}  {:<16} {:>9}  {:>5}  {:>11}  {:<14} {}",
                s.shard,
                s.state.as_str(),
                format!("{}/{}", s.done, s.units),
                s.submissions,
                format!("{}/{}", s.failed_attempts, s.max_attempts),
                s.job.map_or_else(|| "-".to_string(), |j| j.to_string()),
                s.reason.as_deref().unwrap_or("")
            );
        }
        if listed.len() > LIST_AT_MOST {
            crate::outln!("  ... and {} more (see `--json`)", listed.len() - LIST_AT_MOST);
        }
        if listed.len() < r.shards.len() {
            crate::outln!("  ({} done shards not listed)", r.shards.len() - listed.len());
        }
    }
    let resubmit: Vec<u32> = r.shards.iter().filter(|s| s.resubmit).map(|s| s.shard).collect();
    let over: Vec<u32> = r
        .shards
        .iter()
        .filter(|s| s.over_budget && !s.complete && !s.state.is_live())
        .map(|s| s.shard)
        .collect();
    let failed_units: Vec<u32> = r
        .shards
        .iter()
        .filter(|s| s.complete && s.failed_units > 0)
        .map(|s| s.shard)
        .collect();
    crate::outln!("");
    if r.complete {
        crate::outln!("every shard is done: `roleplay merge {dir}` writes the dataset");
    } else if r.shards.iter().all(|s| s.state == State::Done) {
        crate::outln!(
            "every unit is done, but {} of the run still queued or running ({}): it will find nothing to do; \
             `roleplay status {dir} --watch` waits for it, `roleplay cancel {dir}` stops it",
            if r.still_queued.len() == 1 {
                "a job is"
            } else {
                "jobs are"
            },
            r.still_queued.join(", ")
        );
    } else {
        if !resubmit.is_empty() {
            crate::outln!(
                "`roleplay resume {dir}` resubmits {} shard{} ({})",
                resubmit.len(),
                if resubmit.len() == 1 { "" } else { "s" },
                compact_ranges(&resubmit)
            );
        }
        if !over.is_empty() {
            crate::outln!(
                "over their attempt budget (`worker.max_attempts`), not resubmitted: shards {}; read their logs in `logs/slurm/`",
                compact_ranges(&over)
            );
        }
        if !failed_units.is_empty() {
            crate::outln!(
                "shards {} finished with failed units: `roleplay resume {dir} --retry-failed` runs those units again",
                compact_ranges(&failed_units)
            );
        }
        if !r.finished {
            crate::outln!("still in progress: `roleplay status {dir} --watch` follows it");
        }
    }
    for w in &r.warnings {
        eprintln!("warning: {w}");
    }
}

pub fn run(args: StatusArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    let sched = SlurmCli::new();
    let opts = StatusOptions {
        lost_after_secs: args.lost_after,
        offline: args.offline,
    };
    let clear = args.watch && !args.json && std::io::stdout().is_terminal();
    loop {
        let subs = Submissions::read(&ctx.rd)?;
        let report = status::collect(&ctx, Some(&sched), &subs, &opts);
        if !args.offline {
            record_outcomes(&ctx, &report);
        }
        if clear {
            print!("\x1b[2J\x1b[H");
        }
        if args.json {
            crate::outln!(
                "{}",
                if args.watch {
                    serde_json::to_string(&report)
                } else {
                    serde_json::to_string_pretty(&report)
                }
                .expect("serialisable")
            );
        } else {
            print_report(&ctx, &report);
        }
        if !args.watch || report.finished {
            return Ok(report.exit_code());
        }
        if !args.json {
            crate::outln!("");
        }
        std::thread::sleep(Duration::from_secs(args.interval.max(1)));
    }
}
