//! A seeded chaos run on the real single-node cluster of `scripts/slurm-cluster up`: a run of 60
//! units in 12 shards (the `api` template against one `roleplay sim-server` on loopback, whose
//! `/stats` counts every call) suffers every kind of event issue 15 names, in an order and on
//! targets drawn from the seed, and is resumed until it is done:
//!
//! - `kill -9` of `roleplay submit` while sbatch runs (its orphan is adopted from the queue), of
//!   `roleplay status --watch`, and of `roleplay resume` while sbatch runs; and a second run whose
//!   killed `submit` left an orphan that ran and left the queue (adopted from sacct at the end);
//! - `scancel` of a pending task (it never started: not counted) and of a running one; `scontrol
//!   requeue` of a running task, and of a task whose shard is done (the run is not finished while it
//!   waits); `kill -9` of a worker; the node set DOWN (NODE_FAIL, requeued); a job of partition
//!   `high` that preempts the running tasks (PREEMPTED, requeued); `scontrol hold`, then `release`,
//!   of a pending task (only its shard says held).
//!
//! After each event `status --json` must tell it as README says; after every signal the worker
//! starts no new call (the calls of its shard served after the signal are at most those in flight,
//! counted with `/stats`). At the end every planned unit has exactly one `done` record, and an
//! independent reader (pyarrow, through python3) finds every planned unit exactly once in the
//! merged dataset. Figures go to `target/tmp/reliability-figures/slurm-chaos.json`; the seed is
//! `ROLEPLAY_CHAOS_SEED` (printed on failure). About two and a half minutes.

use crate::common::*;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde_json::{Value, json};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The longest one command may take.
const LIMIT: Duration = Duration::from_secs(60);
/// The sim-server's latency per call: long enough for the events to land while shards run.
const LATENCY_MS: u64 = 600;
const DEFAULT_SEED: u64 = 0x15_C4A05;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// stdout of a command that must succeed.
fn sh(cmd: &str, args: &[&str]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn host() -> String {
    sh("hostname", &["-s"]).trim().to_string()
}

/// One run directory on the cluster; whatever it left queued is cancelled when dropped.
struct ChaosRun {
    run: PathBuf,
    logs: PathBuf,
}

impl ChaosRun {
    fn dir(&self) -> &str {
        self.run.to_str().unwrap()
    }

    fn cmd(&self, args: &[&str]) -> Out {
        let out = roleplay(&self.logs, args, &[], LIMIT);
        out.assert_no_panic();
        out
    }

    fn status(&self) -> (Option<i32>, Value) {
        let out = self.cmd(&["status", self.dir(), "--json"]);
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
                serde_json::to_string_pretty(&v["shards"]).unwrap()
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    fn state_file(&self, shard: u32) -> Option<Value> {
        let path = self.run.join(format!("state/shard-{shard:05}.json"));
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    fn task_log(&self, job: &str) -> String {
        std::fs::read_to_string(self.run.join(format!("logs/slurm/{job}.out"))).unwrap_or_default()
    }

    /// `roleplay submit` or `resume` (`args`) with an sbatch that queues the job at once but answers
    /// 20 s later, killed (`kill -9`) once the job is queued: the journal holds an intent without
    /// an answer. Returns the job id the orphan got.
    fn kill_during_sbatch(&self, slow: &SlowSbatch, args: &[&str]) -> u64 {
        let _ = std::fs::remove_file(slow.dir.join("submitted"));
        let path = format!("{}:{}", slow.dir.display(), std::env::var("PATH").unwrap_or_default());
        let mut p = Proc::spawn(
            &self.logs,
            args,
            &[
                ("PATH", path.as_str()),
                ("REAL_SBATCH", slow.real.as_str()),
                ("SLOW_DIR", slow.dir.to_str().unwrap()),
            ],
        );
        let start = Instant::now();
        let (wrapper, job) = loop {
            if let Ok(text) = std::fs::read_to_string(slow.dir.join("submitted"))
                && let Some((pid, job)) = text.trim().split_once(' ')
            {
                break (pid.to_string(), job.to_string());
            }
            if let Some(status) = p.try_status() {
                panic!(
                    "`roleplay {args:?}` ended ({status}) before sbatch answered:\n{}",
                    p.output(status.code()).text()
                );
            }
            assert!(start.elapsed() < LIMIT, "sbatch was never called by {args:?}");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(p.kill(), "`roleplay {args:?}` had ended before the kill");
        // The wrapper is this test's too: it would print the answer to nobody.
        let _ = Command::new("kill").args(["-KILL", &wrapper]).status();
        job.split(';')
            .next()
            .unwrap()
            .trim()
            .parse()
            .unwrap_or_else(|e| panic!("sbatch answered `{job}`: {e}"))
    }
}

impl Drop for ChaosRun {
    fn drop(&mut self) {
        let _ = Command::new(BIN).args(["cancel", self.dir()]).output();
    }
}

/// An sbatch on PATH before the real one that answers late (see [`ChaosRun::kill_during_sbatch`]).
struct SlowSbatch {
    dir: PathBuf,
    real: String,
}

impl SlowSbatch {
    fn new(dir: &Path) -> SlowSbatch {
        use std::os::unix::fs::PermissionsExt;
        let real = sh("sh", &["-c", "command -v sbatch"]).trim().to_string();
        std::fs::create_dir_all(dir).unwrap();
        let script = dir.join("sbatch");
        std::fs::write(
            &script,
            "#!/bin/sh\n# sbatch whose answer comes 20 s after the job was queued (as after a controller timeout).\n\
             answer=$(\"$REAL_SBATCH\" \"$@\"); rc=$?\n\
             echo \"$$ $answer\" > \"$SLOW_DIR/submitted.tmp\" && mv \"$SLOW_DIR/submitted.tmp\" \"$SLOW_DIR/submitted\"\n\
             sleep 20\n\
             echo \"$answer\"\n\
             exit $rc\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        SlowSbatch {
            dir: dir.to_path_buf(),
            real,
        }
    }
}

fn shard(v: &Value, s: u32) -> &Value {
    &v["shards"][s as usize]
}

fn state_of(v: &Value, s: u32) -> &str {
    shard(v, s)["state"].as_str().unwrap_or("")
}

fn reason_of(v: &Value, s: u32) -> &str {
    shard(v, s)["reason"].as_str().unwrap_or("")
}

fn job_of(v: &Value, s: u32) -> String {
    shard(v, s)["job"].as_str().unwrap_or("").to_string()
}

fn shards_where(v: &Value, f: impl Fn(&Value) -> bool) -> Vec<u32> {
    v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| f(s))
        .map(|s| s["shard"].as_u64().unwrap() as u32)
        .collect()
}

/// Shards whose task runs a worker that has units left: (shard, task, worker pid).
fn running_workers(r: &ChaosRun, v: &Value) -> Vec<(u32, String, u32)> {
    shards_where(v, |s| {
        s["state"] == "running" && s["reason"].as_str().is_some_and(|r| r.starts_with("on "))
    })
    .into_iter()
    .filter_map(|s| {
        let st = r.state_file(s)?;
        let job = job_of(v, s);
        (st["status"] == "running"
            && st["slurm_job_id"] == job.as_str()
            && st["done"].as_u64()? + 2 <= st["units"].as_u64()?)
        .then(|| (s, job, st["pid"].as_u64().unwrap_or(0) as u32))
    })
    .collect()
}

/// Successful replies the sim-server served, per unit of `shard`.
fn served_units(server: &SimServer, units: &HashMap<u32, BTreeSet<String>>, shard: u32) -> BTreeMap<String, u64> {
    let mine = &units[&shard];
    let mut out: BTreeMap<String, u64> = mine.iter().map(|u| (u.clone(), 0)).collect();
    for (key, n) in server.served() {
        if let Some(u) = key.split('/').next()
            && let Some(count) = out.get_mut(u)
        {
            *count += n;
        }
    }
    out
}

/// How often a worker's log says it got a stop signal.
fn signals_logged(log: &str) -> usize {
    log.matches("received: no new request starts").count()
}

/// A stop signal on its way to the worker of `shard` (task `job`), whose log held `logged_before`
/// such lines when it was sent.
struct Stop {
    kind: &'static str,
    shard: u32,
    job: String,
    logged_before: usize,
    sent: Instant,
}

impl Stop {
    fn new(r: &ChaosRun, kind: &'static str, shard: u32, job: &str) -> Stop {
        Stop {
            kind,
            shard,
            job: job.to_string(),
            logged_before: signals_logged(&r.task_log(job)),
            sent: Instant::now(),
        }
    }

    /// Whether the worker has logged the signal.
    fn logged(&self, r: &ChaosRun) -> bool {
        signals_logged(&r.task_log(&self.job)) > self.logged_before
    }

    /// Waits for the worker to log the signal, counts each unit's served calls then, waits for the
    /// worker to stop (its state file leaves `running`), and checks that no unit was served more
    /// than the one call it had in flight: no call started after the signal.
    fn check(&self, r: &ChaosRun, server: &SimServer, units: &HashMap<u32, BTreeSet<String>>) -> Value {
        let start = Instant::now();
        while !self.logged(r) {
            assert!(
                start.elapsed() < LIMIT,
                "the worker of {} never logged the signal ({}):\n{}",
                self.job,
                self.kind,
                r.task_log(&self.job)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        let logged = self.sent.elapsed();
        let at_signal = served_units(server, units, self.shard);
        let start = Instant::now();
        loop {
            let st = r.state_file(self.shard).unwrap_or(Value::Null);
            if st["slurm_job_id"] == self.job.as_str() && st["status"] != "running" {
                break;
            }
            assert!(
                start.elapsed() < LIMIT,
                "the worker of {} did not stop after {}: {st}",
                self.job,
                self.kind
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let stopped = self.sent.elapsed();
        let at_exit = served_units(server, units, self.shard);
        let mut in_flight = 0;
        for (unit, n) in &at_exit {
            let after = n - at_signal[unit];
            assert!(
                after <= 1,
                "{} of {}: unit {unit} was served {after} calls after the signal: the worker started new calls",
                self.kind,
                self.job
            );
            in_flight += after;
        }
        json!({
            "shard": self.shard,
            "task": self.job,
            "signal_logged_after_secs": logged.as_secs_f64(),
            "worker_stopped_after_secs": stopped.as_secs_f64(),
            "calls_in_flight_finished": in_flight,
            "calls_started_after_signal": 0,
        })
    }
}

/// What pyarrow (an independent reader) finds in the dataset: (rows, distinct unit ids, planned
/// units missing, ids not planned).
fn pyarrow_check(dialogues: &Path, units_tsv: &Path) -> Value {
    const SCRIPT: &str = r#"
import json, sys
import pyarrow.parquet as pq
table = pq.read_table(sys.argv[1], columns=["unit_id"])
ids = table.column("unit_id").to_pylist()
planned = [l.split("\t")[0] for l in open(sys.argv[2]).read().splitlines()[1:] if l]
seen = {}
for i in ids:
    seen[i] = seen.get(i, 0) + 1
print(json.dumps({
    "rows": len(ids),
    "distinct": len(seen),
    "planned": len(planned),
    "duplicated": sorted(i for i, n in seen.items() if n > 1),
    "missing": sorted(set(planned) - set(seen)),
    "unplanned": sorted(set(seen) - set(planned)),
}))
"#;
    let out = Command::new("python3")
        .args(["-c", SCRIPT])
        .arg(dialogues)
        .arg(units_tsv)
        .output()
        .expect("python3");
    assert!(
        out.status.success(),
        "pyarrow could not read the dataset (python3 -m pip install pyarrow; scripts/test does): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the checker's JSON")
}

fn units_tsv(run: &Path) -> PathBuf {
    std::fs::read_dir(run)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.file_name().unwrap().to_string_lossy().starts_with("units-"))
        .expect("the units file")
}

/// The experiment: the quickstart's grid over HTTP (60 units, 5 per shard) on the `api` template.
fn experiment(server: &SimServer, name: &str, shrink: bool) -> String {
    let mut exp = Exp::quickstart(Backend::http(server.base_url(), 3, 20.0));
    exp.name = name.into();
    exp.units_per_shard = 5;
    exp.concurrency = 8;
    exp.grace_secs = 2.0;
    if shrink {
        exp.personas = 1;
        exp.goals = 1;
        exp.both_inquirers = false;
        exp.seeds = vec![1];
    }
    format!(
        "{}max_attempts = 6\n\n[slurm]\ntemplate = \"api\"\ntime = \"00:10:00\"\ncpus_per_task = 1\nmem = \"500M\"\narray_throttle = 4\n",
        exp.toml()
    )
}

#[test]
fn chaos_on_the_cluster_loses_and_duplicates_nothing() {
    let _cluster = take_cluster();
    let t0 = Instant::now();
    // The default configuration (partitions `debug` and `high`), whatever an earlier test left.
    sh(repo().join("scripts/slurm-cluster").to_str().unwrap(), &["up"]);
    let seed = std::env::var("ROLEPLAY_CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_SEED);
    eprintln!("chaos seed {seed} (ROLEPLAY_CHAOS_SEED={seed} repeats it)");
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let latency = LATENCY_MS.to_string();
    let server = SimServer::start(dir, &["--latency-ms", &latency]);
    let slow = SlowSbatch::new(&dir.join("slow-sbatch"));
    let mut events: Vec<Value> = Vec::new();
    let mut tally: BTreeMap<&str, u32> = BTreeMap::new();
    let note = |tally: &mut BTreeMap<&str, u32>, events: &mut Vec<Value>, kind: &'static str, what: Value| {
        *tally.entry(kind).or_default() += 1;
        let mut what = what;
        what["at_secs"] = json!(t0.elapsed().as_secs_f64());
        what["event"] = json!(kind);
        eprintln!("chaos: {what}");
        events.push(what);
    };

    // A second, one-unit run whose killed submit leaves an orphan that will have run and left the
    // queue by the end (adopted from sacct then).
    let orphan_run = ChaosRun {
        run: dir.join("orphan-run"),
        logs: dir.join("logs"),
    };
    let orphan_file = dir.join("orphan.toml");
    std::fs::write(&orphan_file, experiment(&server, "chaos-orphan", true)).unwrap();
    orphan_run
        .cmd(&["plan", orphan_file.to_str().unwrap(), "--run-dir", orphan_run.dir()])
        .expect_code(0);
    let orphan_job = orphan_run.kill_during_sbatch(&slow, &["submit", orphan_run.dir()]);

    // The run.
    let r = ChaosRun {
        run: dir.join("run"),
        logs: dir.join("logs"),
    };
    let file = dir.join("chaos.toml");
    std::fs::write(&file, experiment(&server, "chaos", false)).unwrap();
    r.cmd(&["plan", file.to_str().unwrap(), "--run-dir", r.dir()])
        .expect_code(0);
    let planned = plan_units(&r.run);
    assert_eq!(planned.len(), 60);
    let n_shards = 12u32;
    let mut units: HashMap<u32, BTreeSet<String>> = HashMap::new();
    for u in &planned {
        units.entry(u.shard).or_default().insert(u.id.to_string());
    }
    assert_eq!(units.len(), n_shards as usize);

    // kill -9 of `submit` while sbatch runs; the next submit adopts the orphan from the queue.
    let job = r.kill_during_sbatch(&slow, &["submit", r.dir()]);
    let again = r.cmd(&["submit", r.dir()]);
    again.expect_code(0);
    assert!(
        again
            .stderr
            .contains(&format!("had no recorded answer but is queued as job {job}: recorded")),
        "{}",
        again.text()
    );
    note(
        &mut tally,
        &mut events,
        "kill -9 submit",
        json!({"orphan": job, "adopted_from": "squeue"}),
    );

    // Four tasks run (throttle 4), eight wait.
    let (_, v) = r.wait_status(LIMIT, "four workers running", |v| running_workers(&r, v).len() >= 4);
    let pending = shards_where(&v, |s| s["state"] == "pending");
    assert!(pending.len() >= 4, "{pending:?}");
    // Hold one pending task and cancel another before they start.
    let mut waiting = pending.clone();
    waiting.shuffle(&mut rng);
    let (held, cancelled) = (waiting[0], waiting[1]);
    let held_job = job_of(&v, held);
    sh("scontrol", &["hold", &held_job]);
    let cancelled_job = job_of(&v, cancelled);
    sh("scancel", &[&cancelled_job]);
    let (_, v) = r.wait_status(LIMIT, "the held and the cancelled pending task", |v| {
        reason_of(v, held).starts_with("held (JobHeld") && state_of(v, cancelled) == "interrupted"
    });
    assert_eq!(reason_of(&v, cancelled), "cancelled before it started");
    assert_eq!(shard(&v, cancelled)["failed_attempts"], 0);
    let others: Vec<u32> = shards_where(&v, |s| s["state"] == "pending")
        .into_iter()
        .filter(|&s| s != held)
        .collect();
    for s in &others {
        assert!(!reason_of(&v, *s).contains("Held"), "shard {s}: {}", reason_of(&v, *s));
    }
    note(
        &mut tally,
        &mut events,
        "scontrol hold (pending)",
        json!({"shard": held, "task": held_job, "others_not_held": others.len()}),
    );
    note(
        &mut tally,
        &mut events,
        "scancel (pending)",
        json!({"shard": cancelled, "task": cancelled_job, "reason": reason_of(&v, cancelled)}),
    );

    // kill -9 of `status --watch` (while it may be recording outcomes).
    let mut watch = Proc::spawn(&r.logs, &["status", r.dir(), "--watch", "--interval", "1"], &[]);
    std::thread::sleep(Duration::from_millis(rng.random_range(1500..3500)));
    assert!(watch.kill(), "status --watch ended by itself");
    note(&mut tally, &mut events, "kill -9 status --watch", json!({}));

    // scancel, requeue and SIGKILL of three running workers.
    let mut workers = running_workers(&r, &r.status().1);
    assert!(workers.len() >= 3, "{workers:?}");
    workers.shuffle(&mut rng);
    let mut signalled = Vec::new();
    for (kind, (s, job, pid)) in ["scancel (running)", "scontrol requeue (running)", "kill -9 worker"]
        .into_iter()
        .zip(workers.iter().cloned())
    {
        let stop = Stop::new(&r, kind, s, &job);
        match kind {
            "scancel (running)" => {
                sh("scancel", &[&job]);
            }
            "scontrol requeue (running)" => {
                sh("scontrol", &["requeue", &job]);
            }
            _ => {
                sh("kill", &["-KILL", &pid.to_string()]);
            }
        }
        signalled.push((kind, s, job, stop));
    }
    for (kind, s, job, stop) in signalled {
        if kind == "kill -9 worker" {
            let (_, v) = r.wait_status(LIMIT, "the killed worker's failure", |v| {
                state_of(v, s) == "failed" && reason_of(v, s).contains("SIGKILL")
            });
            assert_eq!(shard(&v, s)["failed_attempts"], 1);
            note(
                &mut tally,
                &mut events,
                kind,
                json!({"shard": s, "task": job, "reason": reason_of(&v, s)}),
            );
            continue;
        }
        let check = stop.check(&r, &server, &units);
        let (_, v) = r.wait_status(LIMIT, kind, |v| match kind {
            "scancel (running)" => state_of(v, s) == "interrupted" && reason_of(v, s) == "CANCELLED",
            _ => state_of(v, s) == "pending" && reason_of(v, s).starts_with("requeued"),
        });
        assert_eq!(shard(&v, s)["failed_attempts"], 0, "{kind} does not count");
        let mut what = check;
        what["reason"] = json!(reason_of(&v, s));
        note(&mut tally, &mut events, kind, what);
    }

    // The node DOWN under the running tasks: NODE_FAIL, requeued.
    let (_, v) = r.wait_status(LIMIT, "two tasks running", |v| {
        shards_where(v, |s| s["state"] == "running").len() >= 2
    });
    let hit = shards_where(&v, |s| s["state"] == "running");
    sh(
        "scontrol",
        &[
            "update",
            &format!("nodename={}", host()),
            "state=down",
            "reason=roleplay-chaos",
        ],
    );
    let (_, v) = r.wait_status(Duration::from_secs(90), "a NODE_FAIL requeue", |v| {
        hit.iter().any(|&s| reason_of(v, s).contains("after NODE_FAIL"))
    });
    let failed_nodes: Vec<u32> = hit
        .iter()
        .copied()
        .filter(|&s| reason_of(&v, s).contains("after NODE_FAIL"))
        .collect();
    for &s in &failed_nodes {
        assert_eq!(shard(&v, s)["failed_attempts"], 0, "a node failure does not count");
    }
    // ReturnToService=2 brings the node back as soon as slurmd answers; ask if it does not.
    let start = Instant::now();
    while !sh("sinfo", &["--noheader", "--Node", "--format=%T"])
        .lines()
        .any(|l| ["idle", "mixed", "allocated"].contains(&l.trim()))
    {
        let _ = Command::new("scontrol")
            .args(["update", &format!("nodename={}", host()), "state=resume"])
            .output();
        assert!(start.elapsed() < LIMIT, "the node did not come back");
        std::thread::sleep(Duration::from_secs(1));
    }
    note(
        &mut tally,
        &mut events,
        "node DOWN (NODE_FAIL)",
        json!({"running": hit, "requeued_after_node_fail": failed_nodes, "reason": reason_of(&v, failed_nodes[0])}),
    );

    // Release the held task.
    sh("scontrol", &["release", &held_job]);
    note(
        &mut tally,
        &mut events,
        "scontrol release",
        json!({"shard": held, "task": held_job}),
    );

    // A job of partition `high` that needs every core preempts the running tasks.
    let (_, v) = r.wait_status(Duration::from_secs(90), "tasks running again", |v| {
        !shards_where(v, |s| s["state"] == "running").is_empty()
    });
    let hit = shards_where(&v, |s| s["state"] == "running");
    let stops: Vec<Stop> = hit
        .iter()
        .map(|&s| Stop::new(&r, "preemption (partition high)", s, &job_of(&v, s)))
        .collect();
    let cores = sh("nproc", &[]).trim().to_string();
    let preemptor = sh(
        "sbatch",
        &[
            "--parsable",
            "-p",
            "high",
            "-c",
            &cores,
            "-J",
            "rp-chaos-preemptor",
            "-o",
            "/dev/null",
            "--wrap",
            "sleep 2",
        ],
    )
    .trim()
    .to_string();
    // The preemption comes with a scheduling pass: watch the workers' logs for its SIGTERM.
    let start = Instant::now();
    while !stops.iter().any(|stop| stop.logged(&r)) {
        assert!(start.elapsed() < Duration::from_secs(90), "no preemption within 90 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every running task gets it at once; the ones that finished meanwhile get nothing.
    std::thread::sleep(Duration::from_secs(1));
    let preemption_checks: Vec<Value> = stops
        .iter()
        .filter(|stop| stop.logged(&r))
        .map(|stop| stop.check(&r, &server, &units))
        .collect();
    let (_, v) = r.wait_status(Duration::from_secs(90), "a preemption", |v| {
        hit.iter().any(|&s| reason_of(v, s).contains("after PREEMPTED"))
    });
    let preempted: Vec<u32> = hit
        .iter()
        .copied()
        .filter(|&s| reason_of(&v, s).contains("after PREEMPTED"))
        .collect();
    note(
        &mut tally,
        &mut events,
        "preemption (partition high)",
        json!({"preemptor": preemptor, "running": hit, "requeued_after_preemption": preempted, "reason": reason_of(&v, preempted[0]), "stops": preemption_checks}),
    );

    // A task whose shard is done, requeued: the run is not finished while it waits.
    // (squeue, and so `scontrol requeue`, still knows a finished task for MinJobAge.)
    let start = Instant::now();
    let (target, done_job) = loop {
        let (_, v) = r.status();
        // Done, and its task has ended (not one a requeue already put back in the queue).
        let mut done = shards_where(&v, |s| {
            s["state"] == "done" && !s["reason"].as_str().is_some_and(|r| r.contains("still"))
        });
        done.shuffle(&mut rng);
        let requeued = done.into_iter().map(|s| (s, job_of(&v, s))).find(|(_, job)| {
            Command::new("scontrol")
                .args(["requeue", job])
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if let Some(found) = requeued {
            break found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(150),
            "no shard got done to requeue"
        );
        std::thread::sleep(Duration::from_secs(1));
    };
    let (code, v) = r.wait_status(LIMIT, "a done shard's task queued again", |v| {
        reason_of(v, target).contains("is still queued")
    });
    assert_eq!(state_of(&v, target), "done");
    assert_eq!(code, Some(75));
    assert_eq!(v["finished"], false);
    note(
        &mut tally,
        &mut events,
        "scontrol requeue (done shard)",
        json!({"shard": target, "task": done_job, "reason": reason_of(&v, target)}),
    );

    // Resume until done: the first resume is killed while sbatch runs, and its orphan adopted.
    let mut resumes = 0;
    let mut killed_resume = false;
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let (code, v) = r.wait_status(Duration::from_secs(240), "nothing queued or running", |v| {
            v["finished"] == true
        });
        if code == Some(0) {
            break;
        }
        assert!(Instant::now() < deadline, "not done after {resumes} resumes:\n{v}");
        assert_eq!(code, Some(1), "{v}");
        if !killed_resume {
            let job = r.kill_during_sbatch(&slow, &["resume", r.dir()]);
            let again = r.cmd(&["resume", r.dir()]);
            again.expect_code(0);
            assert!(
                again
                    .stderr
                    .contains(&format!("had no recorded answer but is queued as job {job}: recorded")),
                "{}",
                again.text()
            );
            assert!(again.stderr.contains("nothing to resubmit"), "{}", again.text());
            killed_resume = true;
            note(
                &mut tally,
                &mut events,
                "kill -9 resume",
                json!({"orphan": job, "adopted_from": "squeue"}),
            );
        } else {
            r.cmd(&["resume", r.dir()]).expect_code(0);
        }
        resumes += 1;
    }
    assert!(
        killed_resume,
        "the run needed no resume: the events did not interrupt it"
    );
    let (_, v) = r.status();
    assert_eq!(v["complete"], true);
    assert_eq!(
        shard(&v, cancelled)["failed_attempts"],
        0,
        "a cancel before the start never counts"
    );

    // The orphan of the second run ran and left the queue: the next submit finds it in sacct.
    // (squeue fails with "Invalid job id specified" once it has forgotten the job.)
    let start = Instant::now();
    while Command::new("squeue")
        .args(["--noheader", "--states=all", &format!("--jobs={orphan_job}")])
        .output()
        .is_ok_and(|o| o.status.success() && !o.stdout.is_empty())
    {
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "squeue still knows the orphan {orphan_job}"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let adopted = orphan_run.cmd(&["submit", orphan_run.dir()]);
    adopted.expect_code(0);
    assert!(
        adopted.stderr.contains(&format!("sacct knows it as job {orphan_job}")),
        "{}",
        adopted.text()
    );
    let (code, ov) = orphan_run.wait_status(LIMIT, "the orphan run done", |v| v["finished"] == true);
    assert_eq!(code, Some(0), "{ov}");
    assert_eq!(shard(&ov, 0)["submissions"], 1, "one job: the orphan");
    note(
        &mut tally,
        &mut events,
        "orphan left the queue (adopted from sacct)",
        json!({"orphan": orphan_job}),
    );

    // Every unit once: the journals, then the dataset through pyarrow.
    let records = assert_every_unit_done_once(&r.run);
    assert!(
        records.values().all(|d| !d.ending.reason.is_failure()),
        "failed dialogues"
    );
    r.cmd(&["merge", r.dir()]).expect_code(0);
    let check = pyarrow_check(&r.run.join("out/dialogues.parquet"), &units_tsv(&r.run));
    assert_eq!(check["rows"], 60, "{check}");
    assert_eq!(check["distinct"], 60, "{check}");
    assert_eq!(check["duplicated"], json!([]), "{check}");
    assert_eq!(check["missing"], json!([]), "{check}");
    assert_eq!(check["unplanned"], json!([]), "{check}");
    let subs = roleplay::slurm::records::Submissions::read(&roleplay::rundir::RunDir::new(&r.run)).unwrap();
    assert!(subs.damaged_lines.is_empty(), "{:?}", subs.damaged_lines);
    assert!(subs.unresolved().is_empty());

    for kind in [
        "kill -9 submit",
        "kill -9 status --watch",
        "kill -9 resume",
        "scancel (pending)",
        "scancel (running)",
        "scontrol requeue (running)",
        "scontrol requeue (done shard)",
        "kill -9 worker",
        "node DOWN (NODE_FAIL)",
        "preemption (partition high)",
        "scontrol hold (pending)",
        "scontrol release",
        "orphan left the queue (adopted from sacct)",
    ] {
        assert!(tally.contains_key(kind), "no `{kind}` event");
    }
    let stats = server.stats();
    let journaled: u64 = journaled_calls(&r.run).values().sum();
    let served: u64 = served_of(&stats).values().sum();
    let history_runs: usize = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["history"].as_array().map_or(0, Vec::len))
        .sum();
    record_figures(
        "slurm-chaos",
        json!({
            "seed": seed,
            "units": 60,
            "shards": n_shards,
            "events": tally,
            "event_log": events,
            "resumes": resumes,
            "rounds": subs.next_round(),
            "task_runs_in_history": history_runs,
            "calls_journaled": journaled,
            "calls_served": served,
            "calls_served_again": served.saturating_sub(journaled),
            "requests": stats["requests"],
            "dataset_rows": check["rows"],
            "duplicates": 0,
            "total_secs": t0.elapsed().as_secs_f64(),
        }),
    );
}
