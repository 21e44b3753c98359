//! The run directory, and everything durable in it. This module is its one owner: every path and
//! lock name is spelled here once, and every file format is read and written here.
//!
//! ```text
//! RUN_DIR/
//!   plan.json                   the plan manifest (immutable once written; replaced only by --replan)
//!   units-<hash>.tsv            the plan's units
//!   shards-<hash>.idx           each shard's byte range in the units file and its digest
//!   journal/shard-NNNNN.jrnl    per-shard journals of calls and finished dialogues (the truth about what is done)
//!   state/shard-NNNNN.json      per-shard worker state (attempt, host, heartbeat, counts)
//!   locks/shard-NNNNN.lock      one worker per shard
//!   locks/submit.lock           one `submit`, `resume` or `cancel` at a time
//!   locks/merge.lock            one merge at a time
//!   locks/run.lock              a re-plan excludes every other command
//!   slurm/                      rendered scripts, array maps, render.json, submissions.jrnl
//!   logs/slurm/                 one log per Slurm array task and merge job
//!   out/                        the dataset (dialogues.parquet, turns.parquet, exports)
//!   archive/<plan-hash>/        plans, journals and states replaced by --replan
//!   judge/<name>/               judge stages: run directories of their own (plan.json, units,
//!                               inputs-<digest>/shard-NNNNN.jsonl, journal/, state/, locks/, ...)
//!   out/judgements.parquet      every stage's verdicts, by the judged dialogue's unit id
//! ```
//!
//! Rooms: [`atomic`] (files replaced whole: temporary file, fsync, rename), [`lock`] (advisory
//! locks), [`log`] (the append-only log format shared by shard journals and the submissions
//! journal), [`journal`] (shard journal records), [`state`] (shard state files), [`plans`] (the plan
//! store: create, load, re-plan, archive, carry-over).

pub mod atomic;
pub mod journal;
pub mod judge_units;
pub mod lock;
pub mod log;
pub mod plans;
pub mod state;

pub use atomic::{Pending, WRITE_HINT, sync_dir, write_atomic, write_atomic_with};
pub use lock::Lock;

use std::path::{Path, PathBuf};

pub const PLAN_FILE: &str = "plan.json";
const JOURNAL_DIR: &str = "journal";
const STATE_DIR: &str = "state";
const LOCK_DIR: &str = "locks";
const LOG_DIR: &str = "logs";
const SLURM_DIR: &str = "slurm";
const OUT_DIR: &str = "out";
const ARCHIVE_DIR: &str = "archive";
const JUDGE_DIR: &str = "judge";
const SUBMISSIONS_FILE: &str = "submissions.jrnl";
/// The journal of submissions before it became a checksummed log (read, never written).
const LEGACY_SUBMISSIONS_FILE: &str = "submissions.jsonl";

/// sbatch's `--output` pattern for array tasks, in [`RunDir::slurm_log_dir`].
pub const SLURM_TASK_LOG: &str = "%A_%a.out";
/// sbatch's `--output` pattern for merge jobs, in [`RunDir::slurm_log_dir`].
pub const SLURM_MERGE_LOG: &str = "merge-%j.out";

/// The file name of a shard's journal, state file and lock, without extension.
fn shard_stem(shard: u32) -> String {
    format!("shard-{shard:05}")
}

/// The file, in a judge stage's inputs folder, of what one shard's units judge.
pub fn shard_inputs_name(shard: u32) -> String {
    format!("{}.jsonl", shard_stem(shard))
}

/// The shard a journal file name (`shard-00042.jrnl`) belongs to.
pub fn shard_of_journal_name(name: &str) -> Option<u32> {
    let n = name.strip_prefix("shard-")?.strip_suffix(".jrnl")?;
    let shard: u32 = n.parse().ok()?;
    (name == format!("{}.jrnl", shard_stem(shard))).then_some(shard)
}

/// Paths inside one run directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> RunDir {
        RunDir { root: root.into() }
    }

    pub fn plan_path(&self) -> PathBuf {
        self.root.join(PLAN_FILE)
    }

    pub fn has_plan(&self) -> bool {
        self.plan_path().is_file()
    }

    pub fn units_path(&self, plan: &crate::plan::Plan) -> PathBuf {
        self.root.join(&plan.units_file)
    }

    /// The plan's shard index (version-2 plans on), beside its units file.
    pub fn shard_index_path(&self, plan: &crate::plan::Plan) -> Option<PathBuf> {
        plan.shard_index.as_ref().map(|name| self.root.join(name))
    }

    pub fn journal_dir(&self) -> PathBuf {
        self.root.join(JOURNAL_DIR)
    }

    pub fn journal_path(&self, shard: u32) -> PathBuf {
        self.journal_dir().join(format!("{}.jrnl", shard_stem(shard)))
    }

    /// Where a re-plan builds the new journals before swapping them in.
    pub(crate) fn journal_staging_dir(&self) -> PathBuf {
        self.root.join(format!("{JOURNAL_DIR}.new"))
    }

    pub fn state_dir(&self) -> PathBuf {
        self.root.join(STATE_DIR)
    }

    pub fn state_path(&self, shard: u32) -> PathBuf {
        self.state_dir().join(format!("{}.json", shard_stem(shard)))
    }

    pub fn lock_dir(&self) -> PathBuf {
        self.root.join(LOCK_DIR)
    }

    /// One worker per shard.
    pub fn shard_lock_path(&self, shard: u32) -> PathBuf {
        self.lock_dir().join(format!("{}.lock", shard_stem(shard)))
    }

    /// One `submit`, `resume` or `cancel` at a time.
    pub fn submit_lock_path(&self) -> PathBuf {
        self.lock_dir().join("submit.lock")
    }

    /// One merge at a time.
    pub fn merge_lock_path(&self) -> PathBuf {
        self.lock_dir().join("merge.lock")
    }

    /// Taken by a re-plan, which replaces the plan under every other command.
    pub fn run_lock_path(&self) -> PathBuf {
        self.lock_dir().join("run.lock")
    }

    pub fn logs_dir(&self) -> PathBuf {
        self.root.join(LOG_DIR)
    }

    /// One `%A_%a.out` per Slurm array task, `merge-%j.out` per merge job.
    pub fn slurm_log_dir(&self) -> PathBuf {
        self.logs_dir().join(SLURM_DIR)
    }

    /// The log of one Slurm array task (what [`SLURM_TASK_LOG`] expands to).
    pub fn slurm_task_log(&self, array_job_id: u64, task_id: u32) -> PathBuf {
        self.slurm_log_dir().join(format!("{array_job_id}_{task_id}.out"))
    }

    /// `slurm/round-RRR-array-K.sbatch`: the script of one array of a round.
    pub fn slurm_array_script(&self, round: u32, array: u32) -> PathBuf {
        self.slurm_dir().join(format!("round-{round:03}-array-{array}.sbatch"))
    }

    /// `slurm/round-RRR-array-K.json`: array index to shard, read by the worker.
    pub fn slurm_array_map(&self, round: u32, array: u32) -> PathBuf {
        self.slurm_dir().join(format!("round-{round:03}-array-{array}.json"))
    }

    /// `slurm/round-RRR-merge.sbatch`: the merge job of a round.
    pub fn slurm_merge_script(&self, round: u32) -> PathBuf {
        self.slurm_dir().join(format!("round-{round:03}-merge.sbatch"))
    }

    /// `slurm/render.json`: render options given on the command line, used by later commands.
    pub fn render_options_path(&self) -> PathBuf {
        self.slurm_dir().join("render.json")
    }

    /// Rendered scripts, array maps, render options and the submissions journal.
    pub fn slurm_dir(&self) -> PathBuf {
        self.root.join(SLURM_DIR)
    }

    pub fn submissions_path(&self) -> PathBuf {
        self.slurm_dir().join(SUBMISSIONS_FILE)
    }

    pub(crate) fn legacy_submissions_path(&self) -> PathBuf {
        self.slurm_dir().join(LEGACY_SUBMISSIONS_FILE)
    }

    /// The dataset: `dialogues.parquet`, `turns.parquet`, exports.
    pub fn out_dir(&self) -> PathBuf {
        self.root.join(OUT_DIR)
    }

    /// Where a run's judge stages live (`judge/<name>/`, each a run directory of its own).
    pub fn judge_dir(&self) -> PathBuf {
        self.root.join(JUDGE_DIR)
    }

    pub fn judge_stage_dir(&self, name: &str) -> PathBuf {
        self.judge_dir().join(name)
    }

    /// In a judge stage: what shard `shard`'s units judge (`inputs` is the plan's inputs folder).
    pub fn judge_inputs_path(&self, inputs: &str, shard: u32) -> PathBuf {
        self.root.join(inputs).join(shard_inputs_name(shard))
    }

    /// One merge of the run's judgements at a time (in the judged run).
    pub fn judgements_lock_path(&self) -> PathBuf {
        self.lock_dir().join("judgements.lock")
    }

    pub fn archive_dir(&self) -> PathBuf {
        self.root.join(ARCHIVE_DIR)
    }

    /// Where the files of a replaced plan go.
    pub fn archive_of(&self, plan_hash: &str) -> PathBuf {
        self.archive_dir().join(plan_hash)
    }

    /// `path` relative to the run directory where it is inside it (for messages and records).
    pub fn relative(&self, path: &Path) -> String {
        path.strip_prefix(&self.root).unwrap_or(path).display().to_string()
    }

    /// Read and check the plan manifest (see [`plans::load`]).
    pub fn load_plan(&self) -> crate::error::Result<crate::plan::Plan> {
        plans::load(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journal_names_round_trip() {
        let rd = RunDir::new("/r");
        let p = rd.journal_path(42);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(name, "shard-00042.jrnl");
        assert_eq!(shard_of_journal_name(name), Some(42));
        assert_eq!(shard_of_journal_name("shard-42.jrnl"), None);
        assert_eq!(shard_of_journal_name("shard-00042.json"), None);
        assert_eq!(shard_of_journal_name("other.jrnl"), None);
        assert_eq!(
            rd.shard_lock_path(42).file_name().unwrap().to_str().unwrap(),
            "shard-00042.lock"
        );
    }
}
