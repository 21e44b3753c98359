//! What the user is told is true: the real binary run against the real `roleplay sim-server` (or
//! a closed loopback port), and what it printed compared with what it did, as the journals, the
//! server's `/stats`, `status --offline --json` and `merge` show it.
//!
//! - `run` names the run directory once; a missing key stops it before any request; a dead
//!   endpoint or a wrong key opens the breaker once and is summed up by model and kind with an
//!   example (the URL, never the key) and the fix; the units never started stay unfinished, not
//!   failed, and `--retry-failed` against a live server finishes every unit once.
//! - Ctrl-C starts no new request and waits for those in flight; a second Ctrl-C abandons them at
//!   once; either way the journal is clean and a resume repeats no recorded call.
//! - The progress bar counts the plan's units from what earlier runs finished; the summary line,
//!   `status` and `merge` count the same dialogues.
//! - A window the server reports (llama.cpp's `/props`) is used and recorded with its source;
//!   replies it cut are asked again; the dialogues' HTTP counters are the server's counts.
//! - `validate --check-endpoints` tells a served model from a closed port.

use crate::common::*;
use roleplay::dialogue::{ContextWindow, DialogueRecord, EndReason, WindowSource};
use roleplay::plan::UnitId;
use roleplay::rundir::journal::{self, Entry};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The model id the sim-server lists in `/v1/models`.
const SIM_MODEL: &str = "roleplay-sim";

/// Where a model runs.
#[derive(Debug, Clone)]
enum Ep {
    /// The in-process simulator, answering after `latency_ms`.
    Sim { latency_ms: f64 },
    /// An OpenAI-compatible endpoint (`http://HOST:PORT/v1`).
    Http {
        base_url: String,
        api_key_env: Option<String>,
        context_length: Option<u32>,
    },
}

fn http(base_url: &str) -> Ep {
    Ep::Http {
        base_url: base_url.to_string(),
        api_key_env: None,
        context_length: None,
    }
}

const SIM: Ep = Ep::Sim { latency_ms: 0.0 };

/// An experiment: 2 personas x 2 goals x (one inquirer against each responder) x `seeds` seeds.
#[derive(Debug, Clone)]
struct Grid {
    seeds: usize,
    max_turns: u32,
    inquirer: Ep,
    /// (name, where it runs)
    responders: Vec<(&'static str, Ep)>,
    inquirer_max_new_tokens: Option<u32>,
    responder_max_new_tokens: Option<u32>,
    max_retries: u32,
    units_per_shard: u32,
    concurrency: u32,
    grace_secs: f64,
    parallel_shards: Option<u32>,
    /// More keys for every HTTP model (TOML lines).
    http_keys: String,
}

impl Grid {
    fn new(inquirer: Ep, responder: Ep) -> Grid {
        Grid {
            seeds: 2,
            max_turns: 6,
            inquirer,
            responders: vec![("assistant", responder)],
            inquirer_max_new_tokens: None,
            responder_max_new_tokens: None,
            max_retries: 0,
            units_per_shard: 100,
            concurrency: 4,
            grace_secs: 10.0,
            parallel_shards: None,
            http_keys: String::new(),
        }
    }

    fn units(&self) -> usize {
        4 * self.responders.len() * self.seeds
    }

    fn model(&self, name: &str, role: &str, ep: &Ep, max_new_tokens: Option<u32>) -> String {
        let mut s = format!("\n[[models]]\nname = \"{name}\"\nroles = [\"{role}\"]\n");
        match ep {
            Ep::Sim { .. } => s.push_str("backend = \"sim\"\n"),
            Ep::Http {
                base_url,
                api_key_env,
                context_length,
            } => {
                // Responders other than the first get a model id of their own (the server
                // answers any): identical models would make identical dialogues, which is refused.
                let id = match name {
                    "inq" | "assistant" => SIM_MODEL.to_string(),
                    other => format!("{SIM_MODEL}-{other}"),
                };
                s.push_str(&format!(
                    "backend = \"openai\"\nbase_url = \"{base_url}\"\nmodel = \"{id}\"\nmax_retries = {}\ntimeout_secs = 30\n",
                    self.max_retries
                ));
                if let Some(k) = api_key_env {
                    s.push_str(&format!("api_key_env = \"{k}\"\n"));
                }
                if let Some(n) = context_length {
                    s.push_str(&format!("context_length = {n}\n"));
                }
                s.push_str(&self.http_keys);
            }
        }
        if role == "inquirer" {
            s.push_str("regenerate_tries = 1\n");
        }
        if let Some(n) = max_new_tokens {
            s.push_str(&format!("[models.sampling]\nmax_new_tokens = {n}\n"));
        }
        if let Ep::Sim { latency_ms } = ep {
            s.push_str(&format!("[models.sim]\nlatency_ms = {latency_ms}\n"));
        }
        if role == "inquirer" {
            s.push_str(concat!(
                "[models.templates]\n",
                "system_prompt = \"You are <PERSONA>. Say <CONV_STOP> when your goal is reached.\"\n",
                "first_turn = \"Your goal: <OBJECTIVE> Give your prompt in double quotes.\"\n",
                "response_forwarding = \"Assistant response: \\\"<RESPONSE>\\\". Ask a follow-up in double quotes.\"\n",
                "mid_response_forwarding = \"<NEXT_PROMPT> Assistant response: \\\"<RESPONSE>\\\".\"\n",
            ));
        }
        s
    }

    fn toml(&self) -> String {
        let seeds: Vec<String> = (1..=self.seeds).map(|s| s.to_string()).collect();
        let mut s = format!(
            concat!(
                "name = \"truth\"\nrun_dir = \"run\"\n\n[dialogue]\nmax_turns = {}\nseeds = [{}]\n\n",
                "[personas]\ntemplate = \"<AGE> person who likes <HOBBY>\"\n",
                "fixed = [{{ age = \"young\", hobby = \"chess\" }}, {{ age = \"old\", hobby = \"running\" }}]\n\n",
                "[goals]\nitems = [\"You want to plan a week of meals.\\nThen you want a shopping list.\", ",
                "\"You want to learn the rules of go.\"]\n"
            ),
            self.max_turns,
            seeds.join(", ")
        );
        s.push_str(&self.model("inq", "inquirer", &self.inquirer, self.inquirer_max_new_tokens));
        for (name, ep) in &self.responders {
            s.push_str(&self.model(name, "responder", ep, self.responder_max_new_tokens));
        }
        s.push_str(&format!(
            "\n[sharding]\nunits_per_shard = {}\n\n[worker]\nconcurrency = {}\ngrace_secs = {}\n",
            self.units_per_shard, self.concurrency, self.grace_secs
        ));
        if let Some(n) = self.parallel_shards {
            s.push_str(&format!("parallel_shards = {n}\n"));
        }
        s
    }

    /// Write `dir/truth.toml`; its run directory is `dir/run`.
    fn write(&self, dir: &Path) -> (PathBuf, PathBuf) {
        let file = dir.join("truth.toml");
        std::fs::write(&file, self.toml()).expect("write the experiment");
        (file, dir.join("run"))
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 path")
}

const LIMIT: Duration = Duration::from_secs(180);

/// A loopback port nothing listens on (bound, then released).
fn closed_port_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}/v1")
}

/// How often `needle` occurs in the child's stdout and stderr together.
fn occurrences(out: &Out, needle: &str) -> usize {
    out.stdout.matches(needle).count() + out.stderr.matches(needle).count()
}

/// The numbers of `run`'s summary line "N of M dialogues finished (X in this run, ...), F failed".
fn finished_line(out: &Out) -> (u64, u64, u64, u64) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains(" dialogues finished ("))
        .unwrap_or_else(|| panic!("no summary line:\n{}", out.text()));
    // The seconds are a decimal: the failed count is the last number.
    let n = numbers(line);
    assert!(n.len() >= 5, "summary line {line:?}");
    (n[0], n[1], n[2], n[n.len() - 1])
}

/// The numbers of merge's line "N of M planned dialogues merged (T turns, F failed, K missing)":
/// (N, M, F, K).
fn merged_line(out: &Out) -> (u64, u64, u64, u64) {
    let line = out
        .stderr
        .lines()
        .find(|l| l.contains(" planned dialogues merged ("))
        .unwrap_or_else(|| panic!("no merge line:\n{}", out.text()));
    let n = numbers(line);
    assert!(n.len() >= 5, "merge line {line:?}");
    (n[0], n[1], n[3], n[4])
}

/// The whole numbers in a line, in order (decimals split at the point).
fn numbers(line: &str) -> Vec<u64> {
    line.split(|c: char| !c.is_ascii_digit())
        .filter(|w| !w.is_empty())
        .map(|w| w.parse().unwrap())
        .collect()
}

/// `status RUN --offline --json`'s unit totals: (units, done, failed, left).
fn status_units(logs: &Path, run: &Path) -> (u64, u64, u64, u64) {
    let out = roleplay(logs, &["status", s(run), "--offline", "--json"], &[], LIMIT);
    out.assert_no_panic();
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON ({e}):\n{}", out.text()));
    let u = &v["units"];
    let n = |k: &str| u[k].as_u64().unwrap_or_else(|| panic!("status units.{k}: {u}"));
    (n("units"), n("done"), n("failed"), n("left"))
}

/// Every `done` record in the order the journals hold them, per unit.
fn records(run: &Path) -> HashMap<UnitId, Vec<DialogueRecord>> {
    done_records(run)
}

/// Call records of the run's journals.
fn call_count(run: &Path) -> usize {
    journals(run)
        .values()
        .flat_map(|c| c.entries.iter())
        .filter(|e| matches!(e, Entry::Call(_)))
        .count()
}

/// No journal has a torn tail or a damaged record.
fn assert_journals_clean(run: &Path) {
    let dir = run.join("journal");
    let mut seen = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("`{}`: {e}", dir.display())) {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("jrnl") {
            continue;
        }
        let c = journal::read(&p)
            .unwrap_or_else(|e| panic!("`{}` does not read: {e}", p.display()))
            .expect("exists");
        assert!(!c.torn_tail, "`{}` ends in a torn record", p.display());
        assert!(
            c.damaged_lines.is_empty(),
            "`{}`: damaged records at lines {:?}",
            p.display(),
            c.damaged_lines
        );
        seen += 1;
    }
    assert!(seen > 0, "no journal in `{}`", dir.display());
}

/// `/stats` without its per-call counts, for messages.
fn counts(stats: &serde_json::Value) -> serde_json::Value {
    let mut v = stats.clone();
    if let Some(m) = v.as_object_mut() {
        m.remove("calls");
    }
    v
}

/// Poll the server until it has received at least `n` completion requests; the run must still be
/// going.
fn wait_for_requests(server: &SimServer, n: u64, run: &mut Proc) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let st = server.stats();
        if st["requests"].as_u64().unwrap() >= n {
            return st;
        }
        if let Some(status) = run.try_status() {
            panic!(
                "the run ended ({status}) before {n} requests:\n{}",
                run.output(status.code()).text()
            );
        }
        assert!(
            Instant::now() < deadline,
            "fewer than {n} requests after 60 s: {}",
            counts(&st)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// After a resume: every planned unit has exactly one `done` record that is not a failure, and
/// failure records only where `failed_before` says the first run failed it.
fn assert_each_unit_finished_once(run: &Path, failed_before: &HashSet<UnitId>) {
    let units = plan_units(run);
    let recs = records(run);
    assert_eq!(recs.len(), units.len(), "records of every planned unit, and no other");
    for u in &units {
        let r = recs
            .get(&u.id)
            .unwrap_or_else(|| panic!("unit {} has no `done` record", u.id));
        let ok = r.iter().filter(|r| !r.ending.reason.is_failure()).count();
        assert_eq!(ok, 1, "unit {}: finished {ok} times", u.id);
        assert!(
            !r.last().unwrap().ending.reason.is_failure(),
            "unit {}: its latest record is a failure",
            u.id
        );
        let failures = r.len() - ok;
        let expected = usize::from(failed_before.contains(&u.id));
        assert_eq!(failures, expected, "unit {}: {failures} failure records", u.id);
    }
}

#[test]
fn run_prints_the_run_directory_once_fresh_and_again() {
    let tmp = tempfile::tempdir().unwrap();
    let (file, run) = Grid::new(SIM, SIM).write(tmp.path());
    let logs = tmp.path().join("logs");
    for round in ["a fresh plan", "a re-run"] {
        let out = roleplay(&logs, &["run", s(&file), "--no-progress"], &[], LIMIT);
        out.expect_code(0);
        assert_eq!(
            occurrences(&out, "run directory:"),
            1,
            "{round}: `run directory:` once:\n{}",
            out.text()
        );
        assert!(
            out.stdout.contains(&format!("run directory: {}", s(&run))),
            "{round}:\n{}",
            out.text()
        );
    }
}

#[test]
fn a_missing_key_variable_stops_the_run_before_any_request() {
    const VAR: &str = "ROLEPLAY_TRUTH_UNSET_KEY";
    let tmp = tempfile::tempdir().unwrap();
    let server = SimServer::start(tmp.path(), &[]);
    // The inquirer needs no key: were the check per dialogue, its requests would reach the server.
    let mut grid = Grid::new(http(&server.base_url()), http(&server.base_url()));
    grid.responders[0].1 = Ep::Http {
        base_url: server.base_url(),
        api_key_env: Some(VAR.into()),
        context_length: None,
    };
    let (file, run) = grid.write(tmp.path());
    let out = Proc::spawn_unset(
        &tmp.path().join("logs"),
        &["run", s(&file), "--no-progress"],
        &[],
        &[VAR],
    )
    .wait(LIMIT);
    out.expect_code(2);
    assert_eq!(
        server.stats()["requests"].as_u64(),
        Some(0),
        "requests before the key check:\n{}",
        out.text()
    );
    assert!(
        out.stderr.contains(&format!("`{VAR}`")),
        "names the variable:\n{}",
        out.text()
    );
    assert!(out.stderr.contains("`assistant`"), "names the model:\n{}", out.text());
    assert!(out.stderr.contains("hint:"), "a hint:\n{}", out.text());
    assert!(
        !out.stderr.contains("`inq`"),
        "only the model whose variable is missing:\n{}",
        out.text()
    );
    let recorded: usize = journals(&run).values().map(|c| c.entries.len()).sum();
    assert_eq!(recorded, 0, "records in the journals");
}

#[test]
fn a_dead_endpoint_trips_the_breaker_once_leaves_the_rest_unstarted_and_retry_failed_finishes() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let dead = closed_port_url();
    let mut grid = Grid::new(SIM, http(&dead));
    grid.seeds = 10;
    grid.units_per_shard = 20;
    grid.concurrency = 4;
    grid.max_retries = 0;
    assert_eq!(grid.units(), 40);
    let (file, run) = grid.write(tmp.path());
    let out = roleplay(&logs, &["run", s(&file), "--no-progress"], &[], LIMIT);
    out.expect_code(1);

    let trip = "failed 5 dialogues in a row (unreachable)";
    assert_eq!(
        occurrences(&out, trip),
        1,
        "the breaker's message once:\n{}",
        out.text()
    );
    assert!(
        out.stderr.contains("failed dialogues, by model and kind:"),
        "{}",
        out.text()
    );
    let lines: Vec<&str> = out.stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("  assistant: unreachable x"))
        .unwrap_or_else(|| panic!("no group of the responder's unreachable failures:\n{}", out.text()));
    let group = lines[at];
    let count: u64 = group["  assistant: unreachable x".len()..]
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap_or_else(|_| panic!("a count in {group:?}"));
    assert!(
        group.contains(&format!("`{dead}/chat/completions`")),
        "the example names the URL: {group:?}"
    );
    assert!(
        lines.get(at + 1).is_some_and(|l| l.trim_start().starts_with("hint: ")),
        "a hint under the group:\n{}",
        out.text()
    );

    let recs = records(&run);
    let failed: HashSet<UnitId> = recs
        .iter()
        .filter(|(_, r)| r.iter().any(|r| r.ending.reason.is_failure()))
        .map(|(u, _)| *u)
        .collect();
    assert!(
        (5..40).contains(&failed.len()),
        "{} dialogues failed: the breaker stops at 5 in a row plus those in flight",
        failed.len()
    );
    assert_eq!(count, failed.len() as u64, "the group counts the failed dialogues");
    let (units, done, st_failed, left) = status_units(&logs, &run);
    assert_eq!(units, 40);
    assert_eq!(st_failed, failed.len() as u64, "status: failed");
    assert_eq!(done, (recs.len() - failed.len()) as u64, "status: done");
    assert_eq!(left, 40 - recs.len() as u64, "status: the units never started are left");
    assert!(left > 0);
    let merge = roleplay(&logs, &["merge", s(&run)], &[], LIMIT);
    merge.expect_code(1);
    let (merged, planned, m_failed, missing) = merged_line(&merge);
    assert_eq!(
        (merged, planned, m_failed, missing),
        (recs.len() as u64, 40, failed.len() as u64, left),
        "{}",
        merge.text()
    );

    // The endpoint comes up elsewhere: every unit finishes, each once.
    let server = SimServer::start(tmp.path(), &[]);
    let again = roleplay(
        &logs,
        &["run", s(&run), "--no-progress", "--retry-failed"],
        &[("ROLEPLAY_BASE_URL", &server.base_url())],
        LIMIT,
    );
    again.expect_code(0);
    assert_each_unit_finished_once(&run, &failed);
    let (n, m, _, f) = finished_line(&again);
    assert_eq!((n, m, f), (40, 40, 0), "{}", again.text());
    assert_eq!(status_units(&logs, &run), (40, 40, 0, 0));
}

#[test]
fn a_wrong_key_is_summed_up_as_auth_without_the_key() {
    const VAR: &str = "ROLEPLAY_TRUTH_KEY";
    let tmp = tempfile::tempdir().unwrap();
    let server = SimServer::start(tmp.path(), &["--require-key", "right"]);
    let mut grid = Grid::new(SIM, SIM);
    grid.seeds = 5;
    grid.responders[0].1 = Ep::Http {
        base_url: server.base_url(),
        api_key_env: Some(VAR.into()),
        context_length: None,
    };
    let (file, run) = grid.write(tmp.path());
    let out = roleplay(
        &tmp.path().join("logs"),
        &["run", s(&file), "--no-progress"],
        &[(VAR, "wrong")],
        LIMIT,
    );
    out.expect_code(1);
    let lines: Vec<&str> = out.stderr.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("  assistant: auth x"))
        .unwrap_or_else(|| panic!("no `auth` group of the responder:\n{}", out.text()));
    let example = lines[at];
    assert!(!example.contains("wrong"), "the key in the example: {example:?}");
    assert!(
        example.contains(&format!("`{VAR}`")),
        "the example names the variable: {example:?}"
    );
    assert!(
        example.contains(&server.base_url()),
        "the example names the endpoint: {example:?}"
    );
    let hint = lines.get(at + 1).copied().unwrap_or_default();
    assert!(
        hint.trim_start().starts_with("hint: ") && hint.contains("key") && hint.contains("api_key_env"),
        "the hint about the key: {hint:?}"
    );
    assert!(
        !out.stdout.contains("wrong") && !out.stderr.contains("provided: wrong"),
        "the key was printed:\n{}",
        out.text()
    );
    let st = server.stats();
    assert!(st["requests"].as_u64().unwrap() > 0);
    assert_eq!(
        st["responses"]["4xx"],
        st["requests"],
        "every request refused: {}",
        counts(&st)
    );
    for (unit, recs) in records(&run) {
        for r in recs.iter().filter(|r| r.ending.reason.is_failure()) {
            let e = r.ending.error.as_ref().expect("a failure has its error");
            assert_eq!(e.kind.as_str(), "auth", "unit {unit}");
            assert!(
                !e.message.contains("wrong"),
                "unit {unit}: the key in the record: {}",
                e.message
            );
        }
    }
}

#[test]
fn ctrl_c_starts_no_new_request_and_a_resume_repeats_no_recorded_call() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let slow = SimServer::start(tmp.path(), &["--latency-ms", "3000"]);
    let mut grid = Grid::new(http(&slow.base_url()), http(&slow.base_url()));
    grid.seeds = 2;
    grid.concurrency = 4;
    grid.grace_secs = 30.0;
    let (file, run) = grid.write(tmp.path());
    let mut p = Proc::spawn(&logs, &["run", s(&file), "--no-progress"], &[]);
    wait_for_requests(&slow, 4, &mut p);
    std::thread::sleep(Duration::from_secs(1));
    let r0 = slow.stats()["requests"].as_u64().unwrap();
    assert_eq!(r0, 4, "one request per dialogue in flight");
    p.signal("INT");
    let out = p.wait(LIMIT);
    out.expect_code(75);
    assert!(out.stderr.contains("SIGINT received"), "{}", out.text());
    let st = slow.stats();
    assert_eq!(
        st["requests"].as_u64(),
        Some(r0),
        "requests started after the signal: {}\n{}",
        counts(&st),
        out.text()
    );
    // The requests in flight were waited for (within the grace) and recorded.
    assert_eq!(st["responses"]["2xx"].as_u64(), Some(r0), "{}", counts(&st));
    assert_eq!(call_count(&run), r0 as usize, "the calls answered are journaled");
    assert_journals_clean(&run);
    let before = journaled_calls(&run);

    let fast = SimServer::start(tmp.path(), &[]);
    let again = roleplay(
        &logs,
        &["run", s(&run), "--no-progress"],
        &[("ROLEPLAY_BASE_URL", &fast.base_url())],
        LIMIT,
    );
    again.expect_code(0);
    assert_every_unit_done_once(&run);
    let served = fast.served();
    let repeated: Vec<&String> = served.keys().filter(|k| before.contains_key(*k)).collect();
    assert!(
        repeated.is_empty(),
        "calls recorded before the stop made again: {repeated:?}"
    );
    let twice: Vec<_> = served.iter().filter(|(_, n)| **n != 1).collect();
    assert!(twice.is_empty(), "calls served more than once: {twice:?}");
    assert_eq!(
        journaled_calls(&run).len(),
        before.len() + served.len(),
        "the journal holds the calls of both runs, each once"
    );
}

/// Runs `grid` against `server`, waits for `n` requests, sends SIGINT and returns the requests the
/// server saw just before the signal and at the run's exit (which must be 75, with nothing
/// recorded as failed), then resumes against a healthy server and checks every unit finished once.
fn stop_while_waiting(tmp: &Path, server: &SimServer, grid: &Grid, n: u64) -> (u64, u64) {
    let logs = tmp.join("logs");
    let (file, run) = grid.write(tmp);
    let mut p = Proc::spawn(&logs, &["run", s(&file), "--no-progress"], &[]);
    let before = wait_for_requests(server, n, &mut p)["requests"].as_u64().unwrap();
    p.signal("INT");
    let out = p.wait(LIMIT);
    out.expect_code(75);
    let at_exit = server.stats()["requests"].as_u64().unwrap();
    assert_journals_clean(&run);
    let (_, _, failed, _) = status_units(&logs, &run);
    assert_eq!(
        failed,
        0,
        "a call stopped before it was sent is not a failure:\n{}",
        out.text()
    );

    let fast = SimServer::start(tmp, &[]);
    let again = roleplay(
        &logs,
        &["run", s(&run), "--no-progress"],
        &[("ROLEPLAY_BASE_URL", &fast.base_url())],
        LIMIT,
    );
    again.expect_code(0);
    assert_each_unit_finished_once(&run, &HashSet::new());
    (before, at_exit)
}

/// Requests queued behind a configured rate when the stop comes are not sent (the limiter's wait
/// ends with the stop), and their dialogues resume later.
#[test]
fn ctrl_c_sends_no_request_that_waits_for_its_rate() {
    let tmp = tempfile::tempdir().unwrap();
    let server = SimServer::start(tmp.path(), &[]);
    let mut grid = Grid::new(http(&server.base_url()), http(&server.base_url()));
    grid.seeds = 1;
    grid.max_turns = 3;
    grid.grace_secs = 30.0;
    // Two requests a second for the server model both sides name: the dialogues queue for it.
    grid.http_keys = "requests_per_minute = 120\n".into();
    let (before, at_exit) = stop_while_waiting(tmp.path(), &server, &grid, 2);
    assert_eq!(at_exit, before, "requests sent after the signal");
}

/// A retry waiting out its backoff when the stop comes is not sent.
#[test]
fn ctrl_c_sends_no_retry_after_the_stop() {
    let tmp = tempfile::tempdir().unwrap();
    let failing = SimServer::start(tmp.path(), &["--fail-5xx-rate", "1.0"]);
    let mut grid = Grid::new(http(&failing.base_url()), http(&failing.base_url()));
    grid.concurrency = 4;
    grid.grace_secs = 30.0;
    grid.max_retries = 5;
    let (before, at_exit) = stop_while_waiting(tmp.path(), &failing, &grid, 4);
    assert_eq!(at_exit, before, "retries sent after the signal");
}

/// The shards of `status --offline --json`: (state, reason) per shard.
fn shard_states(logs: &Path, run: &Path) -> Vec<(String, String)> {
    let out = roleplay(logs, &["status", s(run), "--offline", "--json"], &[], LIMIT);
    out.assert_no_panic();
    let v: serde_json::Value =
        serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status JSON ({e}):\n{}", out.text()));
    v["shards"]
        .as_array()
        .unwrap_or_else(|| panic!("status shards: {v}"))
        .iter()
        .map(|sh| {
            (
                sh["state"].as_str().unwrap_or_default().to_string(),
                sh["reason"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

/// Issue 11.7: after `kill -9` of a local run, its shards' state files still say `running` with a
/// dead pid; status says the worker died (its shard lock is free), and a resume finishes the rest.
#[test]
fn a_local_worker_killed_is_reported_as_died_and_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let slow = SimServer::start(tmp.path(), &["--latency-ms", "3000"]);
    let mut grid = Grid::new(http(&slow.base_url()), http(&slow.base_url()));
    grid.seeds = 2;
    grid.concurrency = 4;
    let (file, run) = grid.write(tmp.path());
    let mut p = Proc::spawn(&logs, &["run", s(&file), "--no-progress"], &[]);
    wait_for_requests(&slow, 4, &mut p);
    // While it runs, its shards are running (their locks are held).
    let live = shard_states(&logs, &run);
    assert!(
        live.iter().any(|(state, _)| state == "running"),
        "a live local run shows running shards: {live:?}"
    );
    p.signal("KILL");
    p.wait(LIMIT);
    let pid = p.pid().to_string();
    let dead = shard_states(&logs, &run);
    let (_, done, _, left) = status_units(&logs, &run);
    assert!(left > 0, "the kill left units undone ({done} done)");
    for (shard, (state, reason)) in dead.iter().enumerate() {
        let st = std::fs::read_to_string(run.join(format!("state/shard-{shard:05}.json"))).unwrap_or_default();
        if st.contains("\"running\"") {
            assert_eq!(state, "interrupted", "shard {shard}: {reason}");
            assert!(
                reason.contains("worker died") && reason.contains(&format!("pid {pid}")),
                "shard {shard}: the reason names the death and the pid {pid}: {reason}"
            );
        }
        assert_ne!(state, "running", "shard {shard} after the kill: {reason}");
    }
    assert!(
        dead.iter().any(|(_, r)| r.contains("worker died")),
        "no shard was reported as died: {dead:?}"
    );

    let fast = SimServer::start(tmp.path(), &[]);
    let again = roleplay(
        &logs,
        &["run", s(&run), "--no-progress"],
        &[("ROLEPLAY_BASE_URL", &fast.base_url())],
        LIMIT,
    );
    again.expect_code(0);
    assert_every_unit_done_once(&run);
    let after = shard_states(&logs, &run);
    assert!(after.iter().all(|(state, _)| state == "done"), "{after:?}");
}

#[test]
fn a_second_ctrl_c_abandons_the_calls_in_flight_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let slow = SimServer::start(tmp.path(), &["--latency-ms", "8000"]);
    let mut grid = Grid::new(http(&slow.base_url()), http(&slow.base_url()));
    grid.seeds = 2;
    grid.concurrency = 4;
    grid.grace_secs = 60.0;
    let (file, run) = grid.write(tmp.path());
    let mut p = Proc::spawn(&logs, &["run", s(&file), "--no-progress"], &[]);
    let st = wait_for_requests(&slow, 4, &mut p);
    let ok_before = st["responses"]["2xx"].as_u64().unwrap();
    p.signal("INT");
    std::thread::sleep(Duration::from_secs(1));
    p.signal("INT");
    let out = p.wait(LIMIT);
    let ok_at_exit = slow.stats()["responses"]["2xx"].as_u64().unwrap();
    out.expect_code(75);
    assert!(
        out.stderr.contains("received again: stopping now"),
        "the second signal is acknowledged:\n{}",
        out.text()
    );
    assert_eq!(
        ok_at_exit,
        ok_before,
        "replies were waited for after the second signal:\n{}",
        out.text()
    );
    assert_journals_clean(&run);
    assert_eq!(call_count(&run), 0, "no call completed");

    let fast = SimServer::start(tmp.path(), &[]);
    let again = roleplay(
        &logs,
        &["run", s(&run), "--no-progress"],
        &[("ROLEPLAY_BASE_URL", &fast.base_url())],
        LIMIT,
    );
    again.expect_code(0);
    assert_every_unit_done_once(&run);
}

/// The `N/M dialogues` positions of indicatif bars in a terminal capture.
fn bar_positions(capture: &str) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for (i, _) in capture.match_indices(" dialogues") {
        let head = &capture[..i];
        let start = head
            .rfind(|c: char| !(c.is_ascii_digit() || c == '/'))
            .map_or(0, |p| p + 1);
        if let Some((a, b)) = head[start..].split_once('/')
            && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
        {
            out.push((a, b));
        }
    }
    out
}

#[test]
fn the_progress_bar_counts_the_plan_from_what_earlier_runs_finished() {
    assert!(
        std::process::Command::new("sh")
            .args(["-c", "command -v script"])
            .output()
            .is_ok_and(|o| o.status.success()),
        "`script` (util-linux / bsdutils) is needed to run `roleplay run` under a terminal: install it"
    );
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let mut grid = Grid::new(Ep::Sim { latency_ms: 20.0 }, Ep::Sim { latency_ms: 20.0 });
    grid.seeds = 10;
    grid.units_per_shard = 20;
    grid.concurrency = 4;
    assert_eq!(grid.units(), 40);
    let (file, run) = grid.write(tmp.path());
    let run2 = tmp.path().join("run2");
    for r in [&run, &run2] {
        roleplay(&logs, &["plan", s(&file), "--run-dir", s(r)], &[], LIMIT).expect_code(0);
        roleplay(&logs, &["worker", s(r), "--shard", "0"], &[], LIMIT).expect_code(0);
        assert_eq!(status_units(&logs, r), (40, 20, 0, 20), "one shard of two finished");
    }

    // Under a terminal: the bar.
    let cmd = format!("stty cols 160 rows 40; exec '{BIN}' run '{}'", s(&run));
    let out = std::process::Command::new("script")
        .args(["-qfec", &cmd, "/dev/null"])
        .env("TERM", "xterm-256color")
        .env_remove("ROLEPLAY_BASE_URL")
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run `script`");
    let capture = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "under a terminal:\n{capture}");
    assert!(!capture.contains("panicked"), "{capture}");
    let bars = bar_positions(&capture);
    assert!(!bars.is_empty(), "no progress bar drawn:\n{capture}");
    assert!(
        bars.iter().all(|(_, total)| *total == 40),
        "a bar total other than the plan's 40: {bars:?}"
    );
    assert!(bars[0].0 >= 20, "the bar starts below what shard 0 finished: {bars:?}");
    assert!(
        bars.iter().all(|(pos, _)| (20..=40).contains(pos)),
        "a position outside 20..=40: {bars:?}"
    );
    assert!(
        capture.contains("40 of 40 dialogues finished (20 in this run"),
        "{capture}"
    );

    // Piped: log lines, when one comes, count the plan too.
    let piped = roleplay(&logs, &["run", s(&run2), "--no-progress"], &[], LIMIT);
    piped.expect_code(0);
    for line in piped.stderr.lines().filter(|l| l.starts_with("progress:")) {
        assert!(line.contains("/40 dialogues"), "a progress line off the plan: {line:?}");
        let pos: u64 = numbers(line)[0];
        assert!((20..=40).contains(&pos), "{line:?}");
    }
    assert!(
        piped.stderr.contains("40 of 40 dialogues finished (20 in this run"),
        "{}",
        piped.text()
    );
}

#[test]
fn the_summary_line_status_and_merge_count_the_same_dialogues_after_a_stop_and_a_resume() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let server = SimServer::start(tmp.path(), &["--latency-ms", "150"]);
    // Two pairs: one against a live server, one against a closed port (its failures count as
    // finished, the units its breaker did not start as left).
    let mut grid = Grid::new(SIM, http(&server.base_url()));
    grid.responders.push(("dead", http(&closed_port_url())));
    grid.seeds = 5;
    grid.units_per_shard = 10;
    grid.concurrency = 4;
    grid.parallel_shards = Some(4);
    grid.grace_secs = 30.0;
    assert_eq!(grid.units(), 40);
    let (file, run) = grid.write(tmp.path());
    let mut p = Proc::spawn(&logs, &["run", s(&file), "--no-progress"], &[]);
    wait_for_requests(&server, 12, &mut p);
    // Stop once the dead pair has failed dialogues too, so that both kinds of finished are counted.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !records(&run).values().flatten().any(|r| r.ending.reason.is_failure()) {
        assert!(p.try_status().is_none(), "the run ended before the stop");
        assert!(Instant::now() < deadline, "no failure recorded after 60 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    p.signal("INT");
    let first = p.wait(LIMIT);
    first.expect_code(75);

    let check = |out: &Out, what: &str| -> u64 {
        let (n, m, _, failed) = finished_line(out);
        assert_eq!(m, 40, "{what}: the plan's units:\n{}", out.text());
        let (units, done, st_failed, left) = status_units(&logs, &run);
        assert_eq!(units, 40);
        assert_eq!(
            n,
            done + st_failed,
            "{what}: the summary line against status (done {done} + failed {st_failed}):\n{}",
            out.text()
        );
        assert_eq!(failed, st_failed, "{what}: failed, summary against status");
        assert_eq!(left, 40 - n, "{what}: left");
        let merge = roleplay(&logs, &["merge", s(&run)], &[], LIMIT);
        merge.assert_no_panic();
        let (merged, planned, m_failed, missing) = merged_line(&merge);
        assert_eq!(
            (merged, planned, m_failed, missing),
            (n, 40, failed, 40 - n),
            "{what}: merge against the summary line:\n{}",
            merge.text()
        );
        let recs = records(&run);
        let latest_failed = recs
            .values()
            .filter(|r| r.last().unwrap().ending.reason.is_failure())
            .count() as u64;
        assert_eq!((recs.len() as u64, latest_failed), (n, failed), "{what}: the journals");
        n
    };
    let n1 = check(&first, "after the stop");
    assert!(n1 < 40, "the stop came before the end");

    let second = roleplay(&logs, &["run", s(&run), "--no-progress"], &[], LIMIT);
    second.assert_no_panic();
    let n2 = check(&second, "after the resume");
    let (_, _, now, failed) = finished_line(&second);
    assert_eq!(now, n2 - n1, "`in this run` is what the resume added");
    assert_eq!(second.code, Some(if failed > 0 { 1 } else { 0 }), "{}", second.text());
    // Every dialogue of the live pair finished.
    let (live, _) = plan_units(&run).into_iter().partition::<Vec<_>, _>(|u| u.pair == 0);
    let recs = records(&run);
    for u in &live {
        let r = recs
            .get(&u.id)
            .unwrap_or_else(|| panic!("live unit {} unfinished", u.id));
        assert!(
            !r.last().unwrap().ending.reason.is_failure(),
            "live unit {} failed",
            u.id
        );
    }
}

/// A nullable `UInt32` column of a Parquet file (nulls as `None`).
fn read_parquet_opt_u32(path: &Path, col: &str) -> Vec<Option<u32>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::UInt32Type;
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open `{}`: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("Parquet")
        .build()
        .expect("reader");
    let mut out = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let a = b
            .column_by_name(col)
            .unwrap_or_else(|| panic!("no column `{col}`"))
            .as_primitive::<UInt32Type>();
        out.extend((0..a.len()).map(|i| (!a.is_null(i)).then(|| a.value(i))));
    }
    out
}

/// Run the context grid against a server keeping a 400-token window; `experiment_window` sets
/// the models' own `context_length` instead of leaving it to the server. Long answers (90 to 190
/// words, 120 to 253 tokens) make the histories overflow; inquirer outputs without a prompt make
/// `no_prompt` endings to check; a few injected context-length refusals make the server's 4xx
/// count something (the sim-server's own window refuses only a prompt that fills it, which a
/// trimmed history never does).
fn context_run(experiment_window: Option<u32>) -> HashMap<UnitId, DialogueRecord> {
    const INQ_MAX_NEW: u32 = 120;
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let logs = dir.join("logs");
    let server = SimServer::start(
        &dir,
        &[
            "--context-length",
            "400",
            "--words",
            "90,190",
            "--stop-after-turns",
            "10,12",
            "--no-prompt-rate",
            "0.15",
            "--context-error-rate",
            "0.03",
        ],
    );
    let ep = Ep::Http {
        base_url: server.base_url(),
        api_key_env: None,
        context_length: experiment_window,
    };
    let mut grid = Grid::new(ep.clone(), ep);
    grid.seeds = 5;
    grid.max_turns = 12;
    grid.concurrency = 8;
    // The inquirer's room is its `max_new_tokens`; the responder asks for more than half the
    // window, so requests keep only half for the reply and a long reply runs into the window's end.
    grid.inquirer_max_new_tokens = Some(INQ_MAX_NEW);
    grid.responder_max_new_tokens = Some(300);
    let (file, run) = grid.write(&dir);
    let out = roleplay(&logs, &["run", s(&file), "--no-progress"], &[], LIMIT);
    out.expect_code(0);
    let recs = assert_every_unit_done_once(&run);
    assert_eq!(recs.len(), 20);
    let stats = server.stats();

    for (unit, r) in &recs {
        if r.ending.reason == EndReason::NoPrompt {
            let last = r
                .ending
                .last_inquirer
                .last()
                .expect("the generation that held no prompt");
            assert!(
                last.finish_reason.as_deref() != Some("length") || last.completion_tokens == Some(INQ_MAX_NEW),
                "unit {unit}: ended `no_prompt` on a reply the window cut: {last:?}"
            );
        }
    }
    let sum = |f: fn(&DialogueRecord) -> u32| -> u64 { recs.values().map(|r| u64::from(f(r))).sum() };
    assert_eq!(
        sum(|r| r.counters.http_attempts),
        stats["requests"].as_u64().unwrap(),
        "the dialogues' `http_attempts` against the server's requests: {}",
        counts(&stats)
    );
    assert_eq!(
        sum(|r| r.counters.overflow_refusals),
        stats["responses"]["4xx"].as_u64().unwrap(),
        "`overflow_refusals` against the server's 4xx: {}",
        counts(&stats)
    );
    assert!(
        stats["responses"]["4xx"].as_u64().unwrap() > 0,
        "no refusal to count: {}",
        counts(&stats)
    );
    assert!(sum(|r| r.counters.cut_replies) > 0, "no reply was cut by the window");

    // The dataset carries the window and its source.
    let source = match experiment_window {
        Some(_) => "experiment",
        None => "server",
    };
    let path = run.join("out/dialogues.parquet");
    for col in ["inquirer", "responder"] {
        let lens = read_parquet_opt_u32(&path, &format!("{col}_context_length"));
        assert_eq!(lens, vec![Some(400); 20], "`{col}_context_length`");
        let sources = read_parquet_strings(&path, &[&format!("{col}_context_source")]);
        assert!(
            sources.iter().all(|r| r[0] == source),
            "`{col}_context_source` not all {source}: {sources:?}"
        );
    }
    recs
}

#[test]
fn the_servers_context_window_is_used_recorded_and_its_cuts_asked_again() {
    let recs = context_run(None);
    let server = Some(ContextWindow {
        tokens: 400,
        source: WindowSource::Server,
    });
    for (unit, r) in &recs {
        assert_eq!(r.windows.inquirer, server, "unit {unit}: the inquirer's window");
        assert_eq!(r.windows.responder, server, "unit {unit}: the responder's window");
    }
}

#[test]
fn an_experiments_context_length_is_recorded_as_the_experiments() {
    let recs = context_run(Some(400));
    let own = Some(ContextWindow {
        tokens: 400,
        source: WindowSource::Experiment,
    });
    for (unit, r) in &recs {
        assert_eq!(r.windows.inquirer, own, "unit {unit}: the inquirer's window");
        assert_eq!(r.windows.responder, own, "unit {unit}: the responder's window");
    }
}

#[test]
fn validate_check_endpoints_tells_a_served_model_from_a_closed_port() {
    let tmp = tempfile::tempdir().unwrap();
    let logs = tmp.path().join("logs");
    let server = SimServer::start(tmp.path(), &["--context-length", "512"]);
    let (file, _) = Grid::new(http(&server.base_url()), http(&server.base_url())).write(tmp.path());
    let out = roleplay(&logs, &["validate", s(&file), "--check-endpoints"], &[], LIMIT);
    out.expect_code(0);
    for model in ["inq", "assistant"] {
        let line = format!(
            "ok: model `{model}` at `{}/models`: serves `{SIM_MODEL}`; context window 512 tokens",
            server.base_url()
        );
        assert!(out.stdout.contains(&line), "{line:?} in:\n{}", out.text());
    }

    let dead = closed_port_url();
    let (file, _) = Grid::new(http(&server.base_url()), http(&dead)).write(tmp.path());
    let out = roleplay(&logs, &["validate", s(&file), "--check-endpoints"], &[], LIMIT);
    out.expect_code(1);
    assert!(
        out.stdout.contains("ok: model `inq`"),
        "the live one is still ok:\n{}",
        out.text()
    );
    let err = out
        .stderr
        .lines()
        .find(|l| l.contains("model `assistant`"))
        .unwrap_or_else(|| panic!("the dead model is named:\n{}", out.text()));
    assert!(err.contains(&dead) && err.contains("cannot connect"), "{err:?}");
    assert!(out.stderr.contains("hint:"), "{}", out.text());
}
