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
//!
//! Three steps: `evidence` reads the records and asks the scheduler, into one plain value per
//! shard; `classify` decides each shard's state and reason from that value alone (pure, and where
//! [`job_end`], the one reading of a final scheduler state, lives); this module puts the report
//! together and adds up the totals and the ETA.

use super::Scheduler;
use super::records::{Accepted, Submissions, TaskOutcome};
use super::render::RunCtx;
use crate::rundir::state::ShardStatus;
use crate::slurm::JobRef;
use serde::{Serialize, Serializer};
use std::collections::{BTreeMap, HashSet};

mod classify;
mod evidence;

pub use classify::job_end;
use classify::{ShardVerdict, classify};
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
    /// Array job ids of the run with a task still queued or running (the dependencies of a new
    /// merge job).
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
    for e in &ev.shards {
        let mut v = classify(e, &cx);
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
    let progress = Progress::of(&shards, evidence::first_submission(subs, &plan.plan_hash), cx.now);
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
        log: e.tasks.last().map(|t| {
            ctx.rd
                .relative(&ctx.rd.slurm_task_log(t.task.array_job_id, t.task.task_id))
        }),
        resubmit: v.resubmit,
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
    /// Adds up the shards; the rate is the units gained since `first`, the first array submission.
    fn of(shards: &[ShardReport], first: Option<&Accepted>, now: u64) -> Progress {
        let mut units = Totals::default();
        let mut states: BTreeMap<&'static str, usize> = BTreeMap::new();
        for r in shards {
            units.units += r.units;
            units.failed += r.failed_units;
            units.done += r.done - r.failed_units.min(r.done);
            *states.entry(r.state.as_str()).or_default() += 1;
        }
        units.left = units.units.saturating_sub(units.done + units.failed);
        let finished = !shards.iter().any(|r| r.state.is_live());
        let complete = shards.iter().all(|r| r.state == State::Done);
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
