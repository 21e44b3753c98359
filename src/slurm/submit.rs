//! Submitting a run's arrays (`submit`), resubmitting what is neither done nor queued (`resume`),
//! and stopping every job of a run (`cancel`), all under the run's submit lock.
//!
//! Idempotent by construction: job names are deterministic (`RunCtx::job_name`), an intent is
//! journaled before sbatch runs, the queue is searched by name before the first sbatch of an array
//! and after every sbatch error, and only then is sbatch tried again (a bounded number of times, and
//! only for errors that look transient). Where an intent got no answer (a submit killed while
//! sbatch ran) or sbatch failed, the accounting is searched by name too (`sacct --name`), so a job
//! that went through and has left the queue since is recorded, not submitted a second time. A
//! submit that "failed" but went through is recorded, not duplicated; a submit of a run already
//! submitted does nothing.

use super::records::{Accepted, Cancelled, Intent, JobKind, Record, Refused, Submissions, Via};
use super::render::{self, ArrayLimits, RenderOptions, Rendered, RunCtx};
use super::shell;
use super::status::{self, RunReport, StatusOptions};
use super::{JobRef, QueueFilter, Scheduler};
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::rundir::Lock;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// How to submit.
#[derive(Debug, Clone)]
pub struct SubmitOptions {
    /// Render and print the sbatch commands; submit nothing.
    pub dry_run: bool,
    /// `sbatch --test-only` each script: the scheduler checks it and says when it would start.
    pub test_only: bool,
    /// Add a merge job after the arrays (afterany, `--kill-on-invalid-dep=yes`).
    pub merge_job: bool,
    /// sbatch calls for one array at most (errors that look transient are tried again).
    pub max_tries: u32,
    /// Wait before the second sbatch call (doubled for each further one).
    pub retry_wait: Duration,
}

impl Default for SubmitOptions {
    fn default() -> Self {
        SubmitOptions {
            dry_run: false,
            test_only: false,
            merge_job: false,
            max_tries: 3,
            retry_wait: Duration::from_secs(2),
        }
    }
}

/// What happened to one job script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobResult {
    Submitted {
        job_id: u64,
        via: Via,
    },
    /// An earlier submit queued it already.
    AlreadySubmitted {
        job_id: u64,
    },
    /// `--dry-run`: the command that would run.
    WouldSubmit {
        command: String,
    },
    /// `--test-only`: what sbatch answered.
    Tested {
        answer: String,
    },
}

#[derive(Debug, Clone)]
pub struct SubmitReport {
    pub round: u32,
    pub limits: Option<ArrayLimits>,
    pub jobs: Vec<(Rendered, JobResult)>,
    /// Arrays of the round not submitted now: the cluster had no room for their tasks (MaxJobCount,
    /// MaxSubmitJobs); `resume` submits their shards later.
    pub held_back: Vec<u32>,
    pub warnings: Vec<String>,
}

impl SubmitReport {
    pub fn job_ids(&self) -> Vec<u64> {
        self.jobs
            .iter()
            .filter_map(|(_, r)| match r {
                JobResult::Submitted { job_id, .. } | JobResult::AlreadySubmitted { job_id } => Some(*job_id),
                _ => None,
            })
            .collect()
    }
}

/// The run's submit lock: one `submit`, `resume` or `cancel` at a time.
pub fn lock(ctx: &RunCtx) -> Result<Lock> {
    Lock::try_acquire(
        &ctx.rd.submit_lock_path(),
        "another `roleplay submit`, `resume` or `cancel` of this run",
    )
}

/// The array (or plain) job ids queued under `name`, oldest first. A record whose comment differs
/// belongs to someone else.
fn find_by_name(sched: &dyn Scheduler, name: &str, comment: &str) -> Result<Vec<u64>> {
    let records = sched.queue(&QueueFilter::Name(name.to_string()))?;
    let mut ids: Vec<u64> = records
        .iter()
        .filter(|r| r.name == name && r.comment.as_deref().is_none_or(|c| c == comment))
        .map(|r| r.array.map_or(r.job_id, |t| t.array_job_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(ids)
}

/// How much further back than an intent's own time `sacct --name` looks for its job (the clocks of
/// this host and of the controller may differ).
const ACCOUNTING_LOOKBACK_MARGIN_SECS: u64 = 3600;

/// The array (or plain) job ids the accounting knows under `name` (jobs that left the queue
/// already), oldest first; `None` when the cluster keeps no accounting. `since` is when the job
/// was submitted at the earliest (seconds since the epoch).
fn find_accounted(sched: &dyn Scheduler, name: &str, since: u64) -> Result<Option<Vec<u64>>> {
    let within = super::records::now().saturating_sub(since) + ACCOUNTING_LOOKBACK_MARGIN_SECS;
    let Some(records) = sched.accounting_named(name, within)? else {
        return Ok(None);
    };
    let mut ids: Vec<u64> = records
        .iter()
        .filter(|r| r.name == name)
        .map(|r| r.array.map_or(r.job_id, |t| t.array_job_id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    Ok(Some(ids))
}

/// Seconds the worker needs after its grace to abort what is left, sync its journal and write its
/// state file.
const CHECKPOINT_SECS: f64 = 5.0;

/// What the cluster's KillWait says of `worker.grace_secs`: after `scancel`, a preemption or the
/// time limit, Slurm sends SIGTERM and, KillWait seconds later, SIGKILL. A worker still waiting for
/// in-flight calls then dies before it records its state (its completed calls are journaled, and
/// the calls in flight are made again): the grace must end a few seconds before KillWait.
pub fn grace_warnings(exp: &Experiment, kill_wait_secs: Option<u64>) -> Vec<String> {
    let grace = exp.worker.grace_secs;
    match kill_wait_secs {
        Some(kill_wait) if grace + CHECKPOINT_SECS > kill_wait as f64 => vec![format!(
            "`worker.grace_secs = {grace}` is not below the cluster's KillWait ({kill_wait} s) by {CHECKPOINT_SECS} s: \
             after `scancel`, a preemption or the time limit Slurm SIGKILLs a worker that is still finishing \
             in-flight calls, before it checkpoints (those calls are made again); set `[worker] grace_secs` \
             to at most {}",
            (kill_wait as f64 - CHECKPOINT_SECS).max(0.0)
        )],
        _ => Vec::new(),
    }
}

/// [`grace_warnings`] with KillWait asked of the scheduler (nothing when it cannot tell).
fn grace_warnings_of(ctx: &RunCtx, sched: &dyn Scheduler) -> Vec<String> {
    grace_warnings(&ctx.plan.experiment, sched.kill_wait_secs().ok().flatten())
}

fn intent_of(ctx: &RunCtx, r: &Rendered, args: &[String]) -> Intent {
    Intent {
        slot: r.slot.clone(),
        comment: r.comment.clone(),
        shards: r.shards.clone(),
        script: ctx.relative(&r.script_path),
        script_blake3: r.blake3.clone(),
        args: args.to_vec(),
        at: super::records::now(),
    }
}

fn accepted_of(r: &Rendered, job_id: u64, cluster: Option<String>, via: Via, units_done: u64) -> Record {
    Record::Submitted(Accepted {
        slot: r.slot.clone(),
        job_id,
        cluster,
        shards: r.shards.clone(),
        script_blake3: r.blake3.clone(),
        via,
        units_done,
        at: super::records::now(),
    })
}

/// The sbatch command line, as a user would type it.
fn command_line(ctx: &RunCtx, r: &Rendered, args: &[String]) -> String {
    let mut words = vec!["sbatch".to_string(), "--parsable".to_string()];
    words.extend(args.iter().map(|a| shell::quote(a)));
    words.push(shell::quote(&ctx.relative(&r.script_path)));
    words.join(" ")
}

/// What submitting needs at hand: the run, the scheduler, the journal, and where warnings go.
struct Submitter<'a> {
    ctx: &'a RunCtx,
    sched: &'a dyn Scheduler,
    subs: &'a mut Submissions,
    opts: &'a SubmitOptions,
    /// Units done in the run now (recorded with each submission, for the ETA).
    units_done: u64,
    /// Arrays left unsubmitted for want of room in the cluster.
    held_back: Vec<u32>,
    warnings: Vec<String>,
}

impl Submitter<'_> {
    /// How many more tasks the cluster takes now, and the limit that says so (`None`: no limit
    /// known; a room that cannot be read is warned about, and sbatch will say).
    fn room(&mut self) -> Option<(u64, String)> {
        match self.sched.job_room(self.ctx.plan.experiment.slurm.account.as_deref()) {
            Ok(room) => room.tasks(),
            Err(e) => {
                self.warnings.push(format!(
                    "cannot tell how many more jobs the cluster takes ({}): submitting without counting",
                    e.message.lines().next().unwrap_or("")
                ));
                None
            }
        }
    }

    /// Submits one script: looks for it by name first, journals the intent, runs sbatch, and after
    /// an error searches the queue before trying again.
    fn submit_one(&mut self, r: &Rendered, args: &[String]) -> Result<JobResult> {
        let (ctx, sched) = (self.ctx, self.sched);
        let rd = &ctx.rd;
        let name = &r.slot.job_name;
        let found = find_by_name(sched, name, &r.comment)
            .map_err(|e| e.context(format!("cannot look for `{name}` in the queue before submitting it")))?;
        if let Some(&id) = found.first() {
            if found.len() > 1 {
                self.warnings.push(format!(
                    "{} jobs are named `{name}` ({found:?}): keeping {id}",
                    found.len()
                ));
            }
            self.subs
                .push(rd, accepted_of(r, id, None, Via::Queue, self.units_done))?;
            return Ok(JobResult::AlreadySubmitted { job_id: id });
        }
        let intent = intent_of(ctx, r, args);
        let since = intent.at;
        self.subs.push(rd, Record::Submitting(intent))?;
        let mut tries = 0;
        loop {
            tries += 1;
            let err = match sched.submit(&r.script_path, args) {
                Ok(s) => {
                    self.subs
                        .push(rd, accepted_of(r, s.job_id, s.cluster, Via::Sbatch, self.units_done))?;
                    return Ok(JobResult::Submitted {
                        job_id: s.job_id,
                        via: Via::Sbatch,
                    });
                }
                Err(e) => e,
            };
            // Not in the queue: it may have gone through and left it already.
            let found = find_by_name(sched, name, &r.comment).and_then(|found| {
                if !found.is_empty() {
                    return Ok((found, Via::Queue));
                }
                let accounted = find_accounted(sched, name, since)?.unwrap_or_default();
                Ok((accounted, Via::Accounting))
            });
            match found {
                Ok((found, Via::Accounting)) if !found.is_empty() => {
                    self.warnings.push(format!(
                        "sbatch reported an error for `{name}` but the job went through and has left the queue (sacct knows it as job {}): recorded, not submitted again",
                        found[0]
                    ));
                    self.subs
                        .push(rd, accepted_of(r, found[0], None, Via::Accounting, self.units_done))?;
                    return Ok(JobResult::Submitted {
                        job_id: found[0],
                        via: Via::Accounting,
                    });
                }
                Ok((found, _)) if !found.is_empty() => {
                    self.warnings.push(format!(
                        "sbatch reported an error for `{name}` but the job is queued (job {}): recorded, not submitted again",
                        found[0]
                    ));
                    self.subs
                        .push(rd, accepted_of(r, found[0], None, Via::Queue, self.units_done))?;
                    return Ok(JobResult::Submitted {
                        job_id: found[0],
                        via: Via::Queue,
                    });
                }
                Ok(_) if tries < self.opts.max_tries && Error::is_transient(&err) => {
                    self.warnings.push(format!(
                        "sbatch failed for `{name}` and the job is not queued: trying again ({})",
                        err.message.lines().next().unwrap_or("")
                    ));
                    std::thread::sleep(self.opts.retry_wait * 2u32.pow(tries - 1));
                }
                Ok(_) => {
                    self.subs.push(
                        rd,
                        Record::SubmitFailed(Refused {
                            slot: r.slot.clone(),
                            error: err.message.clone(),
                            at: super::records::now(),
                        }),
                    )?;
                    return Err(err.context(format!("`{}`", ctx.relative(&r.script_path))));
                }
                Err(qe) => {
                    // Unknown whether it went through: the intent stays open for the next run to resolve.
                    return Err(Error::runtime(format!(
                        "sbatch failed for `{name}` ({}) and the queue or the accounting could not be read to see whether it went through anyway ({})",
                        err.message.lines().next().unwrap_or(""),
                        qe.message.lines().next().unwrap_or("")
                    ))
                    .with_hint(
                        "run the same command again once `squeue` and `sacct` answer: it looks the job up by name before submitting again",
                    ));
                }
            }
        }
    }

    /// Submits (or dry-runs, or tests) rendered arrays, then the merge job if asked; `already` maps
    /// arrays an earlier submit queued to their job ids, `earlier_live` are jobs of the run still
    /// queued (the merge job waits for them too).
    fn submit_rendered(
        &mut self,
        round: u32,
        arrays: Vec<Rendered>,
        already: &HashMap<u32, u64>,
        earlier_live: &[u64],
        render_opts: &RenderOptions,
    ) -> Result<Vec<(Rendered, JobResult)>> {
        let (ctx, opts) = (self.ctx, self.opts);
        let mut jobs = Vec::new();
        let to_submit = arrays.iter().filter(|r| !already.contains_key(&r.slot.array)).count();
        let mut room = if opts.dry_run || opts.test_only || to_submit == 0 {
            None
        } else {
            self.room()
        };
        let initial_room = room.as_ref().map_or(0, |(n, _)| *n);
        let mut held: Option<(String, u64)> = None;
        for r in arrays {
            let args = r.sbatch_args.clone();
            let tasks = r.shards.len() as u64;
            if !already.contains_key(&r.slot.array) && !opts.dry_run && !opts.test_only {
                // The arrays that fit, in order; the rest wait for a `resume`.
                if let Some((left, why)) = &mut room {
                    if held.is_some() || tasks > *left {
                        let (_, n) = held.get_or_insert((why.clone(), 0));
                        *n += tasks;
                        self.held_back.push(r.slot.array);
                        continue;
                    }
                    *left -= tasks;
                }
            }
            let result = if let Some(&job_id) = already.get(&r.slot.array) {
                JobResult::AlreadySubmitted { job_id }
            } else if opts.dry_run {
                JobResult::WouldSubmit {
                    command: command_line(ctx, &r, &args),
                }
            } else if opts.test_only {
                let answer = self
                    .sched
                    .test_submit(&r.script_path, &args)
                    .map_err(|e| e.context(format!("`{}`", ctx.relative(&r.script_path))))?;
                JobResult::Tested { answer }
            } else {
                self.submit_one(&r, &args)?
            };
            jobs.push((r, result));
        }
        if let Some((why, tasks)) = held {
            let arrays = format!(
                "{} {} of round {round} ({tasks} tasks)",
                if self.held_back.len() == 1 { "array" } else { "arrays" },
                render::compact_ranges(&self.held_back)
            );
            if jobs.is_empty() {
                return Err(Error::runtime(format!(
                    "the cluster takes {initial_room} more tasks now ({why}): {arrays} not submitted"
                ))
                .with_hint(
                    "wait for jobs to leave the queue (finished ones stay counted for MinJobAge), then run the same command again; \
                     `scontrol show config | grep -E 'MaxJobCount|MinJobAge'` and `scontrol show assoc_mgr users=$USER flags=assoc` show the limits",
                ));
            }
            self.warnings.push(format!(
                "the cluster takes {initial_room} more tasks now ({why}): {arrays} not submitted; \
                 `roleplay resume {}` submits their shards once room is made",
                shell::quote(&ctx.root_display())
            ));
        }
        if opts.merge_job && !opts.test_only {
            let merge = render::render_merge(ctx, round, render_opts)?;
            render::write(ctx, std::slice::from_ref(&merge), self.subs)?;
            let mut deps: BTreeSet<u64> = earlier_live.iter().copied().collect();
            for (_, r) in &jobs {
                if let JobResult::Submitted { job_id, .. } = r {
                    deps.insert(*job_id);
                }
            }
            let mut args = merge.sbatch_args.clone();
            if !deps.is_empty() {
                let list: Vec<String> = deps.iter().map(u64::to_string).collect();
                args.push(format!("--dependency=afterany:{}", list.join(":")));
                args.push("--kill-on-invalid-dep=yes".to_string());
            }
            let already_merge = self
                .subs
                .accepted_of(&ctx.plan.plan_hash)
                .find(|a| a.slot == merge.slot)
                .map(|a| a.job_id);
            let result = match already_merge {
                Some(job_id) => JobResult::AlreadySubmitted { job_id },
                None if opts.dry_run => JobResult::WouldSubmit {
                    command: command_line(ctx, &merge, &args),
                },
                None => self.submit_one(&merge, &args)?,
            };
            jobs.push((merge, result));
        }
        Ok(jobs)
    }
}

/// Settles intents that got no answer (a crash, or an sbatch whose answer was lost): queued under
/// their name, or known to the accounting under it (the job ran and left the queue), they are
/// recorded; otherwise taken as not submitted. When the accounting cannot be read the intent stays
/// open and this is an error: submitting again could run the job twice.
pub fn resolve_unresolved(ctx: &RunCtx, sched: &dyn Scheduler, subs: &mut Submissions) -> Result<Vec<String>> {
    let mut notes = Vec::new();
    let open: Vec<Intent> = subs.unresolved().into_iter().cloned().collect();
    for i in open {
        let name = &i.slot.job_name;
        let mut found: Vec<(u64, Via)> = find_by_name(sched, name, &i.comment)?
            .into_iter()
            .map(|id| (id, Via::Queue))
            .collect();
        let mut accounting = true;
        if found.is_empty() {
            match find_accounted(sched, name, i.at) {
                Ok(Some(ids)) => found.extend(ids.into_iter().map(|id| (id, Via::Accounting))),
                Ok(None) => accounting = false,
                Err(e) => {
                    return Err(Error::runtime(format!(
                        "`{name}` had no recorded answer, is not queued, and the accounting could not be read to see whether it ran and left the queue ({})",
                        e.message.lines().next().unwrap_or("")
                    ))
                    .with_hint(
                        "run the same command again once `sacct` answers: it looks the job up by name before submitting again",
                    ));
                }
            }
        }
        let record = match found.first() {
            Some(&(id, via)) => {
                notes.push(match via {
                    Via::Accounting => format!(
                        "`{name}` had no recorded answer; it ran and has left the queue (sacct knows it as job {id}): recorded, not submitted again"
                    ),
                    _ => format!("`{name}` had no recorded answer but is queued as job {id}: recorded"),
                });
                if found.len() > 1 {
                    notes.push(format!(
                        "{} jobs are named `{name}` ({:?}): keeping {id}",
                        found.len(),
                        found.iter().map(|(id, _)| id).collect::<Vec<_>>()
                    ));
                }
                Record::Submitted(Accepted {
                    slot: i.slot.clone(),
                    job_id: id,
                    cluster: None,
                    shards: i.shards.clone(),
                    script_blake3: i.script_blake3.clone(),
                    via,
                    units_done: 0,
                    at: super::records::now(),
                })
            }
            None => {
                notes.push(format!(
                    "`{name}` had no recorded answer and is not queued{}: taken as not submitted",
                    if accounting {
                        " nor in the accounting"
                    } else {
                        " (this cluster keeps no accounting: a job that ran and left the queue cannot be seen, and its shards may run again; their journals keep every unit once)"
                    }
                ));
                Record::SubmitFailed(Refused {
                    slot: i.slot.clone(),
                    error: "no answer was recorded and the job is not in the queue".into(),
                    at: super::records::now(),
                })
            }
        };
        subs.push(&ctx.rd, record)?;
    }
    Ok(notes)
}

/// Units done in the whole run now (for the ETA of later looks).
fn units_done(ctx: &RunCtx) -> u64 {
    let report = status::collect(
        ctx,
        None,
        &Submissions::default(),
        &StatusOptions {
            offline: true,
            ..StatusOptions::default()
        },
    );
    report.units.done + report.units.failed
}

/// Array and merge jobs of the run that are still queued or running.
fn live_job_ids(sched: &dyn Scheduler, subs: &Submissions, plan_hash: &str) -> Result<Vec<u64>> {
    let ids: Vec<JobRef> = subs.accepted_of(plan_hash).map(|a| JobRef::Job(a.job_id)).collect();
    let mut live: Vec<u64> = sched
        .queue(&QueueFilter::Jobs(ids))?
        .into_iter()
        .filter(|r| !r.state.is_final())
        .map(|r| r.array.map_or(r.job_id, |t| t.array_job_id))
        .collect();
    live.sort_unstable();
    live.dedup();
    Ok(live)
}

/// `roleplay submit`: the whole plan as the run's first round of arrays. A second submit finds the
/// round submitted and does nothing (or submits the arrays an earlier, interrupted submit missed).
pub fn submit(
    ctx: &RunCtx,
    sched: &dyn Scheduler,
    render_opts: &RenderOptions,
    opts: &SubmitOptions,
) -> Result<SubmitReport> {
    let _lock = lock(ctx)?;
    render_opts.store(&ctx.rd)?;
    let mut subs = Submissions::read(&ctx.rd)?;
    let mut warnings = Vec::new();
    if !opts.dry_run && !opts.test_only {
        warnings.extend(resolve_unresolved(ctx, sched, &mut subs)?);
    }
    let plan_hash = ctx.plan.plan_hash.clone();
    let round = subs.first_round_of(&plan_hash).unwrap_or_else(|| subs.next_round());
    let limits = ArrayLimits::resolve(render_opts, Some(sched))?;
    let all: Vec<u32> = (0..ctx.plan.shards.len() as u32).collect();
    let rendered = render::render_round(ctx, round, &all, limits, render_opts, &[])?;
    warnings.extend(rendered.warnings.iter().cloned());
    warnings.extend(grace_warnings_of(ctx, sched));
    let mut already: HashMap<u32, u64> = HashMap::new();
    for a in subs.accepted_of(&plan_hash) {
        if a.slot.round == round && a.slot.kind == JobKind::Array {
            let same = rendered
                .arrays
                .iter()
                .any(|r| r.slot.array == a.slot.array && r.shards == a.shards);
            if !same {
                return Err(Error::config(format!(
                    "`{}` was submitted with other array limits (array {} of round {round} held shards {})",
                    ctx.root_display(),
                    a.slot.array,
                    render::compact_ranges(&a.shards)
                ))
                .with_hint("use `roleplay resume`, which submits what is missing as a new round"));
            }
            already.insert(a.slot.array, a.job_id);
        }
    }
    let mut arrays = rendered.arrays;
    if subs.has_round_after(&plan_hash, round) {
        // `resume` has submitted later rounds: it owns what the first round left out (held back
        // for want of room, or never answered); sending those arrays now could queue shards that
        // a later round already holds.
        let skipped: Vec<u32> = arrays
            .iter()
            .filter(|r| !already.contains_key(&r.slot.array))
            .map(|r| r.slot.array)
            .collect();
        if !skipped.is_empty() {
            warnings.push(format!(
                "{} {} of round {round} not submitted: `roleplay resume` has submitted later rounds of this run; \
                 `roleplay resume {}` submits what is neither done nor queued",
                if skipped.len() == 1 { "array" } else { "arrays" },
                render::compact_ranges(&skipped),
                shell::quote(&ctx.root_display())
            ));
            arrays.retain(|r| already.contains_key(&r.slot.array));
        }
    }
    render::write(ctx, &arrays, &subs)?;
    // The merge job waits for every job of the run still queued (later rounds' too).
    let earlier = !already.is_empty() || subs.has_round_after(&plan_hash, round);
    let earlier_live = if opts.merge_job && !opts.dry_run && !opts.test_only && earlier {
        live_job_ids(sched, &subs, &plan_hash)?
    } else {
        Vec::new()
    };
    let mut submitter = Submitter {
        ctx,
        sched,
        units_done: if opts.dry_run || opts.test_only {
            0
        } else {
            units_done(ctx)
        },
        subs: &mut subs,
        opts,
        held_back: Vec::new(),
        warnings,
    };
    let jobs = submitter.submit_rendered(round, arrays, &already, &earlier_live, render_opts)?;
    let (warnings, held_back) = (submitter.warnings, submitter.held_back);
    Ok(SubmitReport {
        round,
        limits: Some(limits),
        jobs,
        held_back,
        warnings,
    })
}

/// How to resume.
#[derive(Debug, Clone, Default)]
pub struct ResumeOptions {
    pub submit: SubmitOptions,
    pub status: StatusOptions,
    /// Also resubmit shards whose units all finished but some failed, with `--retry-failed`.
    pub retry_failed: bool,
}

#[derive(Debug, Clone)]
pub struct ResumeReport {
    /// The run as it was before resubmitting.
    pub before: RunReport,
    pub resubmitted: Vec<u32>,
    /// Not done, not queued, and over their attempt budget: reported, not resubmitted.
    pub over_budget: Vec<u32>,
    /// Every unit finished, some failed: resubmitted only with `--retry-failed`.
    pub failed_units: Vec<u32>,
    pub submitted: Option<SubmitReport>,
    /// What settling the submissions without an answer found (whether or not anything is
    /// resubmitted).
    pub notes: Vec<String>,
}

/// `roleplay resume`: resubmits, as a new round of arrays, the shards that are neither done nor
/// queued or running and are within their attempt budget.
pub fn resume(
    ctx: &RunCtx,
    sched: &dyn Scheduler,
    render_opts: &RenderOptions,
    opts: &ResumeOptions,
) -> Result<ResumeReport> {
    let _lock = lock(ctx)?;
    render_opts.store(&ctx.rd)?;
    let mut subs = Submissions::read(&ctx.rd)?;
    let mut notes = Vec::new();
    if !opts.submit.dry_run {
        notes.extend(resolve_unresolved(ctx, sched, &mut subs)?);
    }
    let mut warnings = Vec::new();
    let before = status::collect(ctx, Some(sched), &subs, &opts.status);
    if !before.queue_read {
        return Err(Error::runtime(format!(
            "cannot read the queue ({}): resubmitting now could run shards twice",
            before.queue
        ))
        .with_hint(
            "run `roleplay resume` again once `squeue` answers; `roleplay status --offline` shows the run's records",
        ));
    }
    if !opts.submit.dry_run {
        // One sync for every outcome learnt (thousands after a wave of task ends).
        let outcomes = before.new_outcomes.iter().cloned().map(Record::Outcome).collect();
        subs.push_all(&ctx.rd, outcomes)?;
    }
    let mut resubmitted = Vec::new();
    let mut over_budget = Vec::new();
    let mut failed_units = Vec::new();
    for s in &before.shards {
        let retry = opts.retry_failed && s.complete && s.failed_units > 0;
        if s.state.is_live() || (s.complete && !retry) {
            if s.complete && s.failed_units > 0 {
                failed_units.push(s.shard);
            }
            continue;
        }
        if s.over_budget {
            over_budget.push(s.shard);
        } else if s.resubmit || retry {
            resubmitted.push(s.shard);
        }
    }
    let mut report = ResumeReport {
        before,
        resubmitted,
        over_budget,
        failed_units,
        submitted: None,
        notes,
    };
    if report.resubmitted.is_empty() {
        return Ok(report);
    }
    let round = subs.next_round();
    let limits = ArrayLimits::resolve(render_opts, Some(sched))?;
    let worker_args: Vec<String> = if opts.retry_failed {
        vec!["--retry-failed".to_string()]
    } else {
        Vec::new()
    };
    let rendered = render::render_round(ctx, round, &report.resubmitted, limits, render_opts, &worker_args)?;
    warnings.extend(rendered.warnings.iter().cloned());
    warnings.extend(grace_warnings_of(ctx, sched));
    render::write(ctx, &rendered.arrays, &subs)?;
    let mut submitter = Submitter {
        ctx,
        sched,
        units_done: if opts.submit.dry_run { 0 } else { units_done(ctx) },
        subs: &mut subs,
        opts: &opts.submit,
        held_back: Vec::new(),
        warnings,
    };
    let jobs = submitter.submit_rendered(
        round,
        rendered.arrays,
        &HashMap::new(),
        &report.before.live_jobs,
        render_opts,
    )?;
    let (warnings, held_back) = (submitter.warnings, submitter.held_back);
    report.submitted = Some(SubmitReport {
        round,
        limits: Some(limits),
        jobs,
        held_back,
        warnings,
    });
    Ok(report)
}

/// `roleplay cancel`: every job of the run still queued or running (from the submissions journal,
/// and whatever the queue holds under the run's job names).
pub fn cancel(ctx: &RunCtx, sched: &dyn Scheduler) -> Result<Vec<u64>> {
    let _lock = lock(ctx)?;
    let mut subs = Submissions::read(&ctx.rd)?;
    let ids: Vec<JobRef> = subs.accepted().map(|a| JobRef::Job(a.job_id)).collect();
    let mut live: BTreeSet<u64> = sched
        .queue(&QueueFilter::Jobs(ids))?
        .into_iter()
        .filter(|r| !r.state.is_final())
        .map(|r| r.array.map_or(r.job_id, |t| t.array_job_id))
        .collect();
    for name in subs.job_names() {
        for r in sched.queue(&QueueFilter::Name(name.clone()))? {
            if r.name == name && !r.state.is_final() {
                live.insert(r.array.map_or(r.job_id, |t| t.array_job_id));
            }
        }
    }
    let live: Vec<u64> = live.into_iter().collect();
    if live.is_empty() {
        return Ok(live);
    }
    let jobs: Vec<JobRef> = live.iter().map(|&id| JobRef::Job(id)).collect();
    sched.cancel(&jobs)?;
    subs.push(
        &ctx.rd,
        Record::Cancelled(Cancelled {
            jobs,
            at: super::records::now(),
        }),
    )?;
    Ok(live)
}

#[cfg(test)]
mod scale_tests;
#[cfg(test)]
mod tests;
