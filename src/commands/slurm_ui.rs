//! What the Slurm commands (`render`, `submit`, `resume`) share: how they read their render flags,
//! and how they print a round and the jobs they submitted.

use crate::cli::RenderFlags;
use crate::error::Result;
use crate::slurm::records::{JobKind, Via};
use crate::slurm::render::{self, ArrayLimits, RenderOptions, RoundPlan, RunCtx};
use crate::slurm::submit::{JobResult, SubmitReport};

/// The render options given on the command line (the stored ones fill the gaps later).
pub fn options(flags: &RenderFlags) -> Result<RenderOptions> {
    let opts = RenderOptions {
        max_array_size: flags.max_array_size,
        max_array_tasks: flags.max_array_tasks,
        sim_server_args: flags.sim_server_args.clone(),
        vars: render::parse_vars(&flags.vars)?,
    };
    opts.check()?;
    Ok(opts)
}

/// `array limits: ...` for messages.
pub fn describe_limits(l: &ArrayLimits) -> String {
    format!(
        "MaxArraySize {}{}, {}",
        l.max_array_size,
        l.max_array_tasks
            .map(|t| format!(", max_array_tasks {t}"))
            .unwrap_or_default(),
        if l.from_cluster {
            "from `scontrol show config`"
        } else {
            "as given"
        }
    )
}

pub fn print_round(ctx: &RunCtx, plan: &RoundPlan) {
    for w in &plan.warnings {
        eprintln!("warning: {w}");
    }
    let shards: usize = plan.arrays.iter().map(|a| a.shards.len()).sum();
    eprintln!(
        "round {}: {shards} shards in {} array{} ({}); template `{}`",
        plan.round,
        plan.arrays.len(),
        if plan.arrays.len() == 1 { "" } else { "s" },
        describe_limits(&plan.limits),
        ctx.plan.experiment.slurm.template
    );
    for a in &plan.arrays {
        eprintln!(
            "  {}  --array={}  shards {}  job name {}",
            ctx.relative(&a.script_path),
            a.array_spec.as_deref().unwrap_or("-"),
            a.shard_list(),
            a.slot.job_name
        );
    }
}

/// The jobs a submit or resume sent (or would send), on stderr; their ids on stdout.
pub fn print_jobs(ctx: &RunCtx, report: &SubmitReport) {
    for w in &report.warnings {
        eprintln!("warning: {w}");
    }
    if let Some(l) = &report.limits {
        eprintln!("array limits: {}", describe_limits(l));
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
                    match via {
                        Via::Queue => " (found in the queue after an sbatch error)",
                        Via::Accounting => " (found in the accounting after an sbatch error: it has left the queue)",
                        Via::Sbatch => "",
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
