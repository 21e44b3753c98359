//! The decisions of `status`, pure (no I/O, no clock, no scheduler: everything is in the
//! arguments): [`classify`] turns one shard's [`ShardEvidence`] into its [`ShardVerdict`] (state,
//! reason, the history of its attempts, the attempt budget, whether `resume` submits it again,
//! outcomes worth recording), and [`job_end`] is the one reading of how a task in a final scheduler
//! state ended.
//!
//! Trust, per shard: the journal (done or failed units) over everything; a task pending or running
//! in squeue; an unconfirmed submission; how the latest task ended, by sacct, else squeue's final
//! state, else an outcome recorded earlier, else the worker's state file, else a cancel mark, else
//! the absence of any trace of it having started (no log, no state file: cancelled before it
//! started), else its absence from the queue; with no end known, the worker's heartbeat.
//!
//! Every task counts its runs: sacct's earlier runs of a requeued task (NODE_FAIL, PREEMPTED,
//! REQUEUED, ...) come before its latest. The history is the same whether the shard is done or
//! not: the failures of a shard that is done now still count, and are still shown.

use super::State;
use super::evidence::{Context, ShardEvidence, TaskEvidence};
use crate::rundir::state::{ShardState as WorkerState, ShardStatus};
use crate::slurm::records::{EndCause, EndClass};
use crate::slurm::{AccountingRecord, ExitCode, JobRef, JobState, QueueRecord};

/// roleplay's exit code for "stopped on a signal after checkpointing" (EX_TEMPFAIL).
const CHECKPOINTED_EXIT_CODE: u32 = crate::error::exit::INTERRUPTED as u32;

/// What [`classify`] concluded about one shard.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardVerdict {
    pub state: State,
    pub reason: Option<String>,
    /// The task the report names: a live one (a running one first), else the latest.
    pub job: Option<JobRef>,
    pub round: Option<u32>,
    /// Ended runs whose end counts against the attempt budget.
    pub failed_attempts: u32,
    /// `failed_attempts >= max_attempts`.
    pub over_budget: bool,
    /// `roleplay resume` would submit it again.
    pub resubmit: bool,
    /// Array job ids of its tasks that are queued or running.
    pub live_jobs: Vec<u64>,
    pub warnings: Vec<String>,
    /// Definitive ends the submissions journal does not hold yet: (index in the evidence's tasks,
    /// cause).
    pub learnt: Vec<(usize, EndCause)>,
    /// Every run of every task submitted for it, in order.
    pub history: Vec<Attempt>,
}

/// One run of one task: a task runs more than once when Slurm requeues it.
#[derive(Debug, Clone, PartialEq)]
pub struct Attempt {
    /// Index in the evidence's tasks.
    pub task: usize,
    /// 0 for the task's first run, 1 after its first requeue, ...
    pub run: u32,
    pub phase: Phase,
}

/// Where a run is, or how it ended.
#[derive(Debug, Clone, PartialEq)]
pub enum Phase {
    /// Waiting in the queue.
    Queued,
    /// Running now.
    Running,
    /// Ended so.
    Ended(EndCause),
    /// The shard's units all finished: the latest task of a done shard.
    Finished,
    /// Not in the queue, and nothing tells yet how it ended.
    Unknown,
}

impl Phase {
    /// Counts against the attempt budget.
    pub fn counts(&self) -> bool {
        matches!(self, Phase::Ended(c) if c.counts())
    }
}

/// Classifies one shard; see the module's documentation for the order of trust.
pub fn classify(e: &ShardEvidence, cx: &Context) -> ShardVerdict {
    let complete = e.complete();
    let latest = e.tasks.last();
    // Live tasks (there should be one at most).
    let live: Vec<(&TaskEvidence, &QueueRecord)> = e.tasks.iter().filter_map(|t| live_in(t).map(|q| (t, q))).collect();
    let mut v = ShardVerdict {
        state: State::NotSubmitted,
        reason: None,
        job: latest.map(TaskEvidence::job),
        round: latest.map(|t| t.round),
        failed_attempts: 0,
        over_budget: false,
        resubmit: false,
        live_jobs: live.iter().map(|(t, _)| t.task.array_job_id).collect(),
        warnings: Vec::new(),
        learnt: Vec::new(),
        history: history(e, cx),
    };
    if live.len() > 1 {
        v.warnings.push(format!(
            "shard {} has {} tasks in the queue ({}): its worker lock lets one run at a time",
            e.shard,
            live.len(),
            live.iter()
                .map(|(t, _)| t.job().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    // The latest run of each task that is no longer queued, where something tells how it ended.
    let last_runs: Vec<(usize, &EndCause)> = v
        .history
        .iter()
        .enumerate()
        .filter(|(k, a)| v.history.get(k + 1).is_none_or(|next| next.task != a.task))
        .filter_map(|(_, a)| match &a.phase {
            Phase::Ended(c) => Some((a.task, c)),
            _ => None,
        })
        .collect();
    if !complete {
        v.learnt = last_runs
            .iter()
            .filter(|(i, cause)| {
                let known = e
                    .tasks
                    .get(*i)
                    .and_then(|t| t.recorded.as_ref())
                    .is_some_and(|r| r.is_same(cause));
                cause.is_definitive() && !known
            })
            .map(|(i, c)| (*i, (*c).clone()))
            .collect();
    }
    v.failed_attempts = v.history.iter().filter(|a| a.phase.counts()).count() as u32;
    v.over_budget = v.failed_attempts >= cx.max_attempts;
    let latest_end = last_runs
        .last()
        .filter(|(i, _)| i + 1 == e.tasks.len() && live.is_empty())
        .map(|(_, c)| *c);
    let running_first = live
        .iter()
        .find(|(_, q)| is_running_state(&q.state))
        .or_else(|| live.first());
    (v.state, v.reason) = if complete {
        let (state, reason) = finished_units(e);
        match running_first {
            Some((t, q)) => {
                v.job = Some(t.job());
                v.round = Some(t.round);
                let (_, why) = in_queue(e, t, q, cx);
                let done = reason.unwrap_or_else(|| "every unit is done".to_string());
                (
                    state,
                    Some(format!(
                        "{done}; {} is still {} ({}): it will find nothing to do",
                        t.job(),
                        if is_running_state(&q.state) {
                            "running"
                        } else {
                            "queued"
                        },
                        why.unwrap_or_default()
                    )),
                )
            }
            None => (state, reason),
        }
    } else if let Some((t, q)) = running_first {
        v.job = Some(t.job());
        v.round = Some(t.round);
        in_queue(e, t, q, cx)
    } else if let Some(name) = &e.unconfirmed {
        (
            State::Pending,
            Some(format!(
                "the submission of `{name}` is not confirmed: `roleplay submit` or `resume` looks it up"
            )),
        )
    } else if let Some(cause) = latest_end {
        let state = match cause.class() {
            EndClass::Interrupted => State::Interrupted,
            EndClass::Failed => State::Failed,
            EndClass::Lost => State::Lost,
        };
        (state, Some(cause.reason()))
    } else if let Some(t) = latest {
        no_end_known(e, t, cx)
    } else if let Some(verdict) = e.worker.as_ref().and_then(|w| local_worker(e, w, cx)) {
        verdict
    } else if e.journal.done > 0 {
        (
            State::NotSubmitted,
            Some(format!(
                "{} of {} units done by an earlier run",
                e.journal.done, e.units
            )),
        )
    } else {
        (State::NotSubmitted, None)
    };
    // A shard stopped at its budget share would stop again at once: raising the budget re-plans.
    let at_budget = matches!(latest_end, Some(EndCause::BudgetReached { .. }))
        || (e.tasks.is_empty() && e.worker.as_ref().is_some_and(|w| w.status == ShardStatus::Budget));
    v.resubmit = matches!(
        v.state,
        State::Interrupted | State::Lost | State::NotSubmitted | State::Failed
    ) && !complete
        && !v.over_budget
        && !at_budget;
    if v.over_budget && !complete && !v.state.is_live() {
        let r = v.reason.take().unwrap_or_default();
        v.reason = Some(format!(
            "{r}; over its attempt budget ({} failed of {}): not resubmitted",
            v.failed_attempts, cx.max_attempts
        ));
    }
    v
}

/// Every run of every task, in order: sacct's earlier runs of a task, then its latest (queued,
/// running, ended, or the one that finished the shard).
fn history(e: &ShardEvidence, cx: &Context) -> Vec<Attempt> {
    let complete = e.complete();
    let mut out = Vec::new();
    for (i, t) in e.tasks.iter().enumerate() {
        let latest = i + 1 == e.tasks.len();
        let mut runs: Vec<EndCause> = t.earlier_runs.iter().filter_map(run_end).collect();
        let live = live_in(t);
        // sacct may not show a requeued task's new run yet: its latest record is then an earlier
        // run's end.
        if live.is_some()
            && let Some(end) = t.accounting.as_ref().filter(|a| a.state.is_final()).and_then(run_end)
        {
            runs.push(end);
        }
        let run = |k: usize| k as u32;
        for (k, cause) in runs.iter().enumerate() {
            out.push(Attempt {
                task: i,
                run: run(k),
                phase: Phase::Ended(cause.clone()),
            });
        }
        let phase = match live {
            Some(q) if is_running_state(&q.state) => Phase::Running,
            Some(_) => Phase::Queued,
            None if complete && latest => match &t.recorded {
                Some(cause) => Phase::Ended(cause.clone()),
                None => Phase::Finished,
            },
            None => end_of(t, e, cx, latest).map_or(Phase::Unknown, Phase::Ended),
        };
        out.push(Attempt {
            task: i,
            run: run(runs.len()),
            phase,
        });
    }
    out
}

/// How an earlier run of a requeued task ended (sacct's record of it), with no word from the
/// worker (its state file speaks of the latest run).
fn run_end(a: &AccountingRecord) -> Option<EndCause> {
    match a.effective_state() {
        JobState::Requeued => Some(EndCause::Requeued),
        // Requeued after it had finished: its worker found its work done.
        JobState::Completed => Some(EndCause::Completed),
        state => job_end(&state, a.effective_exit_code(), a.reason.as_deref(), None),
    }
}

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
    // A worker that stopped at its budget share says so; however the job ended after that.
    if let Some(w) = worker.filter(|w| w.status == ShardStatus::Budget) {
        return Some(EndCause::BudgetReached { cap: w.error.clone() });
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

/// The task's squeue record while it is pending or running.
fn live_in(t: &TaskEvidence) -> Option<&QueueRecord> {
    t.queue.as_ref().filter(|q| !q.state.is_final())
}

/// The shard's state file, when it speaks of this task.
fn worker_of<'a>(e: &'a ShardEvidence, t: &TaskEvidence) -> Option<&'a WorkerState> {
    e.worker.as_ref().filter(|_| e.worker_task == Some(t.task))
}

/// Every unit has a finished record: done, or done with errors (failed units).
fn finished_units(e: &ShardEvidence) -> (State, Option<String>) {
    if e.journal.failed > 0 {
        (
            State::DoneWithErrors,
            Some(format!(
                "{} of {} units ended with backend errors: `roleplay resume --retry-failed` runs them again",
                e.journal.failed, e.units
            )),
        )
    } else {
        (State::Done, None)
    }
}

/// The end of the run before the current one of a live task that was requeued: sacct's latest
/// record when it is final (sacct has not shown the new run yet), else its earlier runs' last.
fn requeued_after(t: &TaskEvidence) -> Option<EndCause> {
    match t.accounting.as_ref() {
        Some(a) if a.state.is_final() => run_end(a),
        _ => t.earlier_runs.last().and_then(run_end),
    }
}

/// A task of the shard is pending or running in squeue.
fn in_queue(e: &ShardEvidence, t: &TaskEvidence, q: &QueueRecord, cx: &Context) -> (State, Option<String>) {
    let worker = worker_of(e, t);
    let after = requeued_after(t);
    if is_running_state(&q.state) {
        let stale = worker
            .filter(|w| w.status == ShardStatus::Running)
            .map(|w| cx.now.saturating_sub(w.heartbeat_at))
            .filter(|age| *age > cx.lost_after_secs);
        let on = q.nodes.as_deref().unwrap_or("?");
        let mut reason = match (stale, &q.state) {
            (_, JobState::Completing) => format!("stopping on {on} (COMPLETING)"),
            (Some(age), _) => format!("{} on {on}; no heartbeat for {age} s", q.state),
            (None, JobState::Running) => format!("on {on}"),
            (None, other) => format!("{other} on {on}"),
        };
        match after {
            Some(EndCause::Requeued) => reason.push_str(" (requeued)"),
            Some(cause) => reason.push_str(&format!(" (requeued after {cause})")),
            None => {}
        }
        (State::Running, Some(reason))
    } else {
        let base = q.reason.clone().unwrap_or_else(|| q.state.to_string());
        let held = base.starts_with("JobHeld")
            || matches!(
                q.state,
                JobState::RequeueHold | JobState::SpecialExit | JobState::ResvDelHold
            );
        let shown = if held {
            format!("held ({base}): `scontrol release {}` lets it run", t.job())
        } else {
            base.clone()
        };
        // Without a reason squeue shows the state (PENDING): not worth repeating after a requeue.
        let detail = if q.reason.is_some() || held {
            format!(" ({shown})")
        } else {
            String::new()
        };
        let reason = match after {
            Some(EndCause::Requeued) => format!("requeued{detail}"),
            Some(cause) => format!("requeued after {cause}{detail}"),
            None if worker.is_some() && base == "BeginTime" => "requeued (BeginTime)".to_string(),
            None => shown,
        };
        (State::Pending, Some(reason))
    }
}

/// A shard no task was submitted for, by its local worker's state file (`roleplay run`); `None`
/// when the state file tells nothing the journal does not (the worker finished).
fn local_worker(e: &ShardEvidence, w: &WorkerState, cx: &Context) -> Option<(State, Option<String>)> {
    let age = cx.now.saturating_sub(w.heartbeat_at);
    let who = format!("pid {} on {}", w.pid, w.host);
    Some(match w.status {
        ShardStatus::Running => match e.worker_alive {
            // Its lock is free: the process is gone (killed, crashed, its machine rebooted).
            Some(false) => (
                State::Interrupted,
                Some(format!(
                    "worker died ({who}; last heartbeat {age} s ago): `roleplay resume` continues it"
                )),
            ),
            Some(true) => (State::Running, Some(format!("{who}; heartbeat {age} s ago"))),
            // On another host: its heartbeat is all there is.
            None if age > cx.lost_after_secs => (State::Lost, Some(format!("{who}; no heartbeat for {age} s"))),
            None => (State::Running, Some(format!("{who}; heartbeat {age} s ago"))),
        },
        ShardStatus::Interrupted => (State::Interrupted, Some(EndCause::Checkpointed.reason())),
        ShardStatus::Budget => (
            State::Interrupted,
            Some(EndCause::BudgetReached { cap: w.error.clone() }.reason()),
        ),
        ShardStatus::Error => (
            State::Failed,
            Some(
                EndCause::WorkerError {
                    exit: None,
                    message: w.error.clone(),
                }
                .reason(),
            ),
        ),
        ShardStatus::Done | ShardStatus::Failed => return None,
    })
}

/// The latest task is not queued and no end of it is known: still running by its heartbeat, or
/// the queue was not read.
fn no_end_known(e: &ShardEvidence, t: &TaskEvidence, cx: &Context) -> (State, Option<String>) {
    match worker_of(e, t).filter(|w| w.status == ShardStatus::Running) {
        Some(w) => (
            State::Running,
            Some(format!(
                "heartbeat {} s ago{}",
                cx.now.saturating_sub(w.heartbeat_at),
                if cx.queue_read {
                    "; not in the queue"
                } else {
                    "; queue not read"
                }
            )),
        ),
        None => (
            State::Pending,
            Some(format!("submitted as {}; the queue was not read", t.job())),
        ),
    }
}

/// How a task that is not queued any more ended (its latest run); `None` when nothing tells yet.
fn end_of(t: &TaskEvidence, e: &ShardEvidence, cx: &Context, latest: bool) -> Option<EndCause> {
    let mine = worker_of(e, t);
    // Nothing of it ever ran: no log, no state file of its worker.
    let never_started = !t.log && mine.is_none();
    // The scheduler's final word: sacct, else squeue within MinJobAge.
    let by_scheduler = match (&t.accounting, &t.queue) {
        (Some(a), _) if a.state.is_final() => {
            job_end(&a.effective_state(), a.effective_exit_code(), a.reason.as_deref(), mine)
        }
        (_, Some(q)) if q.state.is_final() => job_end(&q.state, None, q.reason.as_deref(), mine),
        _ => None,
    };
    match by_scheduler {
        Some(EndCause::Cancelled) if never_started => return Some(EndCause::CancelledBeforeStart),
        Some(cause) => return Some(cause),
        None => {}
    }
    if let Some(recorded) = &t.recorded {
        return Some(recorded.clone());
    }
    // The worker's own record of this task.
    if let Some(w) = mine {
        let age = cx.now.saturating_sub(w.heartbeat_at);
        return match w.status {
            ShardStatus::Interrupted => Some(EndCause::Checkpointed),
            ShardStatus::Budget => Some(EndCause::BudgetReached { cap: w.error.clone() }),
            ShardStatus::Error => Some(EndCause::WorkerError {
                exit: None,
                message: w.error.clone(),
            }),
            ShardStatus::Running if age > cx.lost_after_secs => Some(EndCause::NoHeartbeat {
                age_secs: age,
                queue_read: cx.queue_read,
            }),
            // Running with a fresh heartbeat: it may still be exiting.
            ShardStatus::Running => None,
            ShardStatus::Done | ShardStatus::Failed => Some(EndCause::FinishedButIncomplete),
        };
    }
    if !cx.queue_read {
        return None;
    }
    if t.cancelled {
        return Some(EndCause::CancelledByRoleplay);
    }
    // Gone from the queue without a trace of having started: squeue and sacct keep nothing of a
    // task cancelled while it waited in its array's pending record.
    if never_started {
        return Some(EndCause::CancelledBeforeStart);
    }
    // Gone from the queue without a word from the worker (an earlier task's state file may have
    // been overwritten by a later attempt; its outcome was recorded then if anyone looked).
    Some(EndCause::LeftQueueWithoutRecord { latest })
}

#[cfg(test)]
mod tests;
