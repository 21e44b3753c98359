//! Gathering what `status` decides from: the run's records (shard journals, shard state files, the
//! submissions journal) and the scheduler's answers (squeue, then sacct for tasks that left the
//! queue), as one plain [`ShardEvidence`] per shard. All the reading, the clock and the scheduler
//! are here; deciding is [`super::classify`]'s.
//!
//! The scheduler is asked before the journals and state files of shards it concerns are read again,
//! so a task that finishes meanwhile shows as done, never as failed.

use super::StatusOptions;
use crate::dialogue::EndReason;
use crate::plan::UnitId;
use crate::rundir::state::{self, ShardState as WorkerState};
use crate::slurm::records::{Accepted, EndCause, JobKind, Submissions};
use crate::slurm::render::RunCtx;
use crate::slurm::{AccountingRecord, ArrayTask, JobRef, JobState, QueueFilter, QueueRecord, Scheduler};
use serde::Deserialize;
use std::collections::{HashMap, HashSet};

/// What a journal says: units finished, and failed among them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JournalSummary {
    pub done: u64,
    pub failed: u64,
}

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
    let mut journals: Vec<JournalSummary> = (0..n as u32).map(|s| journal_summary(ctx, s, &mut warnings)).collect();
    let mut states: Vec<Option<WorkerState>> = (0..n as u32).map(|s| state::read(&ctx.rd, s)).collect();
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
    if let Some(sched) = sched.filter(|_| !opts.offline) {
        (queue, accounting) = sched_ev.ask(sched, &submitted, &undone, &ran, &mut warnings);
        // Read again what may have changed while the scheduler was asked.
        for &s in &undone {
            journals[s] = journal_summary(ctx, s as u32, &mut Vec::new());
            states[s] = state::read(&ctx.rd, s as u32);
        }
    }

    let recorded = subs.outcomes();
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
                        queue: sched_ev.queue.get(&task).cloned(),
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
    /// Asks squeue about every job of the plan, then sacct about the arrays of the `undone` shards'
    /// tasks that are not pending or running, or pending after a requeue (reason BeginTime, or
    /// named by a state file: in `ran`); returns how the queue and the accounting answered.
    fn ask(
        &mut self,
        sched: &dyn Scheduler,
        submitted: &Submitted,
        undone: &[usize],
        ran: &HashSet<ArrayTask>,
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
        // sacct, for tasks that are not in the queue as pending or running.
        let mut ended_arrays: Vec<JobRef> = undone
            .iter()
            .flat_map(|&s| submitted.tasks[s].iter())
            .filter(|(_, _, t)| {
                self.queue.get(t).is_none_or(|q| {
                    q.state.is_final()
                        || (q.state == JobState::Pending
                            && (ran.contains(t) || q.reason.as_deref() == Some("BeginTime")))
                })
            })
            .map(|(_, _, t)| JobRef::Job(t.array_job_id))
            .collect();
        ended_arrays.sort();
        ended_arrays.dedup();
        let accounting = if ended_arrays.is_empty() {
            "not needed".to_string()
        } else {
            match sched.accounting(&ended_arrays) {
                Ok(Some(records)) => {
                    self.add_accounting(records);
                    "read".to_string()
                }
                Ok(None) => "disabled on this cluster".to_string(),
                Err(e) => format!("unavailable: {}", e.message.lines().next().unwrap_or("")),
            }
        };
        (queue, accounting)
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

#[derive(Deserialize)]
struct DoneLite {
    unit: UnitId,
    ending: EndingLite,
}

#[derive(Deserialize)]
struct EndingLite {
    reason: EndReason,
}

/// Reads only the `done` records of a journal through the one journal reader (the calls, most of
/// its bytes, are skipped unparsed); the latest record of a unit wins, as for the worker.
fn journal_summary(ctx: &RunCtx, shard: u32, warnings: &mut Vec<String>) -> JournalSummary {
    let path = ctx.rd.journal_path(shard);
    let Ok(file) = std::fs::File::open(&path) else {
        return JournalSummary::default();
    };
    let mut units: HashMap<UnitId, bool> = HashMap::new();
    let scanned = crate::rundir::journal::scan(
        &path,
        std::io::BufReader::new(file),
        |json| json.starts_with(br#"{"t":"done""#),
        |_, json| match serde_json::from_slice::<DoneLite>(json) {
            Ok(d) => {
                units.insert(d.unit, d.ending.reason.is_failure());
                true
            }
            Err(_) => false,
        },
    );
    match scanned {
        Err(e) => {
            warnings.push(e.message);
            return JournalSummary::default();
        }
        Ok(info)
            if info
                .header
                .as_ref()
                .is_some_and(|h| h.meta.plan_hash != ctx.plan.plan_hash) =>
        {
            warnings.push(format!(
                "`{}` belongs to another plan: its records are not counted",
                path.display()
            ));
            return JournalSummary::default();
        }
        Ok(_) => {}
    }
    JournalSummary {
        done: units.len() as u64,
        failed: units.values().filter(|f| **f).count() as u64,
    }
}
