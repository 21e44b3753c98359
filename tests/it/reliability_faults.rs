//! Server faults: a 24-unit grid (both inquirer APIs) run with `roleplay run` against a
//! `sim-server` that injects each fault alone at a substantial rate, then all of them together:
//! 5xx, 429 with `Retry-After`, hangs past the client's timeout, dropped connections, truncated
//! JSON, HTML error pages, and a 400 for the context length. What must hold:
//!
//! - every dialogue has exactly one `done` record, with a normal end reason or `backend_error`
//!   with the error kind the fault gives up as (`context_overflow` ends a dialogue normally);
//! - no call made more HTTP attempts than `max_retries + 1` (times one plus the history pairs a
//!   context-length refusal made the engine drop), and a call that gave up made exactly that many;
//!   a 429's `Retry-After` was waited for;
//! - the books balance with the server's `/stats`: every journaled call was served exactly once,
//!   the server's request count equals the HTTP attempts the journal accounts for, every request
//!   the server did not answer successfully was an injected fault, and the dialogue counters of
//!   retries add up to the attempts of their calls;
//! - `roleplay report --json` shows the same end-reason and failure counts;
//! - with every fault at once, `run --retry-failed` against a clean server finishes the failed
//!   dialogues from their recorded calls, and the merged dataset holds every unit once.

use crate::common::*;
use roleplay::dialogue::{Call, DialogueRecord, EndReason};
use roleplay::llm::ErrorKind;
use roleplay::plan::UnitId;
use roleplay::rundir::journal::Entry;
use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::time::Duration;

const MAX_RETRIES: u32 = 2;
/// Long enough that a healthy reply never times out on a loaded machine (a reply the client gave
/// up on would be served but not journaled), short enough that hangs cost little.
const TIMEOUT_SECS: f64 = 2.0;
const RETRY_AFTER_SECS: u64 = 1;

/// The flag of each fault and its name in `/stats`.
const FAULTS: [(&str, &str); 7] = [
    ("--fail-5xx-rate", "fail_5xx"),
    ("--rate-limit-rate", "rate_limit"),
    ("--hang-rate", "hang"),
    ("--drop-rate", "drop"),
    ("--malformed-rate", "malformed"),
    ("--html-rate", "html"),
    ("--context-error-rate", "context_error"),
];

fn all_calls(r: &DialogueRecord) -> Vec<&Call> {
    let mut v: Vec<&Call> = Vec::new();
    for t in &r.turns {
        v.push(&t.inquirer);
        v.extend(t.rejected.iter());
        v.push(&t.responder);
    }
    v.extend(r.ending.last_inquirer.iter());
    v.extend(r.ending.last_responder.iter());
    v
}

/// HTTP attempts of the call that ended a dialogue with a backend error, from its message.
fn failed_attempts(message: &str) -> u32 {
    match message.split_once("gave up after ") {
        Some((_, rest)) => rest
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no attempt count in {message:?}")),
        None => 1,
    }
}

struct Outcome {
    run: std::path::PathBuf,
    records: HashMap<UnitId, DialogueRecord>,
    stats: serde_json::Value,
}

/// Run the grid against a server injecting `faults` (flag, rate) and check everything above.
fn run_with_faults(name: &str, faults: &[(&str, f64)], dir: &Path) -> Outcome {
    let rate_args: Vec<String> = faults
        .iter()
        .flat_map(|(flag, rate)| [flag.to_string(), rate.to_string()])
        .collect();
    let mut args: Vec<&str> = vec![
        "--latency-ms",
        "2",
        "--seed",
        "11",
        "--hang-secs",
        "4",
        "--retry-after-secs",
        "1",
    ];
    args.extend(rate_args.iter().map(String::as_str));
    let server = SimServer::start(dir, &args);
    let mut exp = Exp::quickstart(Backend::http(server.base_url(), MAX_RETRIES, TIMEOUT_SECS));
    exp.name = name.into();
    exp.personas = 2;
    exp.max_turns = 6;
    exp.units_per_shard = 6;
    exp.concurrency = 12;
    let run = exp.plan(dir, None);
    let logs = dir.join("logs");
    let out = roleplay(
        &logs,
        &["run", run.to_str().unwrap(), "--no-progress"],
        &[],
        Duration::from_secs(180),
    );
    out.assert_no_panic();
    let records = assert_every_unit_done_once(&run);
    assert_eq!(records.len(), 24);
    let failed = records.values().filter(|r| r.ending.reason.is_failure()).count();
    assert_eq!(
        out.code,
        Some(if failed > 0 { 1 } else { 0 }),
        "{name}: exit code with {failed} failed dialogues:\n{}",
        out.text()
    );

    let enabled: Vec<&str> = faults
        .iter()
        .map(|(flag, _)| FAULTS.iter().find(|(f, _)| f == flag).expect("a known fault").1)
        .collect();
    let context = enabled.contains(&"context_error");
    let mut allowed: Vec<ErrorKind> = Vec::new();
    for f in &enabled {
        match *f {
            "fail_5xx" | "rate_limit" | "hang" | "drop" => allowed.push(ErrorKind::RetriesExhausted),
            "malformed" => allowed.push(ErrorKind::BadResponse),
            "html" => allowed.extend([ErrorKind::BadResponse, ErrorKind::RetriesExhausted]),
            _ => {}
        }
    }

    // Endings and retry bounds.
    let mut failed_attempts_total = 0u64;
    for (unit, r) in &records {
        match r.ending.reason {
            EndReason::BackendError => {
                let e = r
                    .ending
                    .error
                    .as_ref()
                    .unwrap_or_else(|| panic!("{name}: unit {unit}: no error"));
                assert!(
                    allowed.contains(&e.kind),
                    "{name}: unit {unit} failed as {:?}, not a kind its faults give up as: {}",
                    e.kind,
                    e.message
                );
                let n = failed_attempts(&e.message);
                assert_eq!(
                    n,
                    MAX_RETRIES + 1,
                    "{name}: unit {unit}: a transient fault gave up after {n} attempts: {}",
                    e.message
                );
                assert_eq!(
                    e.attempts,
                    n + e.overflow_refusals,
                    "{name}: unit {unit}: the failed call's requests are its last exchange and the refusals before it"
                );
                failed_attempts_total += u64::from(e.attempts);
            }
            EndReason::ContextOverflow => {
                assert!(context, "{name}: unit {unit} ended with a context overflow");
                let e = r.ending.error.as_ref().expect("the server's refusal is recorded");
                assert_eq!(e.kind, ErrorKind::ContextOverflow);
                assert!(
                    e.overflow_refusals >= 1,
                    "{name}: unit {unit}: the final refusal is counted"
                );
                failed_attempts_total += u64::from(e.attempts);
            }
            _ => assert!(
                r.ending.error.is_none(),
                "{name}: unit {unit}: an error without a failure"
            ),
        }
        let mut retries = 0u32;
        for c in all_calls(r) {
            assert!(c.attempts >= 1);
            let bound = (MAX_RETRIES + 1) * (1 + c.trimmed_pairs);
            assert!(
                c.attempts <= bound,
                "{name}: unit {unit}: a call made {} attempts, more than {bound}",
                c.attempts
            );
            if !context {
                assert_eq!(c.trimmed_pairs, 0);
            }
            if enabled == ["rate_limit"] && c.attempts > 1 {
                let floor = 1000.0 * RETRY_AFTER_SECS as f64 * f64::from(c.attempts - 1);
                assert!(
                    c.latency_ms >= floor,
                    "{name}: unit {unit}: {} attempts in {} ms: `Retry-After` was not honoured",
                    c.attempts,
                    c.latency_ms
                );
            }
            assert_eq!(
                c.attempts,
                1 + c.transient_retries + c.overflow_refusals + c.cut_replies,
                "{name}: unit {unit}: a call's requests are the answered one and those it retried, had refused or cut"
            );
            retries += c.transient_retries;
        }
        retries += r.ending.error.as_ref().map_or(0, |e| e.transient_retries);
        assert_eq!(r.counters.retries, retries, "{name}: unit {unit}: retries counter");
        if !context {
            assert_eq!(
                r.counters.overflow_refusals, 0,
                "{name}: unit {unit}: refusals without the fault"
            );
        }
    }

    // The books against the server's.
    let stats = server.stats();
    let served = served_of(&stats);
    let mut journaled: HashMap<String, u64> = HashMap::new();
    let mut attempts_journaled = 0u64;
    for c in journals(&run).values() {
        for e in &c.entries {
            if let Entry::Call(c) = e {
                *journaled.entry(call_key(c)).or_default() += 1;
                attempts_journaled += u64::from(c.call.attempts);
            }
        }
    }
    assert_eq!(
        journaled.len(),
        served.len(),
        "{name}: the server served other calls than the journal holds"
    );
    for (k, n) in &journaled {
        assert_eq!(*n, 1, "{name}: call {k} journaled {n} times");
        assert_eq!(
            served.get(k),
            Some(&1),
            "{name}: call {k} served {:?} times",
            served.get(k)
        );
    }
    let requests = stats["requests"].as_u64().unwrap();
    let answered: u64 = served.values().sum();
    let injected: BTreeMap<String, u64> = FAULTS
        .iter()
        .map(|(_, f)| (f.to_string(), stats["faults"][f].as_u64().unwrap()))
        .collect();
    for (f, n) in &injected {
        if enabled.contains(&f.as_str()) {
            assert!(*n > 0, "{name}: no `{f}` fault was injected");
        } else {
            assert_eq!(*n, 0, "{name}: `{f}` faults injected");
        }
    }
    let injected_total: u64 = injected.values().sum();
    assert_eq!(
        requests - answered,
        injected_total,
        "{name}: every request not answered with a completion was an injected fault"
    );
    let counted: u64 = records.values().map(|r| u64::from(r.counters.http_attempts)).sum();
    assert_eq!(
        requests, counted,
        "{name}: the server's request count is not the dialogues' `http_attempts`"
    );
    assert_eq!(
        requests,
        attempts_journaled + failed_attempts_total,
        "{name}: the server's request count is not the attempts the journal accounts for"
    );
    let refused: u64 = records.values().map(|r| u64::from(r.counters.overflow_refusals)).sum();
    assert_eq!(
        refused,
        stats["faults"]["context_error"].as_u64().unwrap(),
        "{name}: `overflow_refusals` is not the server's count of context-length refusals"
    );

    // The report shows the same counts.
    let mut reasons: BTreeMap<String, u64> = BTreeMap::new();
    for r in records.values() {
        *reasons.entry(r.ending.reason.as_str().to_string()).or_default() += 1;
    }
    if has_command("report") {
        let rep = roleplay(
            &logs,
            &["report", run.to_str().unwrap(), "--json"],
            &[],
            Duration::from_secs(60),
        );
        rep.expect_code(0);
        let v: serde_json::Value = serde_json::from_str(&rep.stdout).expect("report JSON");
        let shown: BTreeMap<String, u64> = serde_json::from_value(v["all"]["end_reasons"].clone()).unwrap();
        assert_eq!(shown, reasons, "{name}: the report's end reasons");
        assert_eq!(
            v["failed"].as_u64(),
            Some(failed as u64),
            "{name}: the report's failures"
        );
        assert_eq!(v["planned"].as_u64(), Some(24));
    }
    let endings_with_error = records.values().filter(|r| r.ending.error.is_some()).count() as u64;
    let mut kinds: BTreeMap<&str, u64> = BTreeMap::new();
    for r in records.values() {
        if let Some(e) = &r.ending.error {
            *kinds.entry(e.kind.as_str()).or_default() += 1;
        }
    }
    record_figures(
        &format!("faults-{name}"),
        serde_json::json!({
            "faults_injected": injected,
            "requests": requests,
            "completions": answered,
            "attempts_beyond_the_first": (attempts_journaled - journaled.len() as u64) + (failed_attempts_total - endings_with_error),
            "dialogues": records.len(),
            "failed": failed,
            "error_kinds": kinds,
            "end_reasons": reasons,
            "lost": 0,
        }),
    );
    Outcome { run, records, stats }
}

fn alone(name: &str, flag: &str, rate: f64) {
    let tmp = tempfile::tempdir().unwrap();
    run_with_faults(name, &[(flag, rate)], tmp.path());
}

#[test]
fn server_errors_5xx() {
    alone("fail_5xx", "--fail-5xx-rate", 0.3);
}

#[test]
fn rate_limits_with_retry_after() {
    alone("rate_limit", "--rate-limit-rate", 0.2);
}

#[test]
fn hangs_past_the_timeout() {
    alone("hang", "--hang-rate", 0.1);
}

#[test]
fn dropped_connections() {
    alone("drop", "--drop-rate", 0.3);
}

#[test]
fn truncated_json_bodies() {
    alone("malformed", "--malformed-rate", 0.3);
}

#[test]
fn html_error_pages() {
    alone("html", "--html-rate", 0.3);
}

#[test]
fn context_length_refusals() {
    alone("context_error", "--context-error-rate", 0.15);
}

#[test]
fn every_fault_at_once_then_retry_failed_against_a_clean_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let all: Vec<(&str, f64)> = FAULTS.iter().map(|(flag, _)| (*flag, 0.06)).collect();
    let first = run_with_faults("all", &all, dir);
    let failed: Vec<UnitId> = first
        .records
        .iter()
        .filter(|(_, r)| r.ending.reason.is_failure())
        .map(|(u, _)| *u)
        .collect();
    assert!(first.stats["faults"]["hang"].as_u64().unwrap() > 0);

    // The endpoint moves to a healthy server (`ROLEPLAY_BASE_URL`); failed dialogues run again,
    // resuming from the calls they completed.
    let before = journaled_calls(&first.run);
    let clean = SimServer::start(dir, &["--seed", "12"]);
    let out = roleplay(
        &dir.join("logs"),
        &["run", first.run.to_str().unwrap(), "--no-progress", "--retry-failed"],
        &[("ROLEPLAY_BASE_URL", &clean.base_url())],
        Duration::from_secs(120),
    );
    out.expect_code(0);
    let served_again: Vec<String> = clean.served().into_keys().filter(|k| before.contains_key(k)).collect();
    assert!(served_again.is_empty(), "calls made again on retry: {served_again:?}");
    // Each failed unit now has its failure and its finished retry; merge keeps the retry.
    let done = done_records(&first.run);
    let mut latest = HashMap::new();
    for (unit, recs) in &done {
        let expected = if failed.contains(unit) { 2 } else { 1 };
        assert_eq!(recs.len(), expected, "unit {unit}: `done` records after --retry-failed");
        let last = recs.last().unwrap().clone();
        assert!(
            !last.ending.reason.is_failure(),
            "unit {unit} failed again against a clean server"
        );
        latest.insert(*unit, last);
    }
    if let Some(rows) = merge_and_check(&dir.join("logs"), &first.run, &latest) {
        assert_eq!(rows, 24);
    }
    record_figures(
        "faults-all-retry",
        serde_json::json!({"failed_then_finished": failed.len(), "calls_made_again": served_again.len()}),
    );
}
