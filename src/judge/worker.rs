//! Running one shard of a judge stage: what `worker::run_shard` does for a judge plan.
//!
//! The same discipline as a dialogue shard: the shard's lock, its journal replayed, up to
//! `worker.concurrency` units in flight, every completed model call appended as a `call` record
//! (key: the unit, turn 0, the responder role, the attempt: 0 for the first ask, k for the k-th
//! re-ask) before its reply is parsed, and a stop signal that lets in-flight calls finish within
//! `grace_secs`, then abandons the rest, whose completed calls are already journaled. A resumed unit
//! replays its recorded replies through the parser, so it asks again exactly where it stopped and
//! never repeats a completed call.
//!
//! A judged unit leaves two records: its `verdict` (the truth for merge and report), then a `done`
//! record with no turns whose end reason is `stop` for a verdict (`ok` or `unparsable`) and
//! `backend_error` for a failed one: the unit-finished mark that every stage-agnostic reader of a
//! run directory already counts (`status`, `resume`, the progress display, the breaker). A verdict
//! found without its mark (a kill between the two writes) gets it on the next open.

use super::plan::{judge_digest, unit_id};
use super::record::{Input, Judge, Stage, Status, Verdict};
use super::rubric::{self, Dialogue};
use super::units::{self, Unit};
use super::verdict;
use crate::dialogue::{BackendFailure, Call, CallEvent, Counters, DialogueRecord, EndReason, Ending};
use crate::error::{Error, Result};
use crate::experiment::{Backend, Model, Role};
use crate::llm::{CallKey, ChatModel, Prompt, Request};
use crate::rundir::journal::{AttemptStart, Entry, Journal, SYNC_INTERVAL};
use crate::rundir::state::{self, ShardState, ShardStatus};
use crate::rundir::{Lock, RunDir};
use crate::worker::signals::Cancel;
use crate::worker::{Progress, ShardOutcome, Shared};
use std::collections::{BTreeMap, HashMap};
use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinSet;

const HEARTBEAT: Duration = Duration::from_secs(10);

/// The key of a judge's call.
pub fn call_key(unit: crate::plan::UnitId, attempt: u32) -> CallKey {
    CallKey {
        unit,
        seed: 0,
        turn: 0,
        role: Role::Responder,
        attempt,
    }
}

/// Read a shard's inputs and check each against its unit: its input must hash to its id.
fn read_inputs(
    rd: &RunDir,
    plan: &crate::plan::Plan,
    stage: &Stage,
    shard: u32,
    units: &[Unit],
) -> Result<HashMap<crate::plan::UnitId, Dialogue>> {
    let path = rd.judge_inputs_path(&stage.inputs, shard);
    let damaged = |what: String| {
        Error::config(format!("`{}`: {what}", path.display()))
            .with_hint("the stage's inputs are written by `roleplay judge` and must not be edited; run it again to plan the stage anew")
    };
    let pair = plan.shards[shard as usize].pair as usize;
    let judge = &stage.judges[pair];
    let model = plan
        .experiment
        .model(&judge.name)
        .ok_or_else(|| damaged(format!("the plan names no model `{}`", judge.name)))?;
    let digest = judge_digest(model, judge);
    let mut by_id: HashMap<_, Input> = HashMap::with_capacity(units.len());
    if !units.is_empty() {
        let file = std::io::BufReader::new(fs_err::File::open(&path)?);
        for (i, line) in file.lines().enumerate() {
            let line = line?;
            let input: Input =
                serde_json::from_str(&line).map_err(|e| damaged(format!("line {}: not an input ({e})", i + 1)))?;
            by_id.insert(input.unit, input);
        }
    }
    let mut out = HashMap::with_capacity(units.len());
    for u in units {
        let Some(input) = by_id.remove(&u.id) else {
            return Err(damaged(format!("no input for unit {}", u.id)));
        };
        let messages = rubric::messages(&stage.rubric, &input.dialogue, &[]);
        if input.parent != u.parent || unit_id(&digest, input.parent, &messages) != u.id {
            return Err(damaged(format!("the input of unit {} does not hash to its id", u.id)));
        }
        out.insert(u.id, input.dialogue);
    }
    Ok(out)
}

/// The judge's client: the simulator with its judge-mode rate, or the worker's own client.
fn client_of(shared: &Shared, model: &Model, judge: &Judge) -> Result<Arc<dyn ChatModel>> {
    if model.behaviour.backend == Backend::Sim {
        let sim = crate::llm::sim::SimModel::new(&model.name, model.behaviour.sim.clone().unwrap_or_default())
            .with_judge_malformed_rate(judge.malformed_rate);
        return Ok(Arc::new(sim));
    }
    shared
        .clients
        .get(&model.name)
        .cloned()
        .ok_or_else(|| Error::config(format!("no client for the judge `{}`", model.name)))
}

#[derive(Debug, Clone, Default)]
struct Counts {
    done: u64,
    failed: u64,
    by_status: BTreeMap<String, u64>,
}

impl Counts {
    fn add(&mut self, s: Status) {
        self.done += 1;
        if s == Status::Failed {
            self.failed += 1;
        }
        *self.by_status.entry(s.as_str().to_string()).or_default() += 1;
    }
}

#[derive(Clone)]
struct Reporter {
    rd: RunDir,
    base: ShardState,
    counts: Arc<Mutex<Counts>>,
}

impl Reporter {
    fn write(&self, status: ShardStatus, error: Option<String>) -> Result<()> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        state::write(
            &self.rd,
            &ShardState {
                status,
                heartbeat_at: state::now(),
                done: c.done,
                failed: c.failed,
                end_reasons: c.by_status,
                error,
                ..self.base.clone()
            },
        )
    }
}

/// The `done` mark of a judged unit (see the module docs).
fn done_mark(v: &Verdict) -> DialogueRecord {
    DialogueRecord {
        unit: v.unit,
        turns: Vec::new(),
        ending: Ending {
            reason: if v.status == Status::Failed {
                EndReason::BackendError
            } else {
                EndReason::Stop
            },
            error: v.failure.clone(),
            last_inquirer: Vec::new(),
            last_responder: None,
        },
        counters: Counters {
            http_attempts: v.http_attempts,
            retries: v.http_attempts.saturating_sub(v.calls + u32::from(v.failure.is_some())),
            ..Counters::default()
        },
        windows: Default::default(),
    }
}

/// Judge one unit: ask, parse, re-ask with the error after a malformed reply, at most
/// `1 + max_malformed` asks. `None`: a stop came before a needed call.
#[allow(clippy::too_many_arguments)]
async fn judge_one(
    client: &dyn ChatModel,
    model: &Model,
    stage: &Stage,
    unit: Unit,
    dialogue: &Dialogue,
    cache: &HashMap<u32, Call>,
    journal: &Journal,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<Option<Verdict>> {
    let turns = dialogue.shown_turns();
    let mut malformed: Vec<(String, String)> = Vec::new();
    let mut v = Verdict {
        unit: unit.id,
        parent: unit.parent,
        status: Status::Unparsable,
        scores: None,
        calls: 0,
        errors: Vec::new(),
        raw_output: None,
        failure: None,
        prompt_tokens: None,
        completion_tokens: None,
        latency_ms: 0.0,
        http_attempts: 0,
    };
    for attempt in 0..=stage.max_malformed {
        let key = call_key(unit.id, attempt);
        let call = match cache.get(&attempt) {
            Some(c) => c.clone(),
            None => {
                if cancel.is_cancelled() {
                    return Ok(None);
                }
                let sampling = model.behaviour.sampling.clone();
                let req = Request {
                    key,
                    prompt: Prompt::Chat(rubric::messages(&stage.rubric, dialogue, &malformed)),
                    sampling: sampling.clone(),
                };
                match client.complete_until(&req, &cancel.halt()).await {
                    Ok(c) => {
                        let call = Call {
                            output: c.text,
                            raw_output: None,
                            prompt_tokens: c.prompt_tokens,
                            completion_tokens: c.completion_tokens,
                            latency_ms: c.latency_ms,
                            finish_reason: c.finish_reason,
                            attempts: c.attempts,
                            transient_retries: c.attempts.saturating_sub(1),
                            overflow_refusals: 0,
                            cut_replies: 0,
                            discarded_prompt_tokens: 0,
                            discarded_completion_tokens: 0,
                            sampling,
                            self_reply_cut: false,
                            trimmed_pairs: 0,
                            cut_by_window: false,
                        };
                        journal.append_call(&CallEvent {
                            key,
                            call: call.clone(),
                        })?;
                        progress.calls.fetch_add(1, Ordering::Relaxed);
                        call
                    }
                    // Not sent after the stop: the unit waits for the next run.
                    Err(e) if e.kind == crate::llm::ErrorKind::Stopped => return Ok(None),
                    Err(e) => {
                        v.status = Status::Failed;
                        v.http_attempts += e.attempts;
                        v.failure = Some(BackendFailure {
                            role: Role::Responder,
                            kind: e.kind,
                            message: e.message,
                            attempts: e.attempts,
                            transient_retries: e.attempts.saturating_sub(1),
                            overflow_refusals: 0,
                            cut_replies: 0,
                        });
                        v.raw_output = None;
                        return Ok(Some(v));
                    }
                }
            }
        };
        v.calls += 1;
        v.http_attempts += call.attempts;
        v.latency_ms += call.latency_ms;
        if let Some(t) = call.prompt_tokens {
            *v.prompt_tokens.get_or_insert(0) += u64::from(t);
        }
        if let Some(t) = call.completion_tokens {
            *v.completion_tokens.get_or_insert(0) += u64::from(t);
        }
        match verdict::parse(&call.output, turns) {
            Ok(scores) => {
                v.status = Status::Ok;
                v.scores = Some(scores);
                return Ok(Some(v));
            }
            Err(why) => {
                v.errors.push(why.clone());
                v.raw_output = Some(call.output.clone());
                malformed.push((call.output, why));
            }
        }
    }
    Ok(Some(v))
}

/// Run one shard of a judge stage to its end, or to the stop signal.
pub async fn run_shard(shared: &Shared, shard: u32) -> Result<ShardOutcome> {
    let plan = shared.plan.clone();
    let stage = plan
        .judge
        .as_ref()
        .ok_or_else(|| Error::runtime("not a judge stage's plan"))?;
    let rd = &shared.run_dir;
    if shard as usize >= plan.shards.len() {
        return Err(Error::config(format!(
            "shard {shard} does not exist: the judge stage has {} shards (0 to {})",
            plan.shards.len(),
            plan.shards.len().saturating_sub(1)
        ))
        .with_hint("check `--shard`, or the array map the Slurm script passes"));
    }
    let _lock = Lock::try_acquire(&rd.shard_lock_path(shard), &format!("a worker of shard {shard}"))?;
    let units = units::read(&rd.units_path(&plan), Some(shard))?;
    if units.len() as u32 != plan.shards[shard as usize].units {
        return Err(Error::config(format!(
            "the units file of `{}` does not match its plan (shard {shard})",
            rd.root.display()
        ))
        .with_hint("the stage is damaged; run `roleplay judge` again"));
    }
    let dialogues = read_inputs(rd, &plan, stage, shard, &units)?;
    let pair = plan.experiment.pairs[plan.shards[shard as usize].pair as usize].clone();
    let judge = &stage.judges[plan.shards[shard as usize].pair as usize];
    let model = plan
        .experiment
        .model(&judge.name)
        .ok_or_else(|| Error::config("the plan names a judge it does not define"))?
        .clone();
    let client = client_of(shared, &model, judge)?;
    let (journal, contents) = Journal::open(&rd.journal_path(shard), &plan.plan_hash, shard, shared.options.durable)?;
    if !contents.damaged_lines.is_empty() {
        eprintln!(
            "warning: `{}`: skipped damaged records at lines {:?}; the units they touched are judged again",
            journal.path().display(),
            contents.damaged_lines
        );
    }
    let journal = Arc::new(journal);
    let in_shard: std::collections::HashSet<_> = units.iter().map(|u| u.id).collect();
    let mut attempts = 0u32;
    let mut calls: HashMap<crate::plan::UnitId, HashMap<u32, Call>> = HashMap::new();
    let mut verdicts: HashMap<crate::plan::UnitId, Verdict> = HashMap::new();
    let mut marked: std::collections::HashSet<crate::plan::UnitId> = Default::default();
    for e in contents.entries {
        match e {
            Entry::Attempt(a) => attempts = attempts.max(a.attempt),
            Entry::Call(c) if in_shard.contains(&c.key.unit) => {
                calls.entry(c.key.unit).or_default().insert(c.key.attempt, c.call);
            }
            Entry::Verdict(v) if in_shard.contains(&v.unit) => {
                marked.remove(&v.unit);
                verdicts.insert(v.unit, *v);
            }
            Entry::Done(d) if verdicts.contains_key(&d.unit) => {
                marked.insert(d.unit);
            }
            _ => {}
        }
    }
    for v in verdicts.values().filter(|v| !marked.contains(&v.unit)) {
        journal.append(&Entry::Done(Box::new(done_mark(v))))?;
    }
    let retry_failed = shared.options.retry_failed;
    let again = |v: &Verdict| retry_failed && v.status == Status::Failed;
    let mut counts = Counts::default();
    for v in verdicts.values().filter(|v| !again(v)) {
        counts.add(v.status);
    }
    let already_done = counts.done;
    let todo: Vec<Unit> = units
        .iter()
        .filter(|u| verdicts.get(&u.id).is_none_or(again))
        .copied()
        .collect();
    let prior = state::read(rd, shard);
    let attempt = attempts.max(prior.as_ref().map(|s| s.attempt).unwrap_or(0)) + u32::from(!todo.is_empty());
    let started_at = state::now();
    let counts = Arc::new(Mutex::new(counts));
    let reporter = Reporter {
        rd: rd.clone(),
        base: ShardState {
            shard,
            plan_hash: plan.plan_hash.clone(),
            attempt,
            status: ShardStatus::Running,
            host: state::hostname(),
            pid: std::process::id(),
            slurm_job_id: shared.options.slurm_job_id.clone(),
            started_at,
            heartbeat_at: started_at,
            units: units.len() as u64,
            done: 0,
            failed: 0,
            end_reasons: BTreeMap::new(),
            error: None,
        },
        counts: counts.clone(),
    };
    let total = units.len() as u64;
    let outcome = |c: &Counts, interrupted: bool, halted: u64| ShardOutcome {
        shard,
        units: total,
        already_done,
        finished: c.done - already_done,
        failed: c.failed,
        interrupted,
        halted,
        budget: None,
    };
    if todo.is_empty() {
        journal.sync()?;
        let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let status = if c.failed > 0 {
            ShardStatus::Failed
        } else {
            ShardStatus::Done
        };
        if prior.as_ref().map(|s| (s.status, s.plan_hash.as_str())) != Some((status, plan.plan_hash.as_str())) {
            reporter.write(status, None)?;
        }
        return Ok(outcome(&c, false, 0));
    }
    journal.append(&Entry::Attempt(AttemptStart {
        attempt,
        host: state::hostname(),
        pid: std::process::id(),
        slurm_job_id: shared.options.slurm_job_id.clone(),
        started_at,
    }))?;
    reporter.write(ShardStatus::Running, None)?;

    // Group commit and heartbeat beside the work.
    let (stop_bg, mut stop_rx) = tokio::sync::watch::channel(false);
    let bg = {
        let journal = journal.clone();
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let mut sync_tick = tokio::time::interval(SYNC_INTERVAL);
            let mut beat = tokio::time::interval(HEARTBEAT);
            beat.tick().await;
            loop {
                tokio::select! {
                    _ = sync_tick.tick() => {
                        let j = journal.clone();
                        if let Ok(Err(e)) = tokio::task::spawn_blocking(move || j.sync()).await {
                            eprintln!("{e}");
                        }
                    }
                    _ = beat.tick() => { let _ = reporter.write(ShardStatus::Running, None); }
                    _ = stop_rx.changed() => break,
                }
            }
        })
    };
    let stage = Arc::new(stage.clone());
    let model = Arc::new(model);
    let dialogues = Arc::new(dialogues);
    let mut set: JoinSet<Result<Option<Verdict>>> = JoinSet::new();
    let mut first_error: Option<Error> = None;
    let mut cancel = shared.cancel.clone();
    let mut started = 0u64;
    let todo_len = todo.len() as u64;
    let on_done = |res: std::result::Result<Result<Option<Verdict>>, tokio::task::JoinError>,
                   first_error: &mut Option<Error>| {
        match res {
            Ok(Ok(Some(v))) => {
                // After a stop signal a failing call says nothing about the unit: it waits.
                if v.status == Status::Failed && shared.cancel.is_cancelled() {
                    return;
                }
                let mark = done_mark(&v);
                let status = v.status;
                if let Err(e) = journal
                    .append(&Entry::Verdict(Box::new(v)))
                    .and_then(|_| journal.append(&Entry::Done(Box::new(mark.clone()))))
                {
                    first_error.get_or_insert(e);
                    return;
                }
                shared.progress.finish(&pair, &mark);
                let _ = shared.breaker.observe(&pair, &mark);
                counts.lock().unwrap_or_else(|p| p.into_inner()).add(status);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) if e.is_cancelled() => {}
            Err(e) => {
                first_error.get_or_insert(Error::runtime(format!("a judge task failed: {e}")));
            }
        }
    };
    let mut pending = todo.into_iter();
    loop {
        if first_error.is_some() || cancel.is_cancelled() || !shared.breaker.allows(&pair) {
            break;
        }
        let Some(unit) = pending.next() else { break };
        let permit = loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => break None,
                Some(res) = set.join_next(), if !set.is_empty() => on_done(res, &mut first_error),
                p = shared.permits.clone().acquire_owned() => break p.ok(),
            }
        };
        let Some(permit) = permit else { break };
        if first_error.is_some() || !shared.breaker.allows(&pair) {
            break;
        }
        started += 1;
        let cache = calls.remove(&unit.id).unwrap_or_default();
        let (client, model, stage, dialogues) = (client.clone(), model.clone(), stage.clone(), dialogues.clone());
        let (journal, progress, cancel) = (journal.clone(), shared.progress.clone(), shared.cancel.clone());
        set.spawn(async move {
            let _permit = permit;
            let d = &dialogues[&unit.id];
            judge_one(
                client.as_ref(),
                &model,
                &stage,
                unit,
                d,
                &cache,
                &journal,
                &progress,
                &cancel,
            )
            .await
        });
    }
    let mut interrupted = cancel.is_cancelled();
    let mut deadline: Option<tokio::time::Instant> = None;
    while !set.is_empty() {
        if first_error.is_some() || cancel.is_cancelled_now() {
            set.abort_all();
        }
        if deadline.is_none() && (interrupted || cancel.is_cancelled()) {
            deadline = Some(tokio::time::Instant::now() + shared.options.grace);
        }
        let next = match deadline {
            Some(at) => tokio::select! {
                n = tokio::time::timeout_at(at, set.join_next()) => match n {
                    Ok(n) => n,
                    Err(_) => {
                        set.abort_all();
                        while let Some(res) = set.join_next().await {
                            on_done(res, &mut first_error);
                        }
                        break;
                    }
                },
                _ = cancel.cancelled_now() => { set.abort_all(); continue; }
            },
            None => tokio::select! {
                n = set.join_next() => n,
                _ = cancel.cancelled() => { interrupted = true; continue; }
            },
        };
        match next {
            Some(res) => on_done(res, &mut first_error),
            None => break,
        }
    }
    let _ = stop_bg.send(true);
    let _ = bg.await;
    let synced = {
        let j = journal.clone();
        tokio::task::spawn_blocking(move || j.sync())
            .await
            .unwrap_or_else(|e| Err(Error::runtime(format!("journal sync task failed: {e}"))))
    };
    if let Some(e) = first_error {
        let _ = reporter.write(ShardStatus::Error, Some(e.message.clone()));
        return Err(e);
    }
    synced?;
    let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let stopped = interrupted || cancel.is_cancelled();
    let interrupted = stopped && c.done < total;
    let halted = if stopped || shared.breaker.allows(&pair) {
        0
    } else {
        todo_len - started
    };
    if halted > 0 {
        let why: Vec<String> = shared.breaker.trips().iter().map(|t| t.to_string()).collect();
        reporter.write(ShardStatus::Error, Some(why.join("; ")))?;
    } else {
        let status = if interrupted {
            ShardStatus::Interrupted
        } else if c.failed > 0 {
            ShardStatus::Failed
        } else {
            ShardStatus::Done
        };
        reporter.write(status, None)?;
    }
    Ok(outcome(&c, interrupted, halted))
}
