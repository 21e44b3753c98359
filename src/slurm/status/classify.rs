//! The decisions of `status`, pure (no I/O, no clock, no scheduler: everything is in the
//! arguments): [`classify`] turns one shard's [`ShardEvidence`] into its [`ShardVerdict`] (state,
//! reason, attempt budget, whether `resume` submits it again, outcomes worth recording), and
//! [`job_end`] is the one reading of how a task in a final scheduler state ended.
//!
//! Trust, per shard: the journal (done or failed units) over everything; a task pending or running
//! in squeue; an unconfirmed submission; how the latest task ended, by sacct, else squeue's final
//! state, else an outcome recorded earlier, else the worker's state file, else a cancel mark or its
//! absence from the queue; with no end known, the worker's heartbeat.

use super::State;
use super::evidence::{Context, ShardEvidence, TaskEvidence};
use crate::rundir::state::{ShardState as WorkerState, ShardStatus};
use crate::slurm::records::{EndCause, EndClass};
use crate::slurm::{ExitCode, JobRef, JobState, QueueRecord};

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
    /// Ended tasks whose end counts against the attempt budget.
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
    let ends = if complete { Vec::new() } else { ends(e, cx) };
    v.learnt = ends
        .iter()
        .filter(|(i, cause)| {
            let known = e
                .tasks
                .get(*i)
                .and_then(|t| t.recorded.as_ref())
                .is_some_and(|r| r.is_same(cause));
            cause.is_definitive() && !known
        })
        .cloned()
        .collect();
    v.failed_attempts = ends.iter().filter(|(_, c)| c.counts()).count() as u32;
    v.over_budget = v.failed_attempts >= cx.max_attempts;
    let latest_end = ends.last().filter(|(i, _)| i + 1 == e.tasks.len()).map(|(_, c)| c);
    (v.state, v.reason) = if complete {
        finished_units(e)
    } else if let Some((t, q)) = live
        .iter()
        .find(|(_, q)| is_running_state(&q.state))
        .or_else(|| live.first())
    {
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
    v.resubmit = matches!(
        v.state,
        State::Interrupted | State::Lost | State::NotSubmitted | State::Failed
    ) && !complete
        && !v.over_budget;
    if v.over_budget && !complete && !v.state.is_live() {
        let r = v.reason.take().unwrap_or_default();
        v.reason = Some(format!(
            "{r}; over its attempt budget ({} failed of {}): not resubmitted",
            v.failed_attempts, cx.max_attempts
        ));
    }
    v
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

/// How every task that is no longer queued ended, where something tells (for the budget; the
/// latest for the state), by index in the shard's tasks.
fn ends(e: &ShardEvidence, cx: &Context) -> Vec<(usize, EndCause)> {
    e.tasks
        .iter()
        .enumerate()
        .filter(|(_, t)| live_in(t).is_none())
        .filter_map(|(i, t)| end_of(t, e, cx, i + 1 == e.tasks.len()).map(|cause| (i, cause)))
        .collect()
}

/// The shard's state file, when it speaks of this task.
fn worker_of<'a>(e: &'a ShardEvidence, t: &TaskEvidence) -> Option<&'a WorkerState> {
    e.worker.as_ref().filter(|_| e.worker_task == Some(t.task))
}

/// Every unit has a finished record: done, or failed units.
fn finished_units(e: &ShardEvidence) -> (State, Option<String>) {
    if e.journal.failed > 0 {
        (
            State::Failed,
            Some(format!(
                "{} of {} units failed (backend errors): `roleplay resume --retry-failed` runs them again",
                e.journal.failed, e.units
            )),
        )
    } else {
        (State::Done, None)
    }
}

/// A task of the shard is pending or running in squeue.
fn in_queue(e: &ShardEvidence, t: &TaskEvidence, q: &QueueRecord, cx: &Context) -> (State, Option<String>) {
    let worker = worker_of(e, t);
    if is_running_state(&q.state) {
        let stale = worker
            .filter(|w| w.status == ShardStatus::Running)
            .map(|w| cx.now.saturating_sub(w.heartbeat_at))
            .filter(|age| *age > cx.lost_after_secs);
        let on = q.nodes.as_deref().unwrap_or("?");
        let reason = match (stale, &q.state) {
            (_, JobState::Completing) => format!("stopping on {on} (COMPLETING)"),
            (Some(age), _) => format!("{} on {on}; no heartbeat for {age} s", q.state),
            (None, JobState::Running) => format!("on {on}"),
            (None, other) => format!("{other} on {on}"),
        };
        (State::Running, Some(reason))
    } else {
        let reason = match (q.reason.as_deref(), worker.is_some()) {
            (Some("BeginTime"), true) => "requeued (BeginTime)".to_string(),
            (Some(r), _) => r.to_string(),
            (None, _) => q.state.to_string(),
        };
        (State::Pending, Some(reason))
    }
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

/// How a task that is not queued any more ended; `None` when nothing tells yet.
fn end_of(t: &TaskEvidence, e: &ShardEvidence, cx: &Context, latest: bool) -> Option<EndCause> {
    let mine = worker_of(e, t);
    // The scheduler's final word: sacct, else squeue within MinJobAge.
    let by_scheduler = match (&t.accounting, &t.queue) {
        (Some(a), _) if a.state.is_final() => {
            job_end(&a.effective_state(), a.effective_exit_code(), a.reason.as_deref(), mine)
        }
        (_, Some(q)) if q.state.is_final() => job_end(&q.state, None, q.reason.as_deref(), mine),
        _ => None,
    };
    if by_scheduler.is_some() {
        return by_scheduler;
    }
    if let Some(recorded) = &t.recorded {
        return Some(recorded.clone());
    }
    // The worker's own record of this task.
    if let Some(w) = mine {
        let age = cx.now.saturating_sub(w.heartbeat_at);
        return match w.status {
            ShardStatus::Interrupted => Some(EndCause::Checkpointed),
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
    if t.cancelled && cx.queue_read {
        return Some(EndCause::CancelledByRoleplay);
    }
    // Gone from the queue without a word from the worker (an earlier task's state file may have
    // been overwritten by a later attempt; its outcome was recorded then if anyone looked).
    cx.queue_read.then_some(EndCause::LeftQueueWithoutRecord { latest })
}

#[cfg(test)]
mod tests;
