//! A planned run opened for the cluster ([`RunCtx`]): its canonical root and plan, the run key that
//! makes its job names unique, and the names, comments and paths of its job scripts and maps.

use crate::error::{Error, Result};
use crate::plan::Plan;
use crate::rundir::RunDir;
use crate::slurm::records::JobKind;
use std::path::{Path, PathBuf};

/// A planned run opened for the cluster: its canonical path, plan, and the key that makes its job
/// names unique (two run directories of one experiment share the plan hash, never the key).
#[derive(Debug, Clone)]
pub struct RunCtx {
    pub rd: RunDir,
    pub plan: Plan,
    pub run_key: String,
    /// The roleplay binary the scripts run (absolute).
    pub exe: PathBuf,
}

impl RunCtx {
    pub fn open(run_dir: &Path) -> Result<RunCtx> {
        let plan = RunDir::new(run_dir).load_plan()?;
        let root = fs_err::canonicalize(run_dir)?;
        let rd = RunDir::new(root);
        let exe = std::env::current_exe()
            .map_err(|e| Error::runtime(format!("cannot find the path of the running roleplay binary: {e}")))?;
        let run_key = run_key(&plan.plan_hash, &rd.root);
        Ok(RunCtx { rd, plan, run_key, exe })
    }

    /// The same run with scripts that run another binary (tests).
    pub fn with_exe(mut self, exe: impl Into<PathBuf>) -> RunCtx {
        self.exe = exe.into();
        self
    }

    pub fn root_display(&self) -> String {
        self.rd.root.display().to_string()
    }

    /// `rp-<experiment>-<run key>-r<round>-a<array>` (or `-merge`): deterministic, so a submission
    /// whose answer was lost is found in the queue by name.
    pub fn job_name(&self, round: u32, kind: JobKind, array: u32) -> String {
        job_name(&self.plan.experiment.name, &self.run_key, round, kind, array)
    }

    /// `roleplay:<plan hash>:<run key>:r<round>:a<array>` (or `:merge`).
    pub fn comment(&self, round: u32, kind: JobKind, array: u32) -> String {
        comment(&self.plan.plan_hash, &self.run_key, round, kind, array)
    }

    /// `RUN_DIR/slurm/round-RRR-array-K.sbatch` (or `round-RRR-merge.sbatch`).
    pub fn script_path(&self, round: u32, kind: JobKind, array: u32) -> PathBuf {
        match kind {
            JobKind::Array => self.rd.slurm_array_script(round, array),
            JobKind::Merge => self.rd.slurm_merge_script(round),
        }
    }

    /// `RUN_DIR/slurm/round-RRR-array-K.json`: array index to shard, read by the worker.
    pub fn map_path(&self, round: u32, array: u32) -> PathBuf {
        self.rd.slurm_array_map(round, array)
    }

    /// `path` relative to the run directory, for records and messages.
    pub fn relative(&self, path: &Path) -> String {
        self.rd.relative(path)
    }
}

/// A job's name from the experiment's name (its first 40 characters) and the run key.
pub(super) fn job_name(experiment: &str, run_key: &str, round: u32, kind: JobKind, array: u32) -> String {
    let name: String = experiment.chars().take(40).collect();
    match kind {
        JobKind::Array => format!("rp-{name}-{run_key}-r{round}-a{array}"),
        JobKind::Merge => format!("rp-{name}-{run_key}-r{round}-merge"),
    }
}

/// A job's comment, which tells roleplay's jobs from others of the same name.
pub(super) fn comment(plan_hash: &str, run_key: &str, round: u32, kind: JobKind, array: u32) -> String {
    let what = match kind {
        JobKind::Array => format!("a{array}"),
        JobKind::Merge => "merge".to_string(),
    };
    format!("roleplay:{plan_hash}:{run_key}:r{round}:{what}")
}

/// 8 hex digits of blake3 over the plan hash and the run directory's canonical path.
pub fn run_key(plan_hash: &str, root: &Path) -> String {
    let mut h = blake3::Hasher::new();
    h.update(plan_hash.as_bytes());
    h.update(&[0]);
    h.update(root.as_os_str().as_encoded_bytes());
    h.finalize().to_hex()[..8].to_string()
}
