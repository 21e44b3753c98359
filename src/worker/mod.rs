//! The worker: runs the dialogues of one shard, many at once, checkpointing every completed call.
//!
//! A shard run takes the shard's lock (one writer per shard), replays its journal (finished
//! dialogues are skipped; unfinished ones resume from their recorded calls), then keeps up to
//! `concurrency` dialogues in flight. Every completed model call goes to the journal before the
//! dialogue goes on; every finished dialogue is appended as a `done` record. A stop signal stops
//! new work, gives in-flight calls `grace_secs` to finish, then abandons the rest (their completed
//! calls are already journaled), syncs, and reports `interrupted`.

pub mod breaker;
pub mod judge;
pub mod local;
pub(crate) mod pool;
pub mod signals;

use crate::dialogue::{self, CallEvent, DialogueInput, DialogueRecord, EndReason, Recorder};
use crate::error::{Error, Result};
use crate::llm::{ChatModel, ErrorKind};
use crate::plan::{Plan, Unit};
use crate::quality::{Analyzer, GoalProfile};
use crate::rundir::journal::{self, AttemptStart, Entry, Journal, Replay};
use crate::rundir::state::{self, ShardState, ShardStatus};
use crate::rundir::{Lock, RunDir};
use signals::Cancel;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::Semaphore;

/// How often the state file's heartbeat is refreshed.
const HEARTBEAT: Duration = Duration::from_secs(10);

/// Live counters shared by every shard of a run (the progress display reads them). They count
/// this process's work only; what is done in all is read from the run's records.
#[derive(Debug, Default)]
pub struct Progress {
    /// Dialogues finished by this process (failed ones included).
    pub finished: AtomicU64,
    pub failed: AtomicU64,
    /// Completed model calls recorded by this process.
    pub calls: AtomicU64,
    /// Shards open now, and shards this process ran to their end.
    pub shards_running: AtomicU64,
    pub shards_done: AtomicU64,
    pub end_reasons: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed dialogues by the kind of backend error that ended them.
    pub failure_kinds: Mutex<BTreeMap<&'static str, u64>>,
    /// Failed dialogues by the model that failed and the kind of failure, with an example.
    pub failures: Mutex<BTreeMap<(String, ErrorKind), FailureGroup>>,
}

/// Dialogues that failed the same way on the same model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailureGroup {
    pub count: u64,
    /// The first one's error message (it names the model and the endpoint; keys are cut out).
    pub example: String,
}

impl Progress {
    pub(crate) fn finish(&self, pair: &crate::experiment::Pair, rec: &DialogueRecord) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        if rec.ending.reason.is_failure() {
            self.failed.fetch_add(1, Ordering::Relaxed);
            let kind = rec.ending.error.as_ref().map(|e| e.kind.as_str()).unwrap_or("unknown");
            *self
                .failure_kinds
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .entry(kind)
                .or_default() += 1;
            if let Some(e) = &rec.ending.error {
                let model = match e.role {
                    crate::experiment::Role::Inquirer => &pair.inquirer,
                    crate::experiment::Role::Responder => &pair.responder,
                };
                let mut groups = self.failures.lock().unwrap_or_else(|p| p.into_inner());
                groups
                    .entry((model.clone(), e.kind))
                    .or_insert_with(|| FailureGroup {
                        count: 0,
                        example: e.message.clone(),
                    })
                    .count += 1;
            }
        }
        let mut m = self.end_reasons.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(rec.ending.reason.as_str()).or_default() += 1;
    }
}

/// What a worker shares across its shards: model clients, the dialogue budget, progress, the stop signal.
#[derive(Clone)]
pub struct Shared {
    pub plan: Arc<Plan>,
    pub run_dir: RunDir,
    pub clients: Arc<HashMap<String, Arc<dyn ChatModel>>>,
    pub permits: Arc<Semaphore>,
    pub progress: Arc<Progress>,
    pub cancel: Cancel,
    pub options: Options,
    /// Models that failed every recent dialogue get no new ones (see [`breaker`]).
    pub breaker: Arc<breaker::Breaker>,
}

#[derive(Debug, Clone)]
pub struct Options {
    /// Run units that ended with a backend failure again.
    pub retry_failed: bool,
    /// fsync the journal (group commit). Off only for benchmarks.
    pub durable: bool,
    pub grace: Duration,
    pub slurm_job_id: Option<String>,
}

impl Shared {
    /// Build clients for every model the plan uses, and the shared budget.
    pub fn new(
        run_dir: RunDir,
        plan: Arc<Plan>,
        options: Options,
        cancel: Cancel,
        make_client: impl Fn(&crate::experiment::Model) -> Result<Arc<dyn ChatModel>>,
    ) -> Result<Shared> {
        check_keys(&plan.experiment, |k| {
            std::env::var_os(k).filter(|v| !v.is_empty()).is_some()
        })?;
        let mut clients = HashMap::new();
        for m in &plan.experiment.models {
            let m = m.with_endpoint_from_env(|k| std::env::var(k).ok());
            clients.insert(m.name.clone(), make_client(&m)?);
        }
        let permits = Arc::new(Semaphore::new(plan.experiment.worker.concurrency as usize));
        Ok(Shared {
            plan,
            run_dir,
            clients: Arc::new(clients),
            permits,
            progress: Arc::new(Progress::default()),
            cancel,
            options,
            breaker: Arc::default(),
        })
    }
}

/// Every key variable a model of the plan's pairs names is set, or the error naming the missing
/// ones: found before the first dialogue, not once per dialogue.
pub fn check_keys(exp: &crate::experiment::Experiment, is_set: impl Fn(&str) -> bool) -> Result<()> {
    let mut missing: Vec<String> = Vec::new();
    for m in &exp.models {
        let used = exp.pairs.iter().any(|p| p.inquirer == m.name || p.responder == m.name);
        if let Some(var) = m.transport.api_key_env.as_deref().filter(|v| used && !is_set(v)) {
            missing.push(format!("`{var}` (model `{}`)", m.name));
        }
    }
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::config(format!(
        "the environment variable{} {} {} not set or empty",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        if missing.len() == 1 { "is" } else { "are" },
    ))
    .with_hint(ErrorKind::MissingKey.hint()))
}

/// How a shard run ended.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardOutcome {
    pub shard: u32,
    pub units: u64,
    /// Finished before this run (skipped).
    pub already_done: u64,
    /// Finished in this run.
    pub finished: u64,
    /// Units whose latest record is a backend failure.
    pub failed: u64,
    pub interrupted: bool,
    /// Units not started because a model of the shard's pair failed every recent dialogue
    /// ([`breaker`]); they stay unfinished.
    pub halted: u64,
    /// The shard stopped at its share of the budget, with units left.
    pub budget: Option<BudgetStop>,
}

/// Where a shard stopped at its budget share: the cap reached, and its account.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetStop {
    pub cap: &'static str,
    pub spent: crate::budget::Usage,
    pub caps: crate::experiment::Caps,
}

struct JournalRecorder {
    journal: Arc<Journal>,
    progress: Arc<Progress>,
    cancel: Cancel,
    ledger: Option<Arc<crate::budget::Ledger>>,
    /// (inquirer, responder) prices, for the ledger's cost.
    prices: [Option<crate::experiment::Price>; 2],
}

impl JournalRecorder {
    fn usage(&self, s: &dialogue::Spend) -> crate::budget::Usage {
        let price = self.prices[usize::from(s.role == crate::experiment::Role::Responder)];
        crate::budget::Usage::of(s.role, s.prompt_tokens, s.completion_tokens, s.requests, price)
    }
}

impl Recorder for JournalRecorder {
    fn record(&self, event: &CallEvent) -> Result<()> {
        self.journal.append_call(event)?;
        self.progress.calls.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// After the stop signal no new request starts: in-flight ones may finish within the grace.
    fn stopping(&self) -> bool {
        self.cancel.is_cancelled()
    }

    fn halt(&self) -> crate::llm::Halt {
        self.cancel.halt()
    }

    fn admit<'a>(&'a self, worst: &'a dialogue::Spend) -> crate::llm::BoxFuture<'a, Option<dialogue::Admitted>> {
        Box::pin(async move {
            match &self.ledger {
                None => Some(dialogue::Admitted(None)),
                Some(l) => l.reserve(self.usage(worst)).await.map(|r| dialogue::Admitted(Some(r))),
            }
        })
    }

    fn settle(&self, admitted: dialogue::Admitted, actual: &dialogue::Spend) {
        if let (Some(l), Some(r)) = (&self.ledger, admitted.0) {
            l.settle(r, self.usage(actual));
        }
    }
}

/// A shard opened for work: its lock held, its journal open and read back.
struct OpenShard {
    _lock: Lock,
    units: Vec<Unit>,
    journal: Arc<Journal>,
    replay: Replay,
    /// Units to run in this attempt (unfinished, and failed ones with `--retry-failed`).
    todo: Vec<Unit>,
    /// Finished before this run and not run again.
    already_done: u64,
    prior_state: Option<ShardState>,
    /// The shard's account, when the experiment has a budget.
    ledger: Option<Arc<crate::budget::Ledger>>,
}

/// The lock of an existing shard (`whose`: "the plan", "the judge stage", for the error).
pub(crate) fn lock_shard(shared: &Shared, shard: u32, whose: &str) -> Result<Lock> {
    let n = shared.plan.shards.len();
    if shard as usize >= n {
        return Err(Error::config(format!(
            "shard {shard} does not exist: {whose} has {n} shards (0 to {})",
            n.saturating_sub(1)
        ))
        .with_hint("check `--shard`, or the array map the Slurm script passes"));
    }
    Lock::try_acquire(
        &shared.run_dir.shard_lock_path(shard),
        &format!("a worker of shard {shard}"),
    )
}

/// The shard's journal, opened and read back; damaged records are skipped with a warning saying
/// what happens to their units (`then`: "run again", "are judged again").
pub(crate) fn open_journal(shared: &Shared, shard: u32, then: &str) -> Result<(Journal, journal::Contents)> {
    let path = shared.run_dir.journal_path(shard);
    let (journal, contents) = Journal::open(&path, &shared.plan.plan_hash, shard, shared.options.durable)?;
    if !contents.damaged_lines.is_empty() {
        eprintln!(
            "warning: `{}`: skipped damaged records at lines {:?}; the units they touched {then}",
            journal.path().display(),
            contents.damaged_lines
        );
    }
    Ok((journal, contents))
}

/// Take the shard's lock, check its units against the plan, open and replay its journal.
fn open_shard(shared: &Shared, shard: u32) -> Result<OpenShard> {
    let plan = &shared.plan;
    let rd = &shared.run_dir;
    let lock = lock_shard(shared, shard, "the plan")?;
    // Through the plan's shard index: only this shard's units are read, wherever it is in the plan.
    let units = crate::rundir::plans::units_of_shard(rd, plan, shard)?;
    if units.len() as u32 != plan.shards[shard as usize].units {
        return Err(Error::config(format!(
            "the units file of `{}` does not match its plan (shard {shard})",
            rd.root.display()
        ))
        .with_hint("the run directory is damaged; plan again with `--replan`"));
    }
    let (journal, contents) = open_journal(shared, shard, "run again")?;
    let caps = crate::budget::shard_caps(&plan.experiment, plan, shard);
    let ledger = (!caps.is_empty()).then(|| {
        let pair = &plan.experiment.pairs[plan.shards[shard as usize].pair as usize];
        Arc::new(crate::budget::Ledger::new(
            caps,
            journal::spent(&contents.entries, &crate::budget::prices(&plan.experiment, pair)),
        ))
    });
    let mut replay = Replay::from_entries(contents.entries);
    let in_shard: std::collections::HashSet<_> = units.iter().map(|u| u.id).collect();
    replay.done.retain(|id, _| in_shard.contains(id));
    let again = |r: &DialogueRecord| shared.options.retry_failed && r.ending.reason.is_failure();
    let already_done = replay.done.values().filter(|r| !again(r)).count() as u64;
    let todo: Vec<Unit> = units
        .iter()
        .filter(|u| replay.done.get(&u.id).is_none_or(again))
        .copied()
        .collect();
    Ok(OpenShard {
        _lock: lock,
        units,
        journal: Arc::new(journal),
        replay,
        todo,
        already_done,
        prior_state: state::read(rd, shard),
        ledger,
    })
}

/// Run one shard to completion, or until the stop signal.
pub async fn run_shard(shared: &Shared, shard: u32) -> Result<ShardOutcome> {
    // A judge stage's plan: its units are verdicts (`judge`).
    if shared.plan.judge.is_some() {
        return judge::run_shard(shared, shard).await;
    }
    let mut open = open_shard(shared, shard)?;
    let units = open.units.len() as u64;
    let nothing_to_do = open.todo.is_empty();
    let attempt = open
        .replay
        .attempts
        .max(open.prior_state.as_ref().map(|s| s.attempt).unwrap_or(0))
        + u32::from(!nothing_to_do);
    let started_at = state::now();
    let retry_failed = shared.options.retry_failed;
    let counts = Arc::new(Mutex::new(ShardCounts::from_done(
        open.replay
            .done
            .values()
            .filter(|r| !(retry_failed && r.ending.reason.is_failure())),
    )));
    let reporter = StateReporter::new(
        shared,
        shard,
        attempt,
        started_at,
        units,
        counts.clone(),
        Some(open.journal.clone()),
    );
    let outcome = |c: &ShardCounts, interrupted: bool| ShardOutcome {
        shard,
        units,
        already_done: open.already_done,
        finished: c.done - open.already_done,
        failed: c.failed,
        interrupted,
        halted: 0,
        budget: None,
    };
    if nothing_to_do {
        let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let status = c.final_status(false);
        if open.prior_state.as_ref().map(|s| s.status) != Some(status) {
            reporter.write(status, None)?;
        }
        return Ok(ShardOutcome {
            finished: 0,
            ..outcome(&c, false)
        });
    }
    reporter.begin(&open.journal)?;
    let todo = std::mem::take(&mut open.todo);
    let result = with_background(
        &open.journal,
        &reporter,
        drive(
            shared,
            &open.journal,
            &mut open.replay,
            todo,
            counts.clone(),
            open.ledger.clone(),
        ),
    )
    .await;
    let c = counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
    match result {
        Ok(Driven {
            stopped,
            halted,
            budget,
        }) => {
            let interrupted = stopped && c.done < units;
            if let Some(cap) = budget.filter(|_| !interrupted && c.done < units) {
                // Not a failure: the shard spent its share of the budget; raising it resumes it.
                reporter.write(
                    ShardStatus::Budget,
                    Some(format!("reached its share of `budget.{cap}`")),
                )?;
            } else if halted > 0 {
                // Not the work's end: the shard stopped starting dialogues of a failing model.
                let why: Vec<String> = shared.breaker.trips().iter().map(|t| t.to_string()).collect();
                reporter.write(ShardStatus::Error, Some(why.join("; ")))?;
            } else {
                reporter.write(c.final_status(interrupted), None)?;
            }
            Ok(ShardOutcome {
                halted,
                budget: budget.filter(|_| c.done < units).map(|cap| BudgetStop {
                    cap,
                    spent: open.ledger.as_ref().map(|l| l.spent()).unwrap_or_default(),
                    caps: open.ledger.as_ref().map(|l| l.caps()).unwrap_or_default(),
                }),
                ..outcome(&c, interrupted)
            })
        }
        Err(e) => {
            let _ = reporter.write(ShardStatus::Error, Some(e.message.clone()));
            Err(e)
        }
    }
}

/// Run `work` with the journal's group commit and the state file's heartbeat beside it, then sync
/// the journal a last time. An error of the work comes first, then one of the final sync.
pub(crate) async fn with_background<T>(
    journal: &Arc<Journal>,
    reporter: &StateReporter,
    work: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let (stop_bg, mut stop_rx) = tokio::sync::watch::channel(false);
    let bg = {
        let journal = journal.clone();
        let reporter = reporter.clone();
        tokio::spawn(async move {
            let mut sync_tick = tokio::time::interval(journal::SYNC_INTERVAL);
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
                    _ = beat.tick() => {
                        // A missed heartbeat is only evidence; the next one tries again.
                        let _ = reporter.write(ShardStatus::Running, None);
                    }
                    _ = stop_rx.changed() => break,
                }
            }
        })
    };
    let result = work.await;
    let _ = stop_bg.send(true);
    let _ = bg.await;
    let synced = {
        let j = journal.clone();
        tokio::task::spawn_blocking(move || j.sync())
            .await
            .unwrap_or_else(|e| Err(Error::runtime(format!("journal sync task failed: {e}"))))
    };
    let value = result?;
    synced?;
    Ok(value)
}

/// Writes the shard's state file from what does not change during a run and the live counts.
#[derive(Clone)]
pub(crate) struct StateReporter {
    pub(crate) rd: RunDir,
    pub(crate) base: ShardState,
    pub(crate) counts: Arc<Mutex<ShardCounts>>,
    /// Its mark goes into the state file, so that `status` need not read the journal (a judge
    /// stage's state counts verdicts, not dialogue ends: its status reads the journal).
    pub(crate) journal: Option<Arc<Journal>>,
}

impl StateReporter {
    /// The reporter of attempt `attempt` of a shard of `units` units, started at `started_at`.
    pub(crate) fn new(
        shared: &Shared,
        shard: u32,
        attempt: u32,
        started_at: u64,
        units: u64,
        counts: Arc<Mutex<ShardCounts>>,
        journal: Option<Arc<Journal>>,
    ) -> StateReporter {
        StateReporter {
            rd: shared.run_dir.clone(),
            base: ShardState {
                shard,
                plan_hash: shared.plan.plan_hash.clone(),
                attempt,
                status: ShardStatus::Running,
                host: state::hostname(),
                pid: std::process::id(),
                slurm_job_id: shared.options.slurm_job_id.clone(),
                started_at,
                heartbeat_at: started_at,
                units,
                done: 0,
                failed: 0,
                end_reasons: BTreeMap::new(),
                error: None,
            },
            counts,
            journal,
        }
    }

    /// Start the attempt: its record in the journal, then the state file says `running`.
    pub(crate) fn begin(&self, journal: &Journal) -> Result<()> {
        let b = &self.base;
        journal.append(&Entry::Attempt(AttemptStart {
            attempt: b.attempt,
            host: b.host.clone(),
            pid: b.pid,
            slurm_job_id: b.slurm_job_id.clone(),
            started_at: b.started_at,
        }))?;
        self.write(ShardStatus::Running, None)
    }

    pub(crate) fn write(&self, status: ShardStatus, error: Option<String>) -> Result<()> {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let s = ShardState {
            status,
            heartbeat_at: state::now(),
            done: c.done,
            failed: c.failed,
            end_reasons: c.end_reasons,
            error,
            ..self.base.clone()
        };
        match self.journal.as_ref().map(|j| j.mark()) {
            Some(Ok(mark)) => state::write_marked(&self.rd, &s, mark),
            _ => state::write(&self.rd, &s),
        }
    }
}

/// What a shard's finished units came to, by end (a dialogue's end reason, a verdict's status).
#[derive(Debug, Clone, Default)]
pub(crate) struct ShardCounts {
    pub(crate) done: u64,
    pub(crate) failed: u64,
    end_reasons: BTreeMap<String, u64>,
}

impl ShardCounts {
    fn from_done<'a>(records: impl Iterator<Item = &'a DialogueRecord>) -> ShardCounts {
        let mut c = ShardCounts::default();
        for r in records {
            c.add(r.ending.reason);
        }
        c
    }

    fn add(&mut self, reason: EndReason) {
        self.add_end(reason.as_str(), reason.is_failure());
    }

    pub(crate) fn add_end(&mut self, end: &str, failure: bool) {
        self.done += 1;
        if failure {
            self.failed += 1;
        }
        *self.end_reasons.entry(end.to_string()).or_default() += 1;
    }

    /// The status a shard's state file says once its run ended with these counts.
    pub(crate) fn final_status(&self, interrupted: bool) -> ShardStatus {
        if interrupted {
            ShardStatus::Interrupted
        } else if self.failed > 0 {
            ShardStatus::Failed
        } else {
            ShardStatus::Done
        }
    }
}

/// How [`drive`] ended.
#[derive(Default)]
struct Driven {
    /// The stop signal came.
    stopped: bool,
    /// Units not started because a breaker of the shard's pair is open.
    halted: u64,
    /// The cap of its budget share the shard reached (its dialogues wait in the journal).
    budget: Option<&'static str>,
}

/// Keep dialogues in flight until all are done, the stop signal, or an open breaker.
async fn drive(
    shared: &Shared,
    journal: &Arc<Journal>,
    replay: &mut Replay,
    todo: Vec<Unit>,
    counts: Arc<Mutex<ShardCounts>>,
    ledger: Option<Arc<crate::budget::Ledger>>,
) -> Result<Driven> {
    let total = todo.len() as u64;
    let pair = match todo.first() {
        Some(u) => shared.plan.experiment.pairs[u.pair as usize].clone(),
        None => return Ok(Driven::default()),
    };
    let prices = crate::budget::prices(&shared.plan.experiment, &pair);
    let at_budget = || ledger.as_ref().and_then(|l| l.reached()).is_some();
    let on_done = |res: Result<dialogue::Outcome>| -> Result<()> {
        let rec = match res? {
            // Stopped before its next request: it waits in the journal for the next attempt.
            dialogue::Outcome::Stopped => return Ok(()),
            dialogue::Outcome::Finished(rec) => rec,
        };
        if rec.ending.reason.is_failure() && shared.cancel.is_cancelled() {
            // After a stop signal the endpoint often dies with us (scancel, preemption and
            // requeue signal every process of the job): a call failing now says nothing
            // about the unit. Leave it unfinished; its completed calls are journaled and the
            // next attempt resumes it.
            return Ok(());
        }
        let (reason, entry) = (rec.ending.reason, Entry::Done(rec));
        journal.append(&entry)?;
        if let Entry::Done(rec) = &entry {
            shared.progress.finish(&pair, rec);
            // Told once, with its hint, in the closing summary (`ui::print_failures`), which
            // `run` and `worker` both print; a line here would say it twice, and break the bar.
            let _ = shared.breaker.observe(&pair, rec);
        }
        counts.lock().unwrap_or_else(|p| p.into_inner()).add(reason);
        Ok(())
    };
    // What the fidelity indicators need of each goal, built once per shard.
    let goals: Arc<HashMap<u32, GoalProfile>> = Arc::new(
        todo.iter()
            .map(|u| u.goal)
            .collect::<std::collections::BTreeSet<u32>>()
            .into_iter()
            .filter_map(|g| Some((g, GoalProfile::new(&shared.plan.experiment.goals.get(g as usize)?.text))))
            .collect(),
    );
    let mut flight = pool::Flight::new(shared.cancel.clone(), shared.options.grace, "dialogue", on_done);
    let may_start = || shared.breaker.allows(&pair) && !at_budget();
    let started = flight
        .feed(&shared.permits, todo, may_start, |unit: Unit| {
            let cache = replay.calls.remove(&unit.id).unwrap_or_default();
            let plan = shared.plan.clone();
            let clients = shared.clients.clone();
            let goals = goals.clone();
            let recorder = JournalRecorder {
                journal: journal.clone(),
                progress: shared.progress.clone(),
                cancel: shared.cancel.clone(),
                ledger: ledger.clone(),
                prices,
            };
            async move {
                let exp = &plan.experiment;
                let pair = &exp.pairs[unit.pair as usize];
                let (inq, resp) = (exp.model(&pair.inquirer), exp.model(&pair.responder));
                let (Some(inq), Some(resp)) = (inq, resp) else {
                    return Err(Error::config("the plan names a model it does not define")
                        .with_hint("plan again with `--replan`"));
                };
                let input = DialogueInput {
                    unit: unit.id,
                    seed: unit.seed,
                    persona: &exp.personas[unit.persona as usize],
                    goal: &exp.goals[unit.goal as usize],
                    inquirer: inq,
                    responder: resp,
                    settings: &exp.dialogue,
                };
                let (ci, cr) = (clients[&inq.name].clone(), clients[&resp.name].clone());
                let out = dialogue::run_dialogue(input, ci.as_ref(), cr.as_ref(), &cache, &recorder).await?;
                Ok(with_indicators(out, goals.get(&unit.goal)))
            }
        })
        .await;
    let stopped = flight.drain().await?;
    Ok(Driven {
        stopped,
        halted: halted(shared, &pair, stopped, total - started),
        budget: ledger.and_then(|l| l.reached()),
    })
}

/// A finished dialogue's record with its fidelity indicators (README, "Fidelity indicators"),
/// computed here, where the CPU waits for the models, rather than by every merge and report.
fn with_indicators(out: dialogue::Outcome, goal: Option<&GoalProfile>) -> dialogue::Outcome {
    match (out, goal) {
        (dialogue::Outcome::Finished(mut rec), Some(goal)) => {
            let ind = Analyzer::new().dialogue(
                goal,
                rec.turns
                    .iter()
                    .map(|t| (t.prompt.as_str(), t.responder.output.as_str())),
            );
            rec.indicators = ind.to_record();
            dialogue::Outcome::Finished(rec)
        }
        (out, _) => out,
    }
}

/// The units a shard did not start because a breaker of its pair is open (none after a stop).
pub(crate) fn halted(shared: &Shared, pair: &crate::experiment::Pair, stopped: bool, not_started: u64) -> u64 {
    if stopped || shared.breaker.allows(pair) {
        0
    } else {
        not_started
    }
}
