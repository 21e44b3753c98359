//! Writing a round into `RUN_DIR/slurm/`: scripts and array maps, atomically, never changing a map
//! that the tasks of a submitted array may be reading.

use super::context::RunCtx;
use super::script::Rendered;
use crate::error::{Error, Result};
use crate::rundir;
use crate::slurm::records::{self, Submissions};

/// Writes scripts and maps. A map that running tasks may read (its array was submitted) is never
/// changed: rendering it differently is refused.
pub fn write(ctx: &RunCtx, rendered: &[Rendered], subs: &Submissions) -> Result<()> {
    fs_err::create_dir_all(ctx.rd.slurm_dir())?;
    fs_err::create_dir_all(ctx.rd.slurm_log_dir())?;
    for r in rendered {
        if let Some(map) = &r.map_path {
            let bytes = r.map_json();
            let submitted = subs.records.iter().any(|rec| match rec {
                records::Record::Submitting(i) => i.slot == r.slot,
                records::Record::Submitted(a) => a.slot == r.slot,
                _ => false,
            });
            if submitted && std::fs::read(map).is_ok_and(|old| old != bytes) {
                return Err(Error::config(format!(
                    "`{}` belongs to a submitted array and would change (other array limits?)",
                    map.display()
                ))
                .with_hint("jobs read it while they run: keep the limits of the first submission, or use `roleplay resume`, which renders a new round"));
            }
            rundir::write_atomic(map, &bytes)?;
        }
        rundir::write_atomic(&r.script_path, r.script.as_bytes())?;
    }
    Ok(())
}
