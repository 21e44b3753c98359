//! The run's submissions journal, `RUN_DIR/slurm/submissions.jrnl`: one record per sbatch call
//! and its answer, per `roleplay cancel`, and per task outcome learnt from the scheduler.
//!
//! It is an append-only log in the run directory's one log format (a version header, a checksum
//! per record, a torn last record cut off; see [`crate::rundir::log`]); every batch of records is
//! synced before the command goes on. An intent (`submitting`) is written before sbatch runs, so a
//! submit that crashed (or whose sbatch timed out) after the job was queued is found again by its
//! deterministic name instead of being submitted twice. Task outcomes are recorded because squeue
//! forgets finished jobs after MinJobAge and sacct may not exist: once seen, how an attempt ended is
//! never lost, which is what the attempt budget counts.

use super::{ArrayTask, JobRef};
use crate::error::Result;
use crate::rundir::RunDir;
use crate::rundir::log::{self, Format, Log};
use serde::{Deserialize, Serialize};
use std::collections::HashSet;

pub const FORMAT: Format = Format {
    name: "roleplay-submissions",
    version: 1,
    what: "submissions journal",
};

/// The submissions journal's header adds nothing to the format and version.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Meta {}

/// What a submitted job does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    /// An array of worker tasks, one shard per task.
    #[default]
    Array,
    /// `roleplay merge RUN_DIR --allow-partial` after the arrays (afterany).
    Merge,
}

/// Which (round, array) of which plan a record is about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    pub plan_hash: String,
    pub round: u32,
    #[serde(default)]
    pub kind: JobKind,
    /// The array's number within its round (0 for a merge job).
    pub array: u32,
    pub job_name: String,
}

/// About to run sbatch for this script.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Intent {
    #[serde(flatten)]
    pub slot: Slot,
    pub comment: String,
    /// Shard of each array index (empty for a merge job).
    pub shards: Vec<u32>,
    /// The script, relative to the run directory.
    pub script: String,
    pub script_blake3: String,
    /// sbatch options given on the command line (beside the script's own #SBATCH lines).
    pub args: Vec<String>,
    pub at: u64,
}

/// How a job id came to be known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// `sbatch --parsable` answered it.
    Sbatch,
    /// Found in the queue under the job's deterministic name after sbatch failed or a submit crashed.
    Queue,
}

/// The scheduler accepted the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accepted {
    #[serde(flatten)]
    pub slot: Slot,
    pub job_id: u64,
    #[serde(default)]
    pub cluster: Option<String>,
    pub shards: Vec<u32>,
    pub script_blake3: String,
    pub via: Via,
    /// Units done in the whole run when it was submitted (for the ETA).
    #[serde(default)]
    pub units_done: u64,
    pub at: u64,
}

/// sbatch failed and the job is not in the queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refused {
    #[serde(flatten)]
    pub slot: Slot,
    pub error: String,
    pub at: u64,
}

/// `roleplay cancel` asked the scheduler to cancel these jobs (array job ids or `A_i`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cancelled {
    pub jobs: Vec<JobRef>,
    pub at: u64,
}

/// How one attempt (an array task) ended, as learnt by `status` or `resume`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskOutcome {
    pub plan_hash: String,
    pub round: u32,
    pub array: u32,
    pub index: u32,
    pub shard: u32,
    /// `ARRAYJOB_INDEX`.
    pub job: JobRef,
    pub class: EndClass,
    pub reason: String,
    /// Counts against the shard's attempt budget (`worker.max_attempts`).
    pub counts: bool,
    pub at: u64,
}

/// How an attempt ended, as far as running it again is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndClass {
    /// Stopped without the work's fault (a signal, preemption, node failure, cancel): run it again.
    Interrupted,
    /// The attempt failed (worker error, exit code, OOM, timeout without checkpoint).
    Failed,
    /// Was running, stopped answering and left the queue, with no word on how it ended.
    Lost,
}

/// The jobs `roleplay cancel` named (array job ids and tasks), from [`Submissions::cancel_marks`].
#[derive(Debug, Clone, Default)]
pub struct CancelMarks(HashSet<JobRef>);

impl CancelMarks {
    /// Whether a cancel named this task or its whole array.
    pub fn cover(&self, task: ArrayTask) -> bool {
        self.0.contains(&JobRef::Job(task.array_job_id)) || self.0.contains(&JobRef::Task(task))
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Record {
    Submitting(Intent),
    Submitted(Accepted),
    SubmitFailed(Refused),
    Cancelled(Cancelled),
    Outcome(TaskOutcome),
}

/// The journal read back.
#[derive(Debug, Default, Clone)]
pub struct Submissions {
    pub records: Vec<Record>,
    /// Lines that could not be read (1-based), other than a torn last line.
    pub damaged_lines: Vec<usize>,
}

pub fn now() -> u64 {
    crate::rundir::state::now()
}

impl Submissions {
    /// Reads the journal (and the plain JSON lines of `submissions.jsonl` that versions before
    /// the checksummed log wrote, first); damaged records are listed and skipped.
    pub fn read(rd: &RunDir) -> Result<Submissions> {
        let mut out = match std::fs::read(rd.legacy_submissions_path()) {
            Ok(bytes) => Submissions::parse_legacy(&bytes),
            Err(_) => Submissions::default(),
        };
        if let Some(c) = log::read::<Meta, Record>(&rd.submissions_path(), &FORMAT)? {
            out.records.extend(c.records);
            out.damaged_lines.extend(c.info.damaged_lines);
        }
        Ok(out)
    }

    /// Reads plain JSON lines (the format before the checksummed log); never fails.
    fn parse_legacy(bytes: &[u8]) -> Submissions {
        let mut out = Submissions::default();
        let ends_clean = bytes.last().is_none_or(|&b| b == b'\n');
        let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
        let last = lines.len().saturating_sub(1);
        for (i, line) in lines.iter().enumerate() {
            if line.iter().all(u8::is_ascii_whitespace) {
                continue;
            }
            match serde_json::from_slice::<Record>(line) {
                Ok(r) => out.records.push(r),
                Err(_) if i == last && !ends_clean => {}
                Err(_) => out.damaged_lines.push(i + 1),
            }
        }
        out
    }

    /// Appends records (one write each, one fsync for the batch).
    pub fn append(rd: &RunDir, records: &[Record]) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let (log, _) =
            Log::open::<Meta, serde::de::IgnoredAny>(&rd.submissions_path(), &FORMAT, Meta {}, true, |_| Ok(()))
                .map_err(|e| {
                    e.with_hint(
                        "free disk space or fix permissions; the scheduler's queue still shows what was submitted",
                    )
                })?;
        for r in records {
            log.append(r)?;
        }
        log.sync()
    }

    /// Appends to the journal and to this in-memory copy.
    pub fn push(&mut self, rd: &RunDir, record: Record) -> Result<()> {
        Submissions::append(rd, std::slice::from_ref(&record))?;
        self.records.push(record);
        Ok(())
    }

    pub fn accepted(&self) -> impl Iterator<Item = &Accepted> {
        self.records.iter().filter_map(|r| match r {
            Record::Submitted(a) => Some(a),
            _ => None,
        })
    }

    /// Accepted jobs of one plan, in submission order.
    pub fn accepted_of<'a>(&'a self, plan_hash: &'a str) -> impl Iterator<Item = &'a Accepted> + 'a {
        self.accepted().filter(move |a| a.slot.plan_hash == plan_hash)
    }

    /// The next unused round number (over every plan: file names and job names stay unique).
    pub fn next_round(&self) -> u32 {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Submitting(i) => Some(i.slot.round),
                Record::Submitted(a) => Some(a.slot.round),
                Record::SubmitFailed(f) => Some(f.slot.round),
                _ => None,
            })
            .max()
            .map_or(0, |r| r + 1)
    }

    /// The first round of a plan (where `submit` put, or puts, the whole plan).
    pub fn first_round_of(&self, plan_hash: &str) -> Option<u32> {
        self.records
            .iter()
            .filter_map(|r| match r {
                Record::Submitting(i) if i.slot.plan_hash == plan_hash => Some(i.slot.round),
                Record::Submitted(a) if a.slot.plan_hash == plan_hash => Some(a.slot.round),
                Record::SubmitFailed(f) if f.slot.plan_hash == plan_hash => Some(f.slot.round),
                _ => None,
            })
            .min()
    }

    /// Intents that got no answer (a crash between sbatch and its record, or an sbatch whose answer
    /// was lost): the jobs may be queued and must be looked for by name.
    pub fn unresolved(&self) -> Vec<&Intent> {
        let mut open: Vec<&Intent> = Vec::new();
        for r in &self.records {
            match r {
                Record::Submitting(i) => {
                    open.retain(|o| o.slot != i.slot);
                    open.push(i);
                }
                Record::Submitted(Accepted { slot, .. }) | Record::SubmitFailed(Refused { slot, .. }) => {
                    open.retain(|o| &o.slot != slot);
                }
                _ => {}
            }
        }
        open
    }

    /// Whether `roleplay cancel` named this task or its whole array.
    pub fn was_cancelled(&self, array_job_id: u64, index: u32) -> bool {
        self.cancel_marks().cover(ArrayTask {
            array_job_id,
            task_id: index,
        })
    }

    /// Every job `roleplay cancel` named, to ask about many tasks.
    pub fn cancel_marks(&self) -> CancelMarks {
        CancelMarks(
            self.records
                .iter()
                .filter_map(|r| match r {
                    Record::Cancelled(c) => Some(c.jobs.iter().copied()),
                    _ => None,
                })
                .flatten()
                .collect(),
        )
    }

    /// The latest recorded outcome of each task, by its `ARRAYJOB_INDEX`.
    pub fn outcomes(&self) -> std::collections::HashMap<JobRef, &TaskOutcome> {
        let mut m = std::collections::HashMap::new();
        for r in &self.records {
            if let Record::Outcome(o) = r {
                m.insert(o.job, o);
            }
        }
        m
    }

    /// Every job name the run ever used (for `cancel`, which also looks them up in the queue).
    pub fn job_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .records
            .iter()
            .filter_map(|r| match r {
                Record::Submitting(i) => Some(i.slot.job_name.clone()),
                Record::Submitted(a) => Some(a.slot.job_name.clone()),
                Record::SubmitFailed(f) => Some(f.slot.job_name.clone()),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slot(round: u32, array: u32) -> Slot {
        Slot {
            plan_hash: "p".into(),
            round,
            kind: JobKind::Array,
            array,
            job_name: format!("rp-x-r{round}-a{array}"),
        }
    }

    fn intent(round: u32, array: u32) -> Record {
        Record::Submitting(Intent {
            slot: slot(round, array),
            comment: "c".into(),
            shards: vec![0, 1],
            script: "slurm/s".into(),
            script_blake3: "b".into(),
            args: vec![],
            at: 1,
        })
    }

    fn accepted(round: u32, array: u32, job_id: u64) -> Record {
        Record::Submitted(Accepted {
            slot: slot(round, array),
            job_id,
            cluster: None,
            shards: vec![0, 1],
            script_blake3: "b".into(),
            via: Via::Sbatch,
            units_done: 0,
            at: 2,
        })
    }

    #[test]
    fn round_trip_torn_tail_and_damaged_records() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path());
        let mut s = Submissions::read(&rd).unwrap();
        assert!(s.records.is_empty());
        s.push(&rd, intent(0, 0)).unwrap();
        s.push(&rd, accepted(0, 0, 17)).unwrap();
        Submissions::append(&rd, &[intent(0, 1), accepted(0, 1, 18)]).unwrap();
        let read = Submissions::read(&rd).unwrap();
        assert_eq!(read.records.len(), 4);
        assert!(read.unresolved().is_empty());
        assert_eq!(read.next_round(), 1);
        assert_eq!(read.first_round_of("p"), Some(0));
        assert_eq!(
            read.accepted_of("p").map(|a| a.job_id).collect::<Vec<_>>(),
            vec![17, 18]
        );
        // Damage the last record but one, and tear a record at the end (a crash mid-write).
        let path = rd.submissions_path();
        let mut bytes = std::fs::read(&path).unwrap();
        let fourth = bytes.iter().enumerate().filter(|(_, b)| **b == b'\n').nth(3).unwrap().0 + 12;
        bytes[fourth] ^= 0x01;
        bytes.extend_from_slice(b"0123abcd {\"event\":\"submitted\",\"plan_ha");
        std::fs::write(&path, &bytes).unwrap();
        let back = Submissions::read(&rd).unwrap();
        assert_eq!(back.damaged_lines, vec![5]);
        assert_eq!(back.records.len(), 3);
        assert_eq!(back.unresolved().len(), 1, "the intent of array 1 has no answer");
        assert_eq!(back.unresolved()[0].slot.array, 1);
        // Appending cuts the torn tail first; the damaged record stays skipped.
        s.push(&rd, accepted(0, 1, 18)).unwrap();
        let again = Submissions::read(&rd).unwrap();
        assert_eq!(again.records.len(), 4);
        assert!(again.unresolved().is_empty());
    }

    #[test]
    fn the_plain_json_lines_of_earlier_versions_are_read_first() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path());
        std::fs::create_dir_all(rd.slurm_dir()).unwrap();
        let mut legacy = serde_json::to_vec(&intent(0, 0)).unwrap();
        legacy.extend_from_slice(b"\nnot json\n");
        legacy.extend_from_slice(&serde_json::to_vec(&accepted(0, 0, 17)).unwrap());
        legacy.extend_from_slice(b"\n{\"event\":\"submi");
        std::fs::write(rd.legacy_submissions_path(), legacy).unwrap();
        Submissions::append(&rd, &[intent(1, 0)]).unwrap();
        let s = Submissions::read(&rd).unwrap();
        assert_eq!(s.damaged_lines, vec![2]);
        assert_eq!(s.records.len(), 3);
        assert_eq!(s.next_round(), 2);
        assert_eq!(s.unresolved().len(), 1);
    }

    #[test]
    fn cancellations_name_arrays_and_tasks() {
        let s = Submissions {
            records: vec![Record::Cancelled(Cancelled {
                jobs: vec!["17".parse().unwrap(), "20_3".parse().unwrap()],
                at: 1,
            })],
            damaged_lines: vec![],
        };
        assert!(s.was_cancelled(17, 0));
        assert!(s.was_cancelled(17, 9));
        assert!(s.was_cancelled(20, 3));
        assert!(!s.was_cancelled(20, 2));
        assert!(!s.was_cancelled(1, 0));
    }
}
