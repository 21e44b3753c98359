//! `roleplay merge RUN_DIR [--allow-partial]`: the run's journals into `out/dialogues.parquet` and
//! `out/turns.parquet` (see `merge`), with the missing and failed units listed on stderr.

use crate::cli::MergeArgs;
use crate::error::Result;
use crate::merge::{self, MergeSummary};
use crate::store::RunDir;

pub fn run(args: MergeArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    let summary = merge::merge_run(&rd, args.allow_partial)?;
    print_summary(&summary);
    Ok(summary.exit_code())
}

/// The merge's outcome on stderr (warnings, counts, missing and failed units) and the two paths on
/// stdout. Also what `roleplay run` prints after merging.
pub fn print_summary(s: &MergeSummary) {
    for w in merge::scan::warnings(&s.stats) {
        eprintln!("{w}");
    }
    let st = &s.stats;
    if s.up_to_date {
        eprintln!("merge is up to date: no journal changed since the last merge");
    }
    eprintln!(
        "{} of {} planned dialogues merged ({} turns, {} failed, {} missing){}",
        st.finished,
        st.planned,
        s.turns,
        st.failed.count,
        st.missing.count,
        if s.up_to_date {
            String::new()
        } else {
            format!(" in {:.1}s", s.seconds)
        }
    );
    if !st.failed.is_empty() {
        eprintln!("failed units (backend errors): {}", st.failed.describe());
    }
    if !st.missing.is_empty() {
        eprintln!("missing units (no finished record): {}", st.missing.describe());
    }
    if !s.complete() {
        if s.allow_partial {
            eprintln!("the files hold the finished dialogues only");
        } else {
            eprintln!(
                "hint: finish the run (`roleplay run RUN_DIR`, with `--retry-failed` for failed units), or pass `--allow-partial` to accept a partial dataset"
            );
        }
    }
    crate::outln!("{}", s.dialogues_path.display());
    crate::outln!("{}", s.turns_path.display());
}
