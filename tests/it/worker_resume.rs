//! The worker against a real `roleplay sim-server` over HTTP: killed with SIGKILL mid-shard and
//! restarted, every unit finishes exactly once and no call recorded before the kill is made again;
//! stopped with SIGTERM, it exits 75 with a clean journal and resumes.

use roleplay::plan::UnitId;
use roleplay::rundir::journal::{self, Entry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_roleplay");

/// A sim-server child process, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start(dir: &Path, extra: &[&str]) -> Server {
        let addr_file = dir.join("addr");
        let child = Command::new(BIN)
            .args(["sim-server", "--port", "0", "--addr-file"])
            .arg(&addr_file)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start sim-server");
        // Owned by the guard at once, so a failed wait below still kills the server.
        let mut server = Server {
            child,
            url: String::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(url) = std::fs::read_to_string(&addr_file)
                && !url.trim().is_empty()
            {
                server.url = url.trim().to_string();
                return server;
            }
            assert!(Instant::now() < deadline, "sim-server did not write its address");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Successful responses served per call key ("unit/role/turn/attempt").
    fn served(&self) -> HashMap<String, u64> {
        let body = http_get(&self.url, "/stats");
        let v: serde_json::Value = serde_json::from_str(&body).expect("stats JSON");
        v["calls"]
            .as_object()
            .expect("calls map")
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect()
    }
}

/// A plain HTTP/1.0 GET over loopback (the server closes the connection after answering).
fn http_get(base: &str, path: &str) -> String {
    use std::io::{Read, Write};
    let host = base.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(host).expect("connect to sim-server");
    write!(s, "GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "GET {path}: {head}"
    );
    body.to_string()
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn experiment(dir: &Path, url: &str, units_per_shard: u32) -> PathBuf {
    let text = format!(
        r#"
name = "resume"
run_dir = "run"
[dialogue]
max_turns = 6
seeds = [1, 2, 3]
[personas]
template = "<AGE> person who likes <HOBBY>"
fixed = [{{ age = "young", hobby = "chess" }}, {{ age = "old", hobby = "running" }}, {{ age = "middle-aged", hobby = "baking" }}]
[goals]
items = ["You want to plan a week of meals.\nThen you want a shopping list.", "You want to learn the rules of go.", "You want to fix a slow laptop."]
[[models]]
name = "inq"
roles = ["inquirer"]
backend = "openai"
base_url = "{url}/v1"
model = "sim"
max_retries = 2
timeout_secs = 10
regenerate_tries = 2
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when your goal is reached."
first_turn = "Your goal: <OBJECTIVE> Give your prompt in double quotes."
response_forwarding = "Assistant response: \"<RESPONSE>\". Ask a follow-up in double quotes."
mid_response_forwarding = "<NEXT_PROMPT> Assistant response: \"<RESPONSE>\"."
[[models]]
name = "resp"
roles = ["responder"]
backend = "openai"
base_url = "{url}/v1"
model = "sim"
max_retries = 2
timeout_secs = 10
[sharding]
units_per_shard = {units_per_shard}
[worker]
concurrency = 6
grace_secs = 5
"#
    );
    let path = dir.join("exp.toml");
    std::fs::write(&path, text).unwrap();
    let out = Command::new(BIN).arg("plan").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

fn journal_entries(run: &Path) -> Vec<Entry> {
    let path = run.join("journal/shard-00000.jrnl");
    journal::read(&path).unwrap().map(|c| c.entries).unwrap_or_default()
}

fn call_key(e: &roleplay::dialogue::CallEvent) -> String {
    format!("{}/{}/{}/{}", e.key.unit, e.key.role, e.key.turn, e.key.attempt)
}

/// Wait until the shard's journal holds at least `n` call records.
fn wait_for_calls(run: &Path, n: usize, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let calls = journal_entries(run)
            .iter()
            .filter(|e| matches!(e, Entry::Call(_)))
            .count();
        if calls >= n {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the worker exited ({status}) before {n} calls were journaled");
        }
        assert!(Instant::now() < deadline, "fewer than {n} calls journaled after 60 s");
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn worker(run: &Path) -> Child {
    Command::new(BIN)
        .args(["worker"])
        .arg(run)
        .args(["--shard", "0"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start worker")
}

#[test]
fn sigkill_mid_shard_then_restart_finishes_every_unit_once_without_repeating_recorded_calls() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--latency-ms", "15"]);
    let exp = experiment(dir.path(), &server.url, 100);
    let run = dir.path().join("run");

    let mut first = worker(&run);
    wait_for_calls(&run, 40, &mut first);
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();

    // What the journal holds now is what the worker had completed when it died.
    let before: HashSet<String> = journal_entries(&run)
        .iter()
        .filter_map(|e| match e {
            Entry::Call(c) => Some(call_key(c)),
            _ => None,
        })
        .collect();
    assert!(before.len() >= 40);

    let second = worker(&run).wait_with_output().unwrap();
    assert!(
        second.status.success(),
        "restart failed: {}",
        String::from_utf8_lossy(&second.stderr)
    );

    let plan_units: HashSet<UnitId> = roleplay::plan::read_units(
        &run.join(
            std::fs::read_dir(&run)
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .find(|n| n.starts_with("units-"))
                .unwrap(),
        ),
    )
    .unwrap()
    .into_iter()
    .map(|u| u.id)
    .collect();
    assert_eq!(plan_units.len(), 27);
    let mut done: HashMap<UnitId, usize> = HashMap::new();
    for e in journal_entries(&run) {
        if let Entry::Done(d) = e {
            *done.entry(d.unit).or_default() += 1;
        }
    }
    assert_eq!(
        done.keys().copied().collect::<HashSet<_>>(),
        plan_units,
        "every planned unit finished"
    );
    assert!(done.values().all(|n| *n == 1), "a unit finished twice: {done:?}");

    let served = server.served();
    for key in &before {
        assert_eq!(
            served.get(key).copied(),
            Some(1),
            "call {key} was recorded before the kill but served again"
        );
    }
    // Calls in flight at the kill (at most `concurrency` of them) may be served twice; nothing else.
    let repeated: Vec<_> = served
        .iter()
        .filter(|(k, n)| **n > 1 && k.as_str() != "anonymous")
        .collect();
    assert!(repeated.len() <= 6, "more repeats than calls in flight: {repeated:?}");
    drop(exp);
}

#[test]
fn sigterm_exits_75_with_a_clean_journal_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--latency-ms", "30"]);
    experiment(dir.path(), &server.url, 100);
    let run = dir.path().join("run");

    let mut w = worker(&run);
    wait_for_calls(&run, 20, &mut w);
    let pid = w.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = w.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let contents = journal::read(&run.join("journal/shard-00000.jrnl")).unwrap().unwrap();
    assert!(!contents.torn_tail, "a clean stop leaves no torn record");
    assert!(contents.damaged_lines.is_empty());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("state/shard-00000.json")).unwrap()).unwrap();
    assert_eq!(state["status"], "interrupted");
    let done_before = contents.entries.iter().filter(|e| matches!(e, Entry::Done(_))).count();
    assert!(done_before < 27, "the stop came before the shard was finished");

    let again = worker(&run).wait_with_output().unwrap();
    assert!(
        again.status.success(),
        "resume failed: {}",
        String::from_utf8_lossy(&again.stderr)
    );
    let done = journal_entries(&run)
        .iter()
        .filter(|e| matches!(e, Entry::Done(_)))
        .count();
    assert_eq!(done, 27);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.join("state/shard-00000.json")).unwrap()).unwrap();
    assert_eq!(state["status"], "done");
    assert_eq!(state["attempt"], 2);
}

#[test]
fn a_second_worker_on_the_same_shard_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), &["--latency-ms", "50"]);
    experiment(dir.path(), &server.url, 100);
    let run = dir.path().join("run");
    let mut first = worker(&run);
    wait_for_calls(&run, 1, &mut first);
    let second = worker(&run).wait_with_output().unwrap();
    assert_eq!(second.status.code(), Some(1));
    let err = String::from_utf8_lossy(&second.stderr);
    assert!(err.contains("already running"), "{err}");
    assert!(err.contains("shard-00000.lock"), "{err}");
    first.kill().unwrap();
    first.wait().unwrap();
}

#[test]
fn failed_units_are_retried_only_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    // Plan against a closed port: every dialogue started ends with a backend failure, until the
    // breaker stops starting them (5 in a row, plus those in flight); the rest stay unstarted.
    experiment(dir.path(), "http://127.0.0.1:9", 100);
    let run = dir.path().join("run");
    let out = worker(&run).wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let failed = |run: &Path| {
        journal_entries(run)
            .iter()
            .filter_map(|e| match e {
                Entry::Done(d) => Some(d.ending.reason.as_str()),
                _ => None,
            })
            .filter(|r| *r == "backend_error")
            .count()
    };
    let failed_units: std::collections::HashSet<String> = journal_entries(&run)
        .iter()
        .filter_map(|e| match e {
            Entry::Done(d) if d.ending.reason.is_failure() => Some(d.unit.to_string()),
            _ => None,
        })
        .collect();
    let n = failed(&run);
    assert!((5..27).contains(&n), "{n} failed: the breaker stops after 5 in a row");
    assert_eq!(failed_units.len(), n);

    // The endpoint comes back (moved: endpoints are not part of unit ids, so the plan stands).
    let server = Server::start(dir.path(), &[]);
    let base = format!("{}/v1", server.url);
    let rerun = |retry: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["worker"])
            .arg(&run)
            .args(["--shard", "0"])
            .env("ROLEPLAY_BASE_URL", &base);
        if retry {
            cmd.arg("--retry-failed");
        }
        cmd.output().unwrap()
    };
    // Without --retry-failed no failed unit runs again (a broken endpoint cannot loop forever);
    // only the units never started do.
    let again = rerun(false);
    assert_eq!(again.status.code(), Some(1));
    let served = server.served();
    let rerun_failed: Vec<&String> = served
        .keys()
        .filter(|k| failed_units.iter().any(|u| k.starts_with(u.as_str())))
        .collect();
    assert!(rerun_failed.is_empty(), "failed units ran again: {rerun_failed:?}");
    assert_eq!(failed(&run), n);
    let retried = rerun(true);
    assert!(retried.status.success(), "{}", String::from_utf8_lossy(&retried.stderr));
    let mut last: HashMap<UnitId, &'static str> = HashMap::new();
    for e in journal_entries(&run) {
        if let Entry::Done(d) = e {
            last.insert(d.unit, d.ending.reason.as_str());
        }
    }
    assert_eq!(last.len(), 27);
    assert!(last.values().all(|r| *r != "backend_error"), "{last:?}");
}

#[test]
fn a_server_stopped_with_the_worker_fails_no_unit() {
    // scancel, preemption and requeue signal every process of a job: the model server dies at the
    // moment the worker is told to stop. Calls failing then must not mark units as failed.
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(dir.path(), &["--latency-ms", "40"]);
    experiment(dir.path(), &server.url, 100);
    let run = dir.path().join("run");
    let mut w = worker(&run);
    wait_for_calls(&run, 20, &mut w);
    let pid = w.id().to_string();
    let _ = server.child.kill();
    let _ = server.child.wait();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let out = w.wait_with_output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(75),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let failed: Vec<_> = journal_entries(&run)
        .into_iter()
        .filter_map(|e| match e {
            Entry::Done(d) if d.ending.reason.is_failure() => Some(d.unit),
            _ => None,
        })
        .collect();
    assert!(failed.is_empty(), "units recorded as failed after the stop: {failed:?}");
}
