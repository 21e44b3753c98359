//! The `openai` and `azure` backends over real HTTP, against the real `roleplay sim-server`
//! binary: normal calls, every injected fault alone, the retry bound, an unreachable endpoint,
//! keys (wrong, missing, never shown), the concurrency cap, and a clean shutdown on SIGTERM.

use crate::common::simserver::SimServer;
use roleplay::experiment::{Model, Role, Sampling};
use roleplay::llm::openai::OpenAiModel;
use roleplay::llm::retry::Backoff;
use roleplay::llm::{CallError, CallKey, ChatModel, Completion, ErrorKind, Message, Prompt, Request, client_for};
use roleplay::plan::UnitId;
use serde_json::Value;
use std::path::Path;
use std::time::{Duration, Instant};

const MODEL: &str = "gpt-under-test";

/// Retry waits of milliseconds, so fault tests take no longer than the faults themselves.
const FAST: Backoff = Backoff {
    base: Duration::from_millis(5),
    cap: Duration::from_millis(40),
    max_retry_after: Duration::from_secs(10),
};

/// The model under test, as an experiment file declares it (`extra`: more keys of its table).
fn model(backend: &str, base_url: &str, extra: &str) -> Model {
    let text = format!(
        r#"
[personas]
template = "<AGE> person"
fixed = [{{ age = "young" }}]
[goals]
items = ["learn to bake bread"]
[[models]]
name = "sim-inquirer"
roles = ["inquirer"]
backend = "sim"
[models.templates]
first_turn = "You are <PERSONA>. Goal: <OBJECTIVE>. Say \"<CONV_STOP>\" when done."
response_forwarding = "\"<RESPONSE>\""
[[models]]
name = "{MODEL}"
roles = ["responder"]
backend = "{backend}"
base_url = "{base_url}"
model = "sim-model"
{extra}
"#
    );
    let loaded = roleplay::experiment::load_str(&text, Path::new("/tmp/http_backend.toml")).expect("valid experiment");
    loaded.experiment.model(MODEL).expect("declared").clone()
}

fn backend(m: &Model) -> OpenAiModel {
    OpenAiModel::new(m).expect("backend").with_backoff(FAST)
}

fn request(turn: u32, chat: bool) -> Request {
    Request {
        key: CallKey {
            unit: UnitId([0x5a; 10]),
            seed: 73,
            turn,
            role: Role::Responder,
            attempt: 0,
        },
        prompt: if chat {
            Prompt::Chat(vec![
                Message::new("system", "You are a helpful assistant."),
                Message::new("user", "How do I bake sourdough bread at home?"),
            ])
        } else {
            Prompt::Text("[INST] How do I bake sourdough bread at home? [/INST]".into())
        },
        sampling: Sampling {
            max_new_tokens: Some(200),
            temperature: Some(0.7),
            top_k: Some(40),
            ..Default::default()
        },
    }
}

fn call_key(req: &Request) -> String {
    let k = req.key;
    format!("{}/{}/{}/{}", k.unit, k.role, k.turn, k.attempt)
}

async fn fail(m: &dyn ChatModel, req: &Request) -> CallError {
    m.complete(req).await.expect_err("the call must fail")
}

fn requests(stats: &Value) -> u64 {
    stats["requests"].as_u64().expect("requests")
}

/// The message names the model and the endpoint it tried.
fn names_model_and_url(e: &CallError, url: &str) {
    assert!(e.message.contains(&format!("model `{MODEL}`")), "{}", e.message);
    assert!(e.message.contains(url), "{url} in {}", e.message);
}

#[tokio::test]
async fn chat_and_completion_calls_return_text_and_usage() {
    let server = SimServer::start(&["--latency-ms", "5"]);
    let chat = client_for(&model("openai", &server.base_url(), "")).expect("backend");
    let text = client_for(&model("openai", &server.base_url(), "api = \"completions\"")).expect("backend");
    let check = |c: &Completion| {
        assert!(!c.text.is_empty());
        assert!(c.prompt_tokens.is_some_and(|t| t > 0), "{c:?}");
        assert!(c.completion_tokens.is_some_and(|t| t > 0), "{c:?}");
        assert!(c.finish_reason.is_some());
        assert_eq!(c.attempts, 1);
        assert!(c.latency_ms >= 5.0, "{c:?}");
    };
    let r1 = request(0, true);
    let c = chat.complete(&r1).await.expect("chat call");
    check(&c);
    assert!(
        c.text.to_lowercase().contains("bread")
            || c.text.to_lowercase().contains("sourdough")
            || c.text.to_lowercase().contains("bake"),
        "{}",
        c.text
    );
    let r2 = request(1, false);
    check(&text.complete(&r2).await.expect("completion call"));
    let stats = server.stats().await;
    assert_eq!(requests(&stats), 2);
    assert_eq!(stats["calls"][call_key(&r1)], 1, "{stats}");
    assert_eq!(stats["calls"][call_key(&r2)], 1, "{stats}");
    // The server's reply is the simulator's: the same call again gets the same text.
    assert_eq!(chat.complete(&r1).await.expect("again").text, c.text);
}

#[tokio::test]
async fn server_errors_are_retried_up_to_max_retries() {
    let server = SimServer::start(&["--fail-5xx-rate", "1"]);
    let m = backend(&model("openai", &server.base_url(), "max_retries = 2"));
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::RetriesExhausted);
    assert_eq!(e.attempts, 3);
    names_model_and_url(&e, &format!("{}/chat/completions", server.base_url()));
    assert!(e.message.contains("gave up after 3 attempts"), "{}", e.message);
    assert!(
        e.message.contains("HTTP 500") || e.message.contains("HTTP 503"),
        "{}",
        e.message
    );
    let stats = server.stats().await;
    assert_eq!(requests(&stats), 3, "exactly max_retries + 1 requests: {stats}");
    assert_eq!(stats["responses"]["5xx"], 3);
    assert_eq!(stats["calls"].as_object().map(|c| c.len()), Some(0));
}

#[tokio::test]
async fn intermittent_faults_are_retried_and_no_completed_call_is_repeated() {
    let server = SimServer::start(&[
        "--fail-5xx-rate",
        "0.3",
        "--drop-rate",
        "0.1",
        "--malformed-rate",
        "0.1",
        "--seed",
        "9",
    ]);
    let m = backend(&model("openai", &server.base_url(), "max_retries = 20"));
    let mut attempts = 0;
    let mut retried = 0;
    for turn in 0..30 {
        let c = m
            .complete(&request(turn, true))
            .await
            .expect("every call succeeds in the end");
        attempts += u64::from(c.attempts);
        retried += u64::from(c.attempts > 1);
    }
    let stats = server.stats().await;
    assert_eq!(
        requests(&stats),
        attempts,
        "every attempt reached the server once: {stats}"
    );
    assert!(retried > 0, "with half the requests failing, some calls needed retries");
    let calls = stats["calls"].as_object().expect("calls");
    assert_eq!(calls.len(), 30);
    assert!(
        calls.values().all(|n| n == 1),
        "each call succeeded exactly once: {stats}"
    );
}

#[tokio::test]
async fn rate_limits_wait_at_least_retry_after() {
    let server = SimServer::start(&["--rate-limit-rate", "1", "--retry-after-secs", "1"]);
    let m = backend(&model("openai", &server.base_url(), "max_retries = 1"));
    let started = Instant::now();
    let e = fail(&m, &request(0, true)).await;
    let took = started.elapsed();
    assert_eq!(e.kind, ErrorKind::RetriesExhausted);
    assert_eq!(e.attempts, 2);
    assert!(e.message.contains("HTTP 429"), "{}", e.message);
    // The backoff alone would wait at most 5 ms: the second attempt waited for Retry-After.
    assert!(took >= Duration::from_secs(1), "waited {took:?}");
    assert_eq!(requests(&server.stats().await), 2);
}

#[tokio::test]
async fn a_hung_server_times_out_and_is_retried() {
    let server = SimServer::start(&["--hang-rate", "1", "--hang-secs", "60"]);
    let m = backend(&model(
        "openai",
        &server.base_url(),
        "max_retries = 1\ntimeout_secs = 0.5",
    ));
    let started = Instant::now();
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::RetriesExhausted);
    assert_eq!(e.attempts, 2);
    assert!(e.message.contains("`timeout_secs`"), "{}", e.message);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "two attempts of 0.5 s each"
    );
    let stats = server.stats().await;
    assert_eq!(requests(&stats), 2);
    assert_eq!(stats["faults"]["hang"], 2);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let server = SimServer::start(&["--drop-rate", "1"]);
    let m = backend(&model("openai", &server.base_url(), "max_retries = 2"));
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::RetriesExhausted);
    assert_eq!(e.attempts, 3);
    assert!(e.message.contains("connection broke"), "{}", e.message);
    let stats = server.stats().await;
    assert_eq!(requests(&stats), 3);
    assert_eq!(stats["responses"]["dropped"], 3);
}

#[tokio::test]
async fn a_malformed_body_ends_as_bad_response() {
    let server = SimServer::start(&["--malformed-rate", "1"]);
    let m = backend(&model(
        "openai",
        &server.base_url(),
        "max_retries = 1\napi = \"completions\"",
    ));
    let e = fail(&m, &request(0, false)).await;
    assert_eq!(e.kind, ErrorKind::BadResponse);
    assert_eq!(e.attempts, 2);
    names_model_and_url(&e, &format!("{}/completions", server.base_url()));
    assert!(e.message.contains("not JSON"), "{}", e.message);
    let stats = server.stats().await;
    assert_eq!(requests(&stats), 2);
    assert_eq!(
        stats["calls"].as_object().map(|c| c.len()),
        Some(0),
        "a malformed reply is not a served call"
    );
}

#[tokio::test]
async fn an_html_page_is_reported_as_such() {
    let server = SimServer::start(&["--html-rate", "1", "--seed", "3"]);
    let m = backend(&model("openai", &server.base_url(), "max_retries = 3"));
    let e = fail(&m, &request(0, true)).await;
    // The page comes as a 200 (bad body) or a 502 (server error); the last one decides the kind.
    assert!(
        matches!(e.kind, ErrorKind::BadResponse | ErrorKind::RetriesExhausted),
        "{e}"
    );
    assert_eq!(e.attempts, 4);
    assert!(e.message.contains("HTML page"), "{}", e.message);
    assert!(
        e.message.contains("502 Bad Gateway"),
        "the page's start is shown: {}",
        e.message
    );
    assert!(!e.message.contains('\n'), "{}", e.message);
}

#[tokio::test]
async fn a_context_length_error_is_final_at_once() {
    let server = SimServer::start(&["--context-error-rate", "1"]);
    let m = backend(&model("openai", &server.base_url(), "max_retries = 5"));
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::ContextOverflow);
    assert_eq!(e.attempts, 1);
    assert!(e.message.contains("HTTP 400"), "{}", e.message);
    assert!(e.message.contains("maximum context length"), "{}", e.message);
    assert_eq!(requests(&server.stats().await), 1, "no retries");
}

#[tokio::test]
async fn a_closed_port_is_unreachable_after_retries() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr").port()
    };
    let url = format!("http://127.0.0.1:{port}/v1");
    let m = backend(&model("openai", &url, "max_retries = 2"));
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::Unreachable);
    assert_eq!(e.attempts, 3);
    names_model_and_url(&e, &format!("{url}/chat/completions"));
    assert!(e.message.contains("cannot connect"), "{}", e.message);
}

/// A variable every test environment has; its value stands in for a key.
const KEY_VAR: &str = "PATH";

fn key_value() -> String {
    std::env::var(KEY_VAR).expect("PATH is set")
}

#[tokio::test]
async fn a_wrong_key_is_auth_and_never_shown() {
    let server = SimServer::start(&["--require-key", "the-right-key"]);
    let m = backend(&model(
        "openai",
        &server.base_url(),
        &format!("api_key_env = \"{KEY_VAR}\"\nmax_retries = 3"),
    ));
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::Auth);
    assert_eq!(e.attempts, 1, "a 401 is not retried");
    names_model_and_url(&e, &format!("{}/chat/completions", server.base_url()));
    assert!(e.message.contains("HTTP 401"), "{}", e.message);
    assert!(
        e.message.contains(&format!("`{KEY_VAR}`")),
        "names the variable: {}",
        e.message
    );
    // The server echoes the key it got; the message must not.
    assert!(e.message.contains("[redacted]"), "{}", e.message);
    assert!(!e.message.contains(&key_value()), "{}", e.message);
    assert!(!e.to_string().contains(&key_value()));
    assert!(!format!("{e:?}").contains(&key_value()));
}

#[tokio::test]
async fn the_right_key_is_accepted_by_openai_and_azure_headers() {
    let key = key_value();
    let server = SimServer::start(&["--require-key", &key]);
    let openai = backend(&model(
        "openai",
        &server.base_url(),
        &format!("api_key_env = \"{KEY_VAR}\""),
    ));
    openai.complete(&request(0, true)).await.expect("Bearer key accepted");
    // Azure: deployment URL, api-version, `api-key` header; same server, its Azure routes.
    let azure = backend(&model(
        "azure",
        &server.url,
        &format!("api_key_env = \"{KEY_VAR}\"\napi_version = \"2024-02-01\""),
    ));
    let req = request(1, true);
    assert_eq!(
        azure.url(&req.prompt).as_str(),
        format!(
            "{}/openai/deployments/sim-model/chat/completions?api-version=2024-02-01",
            server.url
        )
    );
    let c = azure.complete(&req).await.expect("api-key accepted");
    assert!(!c.text.is_empty());
    let stats = server.stats().await;
    assert_eq!(stats["responses"]["2xx"], 2, "{stats}");
}

#[tokio::test]
async fn a_missing_key_variable_fails_before_any_request() {
    let server = SimServer::start(&[]);
    let var = "ROLEPLAY_TEST_KEY_THAT_IS_NEVER_SET";
    let m = backend(&model(
        "openai",
        &server.base_url(),
        &format!("api_key_env = \"{var}\""),
    ));
    let e = fail(&m, &request(0, true)).await;
    assert_eq!(e.kind, ErrorKind::MissingKey);
    assert_eq!(e.attempts, 0);
    assert!(e.message.contains(var) && e.message.contains(MODEL), "{}", e.message);
    assert_eq!(requests(&server.stats().await), 0);
}

#[tokio::test]
async fn the_concurrency_cap_limits_requests_in_flight() {
    let server = SimServer::start(&["--latency-ms", "200"]);
    let m = std::sync::Arc::new(backend(&model("openai", &server.base_url(), "concurrency = 2")));
    let mut calls = tokio::task::JoinSet::new();
    let started = Instant::now();
    for turn in 0..6 {
        let m = m.clone();
        calls.spawn(async move { m.complete(&request(turn, true)).await });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("task").expect("call");
    }
    // Six calls of 200 ms, two at a time: at least three rounds.
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(requests(&server.stats().await), 6);
}

#[tokio::test]
async fn the_server_shuts_down_cleanly_on_sigterm() {
    let mut server = SimServer::start(&[]);
    let status = std::process::Command::new("kill")
        .args(["-TERM", &server.pid().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success());
    let exit = server.wait_exit(Duration::from_secs(10)).expect("exits within 10 s");
    assert!(exit.success(), "{exit}");
    assert!(
        !server.addr_file.exists(),
        "the address file is removed with the server"
    );
}
