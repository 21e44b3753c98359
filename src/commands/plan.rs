//! `roleplay plan FILE`: expand an experiment and write the plan into its run directory.

use crate::cli::PlanArgs;
use crate::error::Result;
use crate::rundir::plans::{self, Status};

pub fn run(args: PlanArgs) -> Result<i32> {
    let loaded = super::load_experiment(&args.file)?;
    let p = plans::plan_experiment(loaded, args.run_dir.as_deref(), args.replan, args.dry_run)?;
    let summary = p.summary();
    if args.json {
        crate::outln!("{}", serde_json::to_string_pretty(&summary).expect("serialisable"));
    } else {
        crate::outln!("{summary}");
        if p.status != Status::DryRun {
            crate::outln!("run directory: {}", summary.run_dir);
        }
    }
    Ok(0)
}
