//! `roleplay render RUN_DIR`: the run's sbatch scripts and array maps into RUN_DIR/slurm/, without
//! submitting (see `slurm::render`). Summary on stderr, the scripts' paths on stdout.

use crate::cli::{RenderArgs, RenderFlags};
use crate::error::Result;
use crate::slurm::SlurmCli;
use crate::slurm::records::Submissions;
use crate::slurm::render::{self, ArrayLimits, RenderOptions, RoundPlan, RunCtx};

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

pub fn run(args: RenderArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    // Rendering rewrites array maps: never while a submit, resume or cancel is at work.
    let _lock = crate::slurm::submit::lock(&ctx)?;
    let opts = options(&args.render)?.merged_with_stored(&ctx.rd, true)?;
    let sched = SlurmCli::new();
    let limits = ArrayLimits::resolve(&opts, Some(&sched))?;
    let subs = Submissions::read(&ctx.rd)?;
    let round = subs
        .first_round_of(&ctx.plan.plan_hash)
        .unwrap_or_else(|| subs.next_round());
    let all: Vec<u32> = (0..ctx.plan.shards.len() as u32).collect();
    let plan = render::render_round(&ctx, round, &all, limits, &opts, &[])?;
    render::write(&ctx, &plan.arrays, &subs)?;
    print_round(&ctx, &plan);
    for a in &plan.arrays {
        crate::outln!("{}", a.script_path.display());
    }
    eprintln!(
        "submit with `roleplay submit {}` (it renders again, the same way)",
        crate::slurm::render::shell_quote(&args.run_dir.display().to_string())
    );
    Ok(0)
}
