//! What a judge stage stores: the stage section of its plan ([`Stage`]), one line of its inputs
//! ([`Input`]) and the verdict record of its journal ([`Verdict`]). Like `dialogue::record`, the
//! serialised forms are the contract with files already written: add fields with
//! `#[serde(default)]`, never rename one.

use super::rubric::{Dialogue, Rubric};
use super::verdict::Scores;
use crate::dialogue::BackendFailure;
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};

/// One judge model of a stage, beside its `experiment.models` entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Judge {
    pub name: String,
    /// The simulator's judge mode: the share of malformed verdicts (0 for other backends).
    #[serde(default)]
    pub malformed_rate: f64,
}

/// The `judge` section of a judge stage's plan: what makes the plan a judge plan.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stage {
    /// The stage's name: its folder is `RUN_DIR/judge/<name>/`.
    pub name: String,
    /// The run whose dialogues are judged: its experiment's name and the plan hash they came from.
    pub parent_experiment: String,
    pub parent_plan_hash: String,
    /// The judges, in the order of the plan's pairs: pair `i` is (judge `i`, judge `i`).
    pub judges: Vec<Judge>,
    pub rubric: Rubric,
    pub max_malformed: u32,
    /// The folder (beside `plan.json`) holding what each shard's units judge.
    pub inputs: String,
    /// Dialogues of the parent: judged, and not judged because they hold no turn, failed or are
    /// not finished yet (when the stage was planned).
    pub dialogues: u64,
    pub empty: u64,
    pub failed: u64,
    pub missing: u64,
}

/// One line of `inputs-<digest>/shard-NNNNN.jsonl`: what one unit judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub unit: UnitId,
    /// The judged dialogue's unit in the parent run.
    pub parent: UnitId,
    pub dialogue: Dialogue,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// A verdict that passed every rule.
    Ok,
    /// Every ask gave a malformed verdict (1 + `max_malformed` of them).
    Unparsable,
    /// The judge's backend failed for good (`failure` says how).
    Failed,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Ok, Status::Unparsable, Status::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Unparsable => "unparsable",
            Status::Failed => "failed",
        }
    }
}

/// A judged unit: the journal's `verdict` record (followed by a `done` record, see `worker::judge`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub unit: UnitId,
    pub parent: UnitId,
    pub status: Status,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scores: Option<Scores>,
    /// Model calls made: the first ask and every re-ask.
    pub calls: u32,
    /// Replies refused by the parser, with why (in order).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
    /// The last reply, when the verdict is unparsable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<BackendFailure>,
    /// The server's usage summed over the calls (`None` when it reported none).
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub latency_ms: f64,
    /// HTTP requests sent, retries and the failing one included.
    pub http_attempts: u32,
}
