//! Gathering what `status` decides from: the run's records (shard journals, shard state files, the
//! submissions journal) and the scheduler's answers (squeue, then sacct for tasks that left the
//! queue), as one plain [`ShardEvidence`] per shard. All the reading, the clock and the scheduler
//! are here; deciding is [`super::classify`]'s.
//!
//! The scheduler is asked before the journals and state files of shards it concerns are read again,
//! so a task that finishes meanwhile shows as done, never as failed.

use super::StatusOptions;
use crate::rundir::state::{self, ShardState as WorkerState};
use crate::slurm::records::{Accepted, EndCause, EndClass, JobKind, Submissions, TaskOutcome};
use crate::slurm::render::RunCtx;
use crate::slurm::{AccountingRecord, ArrayTask, JobRef, JobState, QueueFilter, QueueRecord, Scheduler, Steps};
use std::collections::{HashMap, HashSet};

/// What a journal says: units finished, and failed among them.
pub use crate::rundir::journal::Summary as JournalSummary;

/// One array task that was submitted for a shard, with what is known of it.
#[derive(Debug, Clone)]
pub struct TaskEvidence {
    pub round: u32,
    pub array: u32,
    pub task: ArrayTask,
    /// squeue's record of it (a final one only while no live one was seen for the task).
    pub queue: Option<QueueRecord>,
    /// sacct's record of it (the latest run's).
    pub accounting: Option<AccountingRecord>,
    /// sacct's records of its earlier runs (`sacct -D`: it was requeued), oldest first.
    pub earlier_runs: Vec<AccountingRecord>,
    /// Its Slurm log exists: it started at some time.
    pub log: bool,
    /// Its latest outcome in the submissions journal.
    pub recorded: Option<EndCause>,
    /// `roleplay cancel` named it or its array.
    pub cancelled: bool,
}

impl TaskEvidence {
    /// `ARRAYJOB_INDEX`.
    pub fn job(&self) -> JobRef {
        JobRef::Task(self.task)
    }
}

/// Everything known about one shard, read once; the input of [`super::classify::classify`].
#[derive(Debug, Clone)]
pub struct ShardEvidence {
    pub shard: u32,
    pub units: u64,
    pub journal: JournalSummary,
    /// The shard's state file, when it belongs to this plan.
    pub worker: Option<WorkerState>,
    /// The array task the state file speaks of: its job id (`A_i`, or the task's own id as squeue
    /// and sacct showed it), resolved.
    pub worker_task: Option<ArrayTask>,
    /// Whether the worker the state file names as running is alive: its shard lock is held. Known
    /// only for a worker on this host (`None` otherwise, or when the state file says it stopped).
    pub worker_alive: Option<bool>,
    /// The tasks submitted for it, in submission order.
    pub tasks: Vec<TaskEvidence>,
    /// The job name of a submission for it whose answer was never recorded.
    pub unconfirmed: Option<String>,
}

impl ShardEvidence {
    /// Every unit has a finished record (failed ones included).
    pub fn complete(&self) -> bool {
        self.journal.done >= self.units
    }
}

/// What holds for every shard of one look.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Context {
    /// The time of the look (seconds since the epoch).
    pub now: u64,
    /// A worker whose heartbeat is older than this, and whose job left the queue, is lost.
    pub lost_after_secs: u64,
    /// squeue answered: a task absent from it has left the queue.
    pub queue_read: bool,
    /// `worker.max_attempts`.
    pub max_attempts: u32,
}

/// Everything one look gathered.
#[derive(Debug)]
pub struct RunEvidence {
    pub shards: Vec<ShardEvidence>,
    pub context: Context,
    /// `read`, `not asked` or `unavailable: ...`.
    pub queue: String,
    /// `read`, `disabled on this cluster`, `not needed`, `not asked` or `unavailable: ...`.
    pub accounting: String,
    pub warnings: Vec<String>,
    /// Merge jobs of the plan that squeue shows queued or running.
    pub live_merge_jobs: Vec<u64>,
}

/// Reads the run's records and asks the scheduler (unless `opts.offline`): see the module's
/// documentation for the order.
pub fn gather(ctx: &RunCtx, sched: Option<&dyn Scheduler>, subs: &Submissions, opts: &StatusOptions) -> RunEvidence {
    let plan = &ctx.plan;
    let now = state::now();
    let n = plan.shards.len();
    let mut warnings = Vec::new();
    if !subs.damaged_lines.is_empty() {
        warnings.push(format!(
            "`{}`: skipped unreadable lines {:?}",
            ctx.rd.submissions_path().display(),
            subs.damaged_lines
        ));
    }
    let submitted = Submitted::of(subs, &plan.plan_hash, n);
    let other_plans = subs.accepted().filter(|a| a.slot.plan_hash != plan.plan_hash).count();
    if other_plans > 0 {
        warnings.push(format!(
            "{other_plans} submissions of an earlier plan are not part of this report (`roleplay cancel` stops them)"
        ));
    }
    let mut unconfirmed: HashMap<u32, String> = HashMap::new();
    for i in subs.unresolved() {
        if i.slot.plan_hash == plan.plan_hash {
            for &s in &i.shards {
                unconfirmed.insert(s, i.slot.job_name.clone());
            }
        }
    }

    // First look at the records, to know which shards need the scheduler at all.
    let (mut journals, mut states): (Vec<JournalSummary>, Vec<Option<WorkerState>>) =
        (0..n as u32).map(|s| shard_records(ctx, s, &mut warnings)).unzip();
    let undone: Vec<usize> = (0..n)
        .filter(|&s| journals[s].done < u64::from(plan.shards[s].units) && !submitted.tasks[s].is_empty())
        .collect();
    // Tasks a worker's state file names: they ran (a pending one was requeued).
    let ran: HashSet<ArrayTask> = states
        .iter()
        .flatten()
        .filter_map(|w| match w.slurm_job_id.as_deref().map(str::parse::<JobRef>) {
            Some(Ok(JobRef::Task(t))) => Some(t),
            _ => None,
        })
        .collect();

    // The scheduler, before the records are read again.
    let mut sched_ev = SchedulerEvidence::default();
    let (mut queue, mut accounting) = ("not asked".to_string(), "not asked".to_string());
    let recorded = subs.outcomes();
    // Settled by the records as first read (before the state files are read again).
    let first_states = states.clone();
    let settled =
        |s: usize, t: ArrayTask| end_is_settled(recorded.get(&JobRef::Task(t)).copied(), first_states[s].as_ref(), t);
    if let Some(sched) = sched.filter(|_| !opts.offline) {
        (queue, accounting) = sched_ev.ask(sched, &submitted, &undone, &ran, settled, &mut warnings);
        // Read again what may have changed while the scheduler was asked.
        for &s in &undone {
            (journals[s], states[s]) = shard_records(ctx, s as u32, &mut Vec::new());
        }
    }

    let cancels = subs.cancel_marks();
    // Listed after the scheduler was asked: a task gone from the queue without a log never started.
    let logs: HashSet<std::ffi::OsString> = std::fs::read_dir(ctx.rd.slurm_log_dir())
        .map(|dir| dir.filter_map(|e| e.ok().map(|e| e.file_name())).collect())
        .unwrap_or_default();
    let host = state::hostname();
    let shards = (0..n)
        .map(|s| {
            let worker = states[s].take().filter(|w| w.plan_hash == plan.plan_hash);
            ShardEvidence {
                shard: s as u32,
                units: u64::from(plan.shards[s].units),
                journal: journals[s],
                worker_task: worker.as_ref().and_then(|w| sched_ev.task_named(w)),
                worker_alive: worker.as_ref().and_then(|w| alive(ctx, w, &host)),
                worker,
                tasks: submitted.tasks[s]
                    .iter()
                    .map(|&(round, array, task)| TaskEvidence {
                        round,
                        array,
                        task,
                        // A final squeue record says less than an end settled in the journal
                        // (no exit code): the journal's is kept, as sacct was not asked again.
                        queue: sched_ev
                            .queue
                            .get(&task)
                            .filter(|q| !(q.state.is_final() && settled(s, task)))
                            .cloned(),
                        accounting: sched_ev.accounting.get(&task).cloned(),
                        earlier_runs: sched_ev.earlier_runs.get(&task).cloned().unwrap_or_default(),
                        log: ctx
                            .rd
                            .slurm_task_log(task.array_job_id, task.task_id)
                            .file_name()
                            .is_some_and(|name| logs.contains(name)),
                        recorded: recorded.get(&JobRef::Task(task)).map(|o| o.cause.clone()),
                        cancelled: cancels.cover(task),
                    })
                    .collect(),
                unconfirmed: unconfirmed.remove(&(s as u32)),
            }
        })
        .collect();
    RunEvidence {
        shards,
        context: Context {
            now,
            lost_after_secs: opts.lost_after_secs,
            queue_read: sched_ev.queue_read,
            max_attempts: plan.experiment.worker.max_attempts,
        },
        queue,
        accounting,
        warnings,
        live_merge_jobs: sched_ev.live_merge_jobs,
    }
}

/// Whether a worker its state file calls running still is: its shard lock is held. Asked only on
/// the worker's own host.
fn alive(ctx: &RunCtx, w: &WorkerState, host: &str) -> Option<bool> {
    if w.status != state::ShardStatus::Running || w.host != host {
        return None;
    }
    crate::rundir::lock::is_held(&ctx.rd.shard_lock_path(w.shard))
}

/// The first array submission of this plan (where the ETA's rate starts).
pub fn first_submission<'a>(subs: &'a Submissions, plan_hash: &'a str) -> Option<&'a Accepted> {
    subs.accepted_of(plan_hash)
        .filter(|a| a.slot.kind == JobKind::Array)
        .min_by_key(|a| a.at)
}

/// The run's submissions of one plan: which task ran which shard.
struct Submitted {
    /// Per shard: (round, array, task), in submission order.
    tasks: Vec<Vec<(u32, u32, ArrayTask)>>,
    array_ids: Vec<u64>,
    merge_ids: Vec<u64>,
    /// Arrays of one task: squeue and sacct may show that task without its index.
    one_task_arrays: HashSet<u64>,
}

impl Submitted {
    fn of(subs: &Submissions, plan_hash: &str, shards: usize) -> Submitted {
        let mut out = Submitted {
            tasks: vec![Vec::new(); shards],
            array_ids: Vec::new(),
            merge_ids: Vec::new(),
            one_task_arrays: HashSet::new(),
        };
        for a in subs.accepted_of(plan_hash) {
            match a.slot.kind {
                JobKind::Merge => out.merge_ids.push(a.job_id),
                JobKind::Array => {
                    out.array_ids.push(a.job_id);
                    if a.shards.len() == 1 {
                        out.one_task_arrays.insert(a.job_id);
                    }
                    for (i, &s) in a.shards.iter().enumerate() {
                        if let Some(list) = out.tasks.get_mut(s as usize) {
                            let task = ArrayTask {
                                array_job_id: a.job_id,
                                task_id: i as u32,
                            };
                            list.push((a.slot.round, a.slot.array, task));
                        }
                    }
                }
            }
        }
        out
    }
}

/// Everything the scheduler said.
#[derive(Default)]
struct SchedulerEvidence {
    queue: HashMap<ArrayTask, QueueRecord>,
    accounting: HashMap<ArrayTask, AccountingRecord>,
    /// Records of earlier runs of requeued tasks, oldest first.
    earlier_runs: HashMap<ArrayTask, Vec<AccountingRecord>>,
    /// Own job id of a task -> the task.
    own_ids: HashMap<u64, ArrayTask>,
    /// Arrays of one task (from the submissions): a record of one without an index is its task 0.
    one_task_arrays: HashSet<u64>,
    merge_ids: HashSet<u64>,
    live_merge_jobs: Vec<u64>,
    queue_read: bool,
}

impl SchedulerEvidence {
    /// Asks squeue about every job of the plan, then sacct about the tasks of the `undone` shards
    /// that are not pending or running and whose end is not `settled` in the submissions journal
    /// (see [`end_is_settled`]), and those pending after a requeue (reason BeginTime, or named by a
    /// state file: in `ran`): first their allocations alone (`sacct -X`, by array: a pending task
    /// that never started has no row of its own), then, for the tasks that ran and ended in a state
    /// their steps may explain (FAILED, CANCELLED, COMPLETED: the batch step's exit code or signal,
    /// a step out of memory), their rows with steps. Returns how the queue and the accounting
    /// answered.
    fn ask(
        &mut self,
        sched: &dyn Scheduler,
        submitted: &Submitted,
        undone: &[usize],
        ran: &HashSet<ArrayTask>,
        settled: impl Fn(usize, ArrayTask) -> bool,
        warnings: &mut Vec<String>,
    ) -> (String, String) {
        self.one_task_arrays = submitted.one_task_arrays.clone();
        self.merge_ids = submitted.merge_ids.iter().copied().collect();
        let mut ids: Vec<JobRef> = submitted
            .array_ids
            .iter()
            .chain(&submitted.merge_ids)
            .map(|&id| JobRef::Job(id))
            .collect();
        ids.sort();
        ids.dedup();
        let queue = match sched.queue(&QueueFilter::Jobs(ids)) {
            Ok(records) => {
                self.add_queue(records);
                self.queue_read = true;
                "read".to_string()
            }
            Err(e) => {
                warnings.push(format!(
                    "the queue could not be read: the run's records only ({})",
                    e.message.lines().next().unwrap_or("")
                ));
                format!("unavailable: {}", e.message)
            }
        };
        // sacct, for tasks that are not in the queue as pending or running, and whose end no
        // earlier look recorded for good.
        let wanted: HashSet<ArrayTask> = undone
            .iter()
            .flat_map(|&s| submitted.tasks[s].iter().map(move |(_, _, t)| (s, *t)))
            .filter(|&(s, t)| match self.queue.get(&t) {
                None => !settled(s, t),
                Some(q) if q.state.is_final() => !settled(s, t),
                // Requeued: its earlier runs tell the budget.
                Some(q) => {
                    q.state == JobState::Pending && (ran.contains(&t) || q.reason.as_deref() == Some("BeginTime"))
                }
            })
            .map(|(_, t)| t)
            .collect();
        if wanted.is_empty() {
            return (queue, "not needed".to_string());
        }
        let mut arrays: Vec<JobRef> = wanted.iter().map(|t| JobRef::Job(t.array_job_id)).collect();
        arrays.sort();
        arrays.dedup();
        let records = match sched.accounting_rows(&arrays, Steps::Without) {
            Ok(Some(records)) => records,
            Ok(None) => return (queue, "disabled on this cluster".to_string()),
            Err(e) => {
                return (
                    queue,
                    format!("unavailable: {}", e.message.lines().next().unwrap_or("")),
                );
            }
        };
        let task_of = |r: &AccountingRecord| r.array.or_else(|| self.task_of_one_task_array(r.job_id));
        let records: Vec<AccountingRecord> = records
            .into_iter()
            .filter(|r| task_of(r).is_some_and(|t| wanted.contains(&t)))
            .collect();
        // A task any run of which may be explained by its steps is asked again, every run of it.
        let mut steps_of: Vec<ArrayTask> = records
            .iter()
            .filter(|r| steps_may_explain(r))
            .filter_map(task_of)
            .collect();
        steps_of.sort();
        steps_of.dedup();
        self.add_accounting(records);
        if !steps_of.is_empty() {
            let with_steps: Vec<JobRef> = steps_of.iter().map(|&t| JobRef::Task(t)).collect();
            // The runs read without steps give way to the same runs with them.
            for t in &steps_of {
                self.accounting.remove(t);
                self.earlier_runs.remove(t);
            }
            match sched.accounting_rows(&with_steps, Steps::With) {
                Ok(Some(records)) => self.add_accounting(records),
                failed => {
                    // Without their steps these ends could be misread (a signal as exit 0, an
                    // out-of-memory step as a plain failure): left unknown for the next look.
                    let why = match failed {
                        Err(e) => e.message.lines().next().unwrap_or("").to_string(),
                        _ => "no answer".to_string(),
                    };
                    warnings.push(format!(
                        "sacct could not tell the steps of {} tasks ({why}): how they ended is left for the next look",
                        with_steps.len()
                    ));
                }
            }
        }
        (queue, "read".to_string())
    }

    /// Keeps one record per task: a live one over a final one.
    fn add_queue(&mut self, records: Vec<QueueRecord>) {
        for r in records {
            if r.array.is_none() && self.merge_ids.contains(&r.job_id) && !r.state.is_final() {
                self.live_merge_jobs.push(r.job_id);
            }
            let Some(t) = r.array.or_else(|| self.task_of_one_task_array(r.job_id)) else {
                continue;
            };
            self.own_ids.insert(r.job_id, t);
            let keep_old = self
                .queue
                .get(&t)
                .is_some_and(|old| !old.state.is_final() && r.state.is_final());
            if !keep_old {
                self.queue.insert(t, r);
            }
        }
    }

    /// Keeps the last record per task (with `sacct -D`, the latest run) and the earlier ones.
    fn add_accounting(&mut self, records: Vec<AccountingRecord>) {
        for r in records {
            let Some(t) = r.array.or_else(|| self.task_of_one_task_array(r.job_id)) else {
                continue;
            };
            self.own_ids.insert(r.job_id, t);
            if let Some(earlier) = self.accounting.insert(t, r) {
                self.earlier_runs.entry(t).or_default().push(earlier);
            }
        }
    }

    /// A record without an array index under the id of a one-task array is that array's task:
    /// squeue and sacct show a one-task array cancelled while pending so.
    fn task_of_one_task_array(&self, job_id: u64) -> Option<ArrayTask> {
        self.one_task_arrays.contains(&job_id).then_some(ArrayTask {
            array_job_id: job_id,
            task_id: 0,
        })
    }

    /// The task a state file's job id names: `A_i` itself, or a task's own id the scheduler showed.
    fn task_named(&self, w: &WorkerState) -> Option<ArrayTask> {
        match w.slurm_job_id.as_deref().map(str::parse::<JobRef>) {
            Some(Ok(JobRef::Task(t))) => Some(t),
            Some(Ok(JobRef::Job(id))) => self.own_ids.get(&id).copied(),
            _ => None,
        }
    }
}

/// Whether the end of task `t` recorded in the submissions journal (`recorded`) is settled, so
/// that sacct need not be asked about it again: it holds the scheduler's word (an exit code, a
/// signal, a final state), not a guess made without sacct (gone from the queue without a record,
/// no heartbeat, FAILED without an exit code, the worker's error without the job's exit code,
/// cancelled by `roleplay cancel` with no other word), and the shard's worker did not start this
/// task again after it was recorded (a requeue).
fn end_is_settled(recorded: Option<&TaskOutcome>, worker: Option<&WorkerState>, t: ArrayTask) -> bool {
    let Some(o) = recorded else { return false };
    let weak = matches!(
        o.cause,
        EndCause::FailedNoExitCode { .. }
            | EndCause::WorkerError { exit: None, .. }
            | EndCause::CancelledByRoleplay
            | EndCause::NoHeartbeat { .. }
            | EndCause::FinishedButIncomplete
            | EndCause::LeftQueueWithoutRecord { .. }
    ) || o.cause.class() == EndClass::Lost;
    let restarted = worker.is_some_and(|w| {
        w.slurm_job_id.as_deref().and_then(|j| j.parse::<JobRef>().ok()) == Some(JobRef::Task(t)) && w.started_at > o.at
    });
    !weak && !restarted
}

/// A task that ran and ended in a state its steps may explain: FAILED (the batch step's exit code
/// or signal when the allocation's says 0:0; a step out of memory), CANCELLED or COMPLETED (a step
/// out of memory); see [`AccountingRecord::effective_state`] and `effective_exit_code`. A task
/// that never started (no node) has no steps.
fn steps_may_explain(r: &AccountingRecord) -> bool {
    matches!(r.state, JobState::Failed | JobState::Cancelled | JobState::Completed) && r.nodes.is_some()
}

/// A shard's journal summary and its state file. The summary comes from the mark the worker wrote
/// into the state file while that mark is current (the journal is the very file it was taken of,
/// unchanged: see [`crate::rundir::journal::Mark::is_current`]); otherwise, and for state files
/// without a mark or of another plan, the journal is read.
fn shard_records(ctx: &RunCtx, shard: u32, warnings: &mut Vec<String>) -> (JournalSummary, Option<WorkerState>) {
    let path = ctx.rd.journal_path(shard);
    let (worker, mark) = match state::read_marked(&ctx.rd, shard) {
        Some((w, mark)) => (Some(w), mark),
        None => (None, None),
    };
    let trusted =
        mark.filter(|m| worker.as_ref().is_some_and(|w| w.plan_hash == ctx.plan.plan_hash) && m.is_current(&path));
    let summary = match trusted {
        Some(m) => m.summary,
        None => crate::rundir::journal::summary_of(&path, &ctx.plan.plan_hash, warnings),
    };
    (summary, worker)
}

#[cfg(test)]
mod tests {
    use super::super::{StatusOptions, collect};
    use crate::rundir::journal::Mark;
    use crate::rundir::state;
    use crate::slurm::records::Submissions;
    use crate::slurm::render::RunCtx;
    use crate::slurm::status::tests::{finish, fixture};
    use crate::worker::{Options, Shared, run_shard, signals::Cancel};
    use std::sync::Arc;
    use std::time::Duration;

    /// Runs the real worker on a shard of the fixture (simulated models) to its end.
    fn run_worker(ctx: &RunCtx, shard: u32) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let options = Options {
            retry_failed: false,
            durable: false,
            grace: Duration::from_secs(1),
            slurm_job_id: None,
        };
        let plan = Arc::new(ctx.plan.clone());
        let outcome = rt.block_on(async {
            let shared = Shared::new(ctx.rd.clone(), plan, options, Cancel::new(), crate::llm::client_for).unwrap();
            run_shard(&shared, shard).await.unwrap()
        });
        assert_eq!(outcome.already_done + outcome.finished, outcome.units);
    }

    /// Bytes this thread has read through system calls so far (`rchar`).
    fn read_by_this_thread() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines()
            .find_map(|l| l.strip_prefix("rchar: "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap()
    }

    fn offline() -> StatusOptions {
        StatusOptions {
            offline: true,
            ..StatusOptions::default()
        }
    }

    /// (done, failed units) per shard, and the bytes the look read.
    fn look(ctx: &RunCtx) -> (Vec<(u64, u64)>, u64) {
        let before = read_by_this_thread();
        let r = collect(ctx, None, &Submissions::default(), &offline());
        let read = read_by_this_thread() - before;
        (r.shards.iter().map(|s| (s.done, s.failed_units)).collect(), read)
    }

    fn size(path: &std::path::Path) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn status_takes_the_counts_of_a_current_state_file_without_reading_the_journal() {
        let f = fixture();
        let ctx = &f.ctx;
        for shard in 0..4 {
            run_worker(ctx, shard);
        }
        let journals: u64 = (0..4).map(|s| size(&ctx.rd.journal_path(s))).sum();
        let states: u64 = (0..4).map(|s| size(&ctx.rd.state_path(s))).sum();
        assert!(journals > 4 * states, "journals {journals} B, state files {states} B");
        let (counts, read) = look(ctx);
        assert_eq!(counts, vec![(2, 0); 4]);
        assert!(
            read < states + 1024,
            "read {read} B: more than the state files ({states} B); the journals hold {journals} B"
        );
        // The same state files without the journal's mark (an earlier version's): every journal is read.
        for shard in 0..4 {
            let (w, mark) = state::read_marked(&ctx.rd, shard).unwrap();
            assert!(mark.is_some(), "the worker wrote the journal's mark");
            state::write(&ctx.rd, &w).unwrap();
        }
        let (counts, read) = look(ctx);
        assert_eq!(counts, vec![(2, 0); 4]);
        assert!(read >= journals, "read {read} B of {journals} B of journals");
    }

    #[test]
    fn a_journal_changed_after_its_state_file_was_written_is_read_again() {
        let f = fixture();
        let ctx = &f.ctx;
        run_worker(ctx, 0);
        run_worker(ctx, 1);
        assert_eq!(look(ctx).0[..2], [(2, 0), (2, 0)]);
        // Appended to since (here: a later failed record of unit 0 supersedes its finished one).
        finish(ctx, 0, 1, 1);
        assert_eq!(look(ctx).0[0], (2, 1));

        // A state file whose mark matches the journal is believed: forge one that says 0 done to
        // see that it is, then change the journal in the ways another writer would.
        let path = ctx.rd.journal_path(1);
        let forge = |ctx: &RunCtx| {
            let (w, mark) = state::read_marked(&ctx.rd, 1).unwrap();
            let mut mark: Mark = mark.unwrap();
            let meta = std::fs::metadata(&path).unwrap();
            use std::os::unix::fs::MetadataExt;
            (mark.len, mark.ino, mark.mtime_s, mark.mtime_ns) =
                (meta.len(), meta.ino(), meta.mtime(), meta.mtime_nsec());
            mark.summary.done = 0;
            state::write_marked(&ctx.rd, &w, mark).unwrap();
        };
        forge(ctx);
        assert_eq!(look(ctx).0[1], (0, 0), "a current mark is taken as it is");
        // Rewritten whole by another writer (a re-plan's carry-over renames a new file into place):
        // same length and content, another inode.
        let bytes = std::fs::read(&path).unwrap();
        let tmp = path.with_extension("new");
        std::fs::write(&tmp, &bytes).unwrap();
        std::fs::rename(&tmp, &path).unwrap();
        assert_eq!(look(ctx).0[1], (2, 0));
        // Written in place, same length, same inode: the modification time tells.
        forge(ctx);
        assert_eq!(look(ctx).0[1], (0, 0));
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        file.set_modified(std::time::SystemTime::now() + Duration::from_secs(5))
            .unwrap();
        assert_eq!(look(ctx).0[1], (2, 0));
        // Gone: nothing is done, whatever the state file says.
        forge(ctx);
        std::fs::remove_file(&path).unwrap();
        assert_eq!(look(ctx).0[1], (0, 0));
        // A state file of another plan is not believed either.
        run_worker(ctx, 2);
        let (mut w, mark) = state::read_marked(&ctx.rd, 2).unwrap();
        w.plan_hash = "another".into();
        let mut mark = mark.unwrap();
        mark.summary.done = 0;
        state::write_marked(&ctx.rd, &w, mark).unwrap();
        assert_eq!(look(ctx).0[2], (2, 0));
    }

    use crate::rundir::state::ShardStatus;
    use crate::slurm::records::{EndCause, Record};
    use crate::slurm::status::tests::{accepted, acct, queued, worker_state};
    use crate::slurm::{AccountingRecord, ArrayTask, ExitCode, FakeScheduler, JobRef, JobState, StepSummary, Steps};

    fn task(array_job_id: u64, task_id: u32) -> JobRef {
        JobRef::Task(ArrayTask { array_job_id, task_id })
    }

    fn ran(mut r: AccountingRecord) -> AccountingRecord {
        r.nodes = Some("node1".into());
        r
    }

    /// Shards 0-3 ran as tasks 500_0-3, none finished: FAILED 1:0; TIMEOUT; CANCELLED while
    /// pending (never ran); FAILED 0:0 whose batch step was killed by SIGKILL (0:9).
    fn ended_wave(f: &crate::slurm::status::tests::Fixture) -> (Submissions, FakeScheduler) {
        let mut subs = Submissions::default();
        accepted(&f.ctx, &mut subs, 0, 500, vec![0, 1, 2, 3]);
        let fake = FakeScheduler::new();
        let mut killed = ran(acct(500, 3, JobState::Failed, (0, 0)));
        killed.batch = Some(StepSummary {
            state: JobState::Cancelled,
            exit_code: Some(ExitCode { code: 0, signal: 9 }),
        });
        fake.set_accounting(Some(vec![
            ran(acct(500, 0, JobState::Failed, (1, 0))),
            ran(acct(500, 1, JobState::Timeout, (0, 0))),
            acct(500, 2, JobState::Cancelled, (0, 0)),
            killed,
        ]));
        (subs, fake)
    }

    fn look_at(ctx: &RunCtx, fake: &FakeScheduler, subs: &Submissions) -> crate::slurm::status::RunReport {
        collect(ctx, Some(fake), subs, &StatusOptions::default())
    }

    #[test]
    fn sacct_is_asked_without_steps_and_only_about_ends_not_recorded() {
        let f = fixture();
        let (mut subs, fake) = ended_wave(&f);
        let r = look_at(&f.ctx, &fake, &subs);
        // Allocations only, by array; then steps for the tasks that ran and FAILED (CANCELLED and
        // COMPLETED too): not for the TIMEOUT, not for the task cancelled before it started.
        assert_eq!(
            fake.accounting_calls(),
            vec![
                (vec![JobRef::Job(500)], Steps::Without),
                (vec![task(500, 0), task(500, 3)], Steps::With)
            ]
        );
        let cause = |shard: u32| {
            r.new_outcomes
                .iter()
                .find(|o| o.shard == shard)
                .map(|o| o.cause.clone())
                .unwrap()
        };
        assert_eq!(cause(0), EndCause::Exit { code: 1 });
        assert_eq!(cause(1), EndCause::Timeout { deadline: false });
        assert_eq!(cause(2), EndCause::CancelledBeforeStart);
        assert_eq!(
            cause(3),
            EndCause::Signal { code: 0, signal: 9 },
            "the batch step's signal"
        );
        let reasons: Vec<Option<String>> = r.shards.iter().map(|s| s.reason.clone()).collect();
        // Recorded (as `status` does): the next look asks sacct nothing and says the same.
        subs.push_all(&f.ctx.rd, r.new_outcomes.iter().cloned().map(Record::Outcome).collect())
            .unwrap();
        // squeue still shows the ends (within MinJobAge), without their exit codes.
        fake.set_queue(vec![
            queued(500, 0, JobState::Failed, Some("NonZeroExitCode")),
            queued(500, 3, JobState::Failed, Some("NonZeroExitCode")),
        ]);
        let again = look_at(&f.ctx, &fake, &subs);
        assert_eq!(fake.accounting_calls().len(), 2, "{:?}", fake.accounting_calls());
        assert_eq!(again.accounting, "not needed");
        assert!(again.new_outcomes.is_empty());
        assert_eq!(
            again.shards.iter().map(|s| s.reason.clone()).collect::<Vec<_>>(),
            reasons
        );
    }

    #[test]
    fn sacct_is_asked_again_about_ends_recorded_from_a_guess_or_before_a_requeue() {
        let f = fixture();
        let (mut subs, fake) = ended_wave(&f);
        let r = look_at(&f.ctx, &fake, &subs);
        let mut outcomes = r.new_outcomes.clone();
        for o in &mut outcomes {
            o.at = crate::rundir::state::now() - 1000;
        }
        // Shard 1's end was recorded while sacct lagged: a guess.
        outcomes[1].cause = EndCause::LeftQueueWithoutRecord { latest: true };
        subs.push_all(&f.ctx.rd, outcomes.into_iter().map(Record::Outcome).collect())
            .unwrap();
        // Task 500_2 was started again (requeued) after its end was recorded.
        worker_state(&f.ctx, 2, ShardStatus::Running, "500_2", 100);
        let before = fake.accounting_calls().len();
        let again = look_at(&f.ctx, &fake, &subs);
        assert_eq!(
            fake.accounting_calls()[before..],
            [(vec![JobRef::Job(500)], Steps::Without)],
            "TIMEOUT and a never-started CANCELLED need no steps"
        );
        let learnt: Vec<(u32, EndCause)> = again.new_outcomes.iter().map(|o| (o.shard, o.cause.clone())).collect();
        // Shard 1's guess gives way to sacct's word; 500_2 ran after all (its worker's state file
        // names it): cancelled, not cancelled before it started.
        assert_eq!(
            learnt,
            vec![(1, EndCause::Timeout { deadline: false }), (2, EndCause::Cancelled)]
        );
    }
}
