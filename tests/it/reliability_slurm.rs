//! The Slurm parts of the reliability suite, on the real single-node cluster of
//! `scripts/slurm-cluster up`:
//!
//! - **Concurrency**: two `roleplay submit` of a freshly planned run, started at the same moment,
//!   submit each array once: one submits, the other is refused by the run's submit lock (or finds the
//!   round submitted). After `roleplay cancel` left shards unfinished, two `roleplay resume` at once
//!   submit one round, with no shard in it twice. The submissions journal holds one intent and one
//!   answer per job, `squeue --name` and `sacct` one job per job name, and once the run ends every
//!   planned unit has exactly one `done` record (and one dataset row). A `submit`, `resume` or
//!   `render` refused by a held submit lock changes nothing in the run directory (no cluster needed).
//! - **Secrets**: with an API key only in the children's environment, an `api`-template run
//!   submitted with `--merge-job` against `sim-server --require-key` (the key reaches the jobs through
//!   the environment sbatch passes on, never through a file) leaves no byte of it anywhere under the
//!   test directory: scripts, array maps, submissions journal, Slurm logs, journals, state files,
//!   plan, Parquet (raw bytes and every cell read back) and every command's output. The server's
//!   `/stats` proves the key was used (every call 2xx; a wrong key then gets 401s).
//!
//! They fail (never skip) without the cluster, hold one lock each (one cluster user at a time in
//! this file), and assume the cluster's default settings: do not run them while `slurm_flow` or
//! `slurm_cluster` run (two of those reconfigure it). `cargo test --test reliability_slurm` takes
//! about 20 s; figures go to `target/tmp/reliability-figures/slurm-*.json`.

use crate::common::ClusterGuard;
use crate::common::*;
use rand::Rng;
use roleplay::rundir::RunDir;
use roleplay::slurm::records::{JobKind, Record, Submissions};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The longest one command may take.
const LIMIT: Duration = Duration::from_secs(60);

/// Takes the cluster for one test, after checking that `sinfo` answers with a usable node and that
/// accounting is on (the tests read `sacct`).
fn cluster() -> ClusterGuard {
    let guard = crate::common::take_cluster();
    let config = text_of("scontrol", &["show", "config"]);
    assert!(
        !config
            .lines()
            .any(|l| l.starts_with("AccountingStorageType") && l.contains("none")),
        "these tests read sacct: run `scripts/slurm-cluster up` (without --no-accounting) first"
    );
    guard
}

/// stdout of a Slurm command that must succeed.
fn text_of(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The array (or plain) job ids `squeue` knows under this name, finished ones included (they stay
/// for MinJobAge).
fn squeue_ids(name: &str) -> BTreeSet<u64> {
    let name_arg = format!("--name={name}");
    text_of("squeue", &["--noheader", "--states=all", &name_arg, "--format=%F"])
        .lines()
        .map(|l| l.trim().parse().unwrap_or_else(|e| panic!("squeue %F `{l}`: {e}")))
        .collect()
}

/// Job names and array (or plain) job ids that `sacct` recorded with an id in `lo..=hi`. Asked by
/// id, not by name: `sacct --name` (like any time-windowed query) omits jobs that never became
/// eligible, such as a merge job cancelled while it waited for its dependency.
fn sacct_jobs(lo: u64, hi: u64) -> BTreeMap<String, BTreeSet<u64>> {
    let ids: Vec<String> = (lo..=hi).map(|i| i.to_string()).collect();
    let jobs_arg = format!("--jobs={}", ids.join(","));
    let mut out: BTreeMap<String, BTreeSet<u64>> = BTreeMap::new();
    for line in text_of(
        "sacct",
        &[
            "--noheader",
            "--allocations",
            "--parsable2",
            &jobs_arg,
            "--format=JobID,JobName",
        ],
    )
    .lines()
    {
        let Some((id, name)) = line.split_once('|') else {
            continue;
        };
        let base = id.split(['_', '[', '+', '.']).next().unwrap_or("");
        let base = base.parse().unwrap_or_else(|e| panic!("sacct JobID `{id}`: {e}"));
        out.entry(name.to_string()).or_default().insert(base);
    }
    out
}

/// A run directory on the cluster, with the environment its commands get; whatever the test left
/// queued is cancelled when it is dropped.
struct SlurmRun {
    run: PathBuf,
    logs: PathBuf,
    env: Vec<(&'static str, String)>,
}

impl SlurmRun {
    fn dir(&self) -> &str {
        self.run.to_str().unwrap()
    }

    fn env(&self) -> Vec<(&str, &str)> {
        self.env.iter().map(|(k, v)| (*k, v.as_str())).collect()
    }

    fn cmd(&self, args: &[&str]) -> Out {
        roleplay(&self.logs, args, &self.env(), LIMIT)
    }

    /// Two `roleplay ARGS` started at the same moment (both spawned, then both waited for).
    fn at_once(&self, args: &[&str]) -> (Out, Out, Duration) {
        let env = self.env();
        let t = Instant::now();
        let mut a = Proc::spawn(&self.logs, args, &env);
        let mut b = Proc::spawn(&self.logs, args, &env);
        let (oa, ob) = (a.wait(LIMIT), b.wait(LIMIT));
        oa.assert_no_panic();
        ob.assert_no_panic();
        (oa, ob, t.elapsed())
    }

    fn status(&self) -> (Option<i32>, Value) {
        let out = self.cmd(&["status", self.dir(), "--json"]);
        out.assert_no_panic();
        let v: Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("status --json: {e}\n{}", out.text()));
        (out.code, v)
    }

    /// Polls `status --json` every second until `probe` accepts it, for at most `limit`.
    fn wait_status(&self, limit: Duration, what: &str, probe: impl Fn(&Value) -> bool) -> (Option<i32>, Value) {
        let start = Instant::now();
        loop {
            let (code, v) = self.status();
            if probe(&v) {
                return (code, v);
            }
            assert!(
                start.elapsed() < limit,
                "gave up after {} s waiting for {what}; last status:\n{}",
                limit.as_secs(),
                serde_json::to_string_pretty(&v).unwrap()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Every shard done (status exit 0), within `limit`.
    fn wait_complete(&self, limit: Duration) -> Value {
        let (code, v) = self.wait_status(limit, "every shard to be done", |v| v["finished"] == true);
        assert_eq!(
            code,
            Some(0),
            "the run ended with shards not done:\n{}",
            serde_json::to_string_pretty(&v["shards"]).unwrap()
        );
        assert_eq!(v["complete"], true);
        v
    }
}

impl Drop for SlurmRun {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["cancel", self.dir()]).output();
    }
}

/// Shards in a given state, from `status --json`.
fn shards_in(v: &Value, state: &str) -> BTreeSet<u32> {
    v["shards"]
        .as_array()
        .expect("shards")
        .iter()
        .filter(|s| s["state"] == state)
        .map(|s| s["shard"].as_u64().unwrap() as u32)
        .collect()
}

/// One job of the submissions journal.
#[derive(Debug, Clone)]
struct Job {
    name: String,
    id: u64,
    shards: Vec<u32>,
}

/// The submissions journal, checked: no damaged line, no unresolved intent, and per (round, kind,
/// array) exactly one intent and one accepted job, job ids distinct, no shard twice in one round.
fn journal_jobs(run: &Path) -> BTreeMap<(u32, bool, u32), Job> {
    let subs = Submissions::read(&RunDir::new(run)).unwrap_or_else(|e| panic!("{e}"));
    assert!(subs.damaged_lines.is_empty(), "damaged lines {:?}", subs.damaged_lines);
    assert!(
        subs.unresolved().is_empty(),
        "intents without an answer: {:?}",
        subs.unresolved()
    );
    let mut intents: BTreeMap<(u32, bool, u32), usize> = BTreeMap::new();
    let mut jobs: BTreeMap<(u32, bool, u32), Vec<Job>> = BTreeMap::new();
    for r in &subs.records {
        match r {
            Record::Submitting(i) => {
                *intents
                    .entry((i.slot.round, i.slot.kind == JobKind::Merge, i.slot.array))
                    .or_default() += 1;
            }
            Record::Submitted(a) => jobs
                .entry((a.slot.round, a.slot.kind == JobKind::Merge, a.slot.array))
                .or_default()
                .push(Job {
                    name: a.slot.job_name.clone(),
                    id: a.job_id,
                    shards: a.shards.clone(),
                }),
            Record::SubmitFailed(f) => panic!("a refused submission: {f:?}"),
            Record::Cancelled(_) | Record::Outcome(_) => {}
        }
    }
    assert_eq!(
        intents.keys().collect::<Vec<_>>(),
        jobs.keys().collect::<Vec<_>>(),
        "every intent answered, every job announced"
    );
    for (slot, n) in &intents {
        assert_eq!(*n, 1, "{slot:?}: {n} sbatch intents in the journal");
    }
    let mut ids = BTreeSet::new();
    let mut per_round: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
    let out: BTreeMap<(u32, bool, u32), Job> = jobs
        .into_iter()
        .map(|(slot, js)| {
            assert_eq!(js.len(), 1, "{slot:?} submitted {} times: {js:?}", js.len());
            let j = js.into_iter().next().unwrap();
            assert!(ids.insert(j.id), "job {} recorded for two slots", j.id);
            per_round.entry(slot.0).or_default().extend(&j.shards);
            (slot, j)
        })
        .collect();
    for (round, shards) in per_round {
        let set: BTreeSet<u32> = shards.iter().copied().collect();
        assert_eq!(set.len(), shards.len(), "round {round} holds a shard twice: {shards:?}");
    }
    out
}

/// `squeue --name` shows each job once, under its own id.
fn assert_queue_once(jobs: &BTreeMap<(u32, bool, u32), Job>) {
    for j in jobs.values() {
        let ids = squeue_ids(&j.name);
        assert_eq!(ids, BTreeSet::from([j.id]), "squeue --name={}", j.name);
    }
}

/// `sacct` records each job once, under its own id, among every job numbered from the run's first
/// to 20 past its last (where a duplicate submitted by the concurrent commands would be); waits up
/// to 30 s for slurmdbd to have them all.
fn assert_accounted_once(jobs: &BTreeMap<(u32, bool, u32), Job>) {
    let lo = jobs.values().map(|j| j.id).min().unwrap();
    let hi = jobs.values().map(|j| j.id).max().unwrap() + 20;
    let start = Instant::now();
    let seen = loop {
        let seen = sacct_jobs(lo, hi);
        if jobs.values().all(|j| seen.contains_key(&j.name)) || start.elapsed() > Duration::from_secs(30) {
            break seen;
        }
        std::thread::sleep(Duration::from_secs(1));
    };
    for j in jobs.values() {
        assert_eq!(
            seen.get(&j.name),
            Some(&BTreeSet::from([j.id])),
            "sacct, jobs {lo}-{hi}, named {}",
            j.name
        );
    }
}

/// How one of two simultaneous commands went: `did` it, or lost to the other.
#[derive(Debug, PartialEq)]
enum Turn {
    Did,
    RefusedByLock,
    FoundItDone,
}

/// The first stderr line of interest (what the command said it did), for the figures.
fn said(o: &Out) -> String {
    o.stderr
        .lines()
        .find(|l| {
            [
                "error: ",
                "submitted ",
                "resubmitting ",
                "nothing ",
                "was submitted already",
            ]
            .iter()
            .any(|p| l.contains(p))
        })
        .unwrap_or("")
        .to_string()
}

fn refused_by_lock(o: &Out) -> bool {
    o.code == Some(1)
        && o.stdout.trim().is_empty()
        && o.stderr
            .contains("error: another `roleplay submit`, `resume` or `cancel` of this run is already running")
        && o.stderr.contains("submit.lock")
        && o.stderr.contains("hint: ")
}

fn submit_turn(o: &Out) -> Turn {
    if refused_by_lock(o) {
        return Turn::RefusedByLock;
    }
    assert_eq!(o.code, Some(0), "{}", o.text());
    if o.stderr.contains("submitted round 0 array") {
        assert!(!o.stderr.contains("was submitted already"), "{}", o.text());
        Turn::Did
    } else {
        assert!(o.stderr.contains("nothing new to submit"), "{}", o.text());
        Turn::FoundItDone
    }
}

fn resume_turn(o: &Out) -> Turn {
    if refused_by_lock(o) {
        return Turn::RefusedByLock;
    }
    assert_eq!(o.code, Some(0), "{}", o.text());
    if o.stderr.contains("resubmitting ") {
        Turn::Did
    } else {
        assert!(
            o.stderr
                .contains("nothing to resubmit: every shard not done is queued, running"),
            "{}",
            o.text()
        );
        Turn::FoundItDone
    }
}

/// Exactly one of the two did it; returns (the one that did, the other).
fn exactly_one_did<'a>(a: &'a Out, b: &'a Out, turn: fn(&Out) -> Turn) -> (&'a Out, &'a Out, Turn) {
    match (turn(a), turn(b)) {
        (Turn::Did, other) if other != Turn::Did => (a, b, other),
        (other, Turn::Did) if other != Turn::Did => (b, a, other),
        (x, y) => panic!(
            "not exactly one of the two went through ({x:?}, {y:?}):\n{}\n{}",
            a.text(),
            b.text()
        ),
    }
}

fn job_ids(o: &Out) -> Vec<u64> {
    o.stdout
        .lines()
        .map(|l| l.trim().parse().unwrap_or_else(|e| panic!("job id `{l}`: {e}")))
        .collect()
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------
// Concurrency
// ---------------------------------------------------------------------------------------------

#[test]
fn two_submits_then_two_resumes_at_once_submit_nothing_twice() {
    let _lock = cluster();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    // The quickstart grid on Slurm (60 units, 6 shards, `sim` template), two tasks at a time: three
    // waves, so that a cancel after the first shard is done leaves shards to resume.
    let text = std::fs::read_to_string(repo().join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"")
        .replace("array_throttle = 4", "array_throttle = 2")
        .replace("grace_secs = 20", "grace_secs = 2.0");
    let file = dir.join("quickstart-slurm.toml");
    std::fs::write(&file, text).unwrap();
    let r = SlurmRun {
        run: dir.join("run"),
        logs: dir.join("logs"),
        env: Vec::new(),
    };
    r.cmd(&["plan", file.to_str().unwrap()]).expect_code(0);
    let units = plan_units(&r.run).len();
    assert_eq!(units, 60);

    // Two submits at once.
    let (sa, sb, submit_wall) = r.at_once(&["submit", r.dir(), "--merge-job", "--sim-server-arg=--latency-ms=200"]);
    let (did, other, other_turn) = exactly_one_did(&sa, &sb, submit_turn);
    let submitted = job_ids(did);
    if other_turn == Turn::FoundItDone {
        assert_eq!(job_ids(other), submitted, "the second submit names the same jobs");
    }
    let jobs = journal_jobs(&r.run);
    assert_eq!(jobs.len(), submitted.len(), "{jobs:?}");
    assert_eq!(
        jobs.values().map(|j| j.id).collect::<BTreeSet<_>>(),
        submitted.iter().copied().collect::<BTreeSet<_>>()
    );
    let arrays_r0 = jobs.keys().filter(|k| !k.1).count();
    let shards_r0: Vec<u32> = jobs.values().flat_map(|j| j.shards.clone()).collect();
    assert_eq!(shards_r0, (0..6).collect::<Vec<_>>(), "round 0 holds every shard once");
    assert_queue_once(&jobs);

    // Cancel once a shard is done: the shards still running stop at a checkpoint, the pending
    // ones never start.
    r.wait_status(Duration::from_secs(90), "a first shard to be done", |v| {
        !shards_in(v, "done").is_empty()
    });
    let cancelled = r.cmd(&["cancel", r.dir()]);
    cancelled.expect_code(0);
    let (_, v) = r.wait_status(Duration::from_secs(60), "the cancelled run to stop", |v| {
        v["finished"] == true
    });
    let done_at_cancel = shards_in(&v, "done");
    let left: BTreeSet<u32> = (0..6).filter(|s| !done_at_cancel.contains(s)).collect();
    assert!(
        !left.is_empty(),
        "every shard finished before the cancel landed: nothing to resume (status: {v})"
    );
    let units_done_at_cancel = v["units"]["done"].as_u64().unwrap();

    // Two resumes at once.
    let (ra, rb, resume_wall) = r.at_once(&["resume", r.dir(), "--sim-server-arg=--latency-ms=0"]);
    let (rdid, rother, rother_turn) = exactly_one_did(&ra, &rb, resume_turn);
    let left_list: Vec<u32> = left.iter().copied().collect();
    let want = format!(
        "resubmitting {} shard{} ({}) as round 1",
        left.len(),
        if left.len() == 1 { "" } else { "s" },
        roleplay::slurm::render::compact_ranges(&left_list)
    );
    assert!(rdid.stderr.contains(&want), "expected `{want}`:\n{}", rdid.text());
    let jobs = journal_jobs(&r.run);
    let round1: Vec<&Job> = jobs.iter().filter(|(k, _)| k.0 == 1).map(|(_, j)| j).collect();
    assert!(jobs.keys().all(|k| k.0 <= 1), "one resume round only: {jobs:?}");
    let mut shards_r1: Vec<u32> = round1.iter().flat_map(|j| j.shards.clone()).collect();
    shards_r1.sort_unstable();
    assert_eq!(shards_r1, left_list, "round 1 resubmits exactly the shards not done");
    assert_eq!(job_ids(rdid), round1.iter().map(|j| j.id).collect::<Vec<_>>());
    assert_queue_once(
        &jobs
            .iter()
            .filter(|(k, _)| k.0 == 1)
            .map(|(k, j)| (*k, j.clone()))
            .collect(),
    );

    // A third of each, while round 1 runs: nothing more is submitted.
    let submit3 = r.cmd(&["submit", r.dir()]);
    assert_eq!(submit_turn(&submit3), Turn::FoundItDone, "{}", submit3.text());
    let resume3 = r.cmd(&["resume", r.dir()]);
    resume3.expect_code(0);
    assert!(resume3.stderr.contains("nothing to resubmit"), "{}", resume3.text());
    assert_eq!(
        journal_jobs(&r.run).values().map(|j| j.id).collect::<Vec<_>>(),
        jobs.values().map(|j| j.id).collect::<Vec<_>>(),
        "a later submit or resume submitted more"
    );

    // The run ends with every unit done exactly once.
    let v = r.wait_complete(Duration::from_secs(120));
    for s in v["shards"].as_array().unwrap() {
        let shard = s["shard"].as_u64().unwrap() as u32;
        let want = if left.contains(&shard) { 2 } else { 1 };
        assert_eq!(s["submissions"], want, "shard {shard}: {s}");
    }
    let jobs = journal_jobs(&r.run);
    assert_accounted_once(&jobs);
    let records = assert_every_unit_done_once(&r.run);
    assert!(
        records.values().all(|d| !d.ending.reason.is_failure()),
        "failed dialogues"
    );
    let rows = merge_and_check(&r.logs, &r.run, &records);
    assert_eq!(rows, Some(units));

    let figures = json!({
        "units": units,
        "shards": 6,
        "submit": {
            "wall_secs": submit_wall.as_secs_f64(),
            "winner": {"exit": did.code, "said": said(did), "job_ids": submitted},
            "other": {"exit": other.code, "said": said(other), "how": format!("{other_turn:?}")},
            "arrays": arrays_r0,
            "merge_jobs": jobs.keys().filter(|k| k.1).count(),
        },
        "cancel": {"said": cancelled.stderr.lines().next().unwrap_or(""), "stdout": cancelled.stdout.trim(), "shards_done": done_at_cancel, "units_done": units_done_at_cancel},
        "resume": {
            "wall_secs": resume_wall.as_secs_f64(),
            "winner": {"exit": rdid.code, "said": rdid.stderr.lines().find(|l| l.contains("resubmitting")).unwrap_or("")},
            "other": {"exit": rother.code, "said": said(rother), "how": format!("{rother_turn:?}")},
            "shards": shards_r1,
            "arrays": round1.len(),
        },
        "third_submit_said": said(&submit3),
        "third_resume_said": said(&resume3),
        "jobs_in_journal": jobs.len(),
        "duplicate_jobs_squeue_sacct": 0,
        "units_done_once": records.len(),
        "total_secs": t0.elapsed().as_secs_f64(),
    });
    record_figures("slurm-concurrency", figures);
}

/// Files of `dir` added, removed or changed since `before`.
fn changed(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>) -> Vec<String> {
    let after = tree(dir);
    let paths: BTreeSet<&PathBuf> = before.keys().chain(after.keys()).collect();
    paths
        .into_iter()
        .filter(|p| before.get(*p) != after.get(*p))
        .map(|p| p.display().to_string())
        .collect()
}

/// While a `submit` holds the run's submit lock, a second `submit` or `resume` is refused and
/// changes nothing in the run directory, not even the render options it was given (stored in
/// `slurm/render.json`, later commands would use them instead of those the running submit used);
/// and `render`, which writes the same scripts and array maps (a map that a submitted array reads
/// must never change), is refused too rather than writing beside it. Needs no cluster: the limits are
/// given and the refusal comes first.
#[test]
fn commands_refused_by_a_held_submit_lock_change_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let text = std::fs::read_to_string(repo().join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"");
    let file = dir.join("quickstart-slurm.toml");
    std::fs::write(&file, text).unwrap();
    let logs = dir.join("logs");
    roleplay(&logs, &["plan", file.to_str().unwrap()], &[], LIMIT).expect_code(0);
    let run = dir.join("run");
    // What a running `submit` holds.
    let ctx = roleplay::slurm::render::RunCtx::open(&run).unwrap();
    let held = roleplay::slurm::submit::lock(&ctx).unwrap();
    let mut problems = Vec::new();
    for (n, cmd) in ["submit", "resume", "render"].into_iter().enumerate() {
        let before = tree(&run);
        // Options of its own (unlike those of the running submit, and of each other).
        let sim_arg = format!("--sim-server-arg=--latency-ms={}", 990 + n);
        let mut args = vec![cmd, run.to_str().unwrap()];
        if cmd != "render" {
            args.push("--dry-run");
        }
        args.extend(["--max-array-size", "2", "--max-array-tasks", "2", &sim_arg]);
        let out = roleplay(&logs, &args, &[], LIMIT);
        out.assert_no_panic();
        if !refused_by_lock(&out) {
            problems.push(format!(
                "`{cmd}` was not refused by the held lock (exit {:?}: {})",
                out.code,
                said(&out)
            ));
        }
        let changed = changed(&run, &before);
        if !changed.is_empty() {
            problems.push(format!("`{cmd}` changed {changed:?} under the held lock"));
        }
    }
    drop(held);
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---------------------------------------------------------------------------------------------
// Secrets
// ---------------------------------------------------------------------------------------------

/// Every text a Parquet file holds, cell by cell (the files are compressed: grepping their bytes
/// alone would prove nothing).
fn parquet_text(path: &Path) -> String {
    use arrow::util::display::{ArrayFormatter, FormatOptions};
    let f = std::fs::File::open(path).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .unwrap()
        .build()
        .unwrap();
    let mut text = String::new();
    for b in reader {
        let b = b.unwrap();
        for col in b.columns() {
            let fmt = ArrayFormatter::try_new(col.as_ref(), &FormatOptions::default()).unwrap();
            for i in 0..b.num_rows() {
                text.push_str(&fmt.value(i).to_string());
                text.push('\n');
            }
        }
    }
    text
}

#[test]
fn an_api_key_leaves_no_trace_in_a_slurm_run() {
    let _lock = cluster();
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let mut rng = rand::rng();
    let key = format!("sk-test-{:032x}", rng.random::<u128>());
    let wrong = format!("sk-wrong-{:032x}", rng.random::<u128>());
    let server = SimServer::start(dir, &["--require-key", &key, "--latency-ms", "1"]);
    let mut exp = Exp::quickstart(Backend::Http {
        base_url: server.base_url(),
        max_retries: 1,
        timeout_secs: 10.0,
        api_key_env: Some("ROLEPLAY_TEST_KEY".into()),
    });
    exp.name = "slurm-secrets".into();
    exp.personas = 2;
    exp.units_per_shard = 6;
    exp.concurrency = 8;
    let file = dir.join("slurm-secrets.toml");
    let slurm =
        "\n[slurm]\ntemplate = \"api\"\ntime = \"00:10:00\"\ncpus_per_task = 1\nmem = \"1G\"\narray_throttle = 4\n";
    std::fs::write(&file, exp.toml() + slurm).unwrap();
    let r = SlurmRun {
        run: dir.join("run"),
        logs: dir.join("logs"),
        env: vec![("ROLEPLAY_TEST_KEY", key.clone())],
    };
    r.cmd(&["plan", file.to_str().unwrap()]).expect_code(0);
    let units = plan_units(&r.run).len();
    assert_eq!(units, exp.units());

    let submitted = r.cmd(&["submit", r.dir(), "--merge-job"]);
    submitted.expect_code(0);
    let ids = job_ids(&submitted);
    let jobs = journal_jobs(&r.run);
    let merge = jobs
        .iter()
        .find(|(k, _)| k.1)
        .map(|(_, j)| j.clone())
        .expect("a merge job");
    assert_eq!(ids.len(), jobs.len());
    r.wait_complete(Duration::from_secs(120));
    // The merge job runs once the arrays have ended.
    let merge_log = r.run.join(format!("logs/slurm/merge-{}.out", merge.id));
    let start = Instant::now();
    loop {
        let log = std::fs::read_to_string(&merge_log).unwrap_or_default();
        let name_arg = format!("--name={}", merge.name);
        let queued = text_of(
            "squeue",
            &["--noheader", "--states=PENDING,RUNNING,COMPLETING", &name_arg],
        );
        if log.contains("planned dialogues merged") && queued.trim().is_empty() {
            assert!(
                log.contains(&format!("{units} of {units} planned dialogues merged")),
                "{log}"
            );
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the merge job did not merge: {log}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let records = assert_every_unit_done_once(&r.run);
    for d in records.values() {
        assert!(!d.ending.reason.is_failure(), "unit {}: {:?}", d.unit, d.ending);
    }
    let rows = read_parquet_strings(&r.run.join("out/dialogues.parquet"), &["unit_id"]);
    assert_eq!(rows.len(), units, "the merge job's dataset");
    let script = std::fs::read_to_string(r.run.join("slurm/round-000-array-0.sbatch")).unwrap();
    assert!(
        script.contains("ROLEPLAY_TEST_KEY"),
        "the script checks the variable by name"
    );

    // The run used the key: every call was answered 2xx, none refused.
    let stats = server.stats();
    let journaled: u64 = journaled_calls(&r.run).values().sum();
    assert_eq!(stats["responses"]["4xx"], 0, "{stats}");
    assert_eq!(
        stats["responses"]["2xx"].as_u64(),
        Some(journaled),
        "every journaled call answered once with the key: {stats}"
    );
    // The server does refuse another key (and echoes it, which the client must redact).
    let tried = roleplay(
        &r.logs,
        &[OsStr::new("try"), file.as_os_str()],
        &[("ROLEPLAY_TEST_KEY", wrong.as_str())],
        LIMIT,
    );
    tried.assert_no_panic();
    assert_ne!(tried.code, Some(0), "a wrong key must fail:\n{}", tried.text());
    let refused = server.stats()["responses"]["4xx"].as_u64().unwrap();
    assert!(refused > 0, "the wrong key was not refused");

    // Everything under the test directory: the run directory (scripts, maps, submissions journal,
    // Slurm logs, journals, state files, plan, Parquet), the experiment file and every command's
    // stdout and stderr. The sim-server's own output is the remote server's business.
    let skip = dir.join("server-logs");
    let (mut files, mut bytes, mut cells) = (0usize, 0u64, 0usize);
    let mut kinds: BTreeSet<&str> = BTreeSet::new();
    let mut hits = Vec::new();
    for (rel, content) in tree(dir) {
        let path = dir.join(&rel);
        if path.starts_with(&skip) {
            continue;
        }
        files += 1;
        bytes += content.len() as u64;
        let name = rel.to_string_lossy();
        for (kind, found) in [
            ("script", name.starts_with("run/slurm/") && name.ends_with(".sbatch")),
            (
                "array map",
                name.starts_with("run/slurm/round-") && name.ends_with(".json"),
            ),
            ("submissions journal", name == "run/slurm/submissions.jrnl"),
            (
                "task log",
                name.starts_with("run/logs/slurm/") && !name.contains("merge-"),
            ),
            ("merge log", name.starts_with("run/logs/slurm/merge-")),
            ("journal", name.starts_with("run/journal/")),
            ("state", name.starts_with("run/state/")),
            ("plan", name == "run/plan.json"),
            ("parquet", name.starts_with("run/out/") && name.ends_with(".parquet")),
            ("command output", name.starts_with("logs/")),
        ] {
            if found {
                kinds.insert(kind);
            }
        }
        let mut haystacks = vec![content];
        if name.ends_with(".parquet") {
            let text = parquet_text(&path);
            cells += text.lines().count();
            haystacks.push(text.into_bytes());
        }
        for h in &haystacks {
            for n in [&key, &wrong] {
                if h.windows(n.len()).any(|w| w == n.as_bytes()) {
                    hits.push(format!("{} holds {n}", path.display()));
                }
            }
        }
    }
    assert!(hits.is_empty(), "API keys leaked:\n{}", hits.join("\n"));
    assert_eq!(kinds.len(), 10, "every kind of file was searched: {kinds:?}");
    // The cells were really read: a prompt of a journaled turn is in turns.parquet.
    // (Dialogues can end before their first turn completes: take one that has a turn.)
    let prompt = &records
        .values()
        .find_map(|r| r.turns.first())
        .expect("a dialogue with a turn")
        .prompt;
    assert!(parquet_text(&r.run.join("out/turns.parquet")).contains(prompt.as_str()));

    record_figures(
        "slurm-secrets",
        json!({
            "units": units,
            "jobs": jobs.len(),
            "arrays": jobs.keys().filter(|k| !k.1).count(),
            "responses_2xx": journaled,
            "wrong_key_401s": refused,
            "files_searched": files,
            "bytes_searched": bytes,
            "parquet_cells": cells,
            "kinds": kinds,
            "hits": 0,
            "total_secs": t0.elapsed().as_secs_f64(),
        }),
    );
}
