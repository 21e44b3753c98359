//! The experiment file exactly as written: serde types that mirror the TOML.
//!
//! Unknown keys are errors everywhere (`deny_unknown_fields`), so a misspelt key never silently
//! falls back to a default. Nothing here is validated beyond types; `resolve` turns these into an
//! [`crate::experiment::Experiment`] and owns every cross-field rule.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExperiment {
    /// A short name; defaults to the file's stem.
    pub name: Option<String>,
    /// Where the run lives, relative to the experiment file; defaults to `runs/<name>`.
    pub run_dir: Option<String>,
    #[serde(default)]
    pub dialogue: RawDialogue,
    pub personas: Option<RawPersonas>,
    pub goals: Option<RawGoals>,
    #[serde(default)]
    pub models: Vec<RawModel>,
    /// Which (inquirer, responder) pairs to run; every inquirer against every responder if absent.
    pub pairs: Option<Vec<RawPair>>,
    #[serde(default)]
    pub sharding: RawSharding,
    #[serde(default)]
    pub worker: RawWorker,
    #[serde(default)]
    pub slurm: RawSlurm,
    pub budget: Option<RawBudget>,
}

/// `[budget]`: caps for the whole run; `[[budget.pairs]]` for single pairs. (The caps are spelled
/// out in both: serde's `flatten` would let unknown keys through.)
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawBudget {
    pub tokens: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub inquirer_tokens: Option<i64>,
    pub responder_tokens: Option<i64>,
    pub requests: Option<i64>,
    pub cost: Option<f64>,
    #[serde(default)]
    pub pairs: Vec<RawPairBudget>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPairBudget {
    pub inquirer: String,
    pub responder: String,
    pub tokens: Option<i64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub inquirer_tokens: Option<i64>,
    pub responder_tokens: Option<i64>,
    pub requests: Option<i64>,
    pub cost: Option<f64>,
}

/// The seven caps of a `[budget]` or `[[budget.pairs]]` table, in the order of [`CAP_KEYS`].
pub type RawCaps = ([Option<i64>; 6], Option<f64>);

/// The cap keys, integer ones first.
pub const CAP_KEYS: [&str; 7] = [
    "tokens",
    "prompt_tokens",
    "completion_tokens",
    "inquirer_tokens",
    "responder_tokens",
    "requests",
    "cost",
];

impl RawBudget {
    pub fn caps(&self) -> RawCaps {
        (
            [
                self.tokens,
                self.prompt_tokens,
                self.completion_tokens,
                self.inquirer_tokens,
                self.responder_tokens,
                self.requests,
            ],
            self.cost,
        )
    }
}

impl RawPairBudget {
    pub fn caps(&self) -> RawCaps {
        (
            [
                self.tokens,
                self.prompt_tokens,
                self.completion_tokens,
                self.inquirer_tokens,
                self.responder_tokens,
                self.requests,
            ],
            self.cost,
        )
    }
}

/// `[models.price]`: per million tokens.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPrice {
    pub input_per_million: Option<f64>,
    pub output_per_million: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDialogue {
    pub max_turns: Option<i64>,
    pub stop_token: Option<String>,
    pub seeds: Option<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersonas {
    /// Sentence template with `<FEATURE>` placeholders (upper-cased feature names).
    pub template: Option<String>,
    /// A fixed list of feature maps.
    pub fixed: Option<Vec<BTreeMap<String, toml::Value>>>,
    /// A JSONL or CSV file: a `text` field/column and/or feature fields; optional `id`.
    pub file: Option<String>,
    /// Sample N personas from per-feature value lists.
    pub sample: Option<RawPersonaSample>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPersonaSample {
    pub count: i64,
    pub seed: i64,
    pub features: BTreeMap<String, Vec<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoals {
    pub items: Option<Vec<RawGoalItem>>,
    pub file: Option<String>,
    /// Field (JSONL) or column (CSV) holding the goal id; default `id`.
    pub id_field: Option<String>,
    /// Field or column holding the goal text; default `text`.
    pub text_field: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawGoalItem {
    Text(String),
    Table(RawGoalTable),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGoalTable {
    pub id: Option<String>,
    pub text: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModel {
    pub name: String,
    pub roles: Vec<String>,
    pub backend: String,
    /// `chat` (messages API) or `completions` (raw text completion); default `chat`.
    pub api: Option<String>,
    /// One endpoint, or a list of replicas of one server.
    pub base_url: Option<OneOrMany>,
    pub model: Option<String>,
    /// Name of the environment variable that holds the key (never the key itself).
    pub api_key_env: Option<String>,
    /// Refused when present: keys never go into files. Declared so the error can say so.
    pub api_key: Option<toml::Value>,
    /// Azure OpenAI `api-version` query parameter.
    pub api_version: Option<String>,
    pub context_length: Option<i64>,
    pub regenerate_tries: Option<i64>,
    pub idx_of_possible_prompt: Option<i64>,
    pub self_reply_markers: Option<Vec<String>>,
    pub timeout_secs: Option<f64>,
    pub max_retries: Option<i64>,
    pub concurrency: Option<i64>,
    /// The endpoint's request rate limit, shared by every model naming the same server model.
    pub requests_per_minute: Option<f64>,
    /// The endpoint's token rate limit (prompt and completion tokens).
    pub tokens_per_minute: Option<f64>,
    /// Lower the requests in flight on 429/503 and pause on the provider's rate-limit headers.
    pub adaptive_concurrency: Option<bool>,
    #[serde(default)]
    pub sampling: Sampling,
    #[serde(default)]
    pub degeneration: RawDegeneration,
    #[serde(default)]
    pub templates: RawTemplates,
    pub sim: Option<RawSim>,
    /// JSONL file of canned replies, for the `replay` backend.
    pub replay_file: Option<String>,
    /// What the model's tokens cost, for `[budget] cost`.
    pub price: Option<RawPrice>,
}

#[derive(Debug, Default, Clone, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Sampling {
    pub max_new_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub repetition_penalty: Option<f64>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDegeneration {
    pub max_n: Option<i64>,
    pub r: Option<i64>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTemplates {
    pub system_prompt: Option<String>,
    pub first_turn: Option<String>,
    pub nth_turn: Option<String>,
    pub response_forwarding: Option<String>,
    pub mid_response_forwarding: Option<String>,
    pub model_output: Option<String>,
    /// Overrides for the inquirer role of a model that plays both roles.
    pub inquirer: Option<Box<RawTemplates>>,
    /// Overrides for the responder role of a model that plays both roles.
    pub responder: Option<Box<RawTemplates>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSim {
    pub no_prompt_rate: Option<f64>,
    pub multi_prompt_rate: Option<f64>,
    pub degenerate_rate: Option<f64>,
    pub empty_rate: Option<f64>,
    /// The inquirer says the stop token after a number of turns drawn from this range.
    pub stop_after_turns: Option<[i64; 2]>,
    pub latency_ms: Option<f64>,
    pub words: Option<[i64; 2]>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPair {
    pub inquirer: String,
    pub responder: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSharding {
    pub units_per_shard: Option<i64>,
    pub shards: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWorker {
    /// Dialogues in flight at once within one worker.
    pub concurrency: Option<i64>,
    /// Shards the local executor runs at the same time.
    pub parallel_shards: Option<i64>,
    /// Seconds a worker waits for in-flight calls after a stop signal.
    pub grace_secs: Option<f64>,
    /// Attempts a shard gets before it is reported instead of retried.
    pub max_attempts: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSlurm {
    pub template: Option<String>,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<i64>,
    pub mem: Option<String>,
    pub gpus: Option<String>,
    pub array_throttle: Option<i64>,
    pub signal_grace_secs: Option<i64>,
    pub extra_directives: Option<Vec<String>>,
    pub setup: Option<Vec<String>>,
    /// `vllm` template: servers per model, each on its share of the job's GPUs.
    pub vllm_replicas: Option<i64>,
}

/// A string, or a list of strings (`base_url = "..."` or `base_url = ["...", "..."]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn all(&self) -> Vec<&str> {
        match self {
            OneOrMany::One(s) => vec![s.as_str()],
            OneOrMany::Many(v) => v.iter().map(String::as_str).collect(),
        }
    }
}
