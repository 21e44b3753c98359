//! One line of a judge stage's inputs ([`Input`]). The stage section of its plan is
//! `plan::stage`, the verdict record of its journal `judgement`. Like `dialogue::record`, the
//! serialised forms are the contract with files already written: add fields with
//! `#[serde(default)]`, never rename one.

use super::rubric::Dialogue;
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};

/// One line of `inputs-<digest>/shard-NNNNN.jsonl`: what one unit judges.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Input {
    pub unit: UnitId,
    /// The judged dialogue's unit in the parent run.
    pub parent: UnitId,
    pub dialogue: Dialogue,
}
