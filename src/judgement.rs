//! What a judge said of one dialogue, as a judge stage's journal records it: the verdict record
//! ([`Verdict`]), its [`Status`] and its [`Scores`]. The strict parser that makes scores from a
//! reply is `judge::verdict`. The serialised forms are the contract with journals already written:
//! add fields with `#[serde(default)]`, never rename one.

use crate::dialogue::BackendFailure;
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};

/// A verdict that passed every rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scores {
    pub goal_achieved: bool,
    /// 1-based, as the rubric numbers the turns; `None` when the goal was not achieved.
    pub goal_turn: Option<u32>,
    /// 1 to 5.
    pub persona_adherence: u8,
    /// 1 to 5: acts like a human user rather than an assistant.
    pub human_likeness: u8,
    pub rationale: String,
}

impl Scores {
    /// The verdict as the one-line JSON object a judge is asked for.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serialisable")
    }
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
