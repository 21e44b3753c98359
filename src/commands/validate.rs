//! `roleplay validate FILE`: load and check an experiment; write nothing.

use crate::cli::ValidateArgs;
use crate::error::Result;
use crate::plan;

pub fn run(args: ValidateArgs) -> Result<i32> {
    let loaded = super::load_experiment(&args.file)?;
    let e = &loaded.experiment;
    // Expanding catches what only the grid shows (pairs whose models behave identically).
    plan::expand(e).map_err(|x| x.for_file(&args.file))?;
    crate::outln!(
        "ok: `{}`: {} personas x {} goals x {} pairs x {} seeds = {} dialogues",
        args.file.display(),
        e.personas.len(),
        e.goals.len(),
        e.pairs.len(),
        e.dialogue.seeds.len(),
        plan::grid_size(e)
    );
    Ok(0)
}
