//! The experiment: what a researcher writes (TOML), resolved into validated types.
//!
//! `raw` mirrors the file; `resolve` checks it and produces an [`Experiment`], the only form the
//! rest of the tool sees. An `Experiment` is also what the plan stores as its snapshot, so workers
//! on other machines never need the original TOML or the persona and goal files.

pub mod directives;
pub mod raw;
mod resolve;
mod sources;
pub mod template;

pub use raw::Sampling;
pub use resolve::{Loaded, load, load_str};
pub use template::Template;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The candidate closest to a mistyped `word` (case aside), when one is close enough to suggest:
/// at most one edit (a transposition is one) per four letters, at least one.
pub fn did_you_mean<'a>(word: &str, candidates: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    let w = word.to_ascii_uppercase();
    let allowed = (w.chars().count() / 4).max(1);
    candidates
        .into_iter()
        .map(|c| (strsim::damerau_levenshtein(&w, &c.to_ascii_uppercase()), c))
        .filter(|(d, _)| *d <= allowed)
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

#[cfg(test)]
mod suggestion_tests {
    #[test]
    fn close_misspellings_are_suggested_and_far_ones_are_not() {
        let slots = ["OBJECTIVE", "PERSONA", "CONV_STOP"];
        assert_eq!(super::did_you_mean("OBJECTIV", slots), Some("OBJECTIVE"));
        assert_eq!(super::did_you_mean("persona", slots), Some("PERSONA"));
        assert_eq!(super::did_you_mean("CONV_SOTP", slots), Some("CONV_STOP"));
        assert_eq!(super::did_you_mean("AEG", ["AGE", "RACE"]), Some("AGE"));
        assert_eq!(super::did_you_mean("GOAL", slots), None);
        assert_eq!(super::did_you_mean("X", ["Y"]), Some("Y"), "one edit is always allowed");
        assert_eq!(super::did_you_mean("AB", ["XY"]), None);
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Experiment {
    pub name: String,
    pub dialogue: DialogueSettings,
    /// Sorted by id: the order in the file does not matter.
    pub personas: Vec<Persona>,
    /// Sorted by id.
    pub goals: Vec<Goal>,
    /// Sorted by name.
    pub models: Vec<Model>,
    /// Sorted by (inquirer, responder).
    pub pairs: Vec<Pair>,
    pub sharding: Sharding,
    pub worker: WorkerSettings,
    pub slurm: SlurmSettings,
    /// Spending caps (`[budget]`), split across shards by their units (see `crate::budget`).
    #[serde(default, skip_serializing_if = "BudgetSettings::is_empty")]
    pub budget: BudgetSettings,
}

/// Caps on what a run may spend; `None` is no cap. Tokens are the servers' `usage`.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct Caps {
    /// Prompt and completion tokens, both roles.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_tokens: Option<u64>,
    /// Prompt and completion tokens of the inquirer's calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inquirer_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responder_tokens: Option<u64>,
    /// HTTP requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests: Option<u64>,
    /// In the currency of the models' prices.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost: Option<f64>,
}

impl Caps {
    pub fn is_empty(&self) -> bool {
        *self == Caps::default()
    }
}

/// The run's caps, and caps of single pairs.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BudgetSettings {
    #[serde(default, skip_serializing_if = "Caps::is_empty")]
    pub run: Caps,
    /// Caps of one (inquirer, responder) pair, by the pair's index in `Experiment::pairs`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pairs: Vec<(u32, Caps)>,
}

impl BudgetSettings {
    pub fn is_empty(&self) -> bool {
        self.run.is_empty() && self.pairs.iter().all(|(_, c)| c.is_empty())
    }
}

/// What a model's tokens cost, per million.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Price {
    pub input_per_million: f64,
    pub output_per_million: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DialogueSettings {
    pub max_turns: u32,
    pub stop_token: String,
    /// Ascending, without repeats.
    pub seeds: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Persona {
    /// `p-` and a hash of the feature map (of the text when there are no features).
    pub id: String,
    /// What the inquirer is told it is.
    pub text: String,
    /// Kept for analysis: every feature becomes a column of the dataset.
    pub features: BTreeMap<String, String>,
    /// 0 for the first persona with this text and features, k for its k-th further copy.
    #[serde(default)]
    pub replica: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Goal {
    pub id: String,
    pub text: String,
}

impl Goal {
    /// The goal split on newlines, each line trimmed, empty lines dropped. Line 0 is the first
    /// turn's objective; line k is handed to the inquirer at turn k (METHOD.md).
    pub fn lines(&self) -> Vec<&str> {
        self.text.lines().map(str::trim).filter(|l| !l.is_empty()).collect()
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Inquirer,
    Responder,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Inquirer => "inquirer",
            Role::Responder => "responder",
        })
    }
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Any OpenAI-compatible HTTP endpoint (vLLM, TGI, llama.cpp, Ollama, OpenAI).
    Openai,
    /// Azure OpenAI: deployment URL, `api-version`, `api-key` header.
    Azure,
    /// The built-in offline simulator.
    Sim,
    /// Canned replies from a JSONL file.
    Replay,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Api {
    /// A messages API: system prompt plus alternating user/assistant messages.
    Chat,
    /// A raw text-completion API: the whole history concatenated into one prompt.
    Completions,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Model {
    pub name: String,
    pub roles: Vec<Role>,
    /// How to reach the model. Not part of any unit id: moving a server changes no output.
    pub transport: Transport,
    /// Everything that shapes the model's output. Part of the unit id of every unit it is in.
    pub behaviour: Behaviour,
}

impl Model {
    /// This model with its endpoint replaced from the environment, for jobs that start their own
    /// server (the `sim` and `vllm` Slurm templates): `ROLEPLAY_BASE_URL__<NAME>` (see
    /// [`endpoint_env_name`]) for one model, else `ROLEPLAY_BASE_URL` for every HTTP model.
    /// Endpoints are not part of unit ids, so this changes where requests go, never what is
    /// generated.
    pub fn with_endpoint_from_env(&self, env: impl Fn(&str) -> Option<String>) -> Model {
        let mut m = self.clone();
        if m.transport.base_url.is_some()
            && let Some(urls) = env(&endpoint_env_name(&m.name)).or_else(|| env("ROLEPLAY_BASE_URL"))
        {
            // Several replicas, comma-separated (the `vllm` template's `vllm_replicas`).
            let mut urls = urls
                .split(',')
                .map(|u| u.trim().trim_end_matches('/').to_string())
                .filter(|u| !u.is_empty());
            if let Some(first) = urls.next() {
                m.transport.base_url = Some(first);
                m.transport.replicas = urls.collect();
            }
        }
        m
    }

    /// Every endpoint of the model: `base_url` and its replicas.
    pub fn endpoints(&self) -> Vec<&str> {
        self.transport
            .base_url
            .iter()
            .chain(&self.transport.replicas)
            .map(String::as_str)
            .collect()
    }

    pub fn plays(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    pub fn templates(&self, role: Role) -> Option<&Templates> {
        match role {
            Role::Inquirer => self.behaviour.inquirer_templates.as_ref(),
            Role::Responder => self.behaviour.responder_templates.as_ref(),
        }
    }
}

/// The environment variable that overrides one model's `base_url` (`ROLEPLAY_BASE_URL__<NAME>`,
/// the name upper-cased with other characters as `_`).
pub fn endpoint_env_name(model: &str) -> String {
    let name: String = model
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_uppercase()
            } else {
                '_'
            }
        })
        .collect();
    format!("ROLEPLAY_BASE_URL__{name}")
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Transport {
    /// The endpoint (the first replica when there are several).
    pub base_url: Option<String>,
    /// The other replicas of the same server (`base_url = [...]`), in the file's order; requests
    /// are spread over all of them (`llm::pool`). Not part of unit ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub replicas: Vec<String>,
    pub api_key_env: Option<String>,
    pub api_version: Option<String>,
    pub timeout_secs: f64,
    pub max_retries: u32,
    /// Requests in flight to this model from one worker.
    pub concurrency: Option<u32>,
    /// Absolute path of the replay file (`replay` backend).
    pub replay_file: Option<String>,
    /// What its tokens cost (`[models.price]`), for `[budget] cost`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price: Option<Price>,
    /// Rate limits of the model's endpoint. Left out of the snapshot when they are the defaults,
    /// so plans made before they existed keep their hash.
    #[serde(default, skip_serializing_if = "RateLimits::is_default")]
    pub limits: RateLimits,
}

/// How fast requests may go to a model's endpoint (see `llm::limits`). Transport, like
/// `timeout_secs`: not part of any unit id. Models with the same `base_url` and `model` share one
/// limiter in a worker, and resolution gives them the same values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct RateLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<f64>,
    /// Lower the requests in flight on 429/503 (and raise them slowly again), and pause the
    /// endpoint when the provider says its limit is spent. On by default.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub adaptive_concurrency: bool,
}

impl RateLimits {
    /// Whether a rate is configured (`requests_per_minute` or `tokens_per_minute`).
    pub fn has_rates(&self) -> bool {
        self.requests_per_minute.is_some() || self.tokens_per_minute.is_some()
    }

    /// The share of one of `n` workers that may run at once against the same endpoint.
    pub fn shared_by(&self, n: u32) -> RateLimits {
        let n = f64::from(n.max(1));
        RateLimits {
            requests_per_minute: self.requests_per_minute.map(|r| r / n),
            tokens_per_minute: self.tokens_per_minute.map(|t| t / n),
            adaptive_concurrency: self.adaptive_concurrency,
        }
    }
}

impl Default for RateLimits {
    fn default() -> Self {
        RateLimits {
            requests_per_minute: None,
            tokens_per_minute: None,
            adaptive_concurrency: true,
        }
    }
}

impl RateLimits {
    pub fn is_default(&self) -> bool {
        *self == RateLimits::default()
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Behaviour {
    pub backend: Backend,
    pub api: Api,
    /// Model id sent to the server (or the Azure deployment name).
    pub model: String,
    pub context_length: Option<u32>,
    pub regenerate_tries: u32,
    pub idx_of_possible_prompt: usize,
    pub self_reply_markers: Vec<String>,
    pub sampling: Sampling,
    pub degeneration: Degeneration,
    pub inquirer_templates: Option<Templates>,
    pub responder_templates: Option<Templates>,
    pub sim: Option<SimSettings>,
    /// blake3 of the replay file's bytes: new replies, new units.
    pub replay_digest: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Degeneration {
    pub max_n: usize,
    pub r: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Templates {
    pub system_prompt: Option<Template>,
    pub first_turn: Template,
    pub nth_turn: Template,
    pub response_forwarding: Option<Template>,
    pub mid_response_forwarding: Option<Template>,
    pub model_output: Template,
}

/// Rates and shapes of the built-in simulator's behaviour (see `llm::sim`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SimSettings {
    pub no_prompt_rate: f64,
    pub multi_prompt_rate: f64,
    pub degenerate_rate: f64,
    pub empty_rate: f64,
    pub stop_after_turns: [u32; 2],
    pub latency_ms: f64,
    pub words: [u32; 2],
}

impl Default for SimSettings {
    fn default() -> Self {
        SimSettings {
            no_prompt_rate: 0.03,
            multi_prompt_rate: 0.1,
            degenerate_rate: 0.02,
            empty_rate: 0.01,
            stop_after_turns: [2, 9],
            latency_ms: 0.0,
            words: [10, 60],
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Pair {
    pub inquirer: String,
    pub responder: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub enum Sharding {
    #[serde(rename = "units_per_shard")]
    UnitsPerShard(u32),
    #[serde(rename = "shards")]
    Shards(u32),
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct WorkerSettings {
    pub concurrency: u32,
    /// Shards the local executor opens at once; `None`: enough to keep `concurrency` busy.
    pub parallel_shards: Option<u32>,
    pub grace_secs: f64,
    pub max_attempts: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct SlurmSettings {
    pub template: TemplateSource,
    pub partition: Option<String>,
    pub account: Option<String>,
    pub qos: Option<String>,
    pub time: Option<String>,
    pub cpus_per_task: Option<u32>,
    pub mem: Option<String>,
    pub gpus: Option<String>,
    pub array_throttle: Option<u32>,
    pub signal_grace_secs: u32,
    pub extra_directives: Vec<String>,
    pub setup: Vec<String>,
    /// `vllm` template: servers started per served model, each on `gpus / vllm_replicas` GPUs;
    /// the worker spreads its dialogues over them (`llm::pool`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub vllm_replicas: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

/// Where `[slurm] template` takes the job script from, decided once when the experiment is loaded:
/// a value with a `/` or ending in `.j2` is a template file, any other must name a built-in.
///
/// The plan stores it as one string, as before there was a type: the built-in's name, or the
/// file's absolute path (so plan hashes do not depend on this type).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TemplateSource {
    Builtin(Builtin),
    /// A template file (minijinja), absolute: resolved against the experiment file's folder.
    File(PathBuf),
}

/// The job scripts compiled into roleplay (`templates/*.sbatch.j2`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Builtin {
    /// A CPU job whose worker calls a remote endpoint.
    Api,
    /// Starts `vllm serve` for the pair's models on loopback, then the worker.
    Vllm,
    /// Starts `roleplay sim-server` beside the worker (tests and demos).
    Sim,
}

impl Builtin {
    pub const ALL: [Builtin; 3] = [Builtin::Api, Builtin::Vllm, Builtin::Sim];

    /// The name `[slurm] template` gives it.
    pub fn name(self) -> &'static str {
        match self {
            Builtin::Api => "api",
            Builtin::Vllm => "vllm",
            Builtin::Sim => "sim",
        }
    }

    pub fn from_name(name: &str) -> Option<Builtin> {
        Builtin::ALL.into_iter().find(|b| b.name() == name)
    }

    /// Whether its jobs serve the models of their pair themselves (one array per pair).
    pub fn serves_models(self) -> bool {
        self == Builtin::Vllm
    }
}

impl Default for TemplateSource {
    fn default() -> Self {
        TemplateSource::Builtin(Builtin::Api)
    }
}

impl std::fmt::Display for TemplateSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TemplateSource::Builtin(b) => f.write_str(b.name()),
            TemplateSource::File(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Serialize for TemplateSource {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for TemplateSource {
    /// A built-in's name, else a path (a resolved experiment holds only absolute ones).
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(match Builtin::from_name(&s) {
            Some(b) => TemplateSource::Builtin(b),
            None => TemplateSource::File(PathBuf::from(s)),
        })
    }
}

impl Experiment {
    pub fn model(&self, name: &str) -> Option<&Model> {
        self.models.iter().find(|m| m.name == name)
    }
}
