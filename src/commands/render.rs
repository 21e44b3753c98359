//! `roleplay render RUN_DIR`: the run's sbatch scripts and array maps into RUN_DIR/slurm/, without
//! submitting (see `slurm::render`). Summary on stderr, the scripts' paths on stdout.

use super::slurm_ui::{options, print_round};
use crate::cli::RenderArgs;
use crate::error::Result;
use crate::slurm::SlurmCli;
use crate::slurm::records::Submissions;
use crate::slurm::render::{self, ArrayLimits, RunCtx};

pub fn run(args: RenderArgs) -> Result<i32> {
    let ctx = RunCtx::open(&args.run_dir)?;
    // Rendering rewrites array maps: never while a submit, resume or cancel is at work.
    let _lock = crate::slurm::submit::lock(&ctx)?;
    let opts = options(&args.render)?.merged_with_stored(&ctx.rd, true)?;
    let sched = SlurmCli::new();
    let limits = ArrayLimits::resolve(&opts, Some(&sched))?;
    if limits.from_cluster {
        let kill_wait = crate::slurm::Scheduler::kill_wait_secs(&sched).ok().flatten();
        for w in crate::slurm::submit::grace_warnings(&ctx.plan.experiment, kill_wait) {
            eprintln!("warning: {w}");
        }
    }
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
        crate::slurm::shell::quote(&args.run_dir.display().to_string())
    );
    Ok(0)
}
