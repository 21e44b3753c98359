//! `roleplay merge RUN_DIR [--allow-partial] [--no-indicators]`: the run's journals into `out/dialogues.parquet` and
//! `out/turns.parquet` (see `merge`), with the missing and failed units listed on stderr.

use crate::cli::MergeArgs;
use crate::error::Result;
use crate::merge;
use crate::rundir::RunDir;

pub fn run(args: MergeArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    // A judge stage (what its Slurm merge job names): the run's judgements.
    if rd.load_plan()?.judge.is_some() {
        let parent = merge::judgements::parent_of_stage(&rd)?;
        let summary = merge::judgements::merge_judgements(&parent)?;
        crate::ui::print_judgements(&summary);
        return Ok(if summary.complete() || args.allow_partial {
            crate::error::exit::OK
        } else {
            crate::error::exit::FAILURES
        });
    }
    let summary = merge::merge_with(
        &rd,
        merge::MergeOptions {
            allow_partial: args.allow_partial,
            indicators: !args.no_indicators,
        },
    )?;
    crate::ui::print_merge(&summary);
    Ok(summary.exit_code())
}
