//! `roleplay try FILE`: run one dialogue and print it turn by turn, with its end reason. What a
//! researcher uses while writing prompt templates; nothing is written to disk.

use crate::cli::TryArgs;
use crate::dialogue::{self, CallCache, CallEvent, DialogueInput, Recorder};
use crate::error::{Error, Result, exit};
use crate::experiment::{Experiment, Role};

/// Prints each call as it completes.
struct Printer;

impl Recorder for Printer {
    fn record(&self, e: &CallEvent) -> Result<()> {
        let who = match e.key.role {
            Role::Inquirer if e.key.attempt > 0 => format!("inquirer (regeneration {})", e.key.attempt),
            Role::Inquirer => "inquirer".to_string(),
            Role::Responder => "responder".to_string(),
        };
        let tokens = match (e.call.prompt_tokens, e.call.completion_tokens) {
            (Some(p), Some(c)) => format!(", {p}+{c} tokens"),
            _ => String::new(),
        };
        crate::outln!("--- turn {} · {who} · {:.0} ms{tokens}", e.key.turn, e.call.latency_ms);
        crate::outln!("{}", e.call.output);
        Ok(())
    }
}

fn pick<'a, T>(items: &'a [T], wanted: Option<&str>, what: &str, id: impl Fn(&T) -> &str) -> Result<&'a T> {
    let Some(w) = wanted else {
        return items
            .first()
            .ok_or_else(|| Error::config(format!("the experiment has no {what}")));
    };
    if let Some(found) = items.iter().find(|t| id(t) == w) {
        return Ok(found);
    }
    if let Ok(i) = w.parse::<usize>()
        && let Some(found) = items.get(i)
    {
        return Ok(found);
    }
    let known: Vec<&str> = items.iter().take(12).map(&id).collect();
    Err(Error::config(format!("no {what} `{w}`")).with_hint(format!(
        "give an id or a 0-based index; known: {}{}",
        known.join(", "),
        if items.len() > 12 { ", ..." } else { "" }
    )))
}

pub fn run(args: TryArgs) -> Result<i32> {
    let loaded = super::load_experiment(&args.file)?;
    let exp: Experiment = loaded.experiment;
    let persona = pick(&exp.personas, args.persona.as_deref(), "persona", |p| p.id.as_str())?;
    let goal = pick(&exp.goals, args.goal.as_deref(), "goal", |g| g.id.as_str())?;
    let pair = match &args.pair {
        None => exp
            .pairs
            .first()
            .ok_or_else(|| Error::config("the experiment has no pairs"))?,
        Some(p) => {
            let (i, r) = p.split_once(':').ok_or_else(|| {
                Error::config(format!("`--pair {p}` is not INQUIRER:RESPONDER"))
                    .with_hint("e.g. `--pair sim-chat:sim-assistant`")
            })?;
            exp.pairs
                .iter()
                .find(|x| x.inquirer == i && x.responder == r)
                .ok_or_else(|| {
                    let known: Vec<String> = exp
                        .pairs
                        .iter()
                        .map(|x| format!("{}:{}", x.inquirer, x.responder))
                        .collect();
                    Error::config(format!("the experiment has no pair `{p}`"))
                        .with_hint(format!("pairs: {}", known.join(", ")))
                })?
        }
    };
    let seed = match args.seed {
        Some(s) => s,
        None => exp.dialogue.seeds[0],
    };
    let (inq, resp) = (exp.model(&pair.inquirer), exp.model(&pair.responder));
    let (Some(inq), Some(resp)) = (inq, resp) else {
        return Err(Error::config("the pair names an unknown model"));
    };
    // The unit id this dialogue has in a plan of this experiment, so `try` and `run` agree.
    let expansion = crate::plan::expand(&exp).map_err(|x| x.for_file(&args.file))?;
    let pi = exp.personas.iter().position(|p| p.id == persona.id).unwrap_or(0) as u32;
    let gi = exp.goals.iter().position(|g| g.id == goal.id).unwrap_or(0) as u32;
    let ri = exp.pairs.iter().position(|p| p == pair).unwrap_or(0) as u32;
    let unit = expansion
        .units
        .iter()
        .find(|u| u.persona == pi && u.goal == gi && u.pair == ri && u.seed == seed)
        .map(|u| u.id)
        .ok_or_else(|| {
            Error::config(format!("seed {seed} is not in the experiment"))
                .with_hint(format!("seeds: {:?}", exp.dialogue.seeds))
        })?;
    crate::outln!("persona {}: {}", persona.id, persona.text);
    crate::outln!("goal {}: {}", goal.id, goal.text.replace('\n', " / "));
    crate::outln!("pair {} -> {}, seed {seed}, unit {unit}", pair.inquirer, pair.responder);
    let rt = super::runtime()?;
    let record = rt.block_on(async {
        // Same endpoint overrides as a worker (ROLEPLAY_BASE_URL...), so `try` reaches the same server.
        let env = |k: &str| std::env::var(k).ok();
        let ci = crate::llm::client_for(&inq.with_endpoint_from_env(env))?;
        let cr = crate::llm::client_for(&resp.with_endpoint_from_env(env))?;
        let input = DialogueInput {
            unit,
            seed,
            persona,
            goal,
            inquirer: inq,
            responder: resp,
            settings: &exp.dialogue,
        };
        dialogue::run_dialogue(input, ci.as_ref(), cr.as_ref(), &CallCache::new(), &Printer).await
    })?;
    let dialogue::Outcome::Finished(record) = record else {
        return Err(crate::Error::runtime("the dialogue was stopped before its end"));
    };
    let c = &record.counters;
    crate::outln!(
        "=== {} turns, ended: {}",
        record.turns.len(),
        record.ending.reason.as_str()
    );
    if let Some(e) = &record.ending.error {
        crate::outln!("    {} {}: {}", e.role, e.kind.as_str(), e.message);
    }
    crate::outln!(
        "    multiple prompts {}, regenerations {} (helped {}), self-reply cuts {}, HTTP requests {} (retries {}, refused as too long {}, cut by the window {}), trimmed pairs {}",
        c.multiple_prompts,
        c.regenerations,
        c.regeneration_helped,
        c.self_reply_cuts,
        c.http_attempts,
        c.retries,
        c.overflow_refusals,
        c.cut_replies,
        c.trimmed_pairs
    );
    Ok(if record.ending.reason.is_failure() {
        exit::FAILURES
    } else {
        exit::OK
    })
}
