//! The simulator behind an OpenAI-compatible HTTP API (`roleplay sim-server`), with injectable
//! faults: a stand-in model server for tests, demos, Slurm templates and benchmarks.
//!
//! Replies come from [`crate::llm::sim::sim_reply`], keyed by the `x-roleplay-*` headers the HTTP
//! backend sends, so a dialogue gets the same text through the server as in process. Each
//! request may instead get one fault, drawn from a seeded generator: a 5xx, a 429 with
//! `Retry-After`, a hang, a dropped connection, a malformed or HTML body, or a context-length
//! 400. `GET /stats` counts what was served, and in particular how many successful replies each
//! call got, which lets tests prove that no completed call is ever made twice.
//!
//! With `--limit-rps` and `--limit-tps` it is also a rate-limited provider: token buckets of one
//! second's worth refuse what exceeds R requests or T tokens a second with 429, `Retry-After`,
//! `retry-after-ms` and OpenAI's `x-ratelimit-*` headers (which every completion response
//! carries), and `/stats` counts the refusals under `limited` (and the tokens served under
//! `tokens`).
//!
//! The handler is kept cheap (no locks but one short map update per success): the server is
//! also the load target of benchmarks.

use crate::experiment::{Role, SimSettings};
use crate::llm::limits::Bucket;
use crate::llm::sim::{SimOutput, sim_reply};
use crate::llm::{CallKey, Message, Prompt};
use crate::plan::UnitId;
use axum::Router;
use axum::body::Bytes;
use axum::extract::connect_info::{ConnectInfo, Connected};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

/// How long in-flight requests get to finish after a shutdown signal. Hung requests do not
/// hold the exit beyond it.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// The model id reported when a request names none.
const MODEL_ID: &str = "roleplay-sim";

/// Rates of the injected faults; at most one fault per request, so the rates must sum to <= 1.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    pub fail_5xx_rate: f64,
    pub rate_limit_rate: f64,
    /// The `Retry-After` of a 429, in whole seconds.
    pub retry_after_secs: u64,
    pub hang_rate: f64,
    /// How long a hung request sleeps before it ends with a 504.
    pub hang_secs: f64,
    pub drop_rate: f64,
    pub malformed_rate: f64,
    pub html_rate: f64,
    pub context_error_rate: f64,
}

/// Everything the server needs, validated by [`ServerConfig::check`].
#[derive(Debug, Clone, PartialEq)]
pub struct ServerConfig {
    pub sim: SimSettings,
    pub faults: Faults,
    /// Added to `sim.latency_ms`: uniform in `[-jitter, +jitter]`, never below zero.
    pub latency_jitter_ms: f64,
    /// Seed of the fault and latency generator.
    pub seed: u64,
    /// When set, requests without this key get 401.
    pub require_key: Option<String>,
    /// A context window in tokens, as llama.cpp's server keeps one: `/props` reports it, a prompt
    /// that fills it is refused with 400, and a reply that would run past it is cut where the
    /// window is full (`finish_reason` "length", fewer tokens than asked).
    pub context_length: Option<u32>,
    /// Requests a second the server accepts (a bucket of one second's worth); more get 429.
    pub limit_rps: Option<f64>,
    /// Tokens a second the server accepts: the prompt and `max_tokens` are taken on arrival, the
    /// unused part of `max_tokens` given back with the reply.
    pub limit_tps: Option<f64>,
    /// Judge mode (`roleplay judge`): the share of a judge's verdicts that are malformed.
    pub judge_malformed_rate: f64,
}

/// The injectable faults, in the order their rates are laid out on the unit interval.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    ContextError,
    Fail5xx,
    RateLimit,
    Hang,
    Drop,
    Malformed,
    Html,
}

impl Fault {
    const ALL: [Fault; 7] = [
        Fault::ContextError,
        Fault::Fail5xx,
        Fault::RateLimit,
        Fault::Hang,
        Fault::Drop,
        Fault::Malformed,
        Fault::Html,
    ];

    /// The name in `/stats`; with `-` for `_` and `-rate` appended, the flag of its rate.
    fn name(self) -> &'static str {
        match self {
            Fault::ContextError => "context_error",
            Fault::Fail5xx => "fail_5xx",
            Fault::RateLimit => "rate_limit",
            Fault::Hang => "hang",
            Fault::Drop => "drop",
            Fault::Malformed => "malformed",
            Fault::Html => "html",
        }
    }
}

impl ServerConfig {
    fn fault_rates(&self) -> [f64; 7] {
        let f = &self.faults;
        [
            f.context_error_rate,
            f.fail_5xx_rate,
            f.rate_limit_rate,
            f.hang_rate,
            f.drop_rate,
            f.malformed_rate,
            f.html_rate,
        ]
    }

    /// The first problem with the settings, naming its flag.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.sim;
        let fault_flags = Fault::ALL.map(|f| format!("{}-rate", f.name().replace('_', "-")));
        let sim_rates = [
            ("no-prompt-rate", s.no_prompt_rate),
            ("multi-prompt-rate", s.multi_prompt_rate),
            ("degenerate-rate", s.degenerate_rate),
            ("empty-rate", s.empty_rate),
        ];
        let rates = sim_rates
            .iter()
            .map(|(f, r)| (f.to_string(), *r))
            .chain(fault_flags.iter().cloned().zip(self.fault_rates()));
        for (flag, r) in rates {
            if !(0.0..=1.0).contains(&r) {
                return Err(format!("`--{flag}`: {r} is not a rate (0 to 1)"));
            }
        }
        let total: f64 = self.fault_rates().iter().sum();
        if total > 1.0 + 1e-9 {
            return Err(format!(
                "the fault rates (`--{}`) add up to {total}, more than 1: each request gets at most one fault",
                fault_flags.join("`, `--")
            ));
        }
        for (flag, [lo, hi]) in [("stop-after-turns", s.stop_after_turns), ("words", s.words)] {
            if lo == 0 || lo > hi {
                return Err(format!(
                    "`--{flag}`: {lo},{hi} is not a range LOW,HIGH with 1 <= LOW <= HIGH"
                ));
            }
        }
        for (flag, v, max) in [
            ("latency-ms", s.latency_ms, 600_000.0),
            ("latency-jitter-ms", self.latency_jitter_ms, 600_000.0),
            ("hang-secs", self.faults.hang_secs, 86_400.0),
        ] {
            if !(v.is_finite() && (0.0..=max).contains(&v)) {
                return Err(format!("`--{flag}`: {v} is out of range (0 to {max})"));
            }
        }
        for (flag, v, max) in [("limit-rps", self.limit_rps, 1e6), ("limit-tps", self.limit_tps, 1e9)] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0 && v <= max)
            {
                return Err(format!("`--{flag}`: {v} is out of range (above 0, at most {max:e})"));
            }
        }
        Ok(())
    }
}

/// What the server has served so far (`GET /stats`).
#[derive(Default)]
struct Stats {
    requests: AtomicU64,
    ok: AtomicU64,
    client_errors: AtomicU64,
    server_errors: AtomicU64,
    dropped: AtomicU64,
    faults: [AtomicU64; 7],
    /// Requests refused by `--limit-rps` and by `--limit-tps`.
    limited_requests: AtomicU64,
    limited_tokens: AtomicU64,
    /// Tokens of the successful replies (their usage).
    prompt_tokens: AtomicU64,
    completion_tokens: AtomicU64,
    /// Successful replies per call key (`unit/role/turn/attempt`, or `anonymous`).
    calls: Mutex<HashMap<String, u64>>,
}

impl Stats {
    fn count_status(&self, status: StatusCode) {
        let c = match status.as_u16() {
            200..=299 => &self.ok,
            400..=499 => &self.client_errors,
            _ => &self.server_errors,
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    fn json(&self) -> Value {
        let n = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let calls = self.calls.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let faults: serde_json::Map<String, Value> = Fault::ALL
            .iter()
            .zip(&self.faults)
            .map(|(f, v)| (f.name().to_string(), json!(n(v))))
            .collect();
        json!({
            "requests": n(&self.requests),
            "responses": {
                "2xx": n(&self.ok),
                "4xx": n(&self.client_errors),
                "5xx": n(&self.server_errors),
                "dropped": n(&self.dropped),
            },
            "faults": faults,
            "limited": {
                "requests": n(&self.limited_requests),
                "tokens": n(&self.limited_tokens),
            },
            "tokens": {
                "prompt": n(&self.prompt_tokens),
                "completion": n(&self.completion_tokens),
            },
            "calls": calls,
        })
    }
}

struct App {
    config: ServerConfig,
    stats: Stats,
    limits: Option<Limits>,
}

/// The server's rate limits: one bucket per kind, each holding one second's worth (at least one
/// request), the same token buckets clients keep (`llm::limits::Bucket`).
struct Limits {
    rps: Option<f64>,
    tps: Option<f64>,
    buckets: Mutex<(Option<Bucket>, Option<Bucket>)>,
}

/// Tokens a request took on arrival: its prompt's, and its `max_tokens`.
#[derive(Debug, Clone, Copy)]
struct Admission {
    prompt: u64,
    max_tokens: u64,
    /// What the reply used (prompt and completion), once there is one.
    used: Option<u64>,
}

/// Why a request is refused, and how long until it would not be.
struct Refusal {
    tokens: bool,
    wait: Duration,
}

impl Limits {
    fn new(rps: Option<f64>, tps: Option<f64>) -> Option<Limits> {
        let now = Instant::now();
        (rps.is_some() || tps.is_some()).then(|| Limits {
            rps,
            tps,
            buckets: Mutex::new((
                rps.map(|r| Bucket::per_minute(r * 60.0, now)),
                tps.map(|t| Bucket::per_minute(t * 60.0, now)),
            )),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (Option<Bucket>, Option<Bucket>)> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Take one request and `cost` tokens now, or say which bucket is short and for how long.
    fn admit(&self, cost: u64) -> Result<(), Refusal> {
        let now = Instant::now();
        let mut b = self.lock();
        let (requests, tokens) = &mut *b;
        if let Some(r) = requests.as_ref().map(|r| r.earliest(now, 1.0)).filter(|t| *t > now) {
            return Err(Refusal {
                tokens: false,
                wait: r - now,
            });
        }
        if let Some(t) = tokens
            .as_ref()
            .map(|t| t.earliest(now, cost as f64))
            .filter(|t| *t > now)
        {
            return Err(Refusal {
                tokens: true,
                wait: t - now,
            });
        }
        if let Some(r) = requests {
            r.take(now, 1.0);
        }
        if let Some(t) = tokens {
            t.take(now, cost as f64);
        }
        Ok(())
    }

    /// Give back what an admitted request did not use: the unused `max_tokens` of a reply,
    /// all of it when there was none.
    fn settle(&self, a: Admission) {
        let taken = a.prompt + a.max_tokens;
        let used = a.used.unwrap_or(a.prompt);
        if let Some(t) = &mut self.lock().1 {
            t.adjust(Instant::now(), taken as f64 - used as f64);
        }
    }

    /// OpenAI's headers: the limit per minute, what the bucket holds, when it is full again.
    fn headers(&self, h: &mut HeaderMap) {
        let now = Instant::now();
        let b = self.lock();
        for (kind, per_second, bucket) in [("requests", self.rps, &b.0), ("tokens", self.tps, &b.1)] {
            let (Some(per_second), Some(bucket)) = (per_second, bucket) else {
                continue;
            };
            let values = [
                ("limit", ((per_second * 60.0).round() as u64).to_string()),
                ("remaining", (bucket.level(now).max(0.0).floor() as u64).to_string()),
                ("reset", crate::llm::limits::format_duration(bucket.until_full(now))),
            ];
            for (what, v) in values {
                if let (Ok(name), Ok(v)) = (
                    HeaderName::try_from(format!("x-ratelimit-{what}-{kind}")),
                    HeaderValue::try_from(v),
                ) {
                    h.insert(name, v);
                }
            }
        }
    }
}

/// Serve on `listener` until `shutdown` completes; in-flight requests then get a short grace.
pub async fn serve(
    listener: TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let app = Arc::new(App {
        limits: Limits::new(config.limit_rps, config.limit_tps),
        config,
        stats: Stats::default(),
    });
    let router = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(text))
        .route("/openai/deployments/{deployment}/chat/completions", post(chat))
        .route("/openai/deployments/{deployment}/completions", post(text))
        .route("/v1/models", get(models))
        .route("/props", get(props))
        .route("/health", get(|| async { "ok" }))
        .route("/stats", get(stats))
        // Long dialogues make long prompts; the default 2 MB limit is a web form's.
        .layer(DefaultBodyLimit::max(256 * 1024 * 1024))
        .with_state(app);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    let server = axum::serve(
        DroppableListener(listener),
        router.into_make_service_with_connect_info::<Conn>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.wait_for(|stop| *stop).await;
    });
    let mut server = std::pin::pin!(server.into_future());
    tokio::select! {
        done = &mut server => return done,
        () = shutdown => {}
    }
    let _ = stop_tx.send(true);
    tokio::time::timeout(SHUTDOWN_GRACE, server).await.unwrap_or(Ok(()))
}

async fn stats(State(app): State<Arc<App>>) -> Response {
    json_response(StatusCode::OK, &app.stats.json())
}

/// llama.cpp's self-description, with the window of one slot; 404 without `--context-length`.
async fn props(State(app): State<Arc<App>>) -> Response {
    match app.config.context_length {
        Some(n) => json_response(
            StatusCode::OK,
            &json!({"default_generation_settings": {"n_ctx": n}, "total_slots": 1}),
        ),
        None => openai_error(StatusCode::NOT_FOUND, "File Not Found", "not_found_error", None),
    }
}

async fn models() -> Response {
    json_response(
        StatusCode::OK,
        &json!({"object": "list", "data": [{"id": MODEL_ID, "object": "model", "owned_by": "roleplay"}]}),
    )
}

async fn chat(State(app): State<Arc<App>>, conn: ConnectInfo<Conn>, headers: HeaderMap, body: Bytes) -> Response {
    complete(app, conn.0, headers, body, true).await
}

async fn text(State(app): State<Arc<App>>, conn: ConnectInfo<Conn>, headers: HeaderMap, body: Bytes) -> Response {
    complete(app, conn.0, headers, body, false).await
}

fn json_response(status: StatusCode, v: &Value) -> Response {
    (status, [(header::CONTENT_TYPE, "application/json")], v.to_string()).into_response()
}

fn openai_error(status: StatusCode, message: &str, kind: &str, code: Option<&str>) -> Response {
    json_response(
        status,
        &json!({"error": {"message": message, "type": kind, "param": null, "code": code}}),
    )
}

/// One completion request: auth, parse, maybe a fault, else the simulator's reply.
async fn complete(app: Arc<App>, conn: Conn, headers: HeaderMap, body: Bytes, chat: bool) -> Response {
    let n = app.stats.requests.fetch_add(1, Ordering::Relaxed);
    let cfg = &app.config;
    let mut admission = None;
    let resp = answer(&app, cfg, n, &headers, &body, chat, &mut admission).await;
    if let (Some(limits), Some(a)) = (&app.limits, admission) {
        limits.settle(a);
    }
    match resp {
        Some(mut r) => {
            if let Some(limits) = &app.limits {
                limits.headers(r.headers_mut());
            }
            app.stats.count_status(r.status());
            r
        }
        None => {
            app.stats.dropped.fetch_add(1, Ordering::Relaxed);
            conn.kill();
            // Never reaches the client: writing it fails on the killed connection, and hyper
            // closes the socket.
            StatusCode::NO_CONTENT.into_response()
        }
    }
}

/// The simulator's reply, a judge's request answered in judge mode with malformed verdicts at
/// `--judge-malformed-rate` (`sim_reply` alone answers judges with valid ones).
fn judge_aware_reply(cfg: &ServerConfig, call: &CallKey, prompt: &Prompt) -> SimOutput {
    crate::llm::sim::judge_reply(call, prompt, cfg.judge_malformed_rate)
        .unwrap_or_else(|| sim_reply(&cfg.sim, call, prompt))
}

/// The 401 of a request without the key `--require-key` asks for.
fn refuse_key(cfg: &ServerConfig, headers: &HeaderMap) -> Option<Response> {
    if let Some(want) = &cfg.require_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .or_else(|| headers.get("api-key").and_then(|v| v.to_str().ok()));
        if given != Some(want.as_str()) {
            // Echoes the key it was given, as careless servers do, so clients' redaction is tested.
            let msg = format!("Incorrect API key provided: {}", given.unwrap_or("(none)"));
            return Some(openai_error(
                StatusCode::UNAUTHORIZED,
                &msg,
                "invalid_request_error",
                Some("invalid_api_key"),
            ));
        }
    }
    None
}

/// The response of a drawn fault, or `None` to drop the connection.
async fn fault_response(
    fault: Fault,
    cfg: &ServerConfig,
    req: &ParsedRequest,
    chat: bool,
    n: u64,
    rng: &mut ChaCha8Rng,
    out: impl Fn() -> SimOutput,
) -> Option<Response> {
    let resp = match fault {
        Fault::ContextError => {
            let asked = sim_tokens(&req.prompt) + req.max_tokens.unwrap_or(1000).max(0) as u64;
            let msg = format!(
                "This model's maximum context length is 4096 tokens. However, you requested {} tokens. \
                 Please reduce the length of the messages or completion.",
                asked.max(4097)
            );
            openai_error(
                StatusCode::BAD_REQUEST,
                &msg,
                "invalid_request_error",
                Some("context_length_exceeded"),
            )
        }
        Fault::Fail5xx => {
            let status = if rng.random::<bool>() {
                StatusCode::INTERNAL_SERVER_ERROR
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            openai_error(status, "the simulated server failed", "server_error", None)
        }
        Fault::RateLimit => {
            let secs = cfg.faults.retry_after_secs;
            let mut r = openai_error(
                StatusCode::TOO_MANY_REQUESTS,
                &format!("Rate limit reached. Please retry after {secs} seconds."),
                "requests",
                Some("rate_limit_exceeded"),
            );
            r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs));
            r
        }
        Fault::Hang => {
            // Longer than clients wait; a client that is still there gets a 504, never a reply,
            // so a call its client gave up on is not counted as served.
            tokio::time::sleep(Duration::from_secs_f64(cfg.faults.hang_secs)).await;
            openai_error(
                StatusCode::GATEWAY_TIMEOUT,
                "the simulated server hung",
                "server_error",
                None,
            )
        }
        Fault::Drop => return None,
        Fault::Malformed => {
            let full = completion_body(req, chat, n, &out()).to_string();
            let mut cut = full.len() / 2;
            while !full.is_char_boundary(cut) {
                cut -= 1;
            }
            (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                full[..cut].to_string(),
            )
                .into_response()
        }
        Fault::Html => {
            let status = if rng.random::<bool>() {
                StatusCode::OK
            } else {
                StatusCode::BAD_GATEWAY
            };
            let page = "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body><center>\
                        <h1>502 Bad Gateway</h1></center><hr><center>nginx</center></body></html>\n";
            (status, [(header::CONTENT_TYPE, "text/html")], page).into_response()
        }
    };
    Some(resp)
}

/// The response to send, or `None` to drop the connection instead. A request the rate limits
/// admit leaves its `admission`, for [`Limits::settle`].
async fn answer(
    app: &App,
    cfg: &ServerConfig,
    n: u64,
    headers: &HeaderMap,
    body: &[u8],
    chat: bool,
    admission: &mut Option<Admission>,
) -> Option<Response> {
    if let Some(refused) = refuse_key(cfg, headers) {
        return Some(refused);
    }
    let req = match parse_request(body, chat) {
        Ok(r) => r,
        Err(msg) => {
            return Some(openai_error(
                StatusCode::BAD_REQUEST,
                &msg,
                "invalid_request_error",
                None,
            ));
        }
    };
    let key = match call_key(headers) {
        Ok(k) => k,
        Err(msg) => {
            return Some(openai_error(
                StatusCode::BAD_REQUEST,
                &msg,
                "invalid_request_error",
                None,
            ));
        }
    };
    if let Some(limits) = &app.limits {
        let a = Admission {
            prompt: sim_tokens(&req.prompt),
            max_tokens: req.max_tokens.unwrap_or(0).max(0) as u64,
            used: None,
        };
        match limits.admit(a.prompt + a.max_tokens) {
            Ok(()) => *admission = Some(a),
            Err(refusal) => {
                let c = if refusal.tokens {
                    &app.stats.limited_tokens
                } else {
                    &app.stats.limited_requests
                };
                c.fetch_add(1, Ordering::Relaxed);
                return Some(rate_limited(&refusal, &a, limits));
            }
        }
    }
    let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let fault = draw_fault(&cfg.fault_rates(), rng.random::<f64>());
    if let Some(f) = fault {
        app.stats.faults[f as usize].fetch_add(1, Ordering::Relaxed);
    }
    let jitter = cfg.latency_jitter_ms * (2.0 * rng.random::<f64>() - 1.0);
    let latency = (cfg.sim.latency_ms + jitter).max(0.0);
    if latency > 0.0 {
        tokio::time::sleep(Duration::from_secs_f64(latency / 1000.0)).await;
    }
    let call = key.unwrap_or_else(|| anonymous_key(body));
    let out = || judge_aware_reply(cfg, &call, &req.prompt).limit(req.max_tokens);
    if let Some(f) = fault {
        return fault_response(f, cfg, &req, chat, n, &mut rng, out).await;
    }
    let reply = match fit_window(out(), cfg.context_length) {
        Ok(reply) => reply,
        Err(refusal) => return Some(*refusal),
    };
    if let Some(a) = admission {
        a.used = Some(u64::from(reply.prompt_tokens) + u64::from(reply.completion_tokens));
    }
    Some(served(app, &req, chat, n, key.as_ref(), &reply))
}

/// A served reply: counted in the statistics (tokens, and calls by key), its body sent.
fn served(app: &App, req: &ParsedRequest, chat: bool, n: u64, key: Option<&CallKey>, reply: &SimOutput) -> Response {
    let stats = &app.stats;
    stats
        .prompt_tokens
        .fetch_add(u64::from(reply.prompt_tokens), Ordering::Relaxed);
    stats
        .completion_tokens
        .fetch_add(u64::from(reply.completion_tokens), Ordering::Relaxed);
    let body = completion_body(req, chat, n, reply);
    let stat = match key {
        Some(k) => format!("{}/{}/{}/{}", k.unit, k.role, k.turn, k.attempt),
        None => "anonymous".into(),
    };
    *stats
        .calls
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(stat)
        .or_insert(0) += 1;
    json_response(StatusCode::OK, &body)
}

/// The 429 of a request beyond the rate limits, as OpenAI words it: `Retry-After` in whole
/// seconds (rounded up), `retry-after-ms` exactly.
fn rate_limited(refusal: &Refusal, a: &Admission, limits: &Limits) -> Response {
    let (kind, limit, asked) = if refusal.tokens {
        ("tokens", limits.tps, a.prompt + a.max_tokens)
    } else {
        ("requests", limits.rps, 1)
    };
    let ms = (refusal.wait.as_secs_f64() * 1000.0).ceil().max(1.0) as u64;
    let msg = format!(
        "Rate limit reached for {kind} per second (limit {}, requested {asked}). Please try again in {}.",
        limit.unwrap_or_default(),
        crate::llm::limits::format_duration(Duration::from_millis(ms))
    );
    let mut r = openai_error(StatusCode::TOO_MANY_REQUESTS, &msg, kind, Some("rate_limit_exceeded"));
    let h = r.headers_mut();
    h.insert(header::RETRY_AFTER, HeaderValue::from(ms.div_ceil(1000)));
    h.insert(HeaderName::from_static("retry-after-ms"), HeaderValue::from(ms));
    r
}

/// A reply within the context window, as llama.cpp's server gives it: a prompt that fills the
/// window is refused (HTTP 400, its body), a reply that would run past it is cut where it is full.
fn fit_window(
    out: crate::llm::sim::SimOutput,
    window: Option<u32>,
) -> Result<crate::llm::sim::SimOutput, Box<Response>> {
    let Some(window) = window else { return Ok(out) };
    if out.prompt_tokens >= window {
        let msg = format!(
            "request ({} tokens) exceeds the available context size ({window} tokens), try increasing it",
            out.prompt_tokens
        );
        return Err(Box::new(json_response(
            StatusCode::BAD_REQUEST,
            &json!({"error": {"code": 400, "message": msg, "type": "exceed_context_size_error",
                              "n_prompt_tokens": out.prompt_tokens, "n_ctx": window}}),
        )));
    }
    let room = window - out.prompt_tokens;
    if out.completion_tokens <= room {
        return Ok(out);
    }
    let mut cut = out.limit(Some(i64::from(room)));
    cut.completion_tokens = room;
    Ok(cut)
}

/// Which fault a uniform draw `u` falls on, if any.
fn draw_fault(rates: &[f64; 7], u: f64) -> Option<Fault> {
    let mut edge = 0.0;
    for (f, r) in Fault::ALL.iter().zip(rates) {
        edge += r;
        if u < edge {
            return Some(*f);
        }
    }
    None
}

struct ParsedRequest {
    prompt: Prompt,
    max_tokens: Option<i64>,
    model: String,
}

fn parse_request(body: &[u8], chat: bool) -> Result<ParsedRequest, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let prompt = if chat {
        let list = v
            .get("messages")
            .and_then(Value::as_array)
            .ok_or("`messages` must be a list of messages")?;
        let mut messages = Vec::with_capacity(list.len());
        for m in list {
            let role = m
                .get("role")
                .and_then(Value::as_str)
                .ok_or("every message needs a `role`")?;
            let content = match m.get("content") {
                Some(Value::String(s)) => s.clone(),
                Some(Value::Array(parts)) => parts
                    .iter()
                    .filter_map(|p| p.get("text").and_then(Value::as_str))
                    .collect::<Vec<_>>()
                    .join(""),
                None | Some(Value::Null) => String::new(),
                Some(_) => return Err("a message's `content` must be a string or a list of parts".into()),
            };
            messages.push(Message::new(role, content));
        }
        Prompt::Chat(messages)
    } else {
        match v.get("prompt") {
            Some(Value::String(s)) => Prompt::Text(s.clone()),
            Some(Value::Array(items)) if items.iter().all(Value::is_string) => {
                Prompt::Text(items.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(""))
            }
            _ => return Err("`prompt` must be a string".into()),
        }
    };
    let max_tokens = v
        .get("max_tokens")
        .or_else(|| v.get("max_completion_tokens"))
        .and_then(Value::as_i64);
    let model = v.get("model").and_then(Value::as_str).unwrap_or(MODEL_ID).to_string();
    Ok(ParsedRequest {
        prompt,
        max_tokens,
        model,
    })
}

fn sim_tokens(p: &Prompt) -> u64 {
    match p {
        Prompt::Chat(ms) => ms.iter().map(|m| u64::from(crate::llm::sim::tokens(&m.content))).sum(),
        Prompt::Text(t) => u64::from(crate::llm::sim::tokens(t)),
    }
}

/// The call identity from the `x-roleplay-*` headers; `None` when there are none.
fn call_key(headers: &HeaderMap) -> Result<Option<CallKey>, String> {
    let get = |name: &str| {
        headers
            .get(name)
            .map(|v| v.to_str().map_err(|_| format!("`{name}` is not text")))
    };
    let Some(unit) = get("x-roleplay-unit") else {
        return Ok(None);
    };
    let unit: UnitId = unit?.parse().map_err(|e| format!("`x-roleplay-unit`: {e}"))?;
    let role = match get("x-roleplay-role").transpose()? {
        Some("inquirer") => Role::Inquirer,
        Some("responder") => Role::Responder,
        other => {
            return Err(format!(
                "`x-roleplay-role` must be `inquirer` or `responder`, not {other:?}"
            ));
        }
    };
    let num = |name: &str| -> Result<u64, String> {
        match get(name).transpose()? {
            None => Ok(0),
            Some(v) => v
                .trim()
                .parse()
                .map_err(|_| format!("`{name}` must be a non-negative integer")),
        }
    };
    let small =
        |name: &str| -> Result<u32, String> { u32::try_from(num(name)?).map_err(|_| format!("`{name}` is too large")) };
    Ok(Some(CallKey {
        unit,
        seed: num("x-roleplay-seed")?,
        turn: small("x-roleplay-turn")?,
        role,
        attempt: small("x-roleplay-attempt")?,
    }))
}

/// A request without call headers is answered as a responder, seeded by its body.
fn anonymous_key(body: &[u8]) -> CallKey {
    let h = blake3::hash(body);
    let mut unit = [0u8; 10];
    unit.copy_from_slice(&h.as_bytes()[..10]);
    CallKey {
        unit: UnitId(unit),
        seed: 0,
        turn: 0,
        role: Role::Responder,
        attempt: 0,
    }
}

fn completion_body(req: &ParsedRequest, chat: bool, n: u64, out: &SimOutput) -> Value {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let usage = json!({
        "prompt_tokens": out.prompt_tokens,
        "completion_tokens": out.completion_tokens,
        "total_tokens": u64::from(out.prompt_tokens) + u64::from(out.completion_tokens),
    });
    if chat {
        json!({
            "id": format!("chatcmpl-{n:016x}"),
            "object": "chat.completion",
            "created": created,
            "model": req.model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": out.text},
                "finish_reason": out.finish_reason,
            }],
            "usage": usage,
        })
    } else {
        json!({
            "id": format!("cmpl-{n:016x}"),
            "object": "text_completion",
            "created": created,
            "model": req.model,
            "choices": [{
                "index": 0,
                "text": out.text,
                "logprobs": null,
                "finish_reason": out.finish_reason,
            }],
            "usage": usage,
        })
    }
}

/// A TCP listener whose connections a handler can kill, so the drop fault can close a
/// connection without any response (axum gives handlers no handle on their socket).
struct DroppableListener(TcpListener);

struct DroppableStream {
    inner: TcpStream,
    killed: Arc<AtomicBool>,
}

/// The handler's handle on its connection.
#[derive(Clone)]
struct Conn(Arc<AtomicBool>);

impl Conn {
    /// From now on the connection reads end-of-file and refuses writes, so hyper abandons it
    /// and closes the socket without writing the response.
    fn kill(&self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

impl Connected<axum::serve::IncomingStream<'_, DroppableListener>> for Conn {
    fn connect_info(stream: axum::serve::IncomingStream<'_, DroppableListener>) -> Self {
        Conn(stream.io().killed.clone())
    }
}

impl axum::serve::Listener for DroppableListener {
    type Io = DroppableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.0.accept().await {
                Ok((stream, addr)) => {
                    // Small JSON responses: do not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    let killed = Arc::new(AtomicBool::new(false));
                    return (DroppableStream { inner: stream, killed }, addr);
                }
                // A connection that failed before accept is that client's problem; anything
                // else (out of file descriptors) passes with time.
                Err(e) if is_connection_error(&e) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionAborted | io::ErrorKind::ConnectionReset
    )
}

impl AsyncRead for DroppableStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl AsyncWrite for DroppableStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.killed.load(Ordering::Relaxed) {
            return Poll::Ready(Err(io::ErrorKind::ConnectionAborted.into()));
        }
        Pin::new(&mut this.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_split_the_unit_interval_in_order() {
        let rates = [0.1, 0.2, 0.0, 0.0, 0.0, 0.0, 0.3];
        assert_eq!(draw_fault(&rates, 0.05), Some(Fault::ContextError));
        assert_eq!(draw_fault(&rates, 0.15), Some(Fault::Fail5xx));
        assert_eq!(draw_fault(&rates, 0.35), Some(Fault::Html));
        assert_eq!(draw_fault(&rates, 0.65), None);
        assert_eq!(draw_fault(&[0.0; 7], 0.0), None);
        assert_eq!(
            draw_fault(&[1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0], 0.999),
            Some(Fault::ContextError)
        );
    }

    fn config() -> ServerConfig {
        ServerConfig {
            sim: SimSettings::default(),
            faults: Faults {
                retry_after_secs: 1,
                hang_secs: 600.0,
                ..Default::default()
            },
            latency_jitter_ms: 0.0,
            seed: 0,
            require_key: None,
            context_length: None,
            judge_malformed_rate: 0.0,
            limit_rps: None,
            limit_tps: None,
        }
    }

    #[test]
    fn settings_are_checked() {
        assert_eq!(config().check(), Ok(()));
        let fails = |f: &dyn Fn(&mut ServerConfig), says: &str| {
            let mut c = config();
            f(&mut c);
            let e = c.check().expect_err(says);
            assert!(e.contains(says), "{says} in {e}");
        };
        fails(&|c| c.faults.drop_rate = 1.5, "`--drop-rate`: 1.5 is not a rate");
        fails(&|c| c.sim.empty_rate = -0.1, "`--empty-rate`");
        fails(
            &|c| {
                c.faults.drop_rate = 0.6;
                c.faults.html_rate = 0.6;
            },
            "add up to 1.2",
        );
        fails(&|c| c.sim.words = [5, 2], "`--words`: 5,2 is not a range");
        fails(&|c| c.sim.stop_after_turns = [0, 2], "`--stop-after-turns`");
        fails(&|c| c.latency_jitter_ms = f64::NAN, "`--latency-jitter-ms`");
        fails(&|c| c.faults.hang_secs = 1e9, "`--hang-secs`");
        fails(&|c| c.limit_rps = Some(0.0), "`--limit-rps`: 0 is out of range");
        fails(&|c| c.limit_tps = Some(f64::INFINITY), "`--limit-tps`");
    }

    #[test]
    fn the_limits_refuse_beyond_one_seconds_worth_and_say_so_in_headers() {
        let l = Limits::new(Some(3.0), Some(100.0)).expect("limits");
        assert!(Limits::new(None, None).is_none());
        for _ in 0..3 {
            assert!(l.admit(10).is_ok());
        }
        let r = l.admit(10).expect_err("a fourth request within the second");
        assert!(!r.tokens && r.wait > Duration::from_millis(300) && r.wait <= Duration::from_millis(334));
        let mut h = HeaderMap::new();
        l.headers(&mut h);
        let get = |k: &str| h.get(k).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
        assert_eq!(get("x-ratelimit-limit-requests"), "180");
        assert_eq!(get("x-ratelimit-remaining-requests"), "0");
        assert_eq!(get("x-ratelimit-limit-tokens"), "6000");
        assert_eq!(get("x-ratelimit-remaining-tokens"), "70");
        let reset = crate::llm::limits::parse_duration(&get("x-ratelimit-reset-requests")).expect("a duration");
        assert!(
            reset > Duration::from_millis(900) && reset <= Duration::from_secs(1),
            "{reset:?}"
        );
        // Tokens: 70 left; a request of 80 is refused on tokens, and the request is not taken.
        let l = Limits::new(None, Some(100.0)).expect("limits");
        assert!(l.admit(30).is_ok());
        let r = l.admit(80).expect_err("80 of 70");
        assert!(r.tokens && r.wait > Duration::from_millis(90), "{:?}", r.wait);
        // The reply used 10 of the 30 taken: 20 come back, and 80 fit again.
        l.settle(Admission {
            prompt: 5,
            max_tokens: 25,
            used: Some(10),
        });
        assert!(l.admit(80).is_ok());
        // A request larger than the bucket goes when it is full, and leaves it in debt.
        let l = Limits::new(None, Some(100.0)).expect("limits");
        assert!(l.admit(250).is_ok());
        assert!(l.admit(1).is_err());
    }

    #[test]
    fn a_refusal_says_when_to_come_back() {
        let l = Limits::new(Some(1.0), None).expect("limits");
        let a = Admission {
            prompt: 1,
            max_tokens: 1,
            used: None,
        };
        let r = rate_limited(
            &Refusal {
                tokens: false,
                wait: Duration::from_millis(1234),
            },
            &a,
            &l,
        );
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
        let h = r.headers();
        assert_eq!(h.get(header::RETRY_AFTER).map(|v| v.to_str().unwrap()), Some("2"));
        assert_eq!(h.get("retry-after-ms").map(|v| v.to_str().unwrap()), Some("1234"));
    }

    #[test]
    fn call_keys_come_from_the_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(call_key(&h), Ok(None));
        h.insert("x-roleplay-unit", HeaderValue::from_static("0123456789abcdef0123"));
        h.insert("x-roleplay-role", HeaderValue::from_static("inquirer"));
        h.insert("x-roleplay-turn", HeaderValue::from_static("3"));
        h.insert("x-roleplay-seed", HeaderValue::from_static("18446744073709551615"));
        let k = call_key(&h).expect("valid").expect("keyed");
        assert_eq!((k.role, k.turn, k.attempt, k.seed), (Role::Inquirer, 3, 0, u64::MAX));
        h.insert("x-roleplay-turn", HeaderValue::from_static("-1"));
        assert!(call_key(&h).is_err());
        h.insert("x-roleplay-turn", HeaderValue::from_static("1"));
        h.insert("x-roleplay-role", HeaderValue::from_static("judge"));
        assert!(call_key(&h).is_err());
    }

    #[test]
    fn requests_parse_in_both_shapes() {
        let r = parse_request(
            br#"{"model":"m","messages":[{"role":"user","content":"hi"},{"role":"assistant","content":null}],"max_tokens":5}"#,
            true,
        )
        .expect("valid");
        assert_eq!(
            r.prompt,
            Prompt::Chat(vec![Message::new("user", "hi"), Message::new("assistant", "")])
        );
        assert_eq!((r.max_tokens, r.model.as_str()), (Some(5), "m"));
        let r = parse_request(br#"{"prompt":["a","b"]}"#, false).expect("valid");
        assert_eq!(r.prompt, Prompt::Text("ab".into()));
        assert_eq!(r.model, MODEL_ID);
        for bad in [&b"nope"[..], br#"{"messages":3}"#, br#"{"messages":[{"content":"x"}]}"#] {
            assert!(parse_request(bad, true).is_err());
        }
        assert!(parse_request(br#"{"prompt":7}"#, false).is_err());
    }
}
