//! Rate limits (`src/llm/limits.rs`) against the real `roleplay sim-server` binary in its limiter
//! mode (`--limit-rps`, `--limit-tps`): the server refuses beyond its rates with a provider's
//! 429 and headers; configured rates pace concurrent calls without refusals; token limits are
//! reserved and corrected by the usage; without configured rates the adaptive window and the
//! provider's headers keep refusals below the naive setting's; limits change no unit id; the
//! experiment keys are checked at load; and a worker with `concurrency = 256` against a limited
//! server reaches the rate with under 1% refused, logging its waits.

use crate::common::simserver::SimServer;
use crate::common::{self, Proc};
use roleplay::experiment::{Model, Role, Sampling};
use roleplay::llm::limits;
use roleplay::llm::openai::OpenAiModel;
use roleplay::llm::retry::Backoff;
use roleplay::llm::{CallKey, ChatModel, Message, Prompt, Request};
use roleplay::plan::UnitId;
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

const MODEL: &str = "limited";

/// Retry waits of milliseconds (a refusal's `retry-after-ms` still sets the floor).
const FAST: Backoff = Backoff {
    base: Duration::from_millis(5),
    cap: Duration::from_millis(40),
    max_retry_after: Duration::from_secs(10),
};

fn experiment(models: &str) -> String {
    format!(
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
{models}
"#
    )
}

fn load(models: &str) -> roleplay::Result<roleplay::experiment::Experiment> {
    roleplay::experiment::load_str(&experiment(models), Path::new("/tmp/rate_limits.toml")).map(|l| l.experiment)
}

/// The model under test at `base_url`, with `extra` keys in its table.
fn model(base_url: &str, extra: &str) -> Model {
    let table = format!(
        "[[models]]\nname = \"{MODEL}\"\nroles = [\"responder\"]\nbackend = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"sim-model\"\n{extra}"
    );
    load(&table)
        .unwrap_or_else(|e| panic!("{e}"))
        .model(MODEL)
        .expect("declared")
        .clone()
}

fn backend(m: &Model) -> Arc<OpenAiModel> {
    Arc::new(OpenAiModel::new(m).expect("backend").with_backoff(FAST))
}

fn request(turn: u32, max_tokens: i64) -> Request {
    Request {
        key: CallKey {
            unit: UnitId([0x3c; 10]),
            seed: 5,
            turn,
            role: Role::Responder,
            attempt: 0,
        },
        prompt: Prompt::Chat(vec![
            Message::new("system", "You are a helpful assistant."),
            Message::new("user", "How do I bake sourdough bread at home?"),
        ]),
        sampling: Sampling {
            max_new_tokens: Some(max_tokens),
            ..Default::default()
        },
    }
}

/// `n` calls at once; each must succeed. Returns the wall time.
async fn concurrent_calls(m: &Arc<OpenAiModel>, n: u32, max_tokens: i64) -> Duration {
    let started = Instant::now();
    let mut calls = tokio::task::JoinSet::new();
    for turn in 0..n {
        let m = m.clone();
        calls.spawn(async move { m.complete(&request(turn, max_tokens)).await });
    }
    while let Some(done) = calls.join_next().await {
        done.expect("task").unwrap_or_else(|e| panic!("a call failed: {e}"));
    }
    started.elapsed()
}

fn key_of(server: &SimServer) -> String {
    limits::endpoint_key(&server.base_url(), "sim-model")
}

fn limited(stats: &Value, kind: &str) -> u64 {
    stats["limited"][kind].as_u64().expect("limited count")
}

/// A POST over a bare HTTP/1.0 exchange: status, headers (lower-case names), body.
async fn post(url: &str, path: &str, body: &str) -> (u16, BTreeMap<String, String>, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.trim_start_matches("http://");
    let mut s = tokio::net::TcpStream::connect(host).await.expect("connect");
    let req = format!(
        "POST {path} HTTP/1.0\r\nHost: {host}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("send");
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("an answer within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers, body.to_string())
}

#[tokio::test]
async fn the_sim_server_refuses_beyond_its_rates_as_a_provider_does() {
    let server = SimServer::start(&["--limit-rps", "5", "--limit-tps", "1000"]);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":20}"#;
    let mut answers = Vec::new();
    for _ in 0..8 {
        answers.push(post(&server.url, "/v1/chat/completions", body).await);
    }
    let statuses: Vec<u16> = answers.iter().map(|a| a.0).collect();
    assert_eq!(
        statuses,
        [200, 200, 200, 200, 200, 429, 429, 429],
        "a bucket of one second's worth"
    );
    let (_, ok, _) = &answers[0];
    assert_eq!(
        ok["x-ratelimit-limit-requests"], "300",
        "per minute, as OpenAI reports it"
    );
    assert_eq!(ok["x-ratelimit-remaining-requests"], "4");
    assert_eq!(ok["x-ratelimit-limit-tokens"], "60000");
    assert!(ok.contains_key("x-ratelimit-remaining-tokens") && ok.contains_key("x-ratelimit-reset-tokens"));
    let (_, refused, text) = &answers[5];
    assert_eq!(refused["retry-after"], "1", "whole seconds, rounded up");
    let ms: u64 = refused["retry-after-ms"].parse().expect("milliseconds");
    assert!((1..=200).contains(&ms), "the next request is due within 200 ms: {ms}");
    assert_eq!(refused["x-ratelimit-remaining-requests"], "0");
    let reset = limits::parse_duration(&refused["x-ratelimit-reset-requests"]).expect("a duration");
    assert!(
        reset > Duration::from_millis(500) && reset <= Duration::from_secs(1),
        "{reset:?}"
    );
    assert!(
        text.contains("rate_limit_exceeded") && text.contains("requests"),
        "{text}"
    );
    let stats = server.stats().await;
    assert_eq!(
        (limited(&stats, "requests"), limited(&stats, "tokens")),
        (3, 0),
        "{stats}"
    );
    assert_eq!(stats["responses"]["4xx"], 3);

    // Tokens: the prompt and max_tokens are taken on arrival, 1000 a second; replies that run to
    // max_tokens give nothing back.
    let server = SimServer::start(&["--limit-tps", "1000", "--words", "1000,1000"]);
    let big = r#"{"model":"m","messages":[{"role":"user","content":"hello there"}],"max_tokens":600}"#;
    assert_eq!(post(&server.url, "/v1/chat/completions", big).await.0, 200);
    let (status, h, text) = post(&server.url, "/v1/chat/completions", big).await;
    assert_eq!(status, 429, "{text}");
    assert!(text.contains("tokens"), "{text}");
    assert!(
        !h.contains_key("x-ratelimit-limit-requests"),
        "no request limit, no request headers"
    );
    let stats = server.stats().await;
    assert_eq!(
        (limited(&stats, "requests"), limited(&stats, "tokens")),
        (0, 1),
        "{stats}"
    );
}

#[tokio::test]
async fn configured_requests_per_minute_pace_concurrent_calls_without_refusals() {
    let server = SimServer::start(&["--limit-rps", "10"]);
    let m = backend(&model(&server.base_url(), "requests_per_minute = 600\nmax_retries = 0"));
    let took = concurrent_calls(&m, 40, 50).await;
    let stats = server.stats().await;
    assert_eq!(limited(&stats, "requests"), 0, "no request was refused: {stats}");
    assert_eq!(stats["responses"]["2xx"], 40);
    // 10 a second; the client's bucket holds 9 (one second less a tenth), then one per 100 ms.
    assert!(took >= Duration::from_millis(3050), "{took:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    let s = limits::stats(&key_of(&server)).expect("the limiter lives with its client");
    assert_eq!(s.requests, 40);
    assert!(s.request_rate_waits >= 30, "{s:?}");
    assert_eq!((s.refused, s.decreases, s.window), (0, 0, None));
}

#[tokio::test]
async fn configured_tokens_per_minute_are_reserved_and_corrected_by_the_usage() {
    let server = SimServer::start(&["--limit-tps", "400"]);
    let m = backend(&model(&server.base_url(), "tokens_per_minute = 24000\nmax_retries = 0"));
    // About 18 prompt tokens and up to 60 completion tokens a call: 20 calls take ~1,600 tokens
    // if they all run to max_tokens, less what the replies do not use.
    let took = concurrent_calls(&m, 20, 60).await;
    let stats = server.stats().await;
    assert_eq!(limited(&stats, "tokens"), 0, "no request was refused: {stats}");
    let served = |k: &str| stats["tokens"][k].as_u64().expect("tokens served");
    assert!(served("prompt") >= 20 * 15 && served("completion") > 0, "{stats}");
    let s = limits::stats(&key_of(&server)).expect("limiter");
    assert!(s.token_rate_waits > 0, "{s:?}");
    assert_eq!(s.refused, 0);
    // 20 x 18 prompt tokens at least, less the bucket (360), at 400 a second.
    assert!(took >= Duration::from_millis(300), "{took:?}");
}

/// 60 calls at once against 20 requests a second, retried until they succeed: refused requests,
/// and the limiter's figures.
async fn refusals_of(adaptive: bool) -> (u64, limits::Stats) {
    let server = SimServer::start(&["--limit-rps", "20", "--latency-ms", "100"]);
    let m = backend(&model(
        &server.base_url(),
        &format!("adaptive_concurrency = {adaptive}\nmax_retries = 100"),
    ));
    concurrent_calls(&m, 60, 20).await;
    let stats = server.stats().await;
    assert_eq!(stats["responses"]["2xx"], 60, "{stats}");
    (
        limited(&stats, "requests"),
        limits::stats(&key_of(&server)).expect("limiter"),
    )
}

#[tokio::test]
async fn without_configured_rates_the_window_and_the_headers_cut_refusals() {
    let (naive, naive_stats) = refusals_of(false).await;
    let (adaptive, s) = refusals_of(true).await;
    assert_eq!(
        (naive_stats.decreases, naive_stats.provider_waits),
        (0, 0),
        "{naive_stats:?}"
    );
    assert!(s.decreases >= 1, "{s:?}");
    assert!(s.window.is_some_and(|w| w < 40.0), "{s:?}");
    assert!(s.provider_waits > 0 && s.window_waits > 0, "{s:?}");
    assert!(
        adaptive * 2 <= naive,
        "refused with adaptation {adaptive}, without {naive}: {s:?} / {naive_stats:?}"
    );
}

#[tokio::test]
async fn spent_requests_in_the_headers_pause_the_endpoint_until_the_reset() {
    let server = SimServer::start(&["--limit-rps", "2"]);
    let m = backend(&model(&server.base_url(), "max_retries = 0"));
    for turn in 0..2 {
        m.complete(&request(turn, 10)).await.expect("within the bucket");
    }
    // The second reply said `x-ratelimit-remaining-requests: 0`: the third waits for the reset
    // (about a second, the bucket full again) instead of being refused.
    let started = Instant::now();
    m.complete(&request(2, 10)).await.expect("after the pause");
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "{:?}",
        started.elapsed()
    );
    let stats = server.stats().await;
    assert_eq!(limited(&stats, "requests"), 0, "{stats}");
    let s = limits::stats(&key_of(&server)).expect("limiter");
    assert_eq!((s.provider_waits, s.refused), (1, 0), "{s:?}");
}

#[test]
fn limit_keys_are_checked_shared_by_a_server_model_and_change_no_unit_id() {
    let url = "http://127.0.0.1:9/v1";
    let two = |a: &str, b: &str| {
        format!(
            "[[models]]\nname = \"a\"\nroles = [\"responder\"]\nbackend = \"openai\"\nbase_url = \"{url}\"\nmodel = \"m\"\n{a}\n\
             [[models]]\nname = \"b\"\nroles = [\"responder\"]\nbackend = \"openai\"\nbase_url = \"{url}/\"\nmodel = \"m\"\nregenerate_tries = 1\n{b}\n\
             [[models]]\nname = \"c\"\nroles = [\"responder\"]\nbackend = \"openai\"\nbase_url = \"{url}\"\nmodel = \"other\"\n"
        )
    };
    // Set on one entry, it holds for every entry naming the same server model, and only those.
    let exp = load(&two("requests_per_minute = 600\nadaptive_concurrency = false", "")).expect("valid");
    let limits_of = |n: &str| exp.model(n).expect("model").transport.limits;
    assert_eq!(limits_of("a"), limits_of("b"));
    assert_eq!(limits_of("b").requests_per_minute, Some(600.0));
    assert!(!limits_of("b").adaptive_concurrency);
    assert_eq!(limits_of("c"), roleplay::experiment::RateLimits::default());
    load(&two("requests_per_minute = 600", "requests_per_minute = 600.0")).expect("the same value twice");
    let refused = [
        (
            two("requests_per_minute = 600", "requests_per_minute = 300"),
            "models[b].requests_per_minute",
            "model `a` sets 600",
        ),
        (
            two("adaptive_concurrency = true", "adaptive_concurrency = false"),
            "models[b].adaptive_concurrency",
            "share its limits",
        ),
        (
            two("requests_per_minute = 0", ""),
            "models[a].requests_per_minute",
            "out of range",
        ),
        (
            two("tokens_per_minute = -5", ""),
            "models[a].tokens_per_minute",
            "out of range",
        ),
        (
            "[[models]]\nname = \"s\"\nroles = [\"responder\"]\nbackend = \"sim\"\nrequests_per_minute = 60\n".into(),
            "models[s].requests_per_minute",
            "no endpoint to limit",
        ),
        (
            "[[models]]\nname = \"s\"\nroles = [\"responder\"]\nbackend = \"sim\"\nadaptive_concurrency = false\n"
                .into(),
            "models[s].adaptive_concurrency",
            "no endpoint",
        ),
    ];
    for (table, key, says) in refused {
        let e = load(&table).expect_err(key).to_string();
        assert!(e.contains(key) && e.contains(says), "{key}, {says}: {e}");
        assert!(e.contains("hint:"), "{e}");
    }
    // Transport: the units are the same with and without limits...
    let plain = load(&two("", "")).expect("valid");
    let with_limits = load(&two("requests_per_minute = 600\ntokens_per_minute = 90000", "")).expect("valid");
    let ids = |exp: &roleplay::experiment::Experiment| -> Vec<UnitId> {
        roleplay::plan::expand(exp)
            .expect("expand")
            .units
            .iter()
            .map(|u| u.id)
            .collect()
    };
    assert_eq!(ids(&plain), ids(&with_limits));
    // ...and an experiment without them is snapshotted as before they existed (its plan hash too).
    let snapshot = serde_json::to_string(&plain).expect("serialise");
    assert!(
        !snapshot.contains("\"limits\"") && !snapshot.contains("adaptive_concurrency"),
        "{snapshot}"
    );
    assert_ne!(
        roleplay::plan::plan_hash(&plain),
        roleplay::plan::plan_hash(&with_limits)
    );
    let back: roleplay::experiment::Experiment = serde_json::from_str(&snapshot).expect("read back");
    assert_eq!(back, plain);
}

/// An experiment of `units` one-turn dialogues (two calls each), both models at one server model.
fn worker_experiment(dir: &Path, name: &str, keys: &str, units: usize, concurrency: u32) -> std::path::PathBuf {
    let personas: Vec<String> = (0..units).map(|i| format!("{{ age = \"a {i}\" }}")).collect();
    let model = |name: &str, role: &str| {
        format!(
            "[[models]]\nname = \"{name}\"\nroles = [\"{role}\"]\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"sim\"\n{keys}\n"
        )
    };
    let text = format!(
        "name = \"{name}\"\nrun_dir = \"run-{name}\"\n[dialogue]\nmax_turns = 1\n[personas]\ntemplate = \"<AGE> person\"\nfixed = [{}]\n\
         [goals]\nitems = [\"learn to bake bread\"]\n{}[models.templates]\nfirst_turn = \"You are <PERSONA>. Goal: <OBJECTIVE>. Say \\\"<CONV_STOP>\\\" when done.\"\n\
         response_forwarding = \"\\\"<RESPONSE>\\\"\"\n{}[sharding]\nunits_per_shard = 100000\n[worker]\nconcurrency = {concurrency}\n",
        personas.join(", "),
        model("inq", "inquirer"),
        model("resp", "responder"),
    );
    let file = dir.join(format!("{name}.toml"));
    std::fs::write(&file, text).expect("write the experiment");
    file
}

/// What a worker run did at the server.
struct Run {
    out: common::Out,
    took: Duration,
    requests: u64,
    ok: u64,
    limited: u64,
    /// Successful replies a second between 10% and 90% of them (the server's `/stats`, polled
    /// every 50 ms): no start, no end.
    steady: f64,
}

/// Plan and run one worker over the experiment against `server`.
fn run_worker(dir: &Path, file: &Path, server: &common::SimServer) -> Run {
    let logs = dir.join("logs");
    let run = dir.join(format!("run-{}", file.file_stem().expect("stem").to_string_lossy()));
    let plan: Vec<&std::ffi::OsStr> = vec!["plan".as_ref(), file.as_os_str()];
    common::roleplay(&logs, &plan, &[], Duration::from_secs(60)).expect_code(0);
    let n = |s: &Value, path: &[&str]| path.iter().fold(s, |v, k| &v[*k]).as_u64().unwrap_or(0);
    let before = server.stats();
    let url = server.base_url();
    let started = Instant::now();
    let mut p = Proc::spawn(
        &logs,
        &["worker".as_ref(), run.as_os_str(), "--shard".as_ref(), "0".as_ref()],
        &[("ROLEPLAY_BASE_URL", url.as_str())],
    );
    let mut points = Vec::new();
    let out = loop {
        if let Some(status) = p.try_status() {
            break p.output(status.code());
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "the worker ran over 2 minutes"
        );
        points.push((
            started.elapsed().as_secs_f64(),
            n(&server.stats(), &["responses", "2xx"]),
        ));
        std::thread::sleep(Duration::from_millis(50));
    };
    let took = started.elapsed();
    let after = server.stats();
    let ok = n(&after, &["responses", "2xx"]) - n(&before, &["responses", "2xx"]);
    let base = n(&before, &["responses", "2xx"]) as f64;
    let at = |share: f64| points.iter().find(|(_, c)| *c as f64 - base >= share * ok as f64);
    let steady = match (at(0.1), at(0.9)) {
        (Some(lo), Some(hi)) if hi.0 > lo.0 => (hi.1 - lo.1) as f64 / (hi.0 - lo.0),
        _ => 0.0,
    };
    Run {
        out,
        took,
        requests: n(&after, &["requests"]) - n(&before, &["requests"]),
        ok,
        limited: n(&after, &["limited", "requests"]) - n(&before, &["limited", "requests"]),
        steady,
    }
}

#[test]
fn a_worker_at_concurrency_256_reaches_the_providers_rate_with_under_one_percent_refused() {
    const R: f64 = 100.0;
    let dir = tempfile::tempdir().expect("temp dir");
    // Uniform dialogues: every one makes its two calls.
    let server = common::SimServer::start(
        dir.path(),
        &[
            "--limit-rps",
            "100",
            "--latency-ms",
            "50",
            "--stop-after-turns",
            "1000,1000",
            "--no-prompt-rate",
            "0",
            "--degenerate-rate",
            "0",
            "--empty-rate",
            "0",
            "--multi-prompt-rate",
            "0",
        ],
    );
    // Both models name one server model: one limiter, one rate, as the provider counts them.
    let file = worker_experiment(dir.path(), "limited", "requests_per_minute = 6000", 300, 256);
    let run = run_worker(dir.path(), &file, &server);
    run.out.expect_code(0);
    assert_eq!(run.ok, 600);
    let refused = run.limited as f64 / run.requests as f64;
    assert!(refused < 0.01, "refused {:.2}% of {}", 100.0 * refused, run.requests);
    assert!(
        run.steady >= 0.95 * R && run.steady <= 1.1 * R,
        "{:.1} calls/s in steady state ({:?} in all)",
        run.steady,
        run.took
    );
    // The waits are logged with their reason, at most a line per kind every 5 s.
    let lines: Vec<&str> = run
        .out
        .stderr
        .lines()
        .filter(|l| l.starts_with("rate limit: "))
        .collect();
    assert!(
        lines.iter().any(|l| l.contains("for `requests_per_minute = 6000`")),
        "{}",
        run.out.stderr
    );
    let most = 1 + (run.took.as_secs_f64() / limits::LINE_EVERY.as_secs_f64()).ceil() as usize;
    assert!(
        lines.len() <= most,
        "{} lines in {:?}:\n{}",
        lines.len(),
        run.took,
        run.out.stderr
    );

    // The naive setting (no rate, no adaptation), against the same server a second later: most
    // requests refused, and dialogues fail once their retries run out.
    std::thread::sleep(Duration::from_secs(1));
    let file = worker_experiment(
        dir.path(),
        "naive",
        "adaptive_concurrency = false\nmax_retries = 2",
        300,
        256,
    );
    let naive = run_worker(dir.path(), &file, &server);
    assert_eq!(naive.out.code, Some(1), "failed dialogues: {}", naive.out.text());
    let refused_naive = naive.limited as f64 / naive.requests as f64;
    assert!(refused_naive > 0.2, "{refused_naive}");
    assert!(
        naive.out.stderr.contains("retry 1/2 of model `"),
        "{}",
        naive.out.stderr
    );
    common::record_figures(
        "rate_limits_worker",
        serde_json::json!({
            "limit_rps": R,
            "limited": {"steady_calls_per_sec": run.steady, "refused_share": refused, "secs": run.took.as_secs_f64()},
            "naive": {"steady_calls_per_sec": naive.steady, "refused_share": refused_naive, "ok": naive.ok, "requests": naive.requests},
        }),
    );
}

#[test]
fn the_rate_limited_example_runs_against_the_server_its_comments_start() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/rate-limited.toml");
    let text = std::fs::read_to_string(&example).expect("jobs/rate-limited.toml");
    let flags = ["--limit-rps", "10", "--limit-tps", "4000", "--latency-ms", "200"];
    assert!(
        text.contains(&format!("roleplay sim-server --port 8011 {}", flags.join(" "))),
        "the example's instructions changed: update this test"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let server = common::SimServer::start(dir.path(), &flags);
    let run = dir.path().join("run");
    let url = server.base_url();
    let args: Vec<&std::ffi::OsStr> = vec![
        "run".as_ref(),
        example.as_os_str(),
        "--run-dir".as_ref(),
        run.as_os_str(),
        "--no-progress".as_ref(),
    ];
    let out = common::roleplay(
        &dir.path().join("logs"),
        &args,
        &[("ROLEPLAY_BASE_URL", url.as_str())],
        Duration::from_secs(120),
    );
    out.expect_code(0);
    let stats = server.stats();
    assert_eq!(limited(&stats, "requests") + limited(&stats, "tokens"), 0, "{stats}");
    assert!(
        out.stderr.contains("rate limit: model `") && out.stderr.contains("`requests_per_minute = 600`"),
        "{}",
        out.stderr
    );
    assert!(run.join("out/dialogues.parquet").exists());
}

/// On the cluster: four array tasks run at once against one server that allows 10 requests a
/// second. Each model's `requests_per_minute` (240: 4 a second) is what one worker alone may send
/// (8 a second for the two models); the rendered script gives each task a quarter of it
/// (`--rate-share 4`), so the four together stay under the server's rate: almost nothing refused,
/// where four full shares (32 a second) would see most requests refused.
#[test]
fn the_tasks_of_a_slurm_array_share_the_rate_limits() {
    let _cluster = common::take_cluster();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let server = common::SimServer::start(dir, &["--limit-rps", "10", "--latency-ms", "1"]);
    let mut exp = common::Exp::quickstart(common::Backend::http(server.base_url(), 10, 20.0));
    exp.name = "slurm-rates".into();
    exp.personas = 5;
    exp.goals = 2;
    exp.both_inquirers = false;
    exp.seeds = vec![1, 2];
    exp.units_per_shard = 5;
    exp.concurrency = 8;
    let text = exp
        .toml()
        .replace("timeout_secs = 20\n", "timeout_secs = 20\nrequests_per_minute = 240\n");
    assert_eq!(text.matches("requests_per_minute = 240").count(), 2, "{text}");
    let slurm =
        "\n[slurm]\ntemplate = \"api\"\ntime = \"00:10:00\"\ncpus_per_task = 1\nmem = \"500M\"\narray_throttle = 4\n";
    let file = dir.join("slurm-rates.toml");
    std::fs::write(&file, text + slurm).unwrap();
    let logs = dir.join("logs");
    let limit = Duration::from_secs(300);
    common::roleplay(&logs, &["plan", file.to_str().unwrap()], &[], limit).expect_code(0);
    let run = dir.join("run");
    let rd = run.to_str().unwrap();
    common::roleplay(&logs, &["submit", rd], &[], limit).expect_code(0);
    let script = std::fs::read_to_string(run.join("slurm/round-000-array-0.sbatch")).unwrap();
    assert!(script.contains(" --rate-share 4"), "{script}");
    common::roleplay(&logs, &["status", rd, "--watch", "--interval", "2"], &[], limit).expect_code(0);
    let records = common::assert_every_unit_done_once(&run);
    assert_eq!(records.len(), exp.units());
    assert!(records.values().all(|r| !r.ending.reason.is_failure()));
    let log = std::fs::read_dir(run.join("logs/slurm"))
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap_or_default())
        .collect::<String>();
    assert!(log.contains("this worker's share (1/4): 60.0 requests/min"), "{log}");
    let stats = server.stats();
    let requests = stats["requests"].as_u64().unwrap();
    let refused = limited(&stats, "requests");
    assert!(
        refused * 50 <= requests,
        "{refused} of {requests} requests refused by the server's 10 a second"
    );
}
