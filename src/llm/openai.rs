//! The `openai` and `azure` backends: any OpenAI-compatible HTTP server (vLLM, TGI, llama.cpp,
//! Ollama, OpenAI) and Azure OpenAI, over the chat and the text-completion APIs.
//!
//! One [`OpenAiModel`] per configured model: one concurrency cap, one retry loop, and the rate
//! limiter of its server model (`limits.rs`, shared with other models naming the same one) that
//! every attempt goes through. Transient faults are retried here under the policy of `retry.rs`,
//! and every retry wait is logged by the limiter with its reason; what the engine gets
//! is a completion or a final [`CallError`] whose message names the model and the endpoint. The
//! API key is read from its environment variable at each call, sent in a header marked
//! sensitive, and cut out of any message that might echo it: it is never logged or stored.

use super::limits::{self, Answer, Reason, Signals};
use super::retry::{self, Backoff, Outcome, Verdict};
use super::{BoxFuture, CallError, CallKey, ChatModel, Completion, ErrorKind, Halt, Message, Prompt, Request};
use crate::error::{Error, Result};
use crate::experiment::{Backend, Model, Sampling};
use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Serialize;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::Value;
use std::marker::PhantomData;
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;

/// Installs the ring provider for rustls once per process (reqwest is built without one).
/// One HTTP client (and so one connection pool) per pool size for the whole process: models served
/// by one server share their connections instead of opening one pool each, and the TLS roots are
/// loaded once. Timeouts are set per request.
fn shared_client(pool: usize) -> std::result::Result<reqwest::Client, reqwest::Error> {
    static CLIENTS: std::sync::Mutex<Vec<(usize, reqwest::Client)>> = std::sync::Mutex::new(Vec::new());
    let mut clients = CLIENTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some((_, c)) = clients.iter().find(|(p, _)| *p == pool) {
        return Ok(c.clone());
    }
    install_crypto_provider();
    let client = reqwest::Client::builder()
        .user_agent(concat!("roleplay/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(30))
        // Idle connections kept for reuse: as many as may be in flight at once.
        .pool_max_idle_per_host(pool)
        .tcp_nodelay(true)
        .build()?;
    clients.push((pool, client.clone()));
    Ok(client)
}

fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

pub struct OpenAiModel {
    name: String,
    backend: Backend,
    /// Sent as `model` (OpenAI-compatible servers); the deployment in the URL for Azure.
    model_id: String,
    chat_url: reqwest::Url,
    completions_url: reqwest::Url,
    key_env: Option<String>,
    timeout: Duration,
    max_retries: u32,
    backoff: Backoff,
    client: reqwest::Client,
    /// `Transport::concurrency`: requests in flight to this model from this process.
    permits: Option<Semaphore>,
    /// The rate limits and adaptive window of the server model, shared process-wide.
    limiter: std::sync::Arc<limits::Endpoint>,
    /// `base_url` as configured, for the server's own description of itself.
    base: reqwest::Url,
    /// The context window the server reports, asked once (see [`OpenAiModel::ask_window`]).
    window: tokio::sync::OnceCell<Option<u32>>,
}

impl OpenAiModel {
    /// Build the backend of an `openai` or `azure` model.
    pub fn new(model: &Model) -> Result<OpenAiModel> {
        let t = &model.transport;
        let b = &model.behaviour;
        let name = &model.name;
        if !matches!(b.backend, Backend::Openai | Backend::Azure) {
            return Err(Error::config(format!("model `{name}`: not an HTTP backend")));
        }
        let base = t
            .base_url
            .as_deref()
            .ok_or_else(|| Error::config(format!("model `{name}`: `base_url` is missing")))?;
        let endpoint = |path: &[&str]| -> Result<reqwest::Url> {
            let mut url = reqwest::Url::parse(base)
                .map_err(|e| Error::config(format!("model `{name}`: `base_url` `{base}` is not a URL ({e})")))?;
            url.path_segments_mut()
                .map_err(|_| Error::config(format!("model `{name}`: `base_url` `{base}` cannot take a path")))?
                .pop_if_empty()
                .extend(path);
            if b.backend == Backend::Azure {
                let version = t.api_version.as_deref().unwrap_or_default();
                url.query_pairs_mut().append_pair("api-version", version);
            }
            Ok(url)
        };
        let (chat_url, completions_url) = match b.backend {
            Backend::Azure => (
                endpoint(&["openai", "deployments", &b.model, "chat", "completions"])?,
                endpoint(&["openai", "deployments", &b.model, "completions"])?,
            ),
            _ => (endpoint(&["chat", "completions"])?, endpoint(&["completions"])?),
        };
        let timeout = Duration::try_from_secs_f64(t.timeout_secs)
            .ok()
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(300));
        let concurrency = t.concurrency.map(|c| c.max(1) as usize);
        let client = shared_client(concurrency.unwrap_or(1024))
            .map_err(|e| Error::runtime(format!("model `{name}`: cannot set up an HTTP client: {e}")))?;
        let base_url = reqwest::Url::parse(base)
            .map_err(|e| Error::config(format!("model `{name}`: `base_url` `{base}` is not a URL ({e})")))?;
        let limiter = limits::endpoint(&limits::endpoint_key(base, &b.model), limits::Settings::from(&t.limits));
        Ok(OpenAiModel {
            limiter,
            base: base_url,
            window: tokio::sync::OnceCell::new(),
            name: name.clone(),
            backend: b.backend,
            model_id: b.model.clone(),
            chat_url,
            completions_url,
            key_env: t.api_key_env.clone(),
            timeout,
            max_retries: t.max_retries,
            backoff: Backoff::default(),
            client,
            permits: concurrency.map(Semaphore::new),
        })
    }

    /// Replace the retry waits (tests use milliseconds instead of seconds).
    pub fn with_backoff(mut self, backoff: Backoff) -> OpenAiModel {
        self.backoff = backoff;
        self
    }

    /// The endpoint a prompt of this kind is sent to.
    pub fn url(&self, prompt: &Prompt) -> &reqwest::Url {
        match prompt {
            Prompt::Chat(_) => &self.chat_url,
            Prompt::Text(_) => &self.completions_url,
        }
    }

    /// The key from the environment, if the model names a variable.
    fn key(&self, url: &str) -> Result<Option<String>, CallError> {
        let Some(var) = &self.key_env else { return Ok(None) };
        match std::env::var(var) {
            Ok(k) if !k.is_empty() => Ok(Some(k)),
            _ => Err(CallError {
                kind: ErrorKind::MissingKey,
                message: format!(
                    "model `{}` at `{url}`: the environment variable `{var}` (its `api_key_env`) is not set or is empty",
                    self.name
                ),
                attempts: 0,
            }),
        }
    }

    fn headers(&self, key: &CallKey, api_key: Option<&str>, url: &str) -> Result<HeaderMap, CallError> {
        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        // Numbers in decimal, as their `to_string`, without the string.
        let id = [
            ("x-roleplay-unit", HeaderValue::from_str(&key.unit.to_string()).ok()),
            ("x-roleplay-seed", Some(HeaderValue::from(key.seed))),
            ("x-roleplay-turn", Some(HeaderValue::from(key.turn))),
            ("x-roleplay-role", HeaderValue::from_str(&key.role.to_string()).ok()),
            ("x-roleplay-attempt", Some(HeaderValue::from(key.attempt))),
        ];
        for (name, value) in id {
            if let Some(v) = value {
                h.insert(HeaderName::from_static(name), v);
            }
        }
        if let Some(k) = api_key {
            let (name, value) = match self.backend {
                Backend::Azure => (HeaderName::from_static("api-key"), k.to_string()),
                _ => (reqwest::header::AUTHORIZATION, format!("Bearer {k}")),
            };
            let mut v = HeaderValue::from_str(&value).map_err(|_| CallError {
                kind: ErrorKind::Auth,
                message: format!(
                    "model `{}` at `{url}`: the key in `{}` holds characters an HTTP header cannot carry",
                    self.name,
                    self.key_env.as_deref().unwrap_or_default()
                ),
                attempts: 0,
            })?;
            v.set_sensitive(true);
            h.insert(name, v);
        }
        Ok(h)
    }

    /// The JSON body, serialised once per call (a retry sends the same bytes).
    fn body(&self, req: &Request) -> Bytes {
        let model = (self.backend != Backend::Azure).then_some(self.model_id.as_str());
        Bytes::from(serde_json::to_vec(&RequestBody::new(model, &req.prompt, &req.sampling)).unwrap_or_default())
    }

    /// One HTTP exchange.
    async fn attempt(&self, url: &reqwest::Url, headers: HeaderMap, body: Bytes, chat: bool) -> Attempt {
        let sent = self
            .client
            .post(url.clone())
            .timeout(self.timeout)
            .headers(headers)
            .body(body)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Attempt::from_transport(&e, self.timeout),
        };
        let status = resp.status();
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let retry_after = header("retry-after");
        let retry_after_ms = header("retry-after-ms");
        let signals = Signals::read(|name| resp.headers().get(name).and_then(|v| v.to_str().ok()));
        let html_type = resp
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("html"));
        let bytes = match resp.bytes().await {
            Ok(b) => b,
            Err(e) if e.is_timeout() => return Attempt::from_transport(&e, self.timeout),
            Err(e) => return Attempt::Broken(format!("the body was cut off after HTTP {status} ({})", root_cause(&e))),
        };
        if !status.is_success() {
            return Attempt::Status {
                status,
                detail: error_detail(&bytes, html_type),
                body: String::from_utf8_lossy(&bytes[..bytes.len().min(64 * 1024)]).into_owned(),
                retry_after,
                retry_after_ms,
                signals,
            };
        }
        match parse_completion(&bytes, chat, html_type) {
            Ok(p) => Attempt::Done(p, signals),
            Err(why) => Attempt::BadBody(format!("HTTP {status}, but {why}")),
        }
    }

    async fn call(&self, req: &Request, halt: &Halt) -> Result<Completion, CallError> {
        let url = self.url(&req.prompt);
        let shown = url.as_str();
        let api_key = self.key(shown)?;
        let mut headers = self.headers(&req.key, api_key.as_deref(), shown)?;
        let body = self.body(req);
        let chat = matches!(req.prompt, Prompt::Chat(_));
        let fail = |kind, detail: &str, attempts| CallError {
            kind,
            message: redact(
                &format!("model `{}` at `{shown}`: {detail}", self.name),
                api_key.as_deref(),
            ),
            attempts,
        };
        let mut waited = Duration::ZERO;
        let mut connected_before = false;
        let mut attempts = 0;
        let prompt_chars = match &req.prompt {
            Prompt::Chat(ms) => ms.iter().map(|m| m.content.len()).sum(),
            Prompt::Text(t) => t.len(),
        };
        let stopped = |attempts| fail(ErrorKind::Stopped, "not sent: the run is stopping", attempts);
        loop {
            if halt.is_set() {
                return Err(stopped(attempts));
            }
            // Waits for the concurrency cap, the window, the provider's pauses and the rates
            // (logged there), not part of the call's latency; a stop ends them (dropping a
            // ticket gives its place back).
            let admitted = async {
                let permit = match &self.permits {
                    Some(s) => s.acquire().await.ok(),
                    None => None,
                };
                let ticket = self
                    .limiter
                    .admit(&self.name, shown, prompt_chars, req.sampling.max_new_tokens)
                    .await;
                (permit, ticket)
            };
            let (permit, ticket) = tokio::select! {
                biased;
                () = halt.wait() => return Err(stopped(attempts)),
                admitted = admitted => admitted,
            };
            if halt.is_set() {
                return Err(stopped(attempts));
            }
            attempts += 1;
            let started = Instant::now();
            // The headers are moved into the last attempt there can be (the only one when retries
            // are off) instead of cloned.
            let h = if attempts > self.max_retries {
                std::mem::take(&mut headers)
            } else {
                headers.clone()
            };
            let outcome = self.attempt(url, h, body.clone(), chat).await;
            ticket.finish(match &outcome {
                Attempt::Done(p, signals) => Answer::Done {
                    prompt_tokens: p.prompt_tokens,
                    completion_tokens: p.completion_tokens,
                    signals,
                },
                Attempt::Status { status, signals, .. } => Answer::Status {
                    status: status.as_u16(),
                    signals,
                },
                _ => Answer::Nothing,
            });
            drop(permit);
            let connect = matches!(outcome, Attempt::Connect(_));
            let (detail, verdict) = match outcome {
                Attempt::Done(p, _) => {
                    return Ok(Completion {
                        text: p.text,
                        prompt_tokens: p.prompt_tokens,
                        completion_tokens: p.completion_tokens,
                        finish_reason: p.finish_reason,
                        latency_ms: (started.elapsed() + waited).as_secs_f64() * 1000.0,
                        attempts,
                    });
                }
                Attempt::Status {
                    status,
                    detail,
                    body,
                    retry_after,
                    retry_after_ms,
                    signals: _,
                } => {
                    let reason = status.canonical_reason().unwrap_or("");
                    let mut d = format!("HTTP {} {reason}: {detail}", status.as_u16());
                    d.push_str(&self.status_hint(status.as_u16()));
                    let o = Outcome::Status {
                        status: status.as_u16(),
                        body: &body,
                        retry_after: retry_after.as_deref(),
                        retry_after_ms: retry_after_ms.as_deref(),
                    };
                    (d, retry::classify(&o))
                }
                Attempt::BadBody(d) => (d, retry::classify(&Outcome::BadBody)),
                Attempt::Timeout(d) => (d, retry::classify(&Outcome::Timeout)),
                Attempt::Broken(d) => (d, retry::classify(&Outcome::Broken)),
                Attempt::Connect(d) => (d, retry::classify(&Outcome::Connect { connected_before })),
            };
            connected_before |= !connect;
            match verdict {
                Verdict::Fatal(kind) => return Err(fail(kind, &detail, attempts)),
                Verdict::Retry {
                    retry_after,
                    give_up_as,
                } => {
                    if attempts > self.max_retries {
                        let d = if attempts == 1 {
                            detail
                        } else {
                            format!("gave up after {attempts} attempts; the last: {detail}")
                        };
                        return Err(fail(give_up_as, &d, attempts));
                    }
                    // Drawn before the await: the thread-local generator is not Send.
                    let wait = self.backoff.wait(attempts - 1, retry_after, &mut rand::rng());
                    let note = redact(&detail, api_key.as_deref());
                    let reason = Reason::Retry {
                        attempt: attempts,
                        max: self.max_retries,
                        detail: &note,
                    };
                    self.limiter.note_wait(&self.name, shown, wait, reason);
                    tokio::select! {
                        () = halt.wait() => return Err(stopped(attempts)),
                        () = tokio::time::sleep(wait) => {}
                    }
                    waited += wait;
                }
            }
        }
    }

    /// Ask the endpoint for its models (`GET BASE_URL/models`, with the key): a line saying what
    /// it serves, or why it cannot be used.
    pub async fn probe(&self) -> std::result::Result<String, String> {
        let mut url = self.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().push("models");
        }
        let shown = url.to_string();
        let key = self.key(&shown).map_err(|e| e.message)?;
        let mut req = self.client.get(url).timeout(WINDOW_TIMEOUT);
        if let Some(k) = &key {
            req = match self.backend {
                Backend::Azure => req.header("api-key", k),
                _ => req.bearer_auth(k),
            };
        }
        let resp = req.send().await.map_err(|e| {
            let why = if e.is_connect() {
                format!("cannot connect ({})", root_cause(&e))
            } else if e.is_timeout() {
                format!("no answer within {} s", WINDOW_TIMEOUT.as_secs())
            } else {
                root_cause(&e)
            };
            format!("model `{}` at `{shown}`: {why}", self.name)
        })?;
        let status = resp.status();
        let body = resp.bytes().await.unwrap_or_default();
        if !status.is_success() {
            let detail = redact(&error_detail(&body, false), key.as_deref());
            return Err(format!(
                "model `{}` at `{shown}`: HTTP {}: {detail}{}",
                self.name,
                status.as_u16(),
                self.status_hint(status.as_u16())
            ));
        }
        let listed: Vec<String> = serde_json::from_slice::<Value>(&body)
            .ok()
            .and_then(|v| v.get("data").and_then(Value::as_array).cloned())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| m.get("id").and_then(Value::as_str).map(str::to_string))
            .collect();
        let window = self.server_window().await;
        let serves = if listed.contains(&self.model_id) {
            format!("serves `{}`", self.model_id)
        } else if listed.is_empty() {
            "answers (lists no models)".to_string()
        } else {
            format!(
                "answers, but lists {} and not `{}`: check `model`",
                listed
                    .iter()
                    .take(5)
                    .map(|m| format!("`{m}`"))
                    .collect::<Vec<_>>()
                    .join(", "),
                self.model_id
            )
        };
        Ok(format!(
            "model `{}` at `{shown}`: {serves}{}",
            self.name,
            window
                .map(|n| format!("; context window {n} tokens"))
                .unwrap_or_default()
        ))
    }

    /// What the server says its context window is: vLLM's `max_model_len` in `GET /v1/models`
    /// (the entry of this model), else llama.cpp's `n_ctx` in `GET /props` (at the server's root,
    /// beside `/v1`). `None` when neither answers with a number (OpenAI, Azure, older servers):
    /// the requests then carry the whole history, as without `context_length`.
    async fn ask_window(&self) -> Option<u32> {
        if self.backend == Backend::Azure {
            return None;
        }
        let get = |url: reqwest::Url| {
            let mut req = self.client.get(url).timeout(WINDOW_TIMEOUT);
            if let Ok(Some(key)) = self.key(self.base.as_str()) {
                req = req.bearer_auth(key);
            }
            async move {
                let resp = req.send().await.ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                resp.json::<Value>().await.ok()
            }
        };
        let mut models = self.base.clone();
        if let Ok(mut path) = models.path_segments_mut() {
            path.pop_if_empty().push("models");
        }
        if let Some(body) = get(models).await
            && let Some(n) = window_in_models(&body, &self.model_id)
        {
            return Some(n);
        }
        let mut props = self.base.clone();
        let root = props.path().trim_end_matches('/').trim_end_matches("/v1").to_string();
        props.set_path(&format!("{root}/props"));
        get(props).await.as_ref().and_then(window_in_props)
    }

    fn status_hint(&self, status: u16) -> String {
        match (status, self.backend) {
            (401 | 403, _) => match &self.key_env {
                Some(var) => format!(" (check the key in `{var}`)"),
                None => " (no key was sent: name its environment variable in `api_key_env`)".into(),
            },
            (404, Backend::Azure) => format!(
                " (check `base_url`, the deployment `{}` and `api_version`)",
                self.model_id
            ),
            (404, _) => format!(
                " (check `base_url`, usually ending in `/v1`, and the model id `{}`)",
                self.model_id
            ),
            _ => String::new(),
        }
    }
}

impl ChatModel for OpenAiModel {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Completion, CallError>> {
        Box::pin(async { self.call(req, &Halt::never()).await })
    }

    fn complete_until<'a>(&'a self, req: &'a Request, halt: &'a Halt) -> BoxFuture<'a, Result<Completion, CallError>> {
        Box::pin(self.call(req, halt))
    }

    fn server_window(&self) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async { *self.window.get_or_init(|| self.ask_window()).await })
    }
}

/// How long the server may take to describe itself.
const WINDOW_TIMEOUT: Duration = Duration::from_secs(10);

/// vLLM: `{"data": [{"id": "...", "max_model_len": 4096}]}`; the entry of `model`, else the only
/// entry that has one.
fn window_in_models(body: &Value, model: &str) -> Option<u32> {
    let data = body.get("data")?.as_array()?;
    let len = |m: &Value| m.get("max_model_len").and_then(Value::as_u64);
    let own = data.iter().find(|m| m.get("id").and_then(Value::as_str) == Some(model));
    let n = match own.and_then(len) {
        Some(n) => n,
        None => {
            let mut with: Vec<u64> = data.iter().filter_map(len).collect();
            with.dedup();
            match with.as_slice() {
                [n] => *n,
                _ => return None,
            }
        }
    };
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// llama.cpp: `{"default_generation_settings": {"n_ctx": 512, ...}, ...}` (the window of one slot),
/// or `n_ctx` at the top in other versions.
fn window_in_props(body: &Value) -> Option<u32> {
    let n = body
        .get("default_generation_settings")
        .and_then(|s| s.get("n_ctx"))
        .or_else(|| body.get("n_ctx"))
        .and_then(Value::as_u64)?;
    u32::try_from(n).ok().filter(|n| *n > 0)
}

/// A request body, borrowed from the request and serialised straight to bytes: `model` (not for
/// Azure, where the deployment is in the URL), `messages` (chat) or `prompt` (completions), and
/// the sampling fields that are set, under the names OpenAI-compatible servers read.
/// `top_k` and `repetition_penalty` are not OpenAI's, but vLLM, TGI and llama.cpp take them;
/// a model only gets them when its experiment sets them. An empty `stop` list is not sent.
#[derive(Serialize)]
struct RequestBody<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<&'a [Message]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    prompt: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_tokens: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    temperature: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_p: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    top_k: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    repetition_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    presence_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    frequency_penalty: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    stop: Option<&'a [String]>,
}

impl<'a> RequestBody<'a> {
    fn new(model: Option<&'a str>, prompt: &'a Prompt, s: &'a Sampling) -> RequestBody<'a> {
        let (messages, text) = match prompt {
            Prompt::Chat(messages) => (Some(messages.as_slice()), None),
            Prompt::Text(text) => (None, Some(text.as_str())),
        };
        RequestBody {
            model,
            messages,
            prompt: text,
            max_tokens: s.max_new_tokens,
            temperature: s.temperature,
            top_p: s.top_p,
            top_k: s.top_k,
            repetition_penalty: s.repetition_penalty,
            presence_penalty: s.presence_penalty,
            frequency_penalty: s.frequency_penalty,
            stop: s.stop.as_deref().filter(|v| !v.is_empty()),
        }
    }
}

/// What one HTTP attempt came to.
enum Attempt {
    Done(Parsed, Signals),
    Status {
        status: reqwest::StatusCode,
        detail: String,
        body: String,
        retry_after: Option<String>,
        retry_after_ms: Option<String>,
        signals: Signals,
    },
    BadBody(String),
    Timeout(String),
    Connect(String),
    Broken(String),
}

impl Attempt {
    fn from_transport(e: &reqwest::Error, timeout: Duration) -> Attempt {
        if e.is_connect() {
            Attempt::Connect(format!("cannot connect ({})", root_cause(e)))
        } else if e.is_timeout() {
            Attempt::Timeout(format!(
                "no complete response within {} s (`timeout_secs`)",
                timeout.as_secs_f64()
            ))
        } else {
            Attempt::Broken(format!(
                "the connection broke before a complete response ({})",
                root_cause(e)
            ))
        }
    }
}

/// The innermost cause: "Connection refused (os error 111)" rather than reqwest's outer wrapper,
/// which repeats the URL.
fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    sanitize(&cur.to_string(), 200)
}

#[derive(Debug, PartialEq)]
struct Parsed {
    text: String,
    finish_reason: Option<String>,
    prompt_tokens: Option<u32>,
    completion_tokens: Option<u32>,
}

fn looks_like_html(body: &[u8], html_type: bool) -> bool {
    let start = String::from_utf8_lossy(&body[..body.len().min(256)])
        .trim_start()
        .to_ascii_lowercase();
    html_type || start.starts_with("<!doctype html") || start.starts_with("<html") || start.starts_with("<head")
}

/// Why a body is unusable, for messages.
fn describe_bad(body: &[u8], html_type: bool, why: &str) -> String {
    if body.iter().all(u8::is_ascii_whitespace) {
        return "the body is empty".into();
    }
    if looks_like_html(body, html_type) {
        return format!(
            "the server returned an HTML page, not JSON (is `base_url` the API's root?): {}",
            snippet(body)
        );
    }
    format!("{why}: {}", snippet(body))
}

/// A JSON object, and only an object (a derived struct would also take an array, by position).
struct Obj<T>(T);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Obj<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
            type Value = T;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> std::result::Result<T, A::Error> {
                T::deserialize(serde::de::value::MapAccessDeserializer::new(map))
            }
        }
        d.deserialize_map(V(PhantomData)).map(Obj)
    }
}

/// The usual shape of a successful reply, for [`fast_completion`].
#[derive(serde::Deserialize)]
struct FastReply {
    #[serde(default)]
    error: Option<IgnoredAny>,
    choices: Vec<Obj<FastChoice>>,
    #[serde(default)]
    usage: Option<Obj<FastUsage>>,
}

#[derive(serde::Deserialize)]
struct FastChoice {
    #[serde(default)]
    message: Option<Obj<FastMessage>>,
    #[serde(default)]
    text: Option<String>,
    #[serde(default)]
    finish_reason: Option<String>,
}

#[derive(serde::Deserialize)]
struct FastMessage {
    #[serde(default)]
    content: Option<String>,
}

#[derive(serde::Deserialize)]
struct FastUsage {
    #[serde(default)]
    prompt_tokens: Option<u64>,
    #[serde(default)]
    completion_tokens: Option<u64>,
}

/// The completion of a body in the usual shape, read without building a JSON tree; `None` for
/// anything else (not JSON, an error, no choices, content parts, unexpected types, duplicate
/// keys...), which [`parse_completion`] then reads the general way. Whenever this returns a
/// completion, it is the one the general way gives.
fn fast_completion(body: &[u8], chat: bool) -> Option<Parsed> {
    let Obj(reply) = serde_json::from_slice::<Obj<FastReply>>(body).ok()?;
    if reply.error.is_some() {
        return None;
    }
    let Obj(choice) = reply.choices.into_iter().next()?;
    let text = if chat {
        // A missing or null content: a refusal or a tool call, an empty output.
        choice.message?.0.content.unwrap_or_default()
    } else {
        choice.text?
    };
    let usage = reply.usage.map(|u| u.0);
    let tokens = |n: Option<u64>| n.map(|n| u32::try_from(n).unwrap_or(u32::MAX));
    Some(Parsed {
        text,
        finish_reason: choice.finish_reason,
        prompt_tokens: tokens(usage.as_ref().and_then(|u| u.prompt_tokens)),
        completion_tokens: tokens(usage.as_ref().and_then(|u| u.completion_tokens)),
    })
}

/// A completion from a 2xx body, or why there is none.
fn parse_completion(body: &[u8], chat: bool, html_type: bool) -> Result<Parsed, String> {
    match fast_completion(body, chat) {
        Some(p) => Ok(p),
        None => read_completion(body, chat, html_type),
    }
}

/// [`parse_completion`] through a JSON tree: any body, with the reason it is unusable.
fn read_completion(body: &[u8], chat: bool, html_type: bool) -> Result<Parsed, String> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| describe_bad(body, html_type, &format!("the body is not JSON ({e})")))?;
    if let Some(err) = v.get("error").filter(|e| !e.is_null()) {
        return Err(format!("the server reported an error: {}", json_error_message(err)));
    }
    let Some(choice) = v.get("choices").and_then(|c| c.get(0)) else {
        return Err(describe_bad(body, false, "the response has no `choices`"));
    };
    let text = if chat {
        match choice.get("message").map(|m| m.get("content")) {
            Some(Some(Value::String(s))) => s.clone(),
            // A refusal or a tool call: no text, which the engine treats as an empty output.
            Some(None | Some(Value::Null)) => String::new(),
            // Content parts: the text ones, in order.
            Some(Some(Value::Array(parts))) => parts
                .iter()
                .filter_map(|p| p.get("text").and_then(Value::as_str))
                .collect::<Vec<_>>()
                .join(""),
            _ => return Err(describe_bad(body, false, "`choices[0].message.content` is missing")),
        }
    } else {
        match choice.get("text") {
            Some(Value::String(s)) => s.clone(),
            _ => return Err(describe_bad(body, false, "`choices[0].text` is missing")),
        }
    };
    let usage = |k: &str| {
        v.get("usage")
            .and_then(|u| u.get(k))
            .and_then(Value::as_u64)
            .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
    };
    Ok(Parsed {
        text,
        finish_reason: choice.get("finish_reason").and_then(Value::as_str).map(str::to_string),
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
    })
}

/// The message of an error body: OpenAI's `{"error": {"message": ...}}`, TGI's
/// `{"error": "..."}`, or FastAPI's `{"detail": ...}`; else the body itself, shortened.
fn error_detail(body: &[u8], html_type: bool) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            for k in ["error", "detail", "message"] {
                if let Some(e) = v.get(k).filter(|e| !e.is_null()) {
                    return json_error_message(e);
                }
            }
            snippet(body)
        }
        Err(_) => describe_bad(body, html_type, "the body is not JSON"),
    }
}

fn json_error_message(e: &Value) -> String {
    let text = match e {
        Value::String(s) => s.clone(),
        Value::Object(o) => match o.get("message") {
            Some(Value::String(s)) => s.clone(),
            _ => e.to_string(),
        },
        other => other.to_string(),
    };
    sanitize(&text, 300)
}

/// The start of a body, safe to print: control and bidi characters become spaces, whitespace
/// runs collapse, at most 200 characters.
fn snippet(body: &[u8]) -> String {
    sanitize(&String::from_utf8_lossy(&body[..body.len().min(4096)]), 200)
}

fn sanitize(s: &str, max_chars: usize) -> String {
    let invisible = |c: char| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}')
    };
    let cleaned: String = s.chars().map(|c| if invisible(c) { ' ' } else { c }).collect();
    let words: Vec<&str> = cleaned.split_whitespace().collect();
    let joined = words.join(" ");
    if joined.chars().count() <= max_chars {
        return joined;
    }
    let mut cut: String = joined.chars().take(max_chars).collect();
    cut.push('…');
    cut
}

/// Servers sometimes echo the key they refused ("Incorrect API key provided: sk-..."): cut it out.
fn redact(message: &str, key: Option<&str>) -> String {
    match key {
        Some(k) if !k.is_empty() => message.replace(k, "[redacted]"),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_and_completion_bodies_parse_with_usage() {
        let chat = br#"{"id":"x","choices":[{"index":0,"message":{"role":"assistant","content":"Hi there"},"finish_reason":"stop"}],"usage":{"prompt_tokens":12,"completion_tokens":3,"total_tokens":15}}"#;
        assert_eq!(
            parse_completion(chat, true, false),
            Ok(Parsed {
                text: "Hi there".into(),
                finish_reason: Some("stop".into()),
                prompt_tokens: Some(12),
                completion_tokens: Some(3),
            })
        );
        let text = br#"{"choices":[{"text":" go on","finish_reason":"length"}]}"#;
        let p = parse_completion(text, false, false).expect("valid");
        assert_eq!((p.text.as_str(), p.prompt_tokens), (" go on", None));
        let parts = br#"{"choices":[{"message":{"content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}}]}"#;
        assert_eq!(parse_completion(parts, true, false).map(|p| p.text), Ok("ab".into()));
        let null = br#"{"choices":[{"message":{"content":null,"refusal":"no"}}]}"#;
        assert_eq!(parse_completion(null, true, false).map(|p| p.text), Ok(String::new()));
    }

    #[test]
    fn unusable_bodies_say_why() {
        let cases: [(&[u8], bool, &str); 7] = [
            (b"", false, "the body is empty"),
            (b"<!DOCTYPE html><html><body>Login</body></html>", false, "HTML page"),
            (b"Bad gateway", true, "HTML page"),
            (br#"{"choices":[{"message":{"cont"#, false, "not JSON"),
            (br#"{"object":"list"}"#, false, "no `choices`"),
            (
                br#"{"choices":[{"text":"x"}]}"#,
                true,
                "`choices[0].message.content` is missing",
            ),
            (
                br#"{"error":{"message":"overloaded"}}"#,
                false,
                "reported an error: overloaded",
            ),
        ];
        for (body, html, says) in cases {
            let e = parse_completion(body, true, html).expect_err(says);
            assert!(e.contains(says), "{says} in {e}");
        }
    }

    #[test]
    fn error_details_come_from_the_servers_error_shapes() {
        assert_eq!(
            error_detail(br#"{"error":{"message":"bad key","code":"x"}}"#, false),
            "bad key"
        );
        assert_eq!(
            error_detail(br#"{"error":"Input validation error"}"#, false),
            "Input validation error"
        );
        assert_eq!(error_detail(br#"{"detail":"Not Found"}"#, false), "Not Found");
        assert!(error_detail(b"<html><body>502 Bad Gateway</body></html>", false).contains("HTML page"));
        assert_eq!(error_detail(b"  ", false), "the body is empty");
    }

    #[test]
    fn snippets_are_short_and_printable() {
        let body = format!("<html>\x1b[31mred\u{202E}evil\r\n{}</html>", "x".repeat(500));
        let s = snippet(body.as_bytes());
        assert!(!s.contains('\x1b') && !s.contains('\u{202E}') && !s.contains('\n'));
        assert_eq!(s.chars().count(), 201);
        assert!(s.ends_with('…'));
        // Invalid UTF-8 and a cut in the middle of a character do not panic.
        assert!(!snippet(&[0xff, 0xfe, b'a', 0xe2, 0x82]).is_empty());
    }

    #[test]
    fn keys_are_cut_out_of_messages() {
        assert_eq!(
            redact("Incorrect API key provided: sk-123", Some("sk-123")),
            "Incorrect API key provided: [redacted]"
        );
        assert_eq!(redact("fine", None), "fine");
        assert_eq!(redact("fine", Some("")), "fine");
    }

    use serde_json::json;

    fn body_json(model: Option<&str>, prompt: &Prompt, s: &Sampling) -> Value {
        serde_json::from_slice(&serde_json::to_vec(&RequestBody::new(model, prompt, s)).unwrap()).unwrap()
    }

    #[test]
    fn only_the_sampling_fields_that_are_set_are_sent() {
        let s = Sampling {
            max_new_tokens: Some(100),
            temperature: Some(0.7),
            top_k: Some(40),
            stop: Some(vec![]),
            ..Default::default()
        };
        assert_eq!(
            body_json(None, &Prompt::Text("hi".into()), &s),
            json!({"prompt": "hi", "max_tokens": 100, "temperature": 0.7, "top_k": 40})
        );
    }

    #[test]
    fn bodies_hold_the_model_the_prompt_and_every_sampling_field() {
        let s = Sampling {
            max_new_tokens: Some(-1),
            temperature: Some(f64::NAN),
            top_p: Some(0.95),
            top_k: Some(5),
            repetition_penalty: Some(1.1),
            presence_penalty: Some(0.0),
            frequency_penalty: Some(-0.5),
            stop: Some(vec!["\n".into(), "</s>".into()]),
        };
        let chat = Prompt::Chat(vec![
            Message::new("system", "be \"brief\""),
            Message::new("user", "hi ✓"),
        ]);
        assert_eq!(
            body_json(Some("m"), &chat, &s),
            json!({
                "model": "m",
                "messages": [{"role": "system", "content": "be \"brief\""}, {"role": "user", "content": "hi ✓"}],
                "max_tokens": -1, "temperature": null, "top_p": 0.95, "top_k": 5,
                "repetition_penalty": 1.1, "presence_penalty": 0.0, "frequency_penalty": -0.5,
                "stop": ["\n", "</s>"],
            })
        );
        assert_eq!(
            body_json(None, &Prompt::Text(String::new()), &Sampling::default()),
            json!({"prompt": ""})
        );
    }

    #[test]
    fn the_fast_reading_agrees_with_the_general_one_or_steps_aside() {
        let cases: [(&[u8], bool, bool); 14] = [
            (br#"{"choices":[{"message":{"content":"a"},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#, true, true),
            (br#"{"choices":[{"message":{"content":null}}],"usage":null,"error":null}"#, true, true),
            (br#"{"choices":[{"message":{}}],"usage":{"prompt_tokens":99999999999}}"#, true, true),
            (br#"{"choices":[{"text":"t","finish_reason":null}]}"#, false, true),
            (br#"{"choices":[{"message":"x"}]}"#, true, false),
            (br#"{"choices":[{"message":null}]}"#, true, false),
            (br#"{"choices":[["x"]]}"#, true, false),
            (br#"[null,[{"message":{"content":"a"}}]]"#, true, false),
            (br#"{"choices":[{"message":{"content":"a"}}],"usage":{"prompt_tokens":1.0}}"#, true, false),
            (br#"{"choices":[{"message":{"content":"a"}}],"usage":[1,2]}"#, true, false),
            (br#"{"choices":[{"message":{"content":"a"},"finish_reason":3}]}"#, true, false),
            (br#"{"choices":[{"message":{"content":"a"}}],"choices":[]}"#, true, false),
            (br#"{"choices":[{"message":{"content":"a"}}],"error":{"message":"x"}}"#, true, false),
            (br#"{"choices":[{"text":"a"}]}"#, true, false),
        ];
        for (body, chat, fast) in cases {
            let f = fast_completion(body, chat);
            assert_eq!(f.is_some(), fast, "{}", String::from_utf8_lossy(body));
            let general = read_completion(body, chat, false);
            if let Some(f) = f {
                assert_eq!(Ok(f), general);
            }
            assert_eq!(parse_completion(body, chat, false), general);
        }
    }
}
