//! `roleplay compare RUN_DIR --reference FILE [--json]`: the run's dialogues against human
//! dialogues (see `report::compare`). Tables on stdout by default.

use crate::cli::CompareArgs;
use crate::error::{Error, Result, exit};
use crate::quality::reference;
use crate::report::compare;
use crate::rundir::RunDir;

pub fn run(args: CompareArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    let plan = rd.load_plan()?;
    let reference = reference::read(&args.reference)?;
    let c = compare::build(&rd, &plan, &reference)?;
    for w in crate::merge::scan::warnings(&c.stats) {
        eprintln!("{w}");
    }
    if args.json {
        let json = serde_json::to_string_pretty(&c).map_err(|e| Error::runtime(e.to_string()))?;
        crate::outln!("{json}");
    } else {
        crate::outln!("{}", compare::text(&c).trim_end());
    }
    if c.generated_dialogues == 0 {
        eprintln!(
            "note: the run has no finished dialogue with a turn yet: only the reference side has figures \
             (run `roleplay run` or `roleplay status` first)"
        );
    } else if c.missing > 0 {
        eprintln!(
            "note: {} of {} planned dialogues are not finished yet: the figures cover the finished ones",
            c.missing, c.planned
        );
    }
    Ok(exit::OK)
}
