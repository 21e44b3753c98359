//! What an experiment's `[slurm]` settings and name must be for sbatch: the name is part of every
//! job name, each `extra_directives` entry one `--option=value` that leaves the options roleplay
//! tracks its jobs by alone and fits in an `#SBATCH` line. Checked when the experiment is loaded
//! (so `validate`, `plan` and `run` refuse what rendering would) and again by rendering, on the
//! plan's experiment.

use crate::error::Error;

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

/// What sbatch cannot use: the experiment's key (`slurm.extra_directives`) and the error, whose
/// message does not name the key (the caller does, with the file or the plan).
#[derive(Debug)]
pub struct Refusal {
    pub key: &'static str,
    pub error: Error,
}

impl Refusal {
    pub(crate) fn new(key: &'static str, message: String, hint: &str) -> Refusal {
        Refusal {
            key,
            error: Error::config(message).with_hint(hint),
        }
    }
}

/// Whether a value may stand in an `#SBATCH` line: printable, no whitespace (it would split the
/// option), no quotes or backslashes (Slurm's own quoting), no `#`.
pub fn sbatch_safe(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '\'' | '"' | '\\' | '#' | '`'))
}

/// The experiment's name becomes part of every job name.
pub fn check_name(name: &str) -> std::result::Result<(), Refusal> {
    if name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Ok(());
    }
    Err(Refusal::new(
        "name",
        format!("the experiment name `{name}` cannot be part of a job name"),
        "name experiments with letters, digits and `-_.` only",
    ))
}

/// Each entry one `--option=value` that roleplay does not set itself and that fits in an `#SBATCH`
/// line.
pub fn check_extra_directives(lines: &[String]) -> std::result::Result<(), Refusal> {
    const KEY: &str = "slurm.extra_directives";
    for l in lines {
        if !l.starts_with("--") || l.contains('\n') {
            return Err(Refusal::new(
                KEY,
                format!("`{l}` is not an sbatch option"),
                "write each as `--option=value`, one per entry, e.g. `--constraint=a100`",
            ));
        }
        let option = option_of(l);
        if RESERVED.contains(&option) {
            return Err(Refusal::new(
                KEY,
                format!("`{l}` sets `{option}`, which roleplay sets itself"),
                "remove it: job names, arrays, logs and dependencies are part of how roleplay tracks its jobs",
            ));
        }
        if !sbatch_safe(l) {
            return Err(Refusal::new(
                KEY,
                format!("`{l}` cannot stand in an #SBATCH line"),
                "write it as one word without quotes or spaces, e.g. `--constraint=a100|h100`",
            ));
        }
    }
    Ok(())
}

/// `--signal` of `--signal=B:TERM@60`.
pub fn option_of(line: &str) -> &str {
    line.split_once('=').map_or(line, |(o, _)| o)
}

/// Whether `extra_directives` give the warning signal themselves (then roleplay gives none).
pub fn sets_signal(lines: &[String]) -> bool {
    lines.iter().any(|l| option_of(l) == "--signal")
}
