//! What a dialogue leaves behind: its calls, its turns and how it ended.
//!
//! These types are the contract between the engine (which produces them), the worker's journal
//! (which stores them, so their serialised form is versioned with the journal) and merge (which
//! turns them into Parquet). Add fields with `#[serde(default)]`; never rename one.

use crate::experiment::Sampling;
use crate::llm::{CallKey, ErrorKind};
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// One completed model call, as used by the method.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    /// The text the method works on: for completion APIs, after echo removal and the self-reply cut.
    pub output: String,
    /// What the server returned, when it differs from `output`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_output: Option<String>,
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub latency_ms: f64,
    pub finish_reason: Option<String>,
    /// HTTP requests made for this call: the one answered, retries of transient faults, requests
    /// refused as too long and requests whose reply was cut by the context window (each of the
    /// last two asked again with fewer turns). `1 + transient_retries + overflow_refusals +
    /// cut_replies` for calls recorded by this version.
    pub attempts: u32,
    /// Requests that were retries of transient faults (429, 5xx, timeouts, resets).
    #[serde(default)]
    pub transient_retries: u32,
    /// Requests the server refused as longer than its context window.
    #[serde(default)]
    pub overflow_refusals: u32,
    /// Replies the server cut short because the context window was full (discarded and asked again).
    #[serde(default)]
    pub cut_replies: u32,
    /// Tokens the server reported for those discarded replies (spent, though not in the record).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub discarded_prompt_tokens: u32,
    #[serde(default, skip_serializing_if = "is_zero")]
    pub discarded_completion_tokens: u32,
    /// The sampling settings sent (randomised on regeneration).
    pub sampling: Sampling,
    /// The output was cut at a self-reply marker.
    #[serde(default)]
    pub self_reply_cut: bool,
    /// Oldest (user, assistant) pairs dropped to fit the context window (chat APIs).
    #[serde(default)]
    pub trimmed_pairs: u32,
    /// The reply was cut short by a full context window and no older turn was left to drop: the
    /// dialogue ended on it with [`EndReason::ContextOverflow`].
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cut_by_window: bool,
}

/// One completed turn: the inquirer's prompt and the responder's reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Turn {
    pub index: u32,
    /// The inquirer generation whose prompt was used.
    pub inquirer: Call,
    /// The prompt extracted from it (rule A), forwarded to the responder.
    pub prompt: String,
    /// Quoted spans found in that output (more than 1 is a "multiple prompts" event).
    pub num_prompts: u32,
    /// Earlier generations of this turn that held no prompt (regenerations that failed).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rejected: Vec<Call>,
    pub responder: Call,
}

/// Why a dialogue ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndReason {
    /// The inquirer said the stop token: it considers its goal reached.
    Stop,
    /// Every turn was used.
    MaxTurns,
    /// No prompt could be extracted from the inquirer's output (after any regenerations).
    NoPrompt,
    DegenerateInquirer,
    DegenerateResponder,
    EmptyInquirer,
    EmptyResponder,
    /// The conversation no longer fits the context window: the server refused the prompt as too
    /// long, or cut the reply short for want of room, and no older turn was left to drop (or the
    /// model's API sends the whole text: `completions`).
    ContextOverflow,
    /// A backend failed for good; `Ending::error` says how.
    BackendError,
}

impl EndReason {
    pub const ALL: [EndReason; 9] = [
        EndReason::Stop,
        EndReason::MaxTurns,
        EndReason::NoPrompt,
        EndReason::DegenerateInquirer,
        EndReason::DegenerateResponder,
        EndReason::EmptyInquirer,
        EndReason::EmptyResponder,
        EndReason::ContextOverflow,
        EndReason::BackendError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EndReason::Stop => "stop",
            EndReason::MaxTurns => "max_turns",
            EndReason::NoPrompt => "no_prompt",
            EndReason::DegenerateInquirer => "degenerate_inquirer",
            EndReason::DegenerateResponder => "degenerate_responder",
            EndReason::EmptyInquirer => "empty_inquirer",
            EndReason::EmptyResponder => "empty_responder",
            EndReason::ContextOverflow => "context_overflow",
            EndReason::BackendError => "backend_error",
        }
    }

    /// A dialogue that ended like this is a failure of the run, not a result of the method.
    pub fn is_failure(self) -> bool {
        self == EndReason::BackendError
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BackendFailure {
    pub role: crate::experiment::Role,
    pub kind: ErrorKind,
    /// Names the model and the endpoint; any key is cut out.
    pub message: String,
    /// HTTP requests made for the failed call (0 when none could be sent, as for a missing key).
    #[serde(default)]
    pub attempts: u32,
    /// Of those, retries of transient faults.
    #[serde(default)]
    pub transient_retries: u32,
    /// Of those, requests refused as too long (each asked again with fewer turns).
    #[serde(default)]
    pub overflow_refusals: u32,
    /// Of those, replies cut by the context window (each asked again with fewer turns).
    #[serde(default)]
    pub cut_replies: u32,
}

/// How the dialogue ended, with the calls of the unfinished last turn (e.g. the `FINISH` output).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ending {
    pub reason: EndReason,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<BackendFailure>,
    /// Inquirer generations of the last, incomplete turn (the one that ended the dialogue).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub last_inquirer: Vec<Call>,
    /// The responder's reply of the last turn when that reply ended it (empty or degenerate).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_responder: Option<Call>,
}

/// Per-dialogue counters (the reference kept only run-wide ones). README ("The dataset") defines
/// each; the HTTP counts are what a proxy in front of the server would count for the dialogue.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    /// Turns whose inquirer output held several quoted prompts.
    pub multiple_prompts: u32,
    /// Inquirer regenerations made because no prompt was found.
    pub regenerations: u32,
    /// Turns where a regeneration found a prompt.
    pub regeneration_helped: u32,
    /// Outputs cut at a self-reply marker.
    pub self_reply_cuts: u32,
    /// HTTP requests that were retries of transient faults (429, 5xx, timeouts, resets), both roles.
    pub retries: u32,
    /// The most (user, assistant) pairs any one request of the dialogue left out to fit a context
    /// window (records before this version summed the drops of every call).
    pub trimmed_pairs: u32,
    /// Requests refused as longer than the context window, both roles.
    #[serde(default)]
    pub overflow_refusals: u32,
    /// Replies cut short by a full context window and asked again, both roles.
    #[serde(default)]
    pub cut_replies: u32,
    /// Every HTTP request sent for the dialogue, both roles: answered, retried, refused, cut, and
    /// the one that ended it with an error (0 in records before this version: see merge).
    #[serde(default)]
    pub http_attempts: u32,
}

/// Where a context window's size came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowSource {
    /// The model's `context_length` in the experiment.
    Experiment,
    /// Asked of the server (llama.cpp `/props`, vLLM `/v1/models`), because the experiment sets none.
    Server,
}

/// The context window a role's requests were fitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContextWindow {
    pub tokens: u32,
    pub source: WindowSource,
}

/// The context windows of both roles, where one was known.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Windows {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inquirer: Option<ContextWindow>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub responder: Option<ContextWindow>,
}

/// A finished dialogue: everything merge needs for its rows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DialogueRecord {
    pub unit: UnitId,
    pub turns: Vec<Turn>,
    pub ending: Ending,
    pub counters: Counters,
    #[serde(default)]
    pub windows: Windows,
    /// The fidelity indicators, computed by the worker when the dialogue finished (while its
    /// models are what it waits for); merge and report use them when their `version` is the
    /// code's and compute them otherwise (journals written before, or by another version).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub indicators: Option<Indicators>,
}

/// A dialogue's fidelity indicators as its record stores them (`quality::indicators`, README
/// "Fidelity indicators"): the computed values, one list per per-turn value; what follows from
/// them (role flips from the signals, near-duplicates, counts, rates, `style_shifted`) is derived
/// again when read. Every field has a default so that any version's form parses; a change to a
/// field's type needs a new name.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Indicators {
    /// `quality::indicators::VERSION` of the code that computed them.
    pub version: u32,
    pub words: Vec<u32>,
    pub question_ratio: Vec<f64>,
    pub contraction_rate: Vec<f64>,
    pub formality: Vec<f64>,
    /// The role-flip signal bits of each turn (`quality::Signals`).
    pub signals: Vec<u8>,
    pub repeat_jaccard: Vec<Option<f64>>,
    pub restart: Vec<bool>,
    pub goal_content_words: u32,
    pub goal_word_share: Option<f64>,
    pub goal_lcs_chars: Option<u32>,
    pub goal_lcs_share: Option<f64>,
    pub goal_leak: bool,
    pub style_drift: Option<f64>,
    pub style_shift: Option<f64>,
}

/// A completed call that the journal records as soon as it returns, so that a restarted worker
/// resumes inside a dialogue without repeating it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallEvent {
    pub key: CallKey,
    pub call: Call,
}
