//! What rendering requires of an experiment, checked in one place: the name (it is part of job
//! names), `[slurm] extra_directives` (sbatch options that leave the ones roleplay tracks its jobs
//! by alone and fit in `#SBATCH` lines) and `[slurm] template` (a template file that is there,
//! compiles, and renders a script with the tracking directives that bash can parse).
//!
//! Loading an experiment checks its name and directives ([`crate::experiment::directives`]); the
//! commands that take an experiment file call [`check_template_of`], so `validate`, `plan` and `run`
//! refuse what rendering would refuse, naming the file and the key. Rendering calls [`recheck`] (the same
//! functions, on the plan's experiment, which an older roleplay or a hand edit may have written)
//! and checks every real script with the `check_script` the sample render uses. What depends on the
//! run (its directory, the binary, the render options, the keys in the environment) can only be
//! checked when a run's scripts are rendered.

use super::context;
use super::options::RenderOptions;
use super::rounds::array_spec;
use super::script::check_script;
use super::templates::{Templates, is_template_fault, template_error};
use super::variables::{self, JobVars, Place};
use crate::error::{Error, Result};
use crate::experiment::directives::{Refusal, check_extra_directives, check_name, sets_signal};
use crate::experiment::{Experiment, TemplateSource};
use crate::rundir;
use crate::slurm::records::{JobKind, Slot};
use std::collections::BTreeSet;
use std::path::Path;

/// What rendering requires of an experiment file's template, beyond what loading it checks: the
/// file compiles and renders, with sample values, a script that passes the checks every real
/// script gets. Called by the commands that take an experiment file (`validate`, `plan`, `run`),
/// so they refuse a template that `render` would.
pub fn check_template_of(loaded: &crate::experiment::Loaded) -> Result<()> {
    check_template(&loaded.experiment).map_err(|r| {
        let e = Error::config(format!("`{}`: `{}`: {}", loaded.shown, r.key, r.error.message));
        match r.error.hint {
            Some(hint) => e.with_hint(hint),
            None => e,
        }
    })
}

/// The checks of [`check_experiment`] that need no template file, on a plan's experiment.
pub(super) fn recheck(exp: &Experiment) -> Result<()> {
    check_name(&exp.name)
        .and_then(|()| check_extra_directives(&exp.slurm.extra_directives))
        .map_err(|r| {
            let hint = r.error.hint.unwrap_or_default();
            Error::config(format!("the planned experiment: `{}`: {}", r.key, r.error.message)).with_hint(format!(
                "{hint}; fix the experiment file, then plan again with `--replan`"
            ))
        })
}

/// The signal directive roleplay gives array jobs, unless `extra_directives` give one.
pub(super) fn signal(exp: &Experiment) -> Option<String> {
    (!sets_signal(&exp.slurm.extra_directives)).then(|| format!("B:USR2@{}", exp.slurm.signal_grace_secs))
}

/// A template file is read, compiled, and rendered for a sample array (placeholder paths and keys,
/// the default render options), and the script checked as rendering checks it. An error the sample
/// values may have caused (an undefined `vars.NAME`, say, given only with `--var`) is left to
/// rendering, which has the real ones.
fn check_template(exp: &Experiment) -> std::result::Result<(), Refusal> {
    const KEY: &str = "slurm.template";
    let refuse = |error: Error| Refusal { key: KEY, error };
    if matches!(exp.slurm.template, TemplateSource::Builtin(_)) {
        return Ok(());
    }
    let templates = Templates::load(&exp.slurm.template).map_err(refuse)?;
    let (place, slot, map_path) = sample();
    let pairs: BTreeSet<u32> = (0..exp.pairs.len() as u32).collect();
    let job = JobVars {
        kind: JobKind::Array,
        comment: context::comment(place.plan_hash, SAMPLE_KEY, 0, JobKind::Array, 0),
        slot: &Slot {
            job_name: context::job_name(&exp.name, SAMPLE_KEY, 0, JobKind::Array, 0),
            ..slot
        },
        array_spec: Some(array_spec(1, exp.slurm.array_throttle)),
        signal: signal(exp),
        log_name: rundir::SLURM_TASK_LOG,
        map_path: Some(Path::new(&map_path)),
        shards: &[0],
        pairs: &pairs,
        worker_args: &[],
    };
    let opts = RenderOptions::default();
    let vars = variables::variables(exp, &place, &templates.main, &job, &opts);
    match templates.try_render(vars) {
        Ok(script) => check_script(exp, &templates.main, &job, &script).map_err(refuse),
        Err(e) if is_template_fault(&e) => Err(refuse(template_error(&templates.main, &e))),
        Err(_) => Ok(()),
    }
}

/// The run key of the sample array.
const SAMPLE_KEY: &str = "00000000";

/// Where the sample array runs, its slot (without a job name) and its map's path.
fn sample() -> (Place<'static>, Slot, String) {
    let plan_hash = "00000000000000000000000000000000";
    let place = Place {
        plan_hash,
        run_dir: "/path/to/run".to_string(),
        exe: "/path/to/roleplay",
        log_dir: "/path/to/run/logs/slurm".to_string(),
        log_in_script: true,
    };
    let slot = Slot {
        plan_hash: plan_hash.to_string(),
        round: 0,
        kind: JobKind::Array,
        array: 0,
        job_name: String::new(),
    };
    (place, slot, "/path/to/run/slurm/round-000-array-0.json".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slurm::render::templates::tests::experiment_with;

    fn directives(lines: &[&str]) -> std::result::Result<(), Refusal> {
        check_extra_directives(&lines.iter().map(|l| l.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn extra_directives_may_not_take_over_tracking() {
        assert!(directives(&["--constraint=a100"]).is_ok());
        assert!(!sets_signal(&["--constraint=a100".into()]));
        assert!(directives(&["--signal=B:TERM@60"]).is_ok());
        assert!(sets_signal(&["--signal=B:TERM@60".into()]));
        let e = directives(&["--job-name=x"]).unwrap_err();
        assert_eq!(e.key, "slurm.extra_directives");
        assert!(e.error.message.contains("roleplay sets itself"), "{}", e.error.message);
        let e = directives(&["--comment=a b"]).unwrap_err();
        assert!(e.error.message.contains("--comment"), "{}", e.error.message);
        assert!(directives(&["--constraint=\"a b\""]).is_err());
        let e = directives(&["-J x"]).unwrap_err();
        assert!(
            e.error.message.contains("is not an sbatch option"),
            "{}",
            e.error.message
        );
    }

    #[test]
    fn names_that_cannot_be_part_of_a_job_name_are_refused() {
        assert!(check_name("paper-run_2.b").is_ok());
        for bad in ["a b", "x$(id)", "ü"] {
            assert_eq!(check_name(bad).unwrap_err().key, "name", "{bad:?}");
        }
    }

    #[test]
    fn a_plans_experiment_is_checked_again_before_rendering() {
        let mut exp = experiment_with(Path::new("/tmp"), "").unwrap();
        assert!(recheck(&exp).is_ok());
        exp.slurm.extra_directives = vec!["--array=0-5".into()];
        let e = recheck(&exp).unwrap_err();
        assert!(
            e.message
                .contains("`slurm.extra_directives`: `--array=0-5` sets `--array`"),
            "{}",
            e.message
        );
        assert!(e.hint.unwrap().contains("--replan"));
    }

    /// Loads an experiment whose template file holds `text`.
    fn with_template(text: &str) -> Result<Experiment> {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("mine.sbatch.j2"), text).unwrap();
        std::fs::write(dir.path().join("beside.j2"), "echo beside\n").unwrap();
        experiment_with(dir.path(), "template = \"mine.sbatch.j2\"\narray_throttle = 2")
    }

    #[test]
    fn template_files_are_checked_when_the_experiment_is_loaded() {
        let good = "#!/bin/bash\n{% include \"directives.j2\" %}\n{% include \"beside.j2\" %}\nexec {{ roleplay | sh }} worker {{ run_dir | sh }} --array-map {{ array_map | sh }}\n";
        with_template(good).unwrap();
        // What only the run's values or the render options can tell is left to rendering.
        with_template("#!/bin/bash\n{% include \"directives.j2\" %}\necho {{ vars.conda_env | sh }}\n").unwrap();
        for (text, key_fragment) in [
            (
                "#!/bin/bash\nexec true\n",
                "renders no `#SBATCH --job-name=rp-kinds-00000000-r0-a0` line",
            ),
            ("exec true\n", "without a `#!` line"),
            (
                "#!/bin/bash\n{% include \"directives.j2\" %}\nif then fi\n",
                "bash cannot parse",
            ),
            (
                "#!/bin/bash\n{% include \"directives.j2\" %}\n{% if %}\n",
                "syntax error",
            ),
            ("#!/bin/bash\n{% include \"missing.j2\" %}\n", "missing.j2"),
            (
                "#!/bin/bash\n{% include \"directives.j2\" %}\n{{ run_dir | shh }}\n",
                "unknown filter",
            ),
        ] {
            let e = with_template(text).unwrap_err();
            assert!(e.message.contains("`slurm.template`"), "{}", e.message);
            assert!(e.message.contains(key_fragment), "{text:?}: {}", e.message);
            assert!(e.hint.is_some(), "{text:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let e = experiment_with(dir.path(), "template = \"nowhere.sbatch.j2\"").unwrap_err();
        assert!(
            e.message.contains("`slurm.template`: cannot read the sbatch template"),
            "{}",
            e.message
        );
        assert!(e.message.contains("nowhere.sbatch.j2"), "{}", e.message);
    }
}
