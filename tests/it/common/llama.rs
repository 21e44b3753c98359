//! A real inference engine for the tests: llama.cpp's `llama-server` (built and cached by
//! `scripts/llama-engine install`, serving the tiny model of `scripts/llama-engine model`), started
//! per test on a free loopback port with its own window and log; and a logging proxy in front of
//! it that records every request and response, the independent witness the tests compare the
//! run's counters with.
//!
//! `scripts/test` exports `LLAMA_SERVER_BIN` and `LLAMA_MODEL` (`scripts/llama-engine env`); the
//! tests fail, never skip, without them.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const NOT_INSTALLED: &str = "the llama.cpp engine is not installed: run `scripts/llama-engine install && \
     scripts/llama-engine model`, then `eval \"$(scripts/llama-engine env)\"` (scripts/test does all of it)";

fn env_path(name: &str) -> PathBuf {
    let v = std::env::var_os(name).unwrap_or_else(|| panic!("{NOT_INSTALLED} (`{name}` is not set)"));
    let p = PathBuf::from(v);
    assert!(
        p.is_file(),
        "{NOT_INSTALLED} (`{name}` = `{}` is not a file)",
        p.display()
    );
    p
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// `llama-server` on loopback, killed when dropped.
pub struct LlamaServer {
    child: Child,
    /// `http://127.0.0.1:PORT`
    pub url: String,
    pub log: PathBuf,
    pub n_ctx: u32,
    _dir: tempfile::TempDir,
}

impl LlamaServer {
    /// Every request gets its own `n_ctx`-token window (`--parallel` slots, KV cache not unified),
    /// as `scripts/llama-engine up` starts it.
    pub fn start(n_ctx: u32, parallel: u32) -> LlamaServer {
        let (bin, model) = (env_path("LLAMA_SERVER_BIN"), env_path("LLAMA_MODEL"));
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("llama-server.log");
        let port = free_port();
        let child = Command::new(bin)
            .args(["-m"])
            .arg(&model)
            .args(["--alias", "tiny-llama", "--host", "127.0.0.1", "--port"])
            .arg(port.to_string())
            .args(["--ctx-size", &(n_ctx * parallel).to_string()])
            .args(["--parallel", &parallel.to_string(), "--no-kv-unified", "--threads", "1"])
            .args([
                "--jinja",
                "--no-ui",
                "--log-colors",
                "off",
                "--log-prefix",
                "--log-timestamps",
            ])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new().append(true).open(&log).expect("log file"),
            ))
            .spawn()
            .expect("start llama-server");
        let mut s = LlamaServer {
            child,
            url: format!("http://127.0.0.1:{port}"),
            log,
            n_ctx,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if health(&s.url) {
                break;
            }
            if let Ok(Some(status)) = s.child.try_wait() {
                panic!(
                    "llama-server exited ({status}) before it was healthy:\n{}",
                    s.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "llama-server was not healthy within 60 s:\n{}",
                s.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Requests the server logged (`done request: METHOD PATH ADDR STATUS`), as (path, status).
    pub fn logged_requests(&self) -> Vec<(String, u16)> {
        self.log_text()
            .lines()
            .filter_map(|l| l.split_once("done request: ").map(|(_, r)| r))
            .filter_map(|r| {
                let f: Vec<&str> = r.split_whitespace().collect();
                match f.as_slice() {
                    [_method, path, _addr, status] => Some((path.to_string(), status.parse().ok()?)),
                    _ => None,
                }
            })
            .collect()
    }
}

impl Drop for LlamaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn health(base: &str) -> bool {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let Ok(mut s) = std::net::TcpStream::connect(host) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if write!(s, "GET /health HTTP/1.0\r\nHost: {host}\r\n\r\n").is_err() {
        return false;
    }
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200")
}

/// One exchange the proxy saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Exchange {
    /// Order of arrival at the proxy (0, 1, ...); exchanges are logged when answered.
    pub seq: u64,
    pub method: String,
    pub path: String,
    /// `x-roleplay-unit`, `-role`, `-turn`, `-attempt` (absent on the tool's own GETs).
    pub unit: Option<String>,
    pub role: Option<String>,
    pub turn: Option<u32>,
    pub attempt: Option<u32>,
    /// `max_tokens` of the request body.
    pub max_tokens: Option<u64>,
    pub status: u16,
    pub finish_reason: Option<String>,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    /// The error body's `type` (llama.cpp: `exceed_context_size_error`).
    pub error_type: Option<String>,
}

impl Exchange {
    /// `unit/role/turn/attempt`, the key the journal's calls have.
    pub fn call_key(&self) -> Option<String> {
        Some(format!(
            "{}/{}/{}/{}",
            self.unit.as_ref()?,
            self.role.as_ref()?,
            self.turn?,
            self.attempt?
        ))
    }

    /// A reply the server cut short because the window was full (fewer tokens than asked, or
    /// prompt and reply filling the window).
    pub fn cut_by_window(&self, n_ctx: u32) -> bool {
        self.status == 200
            && self.finish_reason.as_deref() == Some("length")
            && (matches!((self.completion_tokens, self.max_tokens), (Some(c), Some(m)) if c < m)
                || matches!((self.prompt_tokens, self.completion_tokens), (Some(p), Some(c)) if p + c >= u64::from(n_ctx)))
    }
}

/// A logging proxy on loopback in front of `upstream`: forwards every request as it came and
/// records it with its response. Runs on its own thread and runtime; stops when dropped.
pub struct Proxy {
    pub url: String,
    log: Arc<Mutex<Vec<Exchange>>>,
    arrived: Arc<std::sync::atomic::AtomicU64>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Clone)]
struct ProxyState {
    upstream: String,
    client: reqwest::Client,
    log: Arc<Mutex<Vec<Exchange>>>,
    arrived: Arc<std::sync::atomic::AtomicU64>,
}

impl Proxy {
    pub fn start(upstream: &str) -> Proxy {
        let log: Arc<Mutex<Vec<Exchange>>> = Arc::default();
        let arrived: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let state = ProxyState {
            upstream: upstream.trim_end_matches('/').to_string(),
            client: {
                // reqwest is built without a TLS provider of its own (as the tool is).
                let _ = rustls::crypto::ring::default_provider().install_default();
                reqwest::Client::new()
            },
            log: log.clone(),
            arrived: arrived.clone(),
        };
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("proxy runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .expect("bind the proxy");
                addr_tx
                    .send(listener.local_addr().expect("address"))
                    .expect("send the address");
                let app = axum::Router::new().fallback(forward).with_state(state);
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    })
                    .await;
            });
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("the proxy listens");
        Proxy {
            url: format!("http://{addr}"),
            log,
            arrived,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// The API root through the proxy, for `base_url`.
    pub fn base_url(&self) -> String {
        format!("{}/v1", self.url)
    }

    pub fn exchanges(&self) -> Vec<Exchange> {
        let mut all = self.log.lock().unwrap().clone();
        all.sort_by_key(|e| e.seq);
        all
    }

    /// Requests that have arrived so far (answered or not).
    pub fn arrived(&self) -> u64 {
        self.arrived.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The completion requests (the tool's own GETs of `/v1/models` and `/props` left out).
    pub fn completions(&self) -> Vec<Exchange> {
        self.exchanges().into_iter().filter(|e| e.method == "POST").collect()
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn forward(State(s): State<ProxyState>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let seq = s.arrived.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_string);
    let request: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let mut req = s
        .client
        .request(method.clone(), format!("{}{path}", s.upstream))
        .body(body);
    for (k, v) in &headers {
        if k != axum::http::header::HOST && k != axum::http::header::CONTENT_LENGTH {
            req = req.header(k, v);
        }
    }
    let (status, content_type, bytes) = match req.send().await {
        Ok(r) => {
            let status = r.status().as_u16();
            let ct = r.headers().get("content-type").cloned();
            (status, ct, r.bytes().await.unwrap_or_default())
        }
        Err(e) => (502, None, Bytes::from(format!("proxy: {e}"))),
    };
    let reply: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let usage = |k: &str| reply["usage"][k].as_u64();
    s.log.lock().unwrap().push(Exchange {
        seq,
        method: method.to_string(),
        path: uri.path().to_string(),
        unit: header("x-roleplay-unit"),
        role: header("x-roleplay-role"),
        turn: header("x-roleplay-turn").and_then(|v| v.parse().ok()),
        attempt: header("x-roleplay-attempt").and_then(|v| v.parse().ok()),
        max_tokens: request["max_tokens"].as_u64(),
        status,
        finish_reason: reply["choices"][0]["finish_reason"].as_str().map(str::to_string),
        prompt_tokens: usage("prompt_tokens"),
        completion_tokens: usage("completion_tokens"),
        error_type: reply["error"]["type"].as_str().map(str::to_string),
    });
    let mut resp = (StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_GATEWAY), bytes).into_response();
    if let Some(ct) = content_type {
        resp.headers_mut().insert("content-type", ct);
    }
    resp
}
