//! Synthetic finished dialogues written into a planned run's journals, exactly as a worker would
//! write them (an attempt record, every call, then the `done` record). For the merge, report and
//! export tests and for `scripts/bench-merge`; not used by any command.
//!
//! Texts are drawn from a fixed pseudo-word vocabulary, deterministically from the unit id, so a
//! run rebuilt from the same plan holds the same bytes.

use crate::dialogue::{BackendFailure, Call, CallEvent, Counters, DialogueRecord, EndReason, Ending, Turn};
use crate::error::Result;
use crate::experiment::{Role, Sampling};
use crate::llm::{CallKey, ErrorKind};
use crate::plan::{self, Unit};
use crate::quality::{Analyzer, GoalProfile};
use crate::rundir::RunDir;
use crate::rundir::journal::{AttemptStart, Entry, Journal};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone)]
pub struct Options {
    /// Turns per dialogue, drawn uniformly (capped by the plan's `max_turns`).
    pub turns: [u32; 2],
    /// Words per side and turn, drawn uniformly.
    pub words: [u32; 2],
    /// Every n-th unit (by position in the units file) gets no record at all (0: none).
    pub missing_every: u64,
    /// Every n-th unit ends with a backend failure (0: none).
    pub failed_every: u64,
    /// Every n-th unit first gets a failed record, then a finished one that supersedes it (0: none).
    pub retried_every: u64,
    /// Journal every call before the `done` record, as a worker does.
    pub calls: bool,
    /// Store the fidelity indicators in each `done` record, as a worker does (journals written
    /// before workers did have none: merge computes them).
    pub indicators: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            turns: [1, 12],
            words: [10, 160],
            missing_every: 0,
            failed_every: 0,
            retried_every: 0,
            calls: true,
            indicators: true,
        }
    }
}

/// What was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Written {
    pub units: u64,
    pub finished: u64,
    pub failed: u64,
    pub missing: u64,
    pub turns: u64,
}

const SYLLABLES: &[&str] = &[
    "ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "ba", "de", "fi", "go", "hu", "je", "ly", "mo", "pa", "qui", "re",
    "su", "ta", "ve", "wa", "xi", "yo", "ze", "an", "el", "in", "or", "un", "st", "pr", "tr",
];

/// The pseudo-word vocabulary the texts are drawn from.
pub fn vocabulary() -> Vec<String> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    (0..4096)
        .map(|_| {
            let n = rng.random_range(1..=4);
            (0..n)
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect()
        })
        .collect()
}

fn words(rng: &mut ChaCha8Rng, vocab: &[String], range: [u32; 2]) -> String {
    let n = rng.random_range(range[0].max(1)..=range[1].max(range[0]).max(1));
    let mut s = String::with_capacity(n as usize * 7);
    for i in 0..n {
        if i > 0 {
            s.push(' ');
        }
        // Zipf-like: low indices are drawn far more often, as in real text.
        let r: f64 = rng.random();
        let idx = ((r * r * r) * vocab.len() as f64) as usize;
        s.push_str(&vocab[idx.min(vocab.len() - 1)]);
        if rng.random_ratio(1, 12) {
            s.push(if rng.random_ratio(1, 4) { '?' } else { '.' });
        }
    }
    s
}

fn call(rng: &mut ChaCha8Rng, output: String, prompt_tokens: u32) -> Call {
    let completion = (output.split(' ').count() as f64 * 1.3) as u32;
    let attempts = if rng.random_ratio(1, 20) { 2 } else { 1 };
    Call {
        output,
        raw_output: None,
        prompt_tokens: Some(prompt_tokens),
        completion_tokens: Some(completion),
        latency_ms: rng.random_range(80.0..2500.0_f64).round(),
        finish_reason: Some("stop".into()),
        attempts,
        transient_retries: attempts - 1,
        overflow_refusals: 0,
        cut_replies: 0,
        discarded_prompt_tokens: 0,
        discarded_completion_tokens: 0,
        sampling: Sampling::default(),
        self_reply_cut: false,
        trimmed_pairs: 0,
        cut_by_window: false,
    }
}

/// One synthetic dialogue for `unit`; `failed` makes it end with a backend failure.
pub fn record(unit: &Unit, max_turns: u32, stop_token: &str, opts: &Options, failed: bool) -> DialogueRecord {
    record_with(&vocabulary(), unit, max_turns, stop_token, opts, failed)
}

/// Like [`record`], with the vocabulary built once by the caller.
pub fn record_with(
    vocab: &[String],
    unit: &Unit,
    max_turns: u32,
    stop_token: &str,
    opts: &Options,
    failed: bool,
) -> DialogueRecord {
    let mut seed = [0u8; 32];
    seed[..10].copy_from_slice(&unit.id.0);
    seed[10] = u8::from(failed);
    let mut rng = ChaCha8Rng::from_seed(seed);
    let hi = opts.turns[1].min(max_turns).max(1);
    let lo = opts.turns[0].clamp(1, hi);
    let n = rng.random_range(lo..=hi);
    let mut turns = Vec::with_capacity(n as usize);
    let mut context = 60u32;
    let mut counters = Counters::default();
    let n = if failed { n.saturating_sub(1) } else { n };
    for index in 0..n {
        let prompt = words(&mut rng, vocab, opts.words);
        let multiple = rng.random_ratio(1, 15);
        let output = if multiple {
            format!(
                "Here is what I would ask: \"{prompt}\" or maybe \"{}\"",
                words(&mut rng, vocab, [3, 8])
            )
        } else {
            format!("Here is my prompt: \"{prompt}\"")
        };
        if multiple {
            counters.multiple_prompts += 1;
        }
        let inquirer = call(&mut rng, output, context);
        context += inquirer.completion_tokens.unwrap_or(0);
        let reply = words(&mut rng, vocab, opts.words);
        let responder = call(&mut rng, reply, context);
        context += responder.completion_tokens.unwrap_or(0);
        counters.retries += inquirer.transient_retries + responder.transient_retries;
        counters.http_attempts += inquirer.attempts + responder.attempts;
        turns.push(Turn {
            index,
            inquirer,
            prompt,
            num_prompts: if multiple { 2 } else { 1 },
            rejected: Vec::new(),
            responder,
        });
    }
    let ending = if failed {
        Ending {
            reason: EndReason::BackendError,
            error: Some(BackendFailure {
                role: Role::Responder,
                kind: ErrorKind::RetriesExhausted,
                message: "503 Service Unavailable after 5 retries".into(),
                attempts: 6,
                transient_retries: 5,
                overflow_refusals: 0,
                cut_replies: 0,
            }),
            last_inquirer: Vec::new(),
            last_responder: None,
        }
    } else if n == max_turns {
        Ending {
            reason: EndReason::MaxTurns,
            error: None,
            last_inquirer: Vec::new(),
            last_responder: None,
        }
    } else {
        let roll = rng.random_range(0..10);
        let (reason, out) = match roll {
            0 => (EndReason::NoPrompt, words(&mut rng, vocab, [5, 20])),
            1 => (
                EndReason::DegenerateInquirer,
                "the the the the the the the the".to_string(),
            ),
            _ => (EndReason::Stop, stop_token.to_string()),
        };
        let last = call(&mut rng, out, context);
        counters.retries += last.transient_retries;
        counters.http_attempts += last.attempts;
        Ending {
            reason,
            error: None,
            last_inquirer: vec![last],
            last_responder: None,
        }
    };
    if let Some(e) = &ending.error {
        counters.retries += e.transient_retries;
        counters.http_attempts += e.attempts;
    }
    DialogueRecord {
        unit: unit.id,
        turns,
        ending,
        counters,
        windows: Default::default(),
        indicators: None,
    }
}

/// The calls a worker journals before a dialogue's `done` record.
pub fn call_events(rec: &DialogueRecord, seed: u64) -> Vec<CallEvent> {
    let key = |turn: u32, role: Role| CallKey {
        unit: rec.unit,
        seed,
        turn,
        role,
        attempt: 0,
    };
    let mut out = Vec::new();
    for t in &rec.turns {
        out.push(CallEvent {
            key: key(t.index, Role::Inquirer),
            call: t.inquirer.clone(),
        });
        out.push(CallEvent {
            key: key(t.index, Role::Responder),
            call: t.responder.clone(),
        });
    }
    for c in &rec.ending.last_inquirer {
        out.push(CallEvent {
            key: key(rec.turns.len() as u32, Role::Inquirer),
            call: c.clone(),
        });
    }
    out
}

/// Write synthetic records for the planned units of `rd` into its journals (appending).
pub fn synthesize(rd: &RunDir, opts: &Options) -> Result<Written> {
    synthesize_to(rd, opts, None)
}

/// Like [`synthesize`]; also writes each unit's winning record as one JSON line to `jsonl` (the
/// benchmark's input for other tools).
pub fn synthesize_to(rd: &RunDir, opts: &Options, mut jsonl: Option<&mut dyn std::io::Write>) -> Result<Written> {
    let plan = rd.load_plan()?;
    let units = plan::read_units(&rd.units_path(&plan))?;
    let exp = &plan.experiment;
    let vocab = vocabulary();
    let mut by_shard: BTreeMap<u32, Vec<(usize, Unit)>> = BTreeMap::new();
    for (i, u) in units.iter().enumerate() {
        by_shard.entry(u.shard).or_default().push((i + 1, *u));
    }
    let every = |n: u64, i: usize| n > 0 && (i as u64).is_multiple_of(n);
    let mut w = Written::default();
    let mut analyzer = Analyzer::new();
    let mut goals: HashMap<u32, GoalProfile> = HashMap::new();
    for (shard, units) in by_shard {
        let (j, _) = Journal::open(&rd.journal_path(shard), &plan.plan_hash, shard, false)?;
        j.append(&Entry::Attempt(AttemptStart {
            attempt: 1,
            host: "synth".into(),
            pid: std::process::id(),
            slurm_job_id: None,
            started_at: 0,
        }))?;
        for (i, u) in units {
            w.units += 1;
            if every(opts.missing_every, i) {
                w.missing += 1;
                continue;
            }
            let mk = |failed: bool| {
                record_with(
                    &vocab,
                    &u,
                    exp.dialogue.max_turns,
                    &exp.dialogue.stop_token,
                    opts,
                    failed,
                )
            };
            let mut records = Vec::new();
            if every(opts.retried_every, i) {
                records.push(mk(true));
            }
            let failed = every(opts.failed_every, i);
            records.push(mk(failed));
            w.turns += records.last().map_or(0, |r| r.turns.len() as u64);
            if let (Some(out), Some(last)) = (jsonl.as_mut(), records.last()) {
                let mut line = serde_json::to_vec(last).map_err(|e| crate::error::Error::runtime(e.to_string()))?;
                line.push(b'\n');
                out.write_all(&line)?;
            }
            for mut rec in records {
                if opts.indicators {
                    let goal = goals
                        .entry(u.goal)
                        .or_insert_with(|| GoalProfile::new(&exp.goals[u.goal as usize].text));
                    let ind = analyzer.dialogue(
                        goal,
                        rec.turns
                            .iter()
                            .map(|t| (t.prompt.as_str(), t.responder.output.as_str())),
                    );
                    rec.indicators = ind.to_record();
                }
                if opts.calls {
                    for ev in call_events(&rec, u.seed) {
                        j.append(&Entry::Call(Box::new(ev)))?;
                    }
                }
                j.append(&Entry::Done(Box::new(rec)))?;
            }
            w.finished += 1;
            w.failed += u64::from(failed);
        }
    }
    Ok(w)
}
