//! One job script: rendering it for a run ([`render_one`]) and what every rendered script must hold
//! and must not: a `#!` line, the directives roleplay tracks its jobs by, no key's value, shell that
//! `bash -n` parses. Also the run directory and binary paths a script can carry.

use super::context::RunCtx;
use super::options::RenderOptions;
use super::rounds::compact_ranges;
use super::templates::Templates;
use super::variables::{self, JobVars, Place};
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::experiment::directives::sbatch_safe;
use crate::slurm::records::Slot;
use std::path::{Path, PathBuf};

/// One rendered job script.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub slot: Slot,
    pub comment: String,
    /// Shard of each array index (empty for a merge job).
    pub shards: Vec<u32>,
    /// `--array=` value (none for a merge job).
    pub array_spec: Option<String>,
    pub script_path: PathBuf,
    pub map_path: Option<PathBuf>,
    pub script: String,
    pub blake3: String,
    /// sbatch options to give on the command line (log paths that cannot go into `#SBATCH` lines).
    pub sbatch_args: Vec<String>,
}

impl Rendered {
    /// The array map the worker reads (`{"shards": [...]}` plus what identifies it).
    pub fn map_json(&self) -> Vec<u8> {
        let v = serde_json::json!({
            "format": "roleplay-array-map",
            "version": 1,
            "plan_hash": self.slot.plan_hash,
            "round": self.slot.round,
            "array": self.slot.array,
            "job_name": self.slot.job_name,
            "shards": self.shards,
        });
        let mut bytes = serde_json::to_vec_pretty(&v).expect("serialisable");
        bytes.push(b'\n');
        bytes
    }

    /// `shards 0-5, 9` for messages.
    pub fn shard_list(&self) -> String {
        compact_ranges(&self.shards)
    }
}

/// Renders `job` of the run from `templates`, and checks the script.
pub(super) fn render_one(
    ctx: &RunCtx,
    templates: &Templates,
    job: &JobVars<'_>,
    opts: &RenderOptions,
    script_path: PathBuf,
) -> Result<Rendered> {
    let exp = &ctx.plan.experiment;
    let root = &ctx.rd.root;
    let log_in_script = check_run_dir(root)?;
    let exe = check_exe(&ctx.exe)?;
    let place = Place {
        plan_hash: &ctx.plan.plan_hash,
        run_dir: root.display().to_string(),
        exe,
        log_dir: ctx.rd.slurm_log_dir().display().to_string(),
        log_in_script,
    };
    let log_pattern = place.log_pattern(job.log_name);
    let sbatch_args = if log_in_script {
        Vec::new()
    } else {
        vec![format!("--output={log_pattern}"), format!("--error={log_pattern}")]
    };
    let script = templates.render(variables::variables(exp, &place, &templates.main, job, opts))?;
    check_script(exp, &templates.main, job, &script)?;
    let blake3 = blake3::hash(script.as_bytes()).to_hex().to_string();
    Ok(Rendered {
        slot: job.slot.clone(),
        comment: job.comment.clone(),
        shards: job.shards.to_vec(),
        array_spec: job.array_spec.clone(),
        script_path,
        map_path: job.map_path.map(Path::to_path_buf),
        script,
        blake3,
        sbatch_args,
    })
}

/// Checks the run directory's path: refused where Slurm would misread it; whether its log path can
/// stand in `#SBATCH` lines.
fn check_run_dir(root: &Path) -> Result<bool> {
    let Some(s) = root.to_str() else {
        return Err(
            Error::config(format!("the run directory `{}` is not valid UTF-8", root.display()))
                .with_hint("move the run to a path of plain characters"),
        );
    };
    if let Some(c) = s.chars().find(|c| c.is_control() || *c == '%' || *c == '\\') {
        return Err(Error::config(format!(
            "the run directory `{}` holds {:?}, which Slurm reads in log file names as a pattern or escape",
            root.display(),
            c
        ))
        .with_hint("move the run to a path without `%`, `\\` or control characters (plan it again with `--run-dir`)"));
    }
    Ok(sbatch_safe(s))
}

/// The roleplay binary's path, as scripts can run it.
fn check_exe(exe: &Path) -> Result<&str> {
    let Some(s) = exe.to_str() else {
        return Err(Error::config(format!(
            "the roleplay binary `{}` is not at a UTF-8 path",
            exe.display()
        )));
    };
    if s.ends_with(" (deleted)") || s.chars().any(char::is_control) {
        return Err(
            Error::config(format!("the roleplay binary `{s}` was replaced while it ran"))
                .with_hint("run the command again with the new binary"),
        );
    }
    Ok(s)
}

/// What every rendered script must hold, and must not.
pub(super) fn check_script(exp: &Experiment, template: &str, job: &JobVars<'_>, script: &str) -> Result<()> {
    let has_line = |want: &str| script.lines().any(|l| l.trim_end() == want);
    let mut required = vec![format!("#SBATCH --job-name={}", job.slot.job_name)];
    if let Some(spec) = &job.array_spec {
        required.push(format!("#SBATCH --array={spec}"));
    }
    if !script.starts_with("#!") {
        return Err(Error::config(format!(
            "the sbatch template `{template}` renders a script without a `#!` line"
        ))
        .with_hint("start the template with `#!/bin/bash`"));
    }
    for want in &required {
        if !has_line(want) {
            return Err(
                Error::config(format!("the sbatch template `{template}` renders no `{want}` line"))
                    .with_hint("include the directives roleplay tracks its jobs by: `{% include \"directives.j2\" %}`"),
            );
        }
    }
    // No key, ever: only the names of the variables that hold them.
    for m in &exp.models {
        if let Some(var) = &m.transport.api_key_env
            && let Ok(secret) = std::env::var(var)
            && secret.len() >= 8
            && script.contains(&secret)
        {
            return Err(Error::config(format!(
                "the sbatch template `{template}` would write the value of `{var}` into a script"
            ))
            .with_hint("scripts may name the variable (`$VAR`), never hold its value: fix the template"));
        }
    }
    check_bash_syntax(template, script)
}

/// `bash -n` on the script when bash is there: a template that renders broken shell is caught here,
/// not in a job log hours later.
fn check_bash_syntax(template: &str, script: &str) -> Result<()> {
    use std::io::Write;
    use std::process::{Command, Stdio};
    let child = Command::new("bash")
        .arg("-n")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(_) => return Ok(()),
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child
        .wait_with_output()
        .map_err(|e| Error::runtime(format!("cannot run `bash -n`: {e}")))?;
    if out.status.success() {
        return Ok(());
    }
    Err(Error::config(format!(
        "the sbatch template `{template}` renders a script bash cannot parse:\n{}",
        String::from_utf8_lossy(&out.stderr).trim()
    ))
    .with_hint("fix the template; values must go through the `sh` filter"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_dirs_slurm_would_misread_are_refused() {
        assert!(check_run_dir(Path::new("/runs/plain-dir_1.x")).unwrap());
        assert!(!check_run_dir(Path::new("/runs/with space/$(x)")).unwrap());
        for bad in ["/runs/100%", "/runs/a\\b", "/runs/a\nb"] {
            let e = check_run_dir(Path::new(bad)).unwrap_err();
            assert!(e.message.contains("Slurm reads"), "{}", e.message);
        }
    }
}
