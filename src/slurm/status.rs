//! What a run on Slurm has done and is doing, per shard: done, done with errors (units that ended
//! with backend errors), running, pending, interrupted, failed (its last task failed, with the
//! reason), lost, or not submitted; the history of each shard's attempts; unit totals and an ETA.
//!
//! Sources, in order of trust: the shard journals (which units are done or failed: the truth), the
//! shard state files (the worker's status, attempt, heartbeat and Slurm task), the submissions
//! journal (which array task ran which shard, and outcomes seen before), then the scheduler as
//! evidence: squeue for what is pending or running now and, where accounting runs, sacct for how a
//! task ended. The scheduler is asked first and the journals of shards whose tasks ended are read
//! again afterwards, so a task that finishes meanwhile shows as done, never as failed. Works without
//! sacct, after squeue has forgotten a job (MinJobAge), and offline from the run's records alone.
//!
//! Three steps: `evidence` reads the records and asks the scheduler, into one plain value per
//! shard; `classify` decides each shard's state and reason from that value alone (pure, and where
//! [`job_end`], the one reading of a final scheduler state, lives); this module puts the report
//! together and adds up the totals and the ETA.

use super::Scheduler;
use super::records::{Accepted, EndClass, Submissions, TaskOutcome};
use super::render::RunCtx;
use crate::rundir::state::ShardStatus;
use crate::slurm::JobRef;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashSet};

mod classify;
mod evidence;

pub use classify::job_end;
use classify::{Phase, ShardVerdict, classify};
use evidence::{Context, ShardEvidence, gather};

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
    /// Every unit finished, some with a backend error (`resume --retry-failed` runs them again).
    DoneWithErrors,
    /// A task runs it now.
    Running,
    /// A task waits in the queue for it (or its submission is not confirmed yet).
    Pending,
    /// Its last task stopped without the work's fault (signal, preemption, node failure, cancel).
    Interrupted,
    /// Its last task failed.
    Failed,
    /// Its last task was running, stopped answering and left the queue without a word.
    Lost,
    /// No task was ever submitted for it.
    NotSubmitted,
}

impl State {
    /// Every state, in declaration order.
    pub const ALL: [State; 8] = [
        State::Done,
        State::DoneWithErrors,
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
            State::DoneWithErrors => "done with errors",
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
            State::DoneWithErrors => "done_with_errors",
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
    /// Units with a finished record (those with backend errors included).
    pub done: u64,
    /// Units whose latest record is a backend error.
    pub failed_units: u64,
    /// Every unit has a finished record.
    pub complete: bool,
    /// Worker starts (requeues included), from the state file.
    pub worker_attempts: u32,
    /// Array tasks submitted for it.
    pub submissions: u32,
    /// Runs of its tasks that failed (preemption, node failure, requeues, signals and cancels do
    /// not count), whether the shard is done now or not.
    pub failed_attempts: u32,
    pub max_attempts: u32,
    /// `failed_attempts >= max_attempts`: `resume` reports it instead of resubmitting it.
    pub over_budget: bool,
    /// The task named: a queued or running one, else the latest (`ARRAYJOB_INDEX`).
    pub job: Option<JobRef>,
    pub round: Option<u32>,
    pub host: Option<String>,
    pub heartbeat_age_secs: Option<u64>,
    /// The log of the latest task that has one, relative to the run directory (none when no task
    /// of it ever started).
    pub log: Option<String>,
    /// `roleplay resume` would submit it again.
    pub resubmit: bool,
    /// Every run of every task submitted for it, in order.
    pub history: Vec<AttemptReport>,
}

/// One run of one task of a shard (a requeued task runs more than once).
#[derive(Debug, Clone, Serialize)]
pub struct AttemptReport {
    /// `ARRAYJOB_INDEX`.
    pub job: JobRef,
    pub round: u32,
    /// 0 for the task's first run, 1 after its first requeue, ...
    pub run: u32,
    /// `queued`, `running`, `ended`, `finished` (its shard's units all done) or `unknown`.
    pub phase: &'static str,
    /// How it ended (for `ended`).
    pub reason: Option<String>,
    /// `interrupted`, `failed` or `lost` (for `ended`).
    pub class: Option<EndClass>,
    /// It counts against the attempt budget.
    pub counts: bool,
}

/// Units of the run: `done` (finished without error), `failed` (finished with a backend error),
/// `left` (no finished record).
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
    /// Nothing of the run is queued or running: no shard, no task of a done shard, no merge job.
    pub finished: bool,
    /// Every shard is done and nothing of the run is queued or running.
    pub complete: bool,
    /// Jobs of the run still queued or running although their work is done: tasks of done shards
    /// (`ARRAYJOB_INDEX`) and merge jobs.
    pub still_queued: Vec<String>,
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
    /// Array job ids of the run with a task still queued or running (the dependencies of a new
    /// merge job).
    #[serde(skip)]
    pub live_jobs: Vec<u64>,
    /// The queue was read (`resume` needs it).
    #[serde(skip)]
    pub queue_read: bool,
}

impl RunReport {
    /// 0 every shard done and nothing queued or running; 1 nothing queued or running and some shard
    /// not done; 75 still in progress (a task of a done shard or a merge job still queued included).
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

/// Looks at the run: gathers the evidence, classifies each shard, and adds up the totals and the
/// ETA (see the module's documentation).
pub fn collect(ctx: &RunCtx, sched: Option<&dyn Scheduler>, subs: &Submissions, opts: &StatusOptions) -> RunReport {
    let plan = &ctx.plan;
    let ev = gather(ctx, sched, subs, opts);
    let cx = ev.context;
    let mut warnings = ev.warnings;
    let mut shards = Vec::with_capacity(ev.shards.len());
    let mut new_outcomes = Vec::new();
    let mut live_jobs: HashSet<u64> = HashSet::new();
    let mut still_queued: Vec<String> = Vec::new();
    for e in &ev.shards {
        let mut v = classify(e, &cx);
        if e.complete() {
            still_queued.extend(
                e.tasks
                    .iter()
                    .filter(|t| t.queue.as_ref().is_some_and(|q| !q.state.is_final()))
                    .map(|t| t.job().to_string()),
            );
        }
        warnings.append(&mut v.warnings);
        live_jobs.extend(&v.live_jobs);
        for (i, cause) in std::mem::take(&mut v.learnt) {
            let Some(t) = e.tasks.get(i) else { continue };
            new_outcomes.push(TaskOutcome {
                plan_hash: plan.plan_hash.clone(),
                round: t.round,
                array: t.array,
                index: t.task.task_id,
                shard: e.shard,
                job: t.job(),
                cause,
                at: cx.now,
            });
        }
        shards.push(shard_report(ctx, e, v, &cx));
    }
    still_queued.extend(ev.live_merge_jobs.iter().map(|id| format!("{id} (merge job)")));
    let progress = Progress::of(
        &shards,
        still_queued.is_empty(),
        evidence::first_submission(subs, &plan.plan_hash),
        cx.now,
    );
    let mut live_jobs: Vec<u64> = live_jobs.into_iter().collect();
    live_jobs.sort_unstable();
    RunReport {
        run_dir: ctx.root_display(),
        experiment: plan.experiment.name.clone(),
        plan_hash: plan.plan_hash.clone(),
        shards_total: shards.len(),
        units: progress.units,
        states: progress.states,
        finished: progress.finished,
        complete: progress.complete,
        still_queued,
        rate_units_per_sec: progress.rate,
        eta_secs: progress.eta,
        queue: ev.queue,
        accounting: ev.accounting,
        warnings,
        shards,
        new_outcomes,
        live_jobs,
        queue_read: cx.queue_read,
    }
}

/// A shard's line of the report: its evidence's counts and the verdict.
fn shard_report(ctx: &RunCtx, e: &ShardEvidence, v: ShardVerdict, cx: &Context) -> ShardReport {
    let worker = e.worker.as_ref();
    let history = v
        .history
        .iter()
        .filter_map(|a| {
            let t = e.tasks.get(a.task)?;
            let (phase, cause) = match &a.phase {
                Phase::Queued => ("queued", None),
                Phase::Running => ("running", None),
                Phase::Ended(c) => ("ended", Some(c)),
                Phase::Finished => ("finished", None),
                Phase::Unknown => ("unknown", None),
            };
            Some(AttemptReport {
                job: t.job(),
                round: t.round,
                run: a.run,
                phase,
                reason: cause.map(|c| c.reason()),
                class: cause.map(|c| c.class()),
                counts: a.phase.counts(),
            })
        })
        .collect();
    ShardReport {
        shard: e.shard,
        state: v.state,
        reason: v.reason,
        units: e.units,
        done: e.journal.done.min(e.units),
        failed_units: e.journal.failed,
        complete: e.complete(),
        worker_attempts: worker.map_or(0, |w| w.attempt),
        submissions: e.tasks.len() as u32,
        failed_attempts: v.failed_attempts,
        max_attempts: cx.max_attempts,
        over_budget: v.over_budget,
        job: v.job,
        round: v.round,
        host: worker.map(|w| w.host.clone()),
        heartbeat_age_secs: worker
            .filter(|w| w.status == ShardStatus::Running)
            .map(|w| cx.now.saturating_sub(w.heartbeat_at)),
        log: e.tasks.iter().rev().find(|t| t.log).map(|t| {
            ctx.rd
                .relative(&ctx.rd.slurm_task_log(t.task.array_job_id, t.task.task_id))
        }),
        resubmit: v.resubmit,
        history,
    }
}

/// The run's totals, shards per state and the ETA.
struct Progress {
    units: Totals,
    states: BTreeMap<&'static str, usize>,
    finished: bool,
    complete: bool,
    rate: Option<f64>,
    eta: Option<u64>,
}

impl Progress {
    /// Adds up the shards; `nothing_else_queued`: no task of a done shard and no merge job is queued
    /// or running; the rate is the units gained since `first`, the first array submission.
    fn of(shards: &[ShardReport], nothing_else_queued: bool, first: Option<&Accepted>, now: u64) -> Progress {
        let mut units = Totals::default();
        let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in shards {
            units.units += r.units;
            units.failed += r.failed_units;
            units.done += r.done - r.failed_units.min(r.done);
            *states.entry(r.state.as_str()).or_default() += 1;
        }
        units.left = units.units.saturating_sub(units.done + units.failed);
        let finished = !shards.iter().any(|r| r.state.is_live()) && nothing_else_queued;
        let complete = finished && shards.iter().all(|r| r.state == State::Done);
        let mut rate = None;
        let mut eta = None;
        if let Some(first) = first {
            let elapsed = now.saturating_sub(first.at);
            let gained = (units.done + units.failed).saturating_sub(first.units_done);
            if elapsed > 0 && gained > 0 {
                let r = gained as f64 / elapsed as f64;
                rate = Some((r * 1000.0).round() / 1000.0);
                if !finished && units.left > 0 {
                    eta = Some((units.left as f64 / r).ceil() as u64);
                }
            }
        }
        Progress {
            units,
            states,
            finished,
            complete,
            rate,
            eta,
        }
    }
}

#[cfg(test)]
pub(crate) mod tests;
