//! Running one shard of a judge stage: what [`super::run_shard`] does for a judge plan.
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

use crate::dialogue::{BackendFailure, Call, CallEvent, Counters, DialogueRecord, EndReason, Ending};
use crate::error::{Error, Result};
use crate::experiment::{Backend, Model, Pair, Role};
use crate::judge::plan::{judge_digest, unit_id};
use crate::judge::record::Input;
use crate::judge::rubric::{self, Dialogue};
use crate::judge::verdict;
use crate::judgement::{Status, Verdict};
use crate::llm::{CallKey, ChatModel, Prompt, Request};
use crate::plan::UnitId;
use crate::plan::stage::{Judge, Stage};
use crate::rundir::journal::{Entry, Journal};
use crate::rundir::judge_units::{self as units, Unit};
use crate::rundir::state::{self, ShardStatus};
use crate::rundir::{Lock, RunDir};
use crate::worker::pool::Flight;
use crate::worker::signals::Cancel;
use crate::worker::{
    Progress, ShardCounts, ShardOutcome, Shared, StateReporter, halted, lock_shard, open_journal, with_background,
};
use std::collections::{HashMap, HashSet};
use std::io::BufRead;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

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
        indicators: None,
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

/// A judge shard opened for work: its lock held, its journal open and read back.
struct OpenStage {
    _lock: Lock,
    units: Vec<Unit>,
    journal: Arc<Journal>,
    /// Recorded calls of unjudged units, by unit and attempt.
    calls: HashMap<UnitId, HashMap<u32, Call>>,
    verdicts: HashMap<UnitId, Verdict>,
    /// The highest attempt the journal names.
    attempts: u32,
}

/// Take the shard's lock, check its units against the plan, read their inputs and find the judge,
/// then open and replay the journal, and give a verdict without its `done` mark (a kill between
/// the two writes) its mark.
fn open_stage(shared: &Shared, stage: &Stage, shard: u32) -> Result<(OpenStage, Bench)> {
    let plan = &shared.plan;
    let rd = &shared.run_dir;
    let lock = lock_shard(shared, shard, "the judge stage")?;
    let units = units::read(&rd.units_path(plan), Some(shard))?;
    if units.len() as u32 != plan.shards[shard as usize].units {
        return Err(Error::config(format!(
            "the units file of `{}` does not match its plan (shard {shard})",
            rd.root.display()
        ))
        .with_hint("the stage is damaged; run `roleplay judge` again"));
    }
    let dialogues = read_inputs(rd, plan, stage, shard, &units)?;
    let judge = &stage.judges[plan.shards[shard as usize].pair as usize];
    let model = plan
        .experiment
        .model(&judge.name)
        .ok_or_else(|| Error::config("the plan names a judge it does not define"))?
        .clone();
    let bench = Bench {
        client: client_of(shared, &model, judge)?,
        model: Arc::new(model),
        stage: Arc::new(stage.clone()),
        dialogues: Arc::new(dialogues),
    };
    let (journal, contents) = open_journal(shared, shard, "are judged again")?;
    let in_shard: HashSet<_> = units.iter().map(|u| u.id).collect();
    let mut open = OpenStage {
        _lock: lock,
        units,
        journal: Arc::new(journal),
        calls: HashMap::new(),
        verdicts: HashMap::new(),
        attempts: 0,
    };
    let mut marked: HashSet<UnitId> = HashSet::new();
    for e in contents.entries {
        match e {
            Entry::Attempt(a) => open.attempts = open.attempts.max(a.attempt),
            Entry::Call(c) if in_shard.contains(&c.key.unit) => {
                open.calls.entry(c.key.unit).or_default().insert(c.key.attempt, c.call);
            }
            Entry::Verdict(v) if in_shard.contains(&v.unit) => {
                marked.remove(&v.unit);
                open.verdicts.insert(v.unit, *v);
            }
            Entry::Done(d) if open.verdicts.contains_key(&d.unit) => {
                marked.insert(d.unit);
            }
            _ => {}
        }
    }
    for v in open.verdicts.values().filter(|v| !marked.contains(&v.unit)) {
        open.journal.append(&Entry::Done(Box::new(done_mark(v))))?;
    }
    Ok((open, bench))
}

/// What a judge shard's units need: the judge's client and model, the stage, the transcripts.
struct Bench {
    client: Arc<dyn ChatModel>,
    model: Arc<Model>,
    stage: Arc<Stage>,
    dialogues: Arc<HashMap<UnitId, Dialogue>>,
}

/// Run one shard of a judge stage to its end, or to the stop signal.
pub async fn run_shard(shared: &Shared, shard: u32) -> Result<ShardOutcome> {
    let plan = shared.plan.clone();
    let stage = plan
        .judge
        .as_ref()
        .ok_or_else(|| Error::runtime("not a judge stage's plan"))?;
    let rd = &shared.run_dir;
    let (mut open, bench) = open_stage(shared, stage, shard)?;
    let pair = plan.experiment.pairs[plan.shards[shard as usize].pair as usize].clone();
    let retry_failed = shared.options.retry_failed;
    let again = |v: &Verdict| retry_failed && v.status == Status::Failed;
    let mut counts = ShardCounts::default();
    for v in open.verdicts.values().filter(|v| !again(v)) {
        counts.add_end(v.status.as_str(), v.status == Status::Failed);
    }
    let already_done = counts.done;
    let todo: Vec<Unit> = open
        .units
        .iter()
        .filter(|u| open.verdicts.get(&u.id).is_none_or(again))
        .copied()
        .collect();
    let prior = state::read(rd, shard);
    let attempt = open.attempts.max(prior.as_ref().map(|s| s.attempt).unwrap_or(0)) + u32::from(!todo.is_empty());
    let started_at = state::now();
    let total = open.units.len() as u64;
    let counts = Arc::new(Mutex::new(counts));
    let reporter = StateReporter::new(shared, shard, attempt, started_at, total, counts.clone(), None);
    let outcome = |c: &ShardCounts, interrupted: bool, halted: u64| ShardOutcome {
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
        open.journal.sync()?;
        let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let status = c.final_status(false);
        if prior.as_ref().map(|s| (s.status, s.plan_hash.as_str())) != Some((status, plan.plan_hash.as_str())) {
            reporter.write(status, None)?;
        }
        return Ok(outcome(&c, false, 0));
    }
    reporter.begin(&open.journal)?;
    let todo_len = todo.len() as u64;
    let work = judge_units(shared, &pair, &open.journal, &bench, &mut open.calls, todo, &counts);
    let (stopped, started) = match with_background(&open.journal, &reporter, work).await {
        Ok(ended) => ended,
        Err(e) => {
            let _ = reporter.write(ShardStatus::Error, Some(e.message.clone()));
            return Err(e);
        }
    };
    let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let interrupted = stopped && c.done < total;
    let halted = halted(shared, &pair, stopped, todo_len - started);
    if halted > 0 {
        let why: Vec<String> = shared.breaker.trips().iter().map(|t| t.to_string()).collect();
        reporter.write(ShardStatus::Error, Some(why.join("; ")))?;
    } else {
        reporter.write(c.final_status(interrupted), None)?;
    }
    Ok(outcome(&c, interrupted, halted))
}

/// Keep units in flight until all are judged, the stop signal, or an open breaker. Returns
/// whether the stop came, and how many units were started.
async fn judge_units(
    shared: &Shared,
    pair: &Pair,
    journal: &Arc<Journal>,
    bench: &Bench,
    calls: &mut HashMap<UnitId, HashMap<u32, Call>>,
    todo: Vec<Unit>,
    counts: &Mutex<ShardCounts>,
) -> Result<(bool, u64)> {
    let on_done = |res: Result<Option<Verdict>>| -> Result<()> {
        let Some(v) = res? else { return Ok(()) };
        // After a stop signal a failing call says nothing about the unit: it waits.
        if v.status == Status::Failed && shared.cancel.is_cancelled() {
            return Ok(());
        }
        let mark = done_mark(&v);
        let status = v.status;
        journal.append(&Entry::Verdict(Box::new(v)))?;
        journal.append(&Entry::Done(Box::new(mark.clone())))?;
        shared.progress.finish(pair, &mark);
        let _ = shared.breaker.observe(pair, &mark);
        counts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add_end(status.as_str(), status == Status::Failed);
        Ok(())
    };
    let mut flight = Flight::new(shared.cancel.clone(), shared.options.grace, "judge", on_done);
    let started = flight
        .feed(
            &shared.permits,
            todo,
            || shared.breaker.allows(pair),
            |unit: Unit| {
                let cache = calls.remove(&unit.id).unwrap_or_default();
                let (client, model) = (bench.client.clone(), bench.model.clone());
                let (stage, dialogues) = (bench.stage.clone(), bench.dialogues.clone());
                let (journal, progress, cancel) = (journal.clone(), shared.progress.clone(), shared.cancel.clone());
                async move {
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
                }
            },
        )
        .await;
    Ok((flight.drain().await?, started))
}
