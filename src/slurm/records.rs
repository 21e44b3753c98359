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
    /// Found by the job's deterministic name in the accounting (`sacct --name`) after sbatch failed
    /// or a submit crashed, once it had left the queue already.
    Accounting,
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
///
/// Written with the cause's class, reason and budget count beside the typed cause (so that readers
/// of the plain fields keep working); records of versions before the cause was typed hold only
/// those three and are read as [`EndCause::Legacy`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "OutcomeFields", into = "OutcomeFields")]
pub struct TaskOutcome {
    pub plan_hash: String,
    pub round: u32,
    pub array: u32,
    pub index: u32,
    pub shard: u32,
    /// `ARRAYJOB_INDEX`.
    pub job: JobRef,
    pub cause: EndCause,
    pub at: u64,
}

/// A [`TaskOutcome`] as the journal holds it.
#[derive(Serialize, Deserialize)]
struct OutcomeFields {
    plan_hash: String,
    round: u32,
    array: u32,
    index: u32,
    shard: u32,
    job: JobRef,
    class: EndClass,
    reason: String,
    counts: bool,
    /// Kept as plain JSON until read: a cause this version does not know falls back to the fields
    /// above instead of making the record unreadable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cause: Option<serde_json::Value>,
    at: u64,
}

impl From<OutcomeFields> for TaskOutcome {
    fn from(f: OutcomeFields) -> TaskOutcome {
        let cause = f
            .cause
            .and_then(|c| serde_json::from_value::<EndCause>(c).ok())
            .unwrap_or(EndCause::Legacy {
                class: f.class,
                reason: f.reason,
                counts: f.counts,
            });
        TaskOutcome {
            plan_hash: f.plan_hash,
            round: f.round,
            array: f.array,
            index: f.index,
            shard: f.shard,
            job: f.job,
            cause,
            at: f.at,
        }
    }
}

impl From<TaskOutcome> for OutcomeFields {
    fn from(o: TaskOutcome) -> OutcomeFields {
        let typed = !matches!(o.cause, EndCause::Legacy { .. });
        OutcomeFields {
            plan_hash: o.plan_hash,
            round: o.round,
            array: o.array,
            index: o.index,
            shard: o.shard,
            job: o.job,
            class: o.cause.class(),
            reason: o.cause.reason(),
            counts: o.cause.counts(),
            cause: typed.then(|| serde_json::to_value(&o.cause).unwrap_or_default()),
            at: o.at,
        }
    }
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

/// Why an attempt (an array task) ended: the one type of an outcome, learnt now from the scheduler
/// and the worker's records or read back from the submissions journal. Its [`class`](Self::class),
/// whether it [`counts`](Self::counts) against the attempt budget and the [`reason`](Self::reason)
/// people read are derived from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum EndCause {
    /// PREEMPTED.
    Preempted,
    /// NODE_FAIL.
    NodeFail,
    /// BOOT_FAIL.
    BootFail,
    /// CANCELLED (or REVOKED) in the scheduler, by a user or an administrator.
    Cancelled,
    /// Gone from the queue after `roleplay cancel` named it, with no other word on how it ended.
    CancelledByRoleplay,
    /// Cancelled (or gone from the queue) before it ever started: no log, no state file of its
    /// worker, and where the scheduler tells, CANCELLED without having run. Not the work's fault.
    CancelledBeforeStart,
    /// An earlier run of a task that was requeued (`scontrol requeue`; sacct's REQUEUED): the task
    /// runs again in place.
    Requeued,
    /// An earlier run of a requeued task that had COMPLETED (its worker found its work done).
    Completed,
    /// TIMEOUT (or DEADLINE, `deadline`) after the worker checkpointed on the warning signal.
    TimeoutAfterCheckpoint { deadline: bool },
    /// TIMEOUT (or DEADLINE, `deadline`) without a checkpoint.
    Timeout { deadline: bool },
    /// OUT_OF_MEMORY (the job's or one of its steps').
    OutOfMemory,
    /// The job COMPLETED, yet the shard's journal is incomplete.
    CompletedButIncomplete,
    /// The worker stopped on a signal after checkpointing: exit 75, or its state file says so.
    Checkpointed,
    /// The worker stopped at its shard's share of the budget (its state file says so; `cap` the
    /// `[budget]` key reached): not resubmitted until the budget is raised (a re-plan).
    BudgetReached { cap: Option<String> },
    /// The batch script exited with this code, no signal.
    Exit { code: u32 },
    /// A signal ended the batch script (Slurm's `rc:signal`).
    Signal { code: u32, signal: u32 },
    /// The worker's own error (its state file), with the job's exit code when the scheduler told it.
    WorkerError { exit: Option<u32>, message: Option<String> },
    /// FAILED with no exit code (squeue tells none) and no word from the worker; squeue's reason.
    FailedNoExitCode { reason: Option<String> },
    /// The worker's state says running but its heartbeat is `age_secs` old; `queue_read`: its job
    /// was seen gone from the queue (else the queue was not read and this is a guess).
    NoHeartbeat { age_secs: u64, queue_read: bool },
    /// The worker's state says finished, yet the journal is incomplete.
    FinishedButIncomplete,
    /// Gone from the queue without a record from its worker; `latest`: the shard's latest task.
    LeftQueueWithoutRecord { latest: bool },
    /// An outcome recorded by a version before causes were typed: its fields as written.
    Legacy {
        class: EndClass,
        reason: String,
        counts: bool,
    },
}

impl EndCause {
    /// Interrupted, failed or lost.
    pub fn class(&self) -> EndClass {
        match self {
            EndCause::Preempted
            | EndCause::NodeFail
            | EndCause::BootFail
            | EndCause::Cancelled
            | EndCause::CancelledByRoleplay
            | EndCause::CancelledBeforeStart
            | EndCause::Requeued
            | EndCause::Completed
            | EndCause::TimeoutAfterCheckpoint { .. }
            | EndCause::Checkpointed
            | EndCause::BudgetReached { .. } => EndClass::Interrupted,
            EndCause::Timeout { .. }
            | EndCause::OutOfMemory
            | EndCause::CompletedButIncomplete
            | EndCause::Exit { .. }
            | EndCause::Signal { .. }
            | EndCause::WorkerError { .. }
            | EndCause::FailedNoExitCode { .. } => EndClass::Failed,
            EndCause::NoHeartbeat { .. }
            | EndCause::FinishedButIncomplete
            | EndCause::LeftQueueWithoutRecord { .. } => EndClass::Lost,
            EndCause::Legacy { class, .. } => *class,
        }
    }

    /// Counts against the shard's attempt budget (`worker.max_attempts`): failed and lost attempts
    /// do, interruptions do not.
    pub fn counts(&self) -> bool {
        match self {
            EndCause::Legacy { counts, .. } => *counts,
            cause => cause.class() != EndClass::Interrupted,
        }
    }

    /// The reason `status` shows.
    pub fn reason(&self) -> String {
        self.to_string()
    }

    /// Backed by the scheduler or the worker's own record, so worth recording; not a guess.
    pub fn is_definitive(&self) -> bool {
        !matches!(self, EndCause::NoHeartbeat { queue_read: false, .. })
    }

    /// The same outcome: equal causes, or, where one was recorded as text only, the same class,
    /// budget count and reason.
    pub fn is_same(&self, other: &EndCause) -> bool {
        match (self, other) {
            (EndCause::Legacy { .. }, _) | (_, EndCause::Legacy { .. }) => {
                self.class() == other.class() && self.counts() == other.counts() && self.reason() == other.reason()
            }
            _ => self == other,
        }
    }
}

impl std::fmt::Display for EndCause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use EndCause as C;
        let limit = |deadline: bool| if deadline { "DEADLINE" } else { "TIMEOUT" };
        match self {
            C::Preempted => f.write_str("PREEMPTED"),
            C::NodeFail => f.write_str("NODE_FAIL"),
            C::BootFail => f.write_str("BOOT_FAIL"),
            C::Cancelled => f.write_str("CANCELLED"),
            C::CancelledByRoleplay => f.write_str("CANCELLED by `roleplay cancel`"),
            C::CancelledBeforeStart => f.write_str("cancelled before it started"),
            C::Requeued => f.write_str("REQUEUED"),
            C::Completed => f.write_str("COMPLETED"),
            C::TimeoutAfterCheckpoint { deadline } => write!(f, "{} after a checkpoint", limit(*deadline)),
            C::Timeout { deadline } => f.write_str(limit(*deadline)),
            C::OutOfMemory => f.write_str("OUT_OF_MEMORY"),
            C::CompletedButIncomplete => {
                f.write_str("the job COMPLETED but the shard's journal is incomplete: see the log")
            }
            C::Checkpointed => f.write_str("stopped on a signal after checkpointing (exit 75)"),
            C::BudgetReached { cap } => write!(
                f,
                "stopped at its share of the budget ({}): raise `[budget]` and re-plan to go on",
                cap.as_deref().unwrap_or("a cap reached")
            ),
            C::Exit { code: 2 } => f.write_str("configuration error (exit 2): see the log"),
            C::Exit { code } if *code > 128 => write!(f, "exit {code} (killed by {})", signal_name(code - 128)),
            // A batch script that exits 128+N (its worker killed by signal N) shows as exit N in
            // Slurm 22.05; roleplay itself never exits with these.
            C::Exit {
                code: c @ (6 | 9 | 11 | 15),
            } => write!(f, "exit {c} (the worker was killed by {}?)", signal_name(*c)),
            C::Exit { code } => write!(f, "exit {code}"),
            C::Signal { code, signal } => write!(f, "killed by {} ({code}:{signal})", signal_name(*signal)),
            C::WorkerError {
                exit: Some(code),
                message,
            } => write!(f, "worker error (exit {code}): {}", or_log(message)),
            C::WorkerError { exit: None, message } => write!(f, "worker error: {}", or_log(message)),
            C::FailedNoExitCode { reason } => write!(f, "FAILED ({})", reason.as_deref().unwrap_or("no reason given")),
            C::NoHeartbeat {
                age_secs,
                queue_read: true,
            } => write!(f, "no heartbeat for {age_secs} s and gone from the queue"),
            C::NoHeartbeat {
                age_secs,
                queue_read: false,
            } => write!(f, "no heartbeat for {age_secs} s (the queue was not read)"),
            C::FinishedButIncomplete => f.write_str("the worker's state says finished but the journal is incomplete"),
            C::LeftQueueWithoutRecord { latest: true } => {
                f.write_str("left the queue without a record from the worker: see its log")
            }
            C::LeftQueueWithoutRecord { latest: false } => f.write_str("ended without a record"),
            C::Legacy { reason, .. } => f.write_str(reason),
        }
    }
}

/// The worker's message, or where to look instead.
fn or_log(message: &Option<String>) -> &str {
    message.as_deref().unwrap_or("see the log")
}

fn signal_name(sig: u32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        6 => "SIGABRT",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        15 => "SIGTERM",
        _ => "a signal",
    }
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

    /// Appends many records to the journal with one sync, and to this in-memory copy.
    pub fn push_all(&mut self, rd: &RunDir, records: Vec<Record>) -> Result<()> {
        Submissions::append(rd, &records)?;
        self.records.extend(records);
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

    /// Whether the plan has records of a round after `round` (rounds that `resume` made).
    pub fn has_round_after(&self, plan_hash: &str, round: u32) -> bool {
        self.records.iter().any(|r| match r {
            Record::Submitting(i) => i.slot.plan_hash == plan_hash && i.slot.round > round,
            Record::Submitted(a) => a.slot.plan_hash == plan_hash && a.slot.round > round,
            Record::SubmitFailed(f) => f.slot.plan_hash == plan_hash && f.slot.round > round,
            _ => false,
        })
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

    /// An outcome line as the version before typed causes wrote it.
    const LEGACY_OUTCOME: &str = r#"{"event":"outcome","plan_hash":"p","round":0,"array":0,"index":2,"shard":2,"job":"500_2","class":"failed","reason":"OUT_OF_MEMORY","counts":true,"at":7}"#;

    #[test]
    fn outcomes_of_the_previous_version_are_read_from_their_text_fields() {
        let Record::Outcome(o) = serde_json::from_str::<Record>(LEGACY_OUTCOME).unwrap() else {
            panic!("not an outcome");
        };
        assert_eq!(o.job, "500_2".parse().unwrap());
        let legacy = EndCause::Legacy {
            class: EndClass::Failed,
            reason: "OUT_OF_MEMORY".into(),
            counts: true,
        };
        assert_eq!(o.cause, legacy);
        assert_eq!(
            (o.cause.class(), o.cause.reason(), o.cause.counts()),
            (EndClass::Failed, "OUT_OF_MEMORY".to_string(), true)
        );
        // The typed cause it stands for is the same outcome (not learnt again); another is not.
        assert!(o.cause.is_same(&EndCause::OutOfMemory) && EndCause::OutOfMemory.is_same(&o.cause));
        assert!(!o.cause.is_same(&EndCause::Timeout { deadline: false }));
        // Written back, it stays in the old shape.
        let back = serde_json::to_value(Record::Outcome(o)).unwrap();
        assert_eq!(back, serde_json::from_str::<serde_json::Value>(LEGACY_OUTCOME).unwrap());
    }

    #[test]
    fn typed_outcomes_keep_the_text_fields_and_an_unknown_cause_falls_back_to_them() {
        let o = TaskOutcome {
            plan_hash: "p".into(),
            round: 1,
            array: 0,
            index: 3,
            shard: 9,
            job: "501_3".parse().unwrap(),
            cause: EndCause::WorkerError {
                exit: Some(1),
                message: Some("disk full".into()),
            },
            at: 8,
        };
        let json = serde_json::to_value(Record::Outcome(o.clone())).unwrap();
        assert_eq!(json["job"], "501_3");
        assert_eq!(json["class"], "failed");
        assert_eq!(json["reason"], "worker error (exit 1): disk full");
        assert_eq!(json["counts"], true);
        assert_eq!(json["cause"]["kind"], "worker_error");
        assert_eq!(
            serde_json::from_value::<Record>(json.clone()).unwrap(),
            Record::Outcome(o)
        );
        // A cause this version does not know (a later one's): the text fields, not a damaged line.
        let mut newer = json;
        newer["cause"] = serde_json::json!({"kind": "solar_flare"});
        let Record::Outcome(read) = serde_json::from_value::<Record>(newer).unwrap() else {
            panic!("not an outcome");
        };
        assert_eq!(read.cause.reason(), "worker error (exit 1): disk full");
        assert_eq!(read.cause.class(), EndClass::Failed);
    }

    #[test]
    fn through_the_journal_the_latest_outcome_of_a_task_wins() {
        let dir = tempfile::tempdir().unwrap();
        let rd = RunDir::new(dir.path());
        std::fs::create_dir_all(rd.slurm_dir()).unwrap();
        std::fs::write(rd.legacy_submissions_path(), format!("{LEGACY_OUTCOME}\n")).unwrap();
        let Record::Outcome(mut newer) = serde_json::from_str::<Record>(LEGACY_OUTCOME).unwrap() else {
            panic!("not an outcome");
        };
        newer.cause = EndCause::Preempted;
        Submissions::append(&rd, &[Record::Outcome(newer)]).unwrap();
        let s = Submissions::read(&rd).unwrap();
        assert!(s.damaged_lines.is_empty());
        let outcomes = s.outcomes();
        assert_eq!(outcomes.len(), 1);
        assert_eq!(outcomes[&"500_2".parse().unwrap()].cause, EndCause::Preempted);
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
