//! The `judge` section of a judge stage's plan: the judges, the rubric, and what the stage judges.
//! Planned by `judge::plan`; its serialised form is the contract with plans already written.

use crate::experiment::Template;
use serde::{Deserialize, Serialize};

pub const DEFAULT_SYSTEM: &str = "You are an expert evaluator of conversations between a simulated user and an AI assistant. You answer with one JSON object and nothing else.";

pub const DEFAULT_PROMPT: &str = r#"A language model was asked to play a person talking to an AI assistant in pursuit of a goal. Read the conversation and judge the simulated user (the "User" lines).

The persona it was asked to play:
<PERSONA>

The goal it was given:
<GOAL>

It was told to say "<STOP_TOKEN>" once its goal was reached, which ends the conversation.

The conversation (<TURNS> turns):
<DIALOGUE>

Answer with one JSON object with exactly these fields:
- "goal_achieved": true if the conversation achieved the user's goal, else false;
- "goal_turn": the number of the turn in which the goal was achieved (1 to <TURNS>), or null if it was not achieved;
- "persona_adherence": an integer from 1 to 5: how consistently the user spoke and acted as the persona (5: always in character, 1: not at all);
- "human_likeness": an integer from 1 to 5: how much the user acts like a human user rather than like an assistant (5: clearly a person; 1: answers instead of asking, offers help, or writes like a chatbot);
- "rationale": one or two short sentences saying why.
Reply with the JSON object only."#;

pub const DEFAULT_REASK: &str = "Your reply could not be used: <ERROR>. Reply again with only the JSON object, with exactly the fields goal_achieved, goal_turn, persona_adherence, human_likeness and rationale.";

/// The rubric's templates, as the judge stage's plan stores them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rubric {
    pub system: Option<Template>,
    pub prompt: Template,
    pub reask: Template,
}

impl Default for Rubric {
    fn default() -> Rubric {
        Rubric {
            system: Some(Template::parse(DEFAULT_SYSTEM)),
            prompt: Template::parse(DEFAULT_PROMPT),
            reask: Template::parse(DEFAULT_REASK),
        }
    }
}

impl Rubric {
    /// 16 hex digits of blake3 over the three templates: what the `rubric_digest` column holds.
    pub fn digest(&self) -> String {
        let v = (
            self.system.as_ref().map(Template::source),
            self.prompt.source(),
            self.reask.source(),
        );
        let json = serde_json::to_vec(&v).expect("serialisable");
        blake3::hash(&json).to_hex()[..16].to_string()
    }
}

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
