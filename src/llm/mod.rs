//! Model backends behind one trait: OpenAI-compatible HTTP (and Azure), the built-in simulator,
//! and replay of recorded outputs.
//!
//! The dialogue engine builds a [`Request`] (a chat message list or a raw text prompt, plus the
//! sampling to use) and gets back a [`Completion`] or a [`CallError`]. Retries of transient faults
//! happen inside the backend (one policy, `retry.rs`), and so do the waits for rate limits
//! (`limits.rs`); what reaches the engine is final.

pub mod limits;
pub mod openai;
pub mod pool;
pub mod replay;
pub mod retry;
pub mod sim;

use crate::experiment::{Role, Sampling};
use crate::plan::UnitId;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::pin::Pin;

/// One chat message (OpenAI roles: `system`, `user`, `assistant`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub role: String,
    pub content: String,
}

impl Message {
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// What is sent: a message list for chat APIs, one concatenated text for completion APIs.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt {
    Chat(Vec<Message>),
    Text(String),
}

/// Which call of which dialogue this is. Sent to HTTP servers as `x-roleplay-*` headers (harmless
/// to real servers; the sim-server counts calls by them) and used to seed the simulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    pub unit: UnitId,
    pub seed: u64,
    pub turn: u32,
    pub role: Role,
    /// 0 for the first generation of this (turn, role); k for the k-th regeneration.
    pub attempt: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    pub key: CallKey,
    pub prompt: Prompt,
    pub sampling: Sampling,
}

/// A successful generation, as the server returned it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub text: String,
    /// From the server's `usage` when it reports one.
    pub prompt_tokens: Option<u32>,
    pub completion_tokens: Option<u32>,
    pub finish_reason: Option<String>,
    /// Wall time of the successful attempt plus waits between retries, in milliseconds.
    pub latency_ms: f64,
    /// HTTP attempts made (1 when the first one succeeded).
    pub attempts: u32,
}

/// Why a call failed for good (after any retries).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The prompt does not fit the model's context window (HTTP 400 saying so).
    ContextOverflow,
    /// 401/403: a wrong or missing key.
    Auth,
    /// The environment variable named by `api_key_env` is not set.
    MissingKey,
    /// Other 4xx: the server refused the request.
    BadRequest,
    /// 404: wrong URL or unknown model.
    NotFound,
    /// Transient faults (5xx, 429, timeouts, resets) that outlasted every retry.
    RetriesExhausted,
    /// Could not connect at all.
    Unreachable,
    /// The body was not the JSON of a completion (HTML, truncated, malformed).
    BadResponse,
    /// The replay file has no reply for this call.
    ReplayExhausted,
    /// The run is stopping ([`Halt`]): the request was not sent, or not sent again. Never a
    /// dialogue's end: the engine leaves the dialogue to be resumed from its recorded calls.
    Stopped,
}

impl ErrorKind {
    /// The fix to suggest for a failure of this kind.
    pub fn hint(self) -> &'static str {
        match self {
            ErrorKind::ContextOverflow => {
                "set the model's `context_length` (or check the one the server reports), or lower `max_turns` or `max_new_tokens`"
            }
            ErrorKind::Auth => {
                "check the key in the variable that `api_key_env` names, and that it is the key of this endpoint"
            }
            ErrorKind::MissingKey => {
                "export the variable that `api_key_env` names before running (keys are read from the environment, never from files)"
            }
            ErrorKind::BadRequest => {
                "the server refused the request: read its message; check `model` and the sampling settings"
            }
            ErrorKind::NotFound => "check `base_url` (usually ending in `/v1`) and the model id in `model`",
            ErrorKind::RetriesExhausted => {
                "the server kept failing or timing out: check its load and logs, or raise `max_retries` or `timeout_secs`"
            }
            ErrorKind::Unreachable => {
                "is the server up at `base_url`? `roleplay validate FILE --check-endpoints` asks every endpoint"
            }
            ErrorKind::BadResponse => {
                "the server answered something that is not a completion: check that `base_url` is the API's root"
            }
            ErrorKind::ReplayExhausted => {
                "add replies for these calls to the replay file, or a `\"unit\": \"*\"` reply"
            }
            ErrorKind::Stopped => "run it again to go on: the calls answered before the stop are kept",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::ContextOverflow => "context_overflow",
            ErrorKind::Auth => "auth",
            ErrorKind::MissingKey => "missing_key",
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::NotFound => "not_found",
            ErrorKind::RetriesExhausted => "retries_exhausted",
            ErrorKind::Unreachable => "unreachable",
            ErrorKind::BadResponse => "bad_response",
            ErrorKind::ReplayExhausted => "replay_exhausted",
            ErrorKind::Stopped => "stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CallError {
    pub kind: ErrorKind,
    /// Names the model and the endpoint, e.g. "model `gpt-4` at `https://...`: HTTP 401 ...".
    pub message: String,
    /// HTTP attempts made before giving up.
    pub attempts: u32,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.kind.as_str())
    }
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The run's stop as a backend sees it: once it is set, no HTTP attempt starts (not a first one,
/// not a retry after its backoff, not one waiting for its rate), and a wait for the rate or a
/// backoff ends at once. An attempt already sent is waited for (the worker's grace decides how
/// long). The worker hands its stop signal down as one of these; [`Halt::never`] elsewhere.
#[derive(Debug, Clone, Default)]
pub struct Halt(Option<tokio::sync::watch::Receiver<Option<String>>>);

impl Halt {
    /// A stop that never comes (a one-off call, a test).
    pub fn never() -> Halt {
        Halt(None)
    }

    /// Set once the channel holds a value (the worker's stop flag: the signal's name).
    pub fn of(flag: tokio::sync::watch::Receiver<Option<String>>) -> Halt {
        Halt(Some(flag))
    }

    pub fn is_set(&self) -> bool {
        self.0.as_ref().is_some_and(|rx| rx.borrow().is_some())
    }

    /// Resolves once the stop is set (never, for [`Halt::never`]).
    pub async fn wait(&self) {
        match &self.0 {
            Some(rx) => {
                let mut rx = rx.clone();
                if rx.wait_for(|v| v.is_some()).await.is_err() {
                    // The flag's owner is gone: no stop can come any more.
                    std::future::pending::<()>().await;
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// A model that completes prompts. Implementations are cheap to share (`Arc`) across many
/// dialogues in flight.
pub trait ChatModel: Send + Sync {
    /// The model's configured name (for messages).
    fn name(&self) -> &str;
    fn complete<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Completion, CallError>>;

    /// [`ChatModel::complete`], but no attempt starts once `halt` is set: then the call fails as
    /// [`ErrorKind::Stopped`]. Backends without a server to spare (the simulator, replay) answer
    /// at once and need not look.
    fn complete_until<'a>(&'a self, req: &'a Request, halt: &'a Halt) -> BoxFuture<'a, Result<Completion, CallError>> {
        let _ = halt;
        self.complete(req)
    }

    /// The context window in tokens as the server reports it, for models whose experiment sets no
    /// `context_length`; asked at most once per process. `None` when the backend has no server or
    /// the server does not say.
    fn server_window(&self) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async { None })
    }
}

/// The backend of a configured model, ready to share across dialogues.
///
/// HTTP backends get their own connection pool and concurrency cap; `replay` reads and checks its
/// file here, so a bad file fails before any dialogue starts.
pub fn client_for(model: &crate::experiment::Model) -> crate::error::Result<std::sync::Arc<dyn ChatModel>> {
    use crate::experiment::Backend;
    let b = &model.behaviour;
    Ok(match b.backend {
        Backend::Openai | Backend::Azure if !model.transport.replicas.is_empty() => {
            let mut replicas: Vec<(String, std::sync::Arc<dyn ChatModel>)> = Vec::new();
            for url in model.endpoints() {
                let mut one = model.clone();
                one.transport.base_url = Some(url.to_string());
                one.transport.replicas.clear();
                replicas.push((url.to_string(), std::sync::Arc::new(openai::OpenAiModel::new(&one)?)));
            }
            std::sync::Arc::new(pool::Pool::new(&model.name, replicas))
        }
        Backend::Openai | Backend::Azure => std::sync::Arc::new(openai::OpenAiModel::new(model)?),
        Backend::Sim => std::sync::Arc::new(sim::SimModel::new(&model.name, b.sim.clone().unwrap_or_default())),
        Backend::Replay => {
            let path = model.transport.replay_file.as_deref().ok_or_else(|| {
                crate::error::Error::config(format!(
                    "model `{}`: the `replay` backend needs `replay_file`",
                    model.name
                ))
            })?;
            std::sync::Arc::new(replay::ReplayModel::load(&model.name, path)?)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::Model;

    fn models(extra: &str) -> Vec<Model> {
        let text = format!(
            r#"
[personas]
template = "<AGE> person"
fixed = [{{ age = "young" }}]
[goals]
items = ["learn to bake"]
[[models]]
name = "inq"
roles = ["inquirer"]
backend = "sim"
[models.templates]
first_turn = "You are <PERSONA>. Goal: <OBJECTIVE>. Say \"<CONV_STOP>\" when done."
response_forwarding = "\"<RESPONSE>\""
[models.sim]
words = [3, 3]
{extra}
"#
        );
        let dir = std::env::temp_dir().join("roleplay-llm-client-for.toml");
        crate::experiment::load_str(&text, &dir)
            .expect("valid")
            .experiment
            .models
    }

    fn request(role: Role) -> Request {
        Request {
            key: CallKey {
                unit: UnitId([3; 10]),
                seed: 1,
                turn: 0,
                role,
                attempt: 0,
            },
            prompt: Prompt::Chat(vec![Message::new("user", "How do I bake bread?")]),
            sampling: Sampling::default(),
        }
    }

    #[tokio::test]
    async fn each_backend_is_built_from_its_model() {
        let dir = tempfile::tempdir().expect("temp dir");
        let replies = dir.path().join("replies.jsonl");
        std::fs::write(
            &replies,
            "{\"unit\": \"*\", \"role\": \"responder\", \"text\": \"canned\"}\n",
        )
        .expect("write");
        let ms = models(&format!(
            "[[models]]\nname = \"rp\"\nroles = [\"responder\"]\nbackend = \"replay\"\nreplay_file = \"{}\"\n\
             [[models]]\nname = \"http\"\nroles = [\"responder\"]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"",
            replies.display()
        ));
        let by_name = |n: &str| ms.iter().find(|m| m.name == n).expect("declared");
        let sim = client_for(by_name("inq")).expect("sim backend");
        assert_eq!(sim.name(), "inq");
        let settings = by_name("inq").behaviour.sim.clone().expect("sim settings");
        let req = request(Role::Responder);
        let got = sim.complete(&req).await.expect("sim reply");
        assert_eq!(got.text, sim::sim_reply(&settings, &req.key, &req.prompt).text);
        assert_eq!(
            got.text.split_whitespace().count(),
            3,
            "the model's own [models.sim] settings"
        );
        let rp = client_for(by_name("rp")).expect("replay backend");
        assert_eq!(rp.complete(&req).await.expect("replay").text, "canned");
        assert_eq!(client_for(by_name("http")).expect("http backend").name(), "http");
    }
}
