//! What rendering requires of an experiment's `[slurm]` settings: `extra_directives` that leave
//! the options roleplay tracks its jobs by alone and fit in `#SBATCH` lines.

use super::templates::sbatch_safe;
use crate::error::{Error, Result};

/// sbatch options the templates set themselves; `extra_directives` may not repeat them.
const RESERVED: [&str; 14] = [
    "--array",
    "-a",
    "--job-name",
    "-J",
    "--output",
    "-o",
    "--error",
    "-e",
    "--comment",
    "--parsable",
    "--wrap",
    "--test-only",
    "--dependency",
    "--kill-on-invalid-dep",
];

pub(super) fn check_extra_directives(lines: &[String]) -> Result<bool> {
    let mut has_signal = false;
    for l in lines {
        let option = l.split_once('=').map_or(l.as_str(), |(o, _)| o);
        if RESERVED.contains(&option) {
            return Err(Error::config(format!(
                "`[slurm] extra_directives`: `{l}` sets `{option}`, which roleplay sets itself"
            ))
            .with_hint(
                "remove it: job names, arrays, logs and dependencies are part of how roleplay tracks its jobs",
            ));
        }
        if !sbatch_safe(l) {
            return Err(Error::config(format!(
                "`[slurm] extra_directives`: `{l}` cannot stand in an #SBATCH line"
            ))
            .with_hint("write it as one word without quotes or spaces, e.g. `--constraint=a100|h100`"));
        }
        has_signal |= option == "--signal";
    }
    Ok(has_signal)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_directives_may_not_take_over_tracking() {
        assert!(!check_extra_directives(&["--constraint=a100".into()]).unwrap());
        assert!(check_extra_directives(&["--signal=B:TERM@60".into()]).unwrap());
        let e = check_extra_directives(&["--job-name=x".into()]).unwrap_err();
        assert!(e.message.contains("roleplay sets itself"), "{}", e.message);
        let e = check_extra_directives(&["--comment=a b".into()]).unwrap_err();
        assert!(e.message.contains("--comment"), "{}", e.message);
        assert!(check_extra_directives(&["--constraint=\"a b\"".into()]).is_err());
    }
}
