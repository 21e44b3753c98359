//! What a run on Slurm has done and is doing, per shard: done, running, pending, interrupted,
//! failed (with the reason), lost, or not submitted; unit totals and an ETA.
//!
//! Sources, in order of trust: the shard journals (which units are done or failed: the truth), the
//! shard state files (the worker's status, attempt, heartbeat and Slurm task), the submissions
//! journal (which array task ran which shard, and outcomes seen before), then the scheduler as
//! evidence: squeue for what is pending or running now and, where accounting runs, sacct for how a
//! task ended. The scheduler is asked first and the journals of shards whose tasks ended are read
//! again afterwards, so a task that finishes meanwhile shows as done, never as failed. Works without
//! sacct, after squeue has forgotten a job (MinJobAge), and offline from the run's records alone.

use super::records::{CancelMarks, EndCause, EndClass, Submissions, TaskOutcome};
use super::render::RunCtx;
use super::{AccountingRecord, ArrayTask, ExitCode, JobRef, JobState, QueueFilter, QueueRecord, Scheduler};
use crate::dialogue::EndReason;
use crate::plan::UnitId;
use crate::rundir::state::{self, ShardState as WorkerState, ShardStatus};
use serde::{Deserialize, Serialize, Serializer};
use std::collections::{BTreeMap, HashMap, HashSet};

/// How `status` looks at a run.
#[derive(Debug, Clone)]
pub struct StatusOptions {
    /// A worker whose heartbeat is older than this, and whose job left the queue, is lost.
    pub lost_after_secs: u64,
    /// Do not ask the scheduler: the run's records only.
    pub offline: bool,
}

impl Default for StatusOptions {
    fn default() -> Self {
        StatusOptions {
            lost_after_secs: 30,
            offline: false,
        }
    }
}

/// A shard's state: [`State::as_str`] for people, [`State::json_name`] in `status --json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum State {
    /// Every unit finished and none failed.
    Done,
    /// A task runs it now.
    Running,
    /// A task waits in the queue for it (or its submission is not confirmed yet).
    Pending,
    /// Its last task stopped without the work's fault (signal, preemption, node failure, cancel).
    Interrupted,
    /// Its last task failed, or every unit finished with some failed.
    Failed,
    /// Its last task was running, stopped answering and left the queue without a word.
    Lost,
    /// No task was ever submitted for it.
    NotSubmitted,
}

impl State {
    /// Every state, in declaration order.
    pub const ALL: [State; 7] = [
        State::Done,
        State::Running,
        State::Pending,
        State::Interrupted,
        State::Failed,
        State::Lost,
        State::NotSubmitted,
    ];

    /// The name people read (`not submitted`).
    pub fn as_str(self) -> &'static str {
        match self {
            State::Done => "done",
            State::Running => "running",
            State::Pending => "pending",
            State::Interrupted => "interrupted",
            State::Failed => "failed",
            State::Lost => "lost",
            State::NotSubmitted => "not submitted",
        }
    }

    /// The name in `status --json`, for a shard's state and in the tally alike (`not_submitted`).
    pub fn json_name(self) -> &'static str {
        match self {
            State::NotSubmitted => "not_submitted",
            other => other.as_str(),
        }
    }

    /// Queued or running: it will change by itself.
    pub fn is_live(self) -> bool {
        matches!(self, State::Running | State::Pending)
    }
}

impl Serialize for State {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.json_name())
    }
}

/// The tally of shards per state, keyed by [`State::as_str`], written with [`State::json_name`].
fn tally_json<S: Serializer>(tally: &BTreeMap<&'static str, usize>, s: S) -> Result<S::Ok, S::Error> {
    let json_name = |name: &'static str| {
        State::ALL
            .iter()
            .find(|state| state.as_str() == name)
            .map_or(name, |state| state.json_name())
    };
    s.collect_map(tally.iter().map(|(name, n)| (json_name(name), n)))
}

/// One shard's line of the report.
#[derive(Debug, Clone, Serialize)]
pub struct ShardReport {
    pub shard: u32,
    pub state: State,
    pub reason: Option<String>,
    pub units: u64,
    /// Units with a finished record (failed ones included).
    pub done: u64,
    /// Units whose latest record is a backend failure.
    pub failed_units: u64,
    /// Every unit has a finished record.
    pub complete: bool,
    /// Worker starts (requeues included), from the state file.
    pub worker_attempts: u32,
    /// Array tasks submitted for it.
    pub submissions: u32,
    /// Submitted tasks that failed (preemption, node failure, signals and cancels do not count).
    pub failed_attempts: u32,
    pub max_attempts: u32,
    /// `failed_attempts >= max_attempts`: `resume` reports it instead of resubmitting it.
    pub over_budget: bool,
    /// The task named: a queued or running one, else the latest (`ARRAYJOB_INDEX`).
    pub job: Option<JobRef>,
    pub round: Option<u32>,
    pub host: Option<String>,
    pub heartbeat_age_secs: Option<u64>,
    /// The latest task's log, relative to the run directory.
    pub log: Option<String>,
    /// `roleplay resume` would submit it again.
    pub resubmit: bool,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Totals {
    pub units: u64,
    pub done: u64,
    pub failed: u64,
    pub left: u64,
}

/// The report of one look at a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    pub run_dir: String,
    pub experiment: String,
    pub plan_hash: String,
    pub shards_total: usize,
    pub units: Totals,
    /// Shards per state, keyed by [`State::as_str`] (by [`State::json_name`] in JSON).
    #[serde(serialize_with = "tally_json")]
    pub states: BTreeMap<&'static str, usize>,
    /// No shard is pending or running.
    pub finished: bool,
    /// Every shard is done.
    pub complete: bool,
    pub rate_units_per_sec: Option<f64>,
    pub eta_secs: Option<u64>,
    /// `read`, `not asked` or `unavailable: ...`.
    pub queue: String,
    /// `read`, `disabled on this cluster`, `not needed`, `not asked` or `unavailable: ...`.
    pub accounting: String,
    pub warnings: Vec<String>,
    pub shards: Vec<ShardReport>,
    /// Outcomes learnt now that the submissions journal does not hold yet.
    #[serde(skip)]
    pub new_outcomes: Vec<TaskOutcome>,
    /// Array and merge job ids of the run with a task still queued or running.
    #[serde(skip)]
    pub live_jobs: Vec<u64>,
    /// The queue was read (`resume` needs it).
    #[serde(skip)]
    pub queue_read: bool,
}

impl RunReport {
    /// 0 every shard done; 1 nothing queued or running and some shard not done; 75 still in progress.
    pub fn exit_code(&self) -> i32 {
        use crate::error::exit;
        if self.complete {
            exit::OK
        } else if self.finished {
            exit::FAILURES
        } else {
            exit::INTERRUPTED
        }
    }
}

/// One array task that was submitted for a shard.
#[derive(Debug, Clone)]
struct TaskSub {
    round: u32,
    array: u32,
    task: ArrayTask,
}

impl TaskSub {
    fn job(&self) -> JobRef {
        JobRef::Task(self.task)
    }
}

/// What a journal says: units finished, and failed among them.
#[derive(Debug, Clone, Copy, Default)]
struct JournalSummary {
    done: u64,
    failed: u64,
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

/// squeue's non-final states in which a task holds (or is about to hold) its allocation.
fn is_running_state(s: &JobState) -> bool {
    matches!(
        s,
        JobState::Running
            | JobState::Completing
            | JobState::Configuring
            | JobState::Signaling
            | JobState::StageOut
            | JobState::Resizing
            | JobState::Suspended
            | JobState::Stopped
    )
}

/// roleplay's exit code for "stopped on a signal after checkpointing" (EX_TEMPFAIL).
const CHECKPOINTED_EXIT_CODE: u32 = crate::error::exit::INTERRUPTED as u32;

/// How a task in a final scheduler state ended (`None` while the state is not final), given its
/// exit code when sacct told it, the scheduler's reason, and `worker`, the shard's state file when
/// it speaks of this task. Behind both sacct's and squeue's final states.
pub fn job_end(
    state: &JobState,
    exit: Option<ExitCode>,
    reason: Option<&str>,
    worker: Option<&WorkerState>,
) -> Option<EndCause> {
    if !state.is_final() {
        return None;
    }
    let checkpointed = worker.is_some_and(|w| w.status == ShardStatus::Interrupted);
    let worker_error = worker
        .filter(|w| w.status == ShardStatus::Error)
        .map(|w| w.error.clone());
    let deadline = *state == JobState::Deadline;
    Some(match state {
        JobState::Preempted => EndCause::Preempted,
        JobState::NodeFail => EndCause::NodeFail,
        JobState::BootFail => EndCause::BootFail,
        JobState::Cancelled | JobState::Revoked => EndCause::Cancelled,
        JobState::Timeout | JobState::Deadline if checkpointed => EndCause::TimeoutAfterCheckpoint { deadline },
        JobState::Timeout | JobState::Deadline => EndCause::Timeout { deadline },
        JobState::OutOfMemory => EndCause::OutOfMemory,
        JobState::Completed => EndCause::CompletedButIncomplete,
        // FAILED, the one final state left.
        _ => match (exit, worker_error) {
            (Some(e), _) if e.signal == 0 && e.code == CHECKPOINTED_EXIT_CODE => EndCause::Checkpointed,
            (Some(e), Some(message)) => EndCause::WorkerError {
                exit: Some(e.code),
                message,
            },
            (Some(e), None) if e.signal != 0 => EndCause::Signal {
                code: e.code,
                signal: e.signal,
            },
            (Some(e), None) => EndCause::Exit { code: e.code },
            // squeue tells no exit code: the worker's record says what it could.
            (None, _) if checkpointed => EndCause::Checkpointed,
            (None, Some(message)) => EndCause::WorkerError { exit: None, message },
            (None, None) => EndCause::FailedNoExitCode {
                reason: reason.map(str::to_string),
            },
        },
    })
}

/// Everything the scheduler said.
#[derive(Default)]
struct Evidence {
    queue: HashMap<ArrayTask, QueueRecord>,
    accounting: HashMap<ArrayTask, AccountingRecord>,
    /// Own job id of a task -> the task.
    own_ids: HashMap<u64, ArrayTask>,
    queue_read: bool,
}

impl Evidence {
    fn add_queue(&mut self, records: Vec<QueueRecord>) {
        for r in records {
            let Some(t) = r.array else { continue };
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

    fn add_accounting(&mut self, records: Vec<AccountingRecord>) {
        for r in records {
            let Some(t) = r.array else { continue };
            self.own_ids.insert(r.job_id, t);
            self.accounting.insert(t, r);
        }
    }

    /// Whether the state file speaks of this task.
    fn state_is_of(&self, w: &WorkerState, task: ArrayTask) -> bool {
        match w.slurm_job_id.as_deref().map(str::parse::<JobRef>) {
            Some(Ok(JobRef::Task(t))) => t == task,
            Some(Ok(JobRef::Job(id))) => self.own_ids.get(&id) == Some(&task),
            _ => false,
        }
    }
}

/// Looks at the run: see the module's documentation for the sources and their order.
pub fn collect(ctx: &RunCtx, sched: Option<&dyn Scheduler>, subs: &Submissions, opts: &StatusOptions) -> RunReport {
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

    // The run's submissions: which task ran which shard.
    let mut tasks: Vec<Vec<TaskSub>> = vec![Vec::new(); n];
    let mut array_ids: Vec<u64> = Vec::new();
    let mut merge_ids: Vec<u64> = Vec::new();
    for a in subs.accepted_of(&plan.plan_hash) {
        match a.slot.kind {
            super::records::JobKind::Merge => merge_ids.push(a.job_id),
            super::records::JobKind::Array => {
                array_ids.push(a.job_id);
                for (i, &s) in a.shards.iter().enumerate() {
                    if let Some(list) = tasks.get_mut(s as usize) {
                        list.push(TaskSub {
                            round: a.slot.round,
                            array: a.slot.array,
                            task: ArrayTask {
                                array_job_id: a.job_id,
                                task_id: i as u32,
                            },
                        });
                    }
                }
            }
        }
    }
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
        .filter(|&s| journals[s].done < u64::from(plan.shards[s].units) && !tasks[s].is_empty())
        .collect();

    // The scheduler, before the records are read again.
    let mut ev = Evidence::default();
    let mut queue_status = "not asked".to_string();
    let mut accounting_status = "not asked".to_string();
    let sched = if opts.offline { None } else { sched };
    if let Some(sched) = sched {
        let mut ids: Vec<JobRef> = array_ids.iter().chain(&merge_ids).map(|&id| JobRef::Job(id)).collect();
        ids.sort();
        ids.dedup();
        match sched.queue(&QueueFilter::Jobs(ids)) {
            Ok(records) => {
                ev.add_queue(records);
                ev.queue_read = true;
                queue_status = "read".into();
            }
            Err(e) => {
                queue_status = format!("unavailable: {}", e.message);
                warnings.push(format!(
                    "the queue could not be read: the run's records only ({})",
                    e.message.lines().next().unwrap_or("")
                ));
            }
        }
        // sacct, for tasks that are not in the queue as pending or running.
        let mut ended_arrays: Vec<JobRef> = undone
            .iter()
            .flat_map(|&s| tasks[s].iter())
            .filter(|t| ev.queue.get(&t.task).is_none_or(|q| q.state.is_final()))
            .map(|t| JobRef::Job(t.task.array_job_id))
            .collect();
        ended_arrays.sort();
        ended_arrays.dedup();
        if ended_arrays.is_empty() {
            accounting_status = "not needed".into();
        } else {
            match sched.accounting(&ended_arrays) {
                Ok(Some(records)) => {
                    ev.add_accounting(records);
                    accounting_status = "read".into();
                }
                Ok(None) => accounting_status = "disabled on this cluster".into(),
                Err(e) => accounting_status = format!("unavailable: {}", e.message.lines().next().unwrap_or("")),
            }
        }
        // Read again what may have changed while the scheduler was asked.
        for &s in &undone {
            journals[s] = journal_summary(ctx, s as u32, &mut Vec::new());
            states[s] = state::read(&ctx.rd, s as u32);
        }
    }

    let recorded = subs.outcomes();
    let max_attempts = plan.experiment.worker.max_attempts;
    let mut shards = Vec::with_capacity(n);
    let mut new_outcomes = Vec::new();
    let cancels = subs.cancel_marks();
    let mut live_jobs: HashSet<u64> = HashSet::new();
    for s in 0..n {
        let units = u64::from(plan.shards[s].units);
        let j = journals[s];
        let worker = states[s].as_ref().filter(|w| w.plan_hash == plan.plan_hash);
        let latest = tasks[s].last();
        let mut report = ShardReport {
            shard: s as u32,
            state: State::NotSubmitted,
            reason: None,
            units,
            done: j.done.min(units),
            failed_units: j.failed,
            complete: j.done >= units,
            worker_attempts: worker.map_or(0, |w| w.attempt),
            submissions: tasks[s].len() as u32,
            failed_attempts: 0,
            max_attempts,
            over_budget: false,
            job: latest.map(TaskSub::job),
            round: latest.map(|t| t.round),
            host: worker.map(|w| w.host.clone()),
            heartbeat_age_secs: worker
                .filter(|w| w.status == ShardStatus::Running)
                .map(|w| now.saturating_sub(w.heartbeat_at)),
            log: latest.map(|t| {
                ctx.rd
                    .relative(&ctx.rd.slurm_task_log(t.task.array_job_id, t.task.task_id))
            }),
            resubmit: false,
        };
        // Live tasks (there should be one at most).
        let live: Vec<(&TaskSub, &QueueRecord)> = tasks[s]
            .iter()
            .filter_map(|t| ev.queue.get(&t.task).filter(|q| !q.state.is_final()).map(|q| (t, q)))
            .collect();
        for (t, _) in &live {
            live_jobs.insert(t.task.array_job_id);
        }
        if live.len() > 1 {
            warnings.push(format!(
                "shard {s} has {} tasks in the queue ({}): its worker lock lets one run at a time",
                live.len(),
                live.iter()
                    .map(|(t, _)| t.job().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        // How every task that is no longer queued ended (for the budget; the latest for the state).
        let mut ends: Vec<(usize, EndCause)> = Vec::new();
        if !report.complete {
            for (i, t) in tasks[s].iter().enumerate() {
                if live.iter().any(|(l, _)| l.task == t.task) {
                    continue;
                }
                let end = end_of(
                    t,
                    &ev,
                    worker,
                    recorded.get(&t.job()).copied(),
                    &cancels,
                    now,
                    opts,
                    i + 1 == tasks[s].len(),
                );
                if let Some(end) = end {
                    let known = recorded.get(&t.job()).is_some_and(|o| o.cause.is_same(&end));
                    if end.is_definitive() && !known {
                        new_outcomes.push(TaskOutcome {
                            plan_hash: plan.plan_hash.clone(),
                            round: t.round,
                            array: t.array,
                            index: t.task.task_id,
                            shard: s as u32,
                            job: t.job(),
                            cause: end.clone(),
                            at: now,
                        });
                    }
                    ends.push((i, end));
                }
            }
        }
        report.failed_attempts = ends.iter().filter(|(_, e)| e.counts()).count() as u32;
        report.over_budget = report.failed_attempts >= max_attempts;
        if report.complete {
            if j.failed > 0 {
                report.state = State::Failed;
                report.reason = Some(format!(
                    "{} of {units} units failed (backend errors): `roleplay resume --retry-failed` runs them again",
                    j.failed
                ));
            } else {
                report.state = State::Done;
            }
        } else if let Some((t, q)) = live
            .iter()
            .find(|(_, q)| is_running_state(&q.state))
            .or_else(|| live.first())
        {
            report.job = Some(t.job());
            report.round = Some(t.round);
            if is_running_state(&q.state) {
                report.state = State::Running;
                let stale = worker
                    .filter(|w| ev.state_is_of(w, t.task) && w.status == ShardStatus::Running)
                    .map(|w| now.saturating_sub(w.heartbeat_at))
                    .filter(|age| *age > opts.lost_after_secs);
                let on = q.nodes.as_deref().unwrap_or("?");
                report.reason = Some(match (stale, &q.state) {
                    (_, JobState::Completing) => format!("stopping on {on} (COMPLETING)"),
                    (Some(age), _) => format!("{} on {on}; no heartbeat for {age} s", q.state),
                    (None, JobState::Running) => format!("on {on}"),
                    (None, other) => format!("{other} on {on}"),
                });
            } else {
                report.state = State::Pending;
                let requeued = worker.is_some_and(|w| ev.state_is_of(w, t.task));
                report.reason = Some(match (q.reason.as_deref(), requeued) {
                    (Some("BeginTime"), true) => "requeued (BeginTime)".to_string(),
                    (Some(r), _) => r.to_string(),
                    (None, _) => q.state.to_string(),
                });
            }
        } else if let Some(name) = unconfirmed.get(&(s as u32)) {
            report.state = State::Pending;
            report.reason = Some(format!(
                "the submission of `{name}` is not confirmed: `roleplay submit` or `resume` looks it up"
            ));
        } else if let Some((_, end)) = ends.last().filter(|(i, _)| i + 1 == tasks[s].len()) {
            report.state = match end.class() {
                EndClass::Interrupted => State::Interrupted,
                EndClass::Failed => State::Failed,
                EndClass::Lost => State::Lost,
            };
            report.reason = Some(end.reason());
        } else if let Some(t) = latest {
            // No end known: still running by its heartbeat, or not asked.
            match worker.filter(|w| ev.state_is_of(w, t.task) && w.status == ShardStatus::Running) {
                Some(w) => {
                    report.state = State::Running;
                    report.reason = Some(format!(
                        "heartbeat {} s ago{}",
                        now.saturating_sub(w.heartbeat_at),
                        if ev.queue_read {
                            "; not in the queue"
                        } else {
                            "; queue not read"
                        }
                    ));
                }
                None => {
                    report.state = State::Pending;
                    report.reason = Some(format!("submitted as {}; the queue was not read", t.job()));
                }
            }
        } else if j.done > 0 {
            report.reason = Some(format!("{} of {units} units done by an earlier run", j.done));
        }
        report.resubmit = matches!(
            report.state,
            State::Interrupted | State::Lost | State::NotSubmitted | State::Failed
        ) && !report.complete
            && !report.over_budget;
        if report.over_budget && !report.complete && !report.state.is_live() {
            let r = report.reason.take().unwrap_or_default();
            report.reason = Some(format!(
                "{r}; over its attempt budget ({} failed of {max_attempts}): not resubmitted",
                report.failed_attempts
            ));
        }
        shards.push(report);
    }

    // Totals and the ETA.
    let mut totals = Totals::default();
    let mut tally: BTreeMap<&'static str, usize> = BTreeMap::new();
    for r in &shards {
        totals.units += r.units;
        totals.failed += r.failed_units;
        totals.done += r.done - r.failed_units.min(r.done);
        *tally.entry(r.state.as_str()).or_default() += 1;
    }
    totals.left = totals.units - totals.done - totals.failed;
    let finished = !shards.iter().any(|r| r.state.is_live());
    let complete = shards.iter().all(|r| r.state == State::Done);
    let first = subs
        .accepted_of(&plan.plan_hash)
        .filter(|a| a.slot.kind == super::records::JobKind::Array)
        .min_by_key(|a| a.at);
    let mut rate = None;
    let mut eta = None;
    if let Some(first) = first {
        let elapsed = now.saturating_sub(first.at);
        let gained = (totals.done + totals.failed).saturating_sub(first.units_done);
        if elapsed > 0 && gained > 0 {
            let r = gained as f64 / elapsed as f64;
            rate = Some((r * 1000.0).round() / 1000.0);
            if !finished && totals.left > 0 {
                eta = Some((totals.left as f64 / r).ceil() as u64);
            }
        }
    }
    for &m in &merge_ids {
        if ev
            .queue
            .values()
            .any(|q| q.array.is_none() && q.job_id == m && !q.state.is_final())
        {
            live_jobs.insert(m);
        }
    }
    let mut live_jobs: Vec<u64> = live_jobs.into_iter().collect();
    live_jobs.sort_unstable();
    RunReport {
        run_dir: ctx.root_display(),
        experiment: plan.experiment.name.clone(),
        plan_hash: plan.plan_hash.clone(),
        shards_total: n,
        units: totals,
        states: tally,
        finished,
        complete,
        rate_units_per_sec: rate,
        eta_secs: eta,
        queue: queue_status,
        accounting: accounting_status,
        warnings,
        shards,
        new_outcomes,
        live_jobs,
        queue_read: ev.queue_read,
    }
}

/// How a task that is not queued any more ended; `None` when nothing tells yet.
#[allow(clippy::too_many_arguments)]
fn end_of(
    t: &TaskSub,
    ev: &Evidence,
    worker: Option<&WorkerState>,
    recorded: Option<&TaskOutcome>,
    cancels: &CancelMarks,
    now: u64,
    opts: &StatusOptions,
    latest: bool,
) -> Option<EndCause> {
    let mine = worker.filter(|w| ev.state_is_of(w, t.task));
    // The scheduler's final word: sacct, else squeue within MinJobAge.
    let by_scheduler = match (ev.accounting.get(&t.task), ev.queue.get(&t.task)) {
        (Some(a), _) if a.state.is_final() => {
            job_end(&a.effective_state(), a.effective_exit_code(), a.reason.as_deref(), mine)
        }
        (_, Some(q)) if q.state.is_final() => job_end(&q.state, None, q.reason.as_deref(), mine),
        _ => None,
    };
    if by_scheduler.is_some() {
        return by_scheduler;
    }
    if let Some(o) = recorded {
        return Some(o.cause.clone());
    }
    // The worker's own record of this task.
    if let Some(w) = mine {
        let age = now.saturating_sub(w.heartbeat_at);
        return match w.status {
            ShardStatus::Interrupted => Some(EndCause::Checkpointed),
            ShardStatus::Error => Some(EndCause::WorkerError {
                exit: None,
                message: w.error.clone(),
            }),
            ShardStatus::Running if age > opts.lost_after_secs => Some(EndCause::NoHeartbeat {
                age_secs: age,
                queue_read: ev.queue_read,
            }),
            // Running with a fresh heartbeat: it may still be exiting.
            ShardStatus::Running => None,
            ShardStatus::Done | ShardStatus::Failed => Some(EndCause::FinishedButIncomplete),
        };
    }
    if cancels.cover(t.task) && ev.queue_read {
        return Some(EndCause::CancelledByRoleplay);
    }
    // Gone from the queue without a word from the worker (an earlier task's state file may have
    // been overwritten by a later attempt; its outcome was recorded then if anyone looked).
    ev.queue_read.then_some(EndCause::LeftQueueWithoutRecord { latest })
}

#[cfg(test)]
pub(crate) mod tests;
