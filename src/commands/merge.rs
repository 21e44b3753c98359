//! `roleplay merge RUN_DIR [--allow-partial]`: the run's journals into `out/dialogues.parquet` and
//! `out/turns.parquet` (see `merge`), with the missing and failed units listed on stderr.

use crate::cli::MergeArgs;
use crate::error::Result;
use crate::merge;
use crate::rundir::RunDir;

pub fn run(args: MergeArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    let summary = merge::merge_run(&rd, args.allow_partial)?;
    crate::ui::print_merge(&summary);
    Ok(summary.exit_code())
}
