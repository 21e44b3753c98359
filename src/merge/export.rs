//! `roleplay export`: a run's dialogues as JSON lines in layouts other tools already read.
//!
//! - `roleplay-jsonl`: the reference implementation's record, `{"persona": TEXT, "sample":
//!   {"goal_id": ID, "instruction": TEXT}, "num_turns": N, "dialog": [{"turn": K, "model_inquirer":
//!   PROMPT, "model_responder": REPLY}, ...]}` (the sample's keys are those of the paper's goal file),
//!   followed by a `roleplay` object with the unit id, models, seed and end reason. Existing
//!   analysis code reads the first four keys and ignores the rest.
//! - `messages-jsonl`: one record per dialogue with OpenAI-style `messages` from the responder's
//!   point of view (`system` if the responder had a system prompt, then `user` = the inquirer's
//!   prompt, `assistant` = the responder's reply), plus flat metadata columns: ready for
//!   fine-tuning tools and `datasets.load_dataset("json", ...)`. Dialogues without a turn are left out.
//!
//! Both read the journals through [`super::scan`] (exactly once, plan order) and leave out
//! dialogues that ended with a backend failure: they are failures of the run, not results of the
//! method.

use super::scan::{self, Finished, ScanStats};
use crate::error::{Error, Result};
use crate::experiment::Experiment;
use crate::plan::Plan;
use crate::rundir::RunDir;
use serde::Serialize;
use std::io::Write;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// The reference implementation's records (persona, sample, num_turns, dialog).
    RoleplayJsonl,
    /// OpenAI-style chat messages from the responder's point of view.
    MessagesJsonl,
}

impl Format {
    pub fn name(self) -> &'static str {
        match self {
            Format::RoleplayJsonl => "roleplay-jsonl",
            Format::MessagesJsonl => "messages-jsonl",
        }
    }

    /// The default output file name under `RUN_DIR/out/`.
    pub fn default_file(self) -> &'static str {
        match self {
            Format::RoleplayJsonl => "roleplay.jsonl",
            Format::MessagesJsonl => "messages.jsonl",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Exported {
    pub written: u64,
    /// Dialogues left out because they ended with a backend failure.
    pub skipped_failed: u64,
    /// Dialogues left out because they have no turn (`messages-jsonl` only).
    pub skipped_empty: u64,
    pub stats: ScanStats,
}

// Serialised through structs, not `json!` maps, so that keys keep the conventional order.

#[derive(Serialize)]
struct RoleplayRecord<'a> {
    persona: &'a str,
    sample: Sample<'a>,
    num_turns: usize,
    dialog: Vec<DialogTurn<'a>>,
    roleplay: RoleplayMeta<'a>,
}

#[derive(Serialize)]
struct Sample<'a> {
    goal_id: &'a str,
    instruction: &'a str,
}

#[derive(Serialize)]
struct DialogTurn<'a> {
    turn: u32,
    model_inquirer: &'a str,
    model_responder: &'a str,
}

#[derive(Serialize)]
struct RoleplayMeta<'a> {
    unit_id: String,
    persona_id: &'a str,
    persona_features: &'a std::collections::BTreeMap<String, String>,
    model_inquirer: &'a str,
    model_responder: &'a str,
    seed: u64,
    end_reason: &'static str,
}

#[derive(Serialize)]
struct Message<'a> {
    role: &'static str,
    content: &'a str,
}

#[derive(Serialize)]
struct MessagesRecord<'a> {
    id: String,
    messages: Vec<Message<'a>>,
    persona_id: &'a str,
    persona: &'a str,
    goal_id: &'a str,
    goal: &'a str,
    inquirer: &'a str,
    responder: &'a str,
    seed: u64,
    end_reason: &'static str,
    num_turns: usize,
}

fn roleplay_record<'a>(exp: &'a Experiment, f: &'a Finished) -> RoleplayRecord<'a> {
    let persona = &exp.personas[f.unit.persona as usize];
    let goal = &exp.goals[f.unit.goal as usize];
    let pair = &exp.pairs[f.unit.pair as usize];
    RoleplayRecord {
        persona: &persona.text,
        sample: Sample {
            goal_id: &goal.id,
            instruction: &goal.text,
        },
        num_turns: f.record.turns.len(),
        dialog: f
            .record
            .turns
            .iter()
            .map(|t| DialogTurn {
                turn: t.index,
                model_inquirer: &t.prompt,
                model_responder: &t.responder.output,
            })
            .collect(),
        roleplay: RoleplayMeta {
            unit_id: f.unit.id.to_string(),
            persona_id: &persona.id,
            persona_features: &persona.features,
            model_inquirer: &pair.inquirer,
            model_responder: &pair.responder,
            seed: f.unit.seed,
            end_reason: f.record.ending.reason.as_str(),
        },
    }
}

fn messages_record<'a>(exp: &'a Experiment, f: &'a Finished) -> MessagesRecord<'a> {
    let persona = &exp.personas[f.unit.persona as usize];
    let goal = &exp.goals[f.unit.goal as usize];
    let pair = &exp.pairs[f.unit.pair as usize];
    let system = exp
        .model(&pair.responder)
        .and_then(|m| m.behaviour.responder_templates.as_ref())
        .and_then(|t| t.system_prompt.as_ref())
        .map(|t| t.source())
        .filter(|s| !s.trim().is_empty());
    let mut messages = Vec::with_capacity(f.record.turns.len() * 2 + 1);
    if let Some(s) = system {
        messages.push(Message {
            role: "system",
            content: s,
        });
    }
    for t in &f.record.turns {
        messages.push(Message {
            role: "user",
            content: &t.prompt,
        });
        messages.push(Message {
            role: "assistant",
            content: &t.responder.output,
        });
    }
    MessagesRecord {
        id: f.unit.id.to_string(),
        messages,
        persona_id: &persona.id,
        persona: &persona.text,
        goal_id: &goal.id,
        goal: &goal.text,
        inquirer: &pair.inquirer,
        responder: &pair.responder,
        seed: f.unit.seed,
        end_reason: f.record.ending.reason.as_str(),
        num_turns: f.record.turns.len(),
    }
}

/// Write the run's dialogues in `format` to `out`, one JSON object per line.
pub fn export(rd: &RunDir, plan: &Plan, format: Format, out: &mut dyn Write) -> Result<Exported> {
    let exp = &plan.experiment;
    let mut e = Exported::default();
    let io = |err: std::io::Error| Error::io(format!("cannot write the export: {err}"), err);
    let mut line = Vec::with_capacity(1 << 16);
    let stats = scan::scan(rd, plan, |batch| {
        for f in &batch.dialogues {
            if f.record.ending.reason.is_failure() {
                e.skipped_failed += 1;
                continue;
            }
            line.clear();
            let written = match format {
                Format::RoleplayJsonl => serde_json::to_writer(&mut line, &roleplay_record(exp, f)),
                Format::MessagesJsonl => {
                    if f.record.turns.is_empty() {
                        e.skipped_empty += 1;
                        continue;
                    }
                    serde_json::to_writer(&mut line, &messages_record(exp, f))
                }
            };
            written.map_err(|err| Error::runtime(err.to_string()))?;
            line.push(b'\n');
            out.write_all(&line).map_err(io)?;
            e.written += 1;
        }
        Ok(())
    })?;
    out.flush().map_err(io)?;
    e.stats = stats;
    Ok(e)
}
