//! The cluster workflow end to end (render, submit, status, resume, cancel, merge) on the real
//! single-node cluster of `scripts/slurm-cluster up`, with the `sim` template and the quickstart grid
//! (`jobs/quickstart-slurm.toml`, 60 units in 6 shards); plus offline snapshots of rendered scripts,
//! injection and secret checks, which need no cluster.
//!
//! The cluster tests fail (never skip) without the cluster, and hold one lock each: they share it,
//! and two of them reconfigure it (MaxArraySize 4; no accounting), restoring the default with a plain
//! `up` when they end, also on failure. `cargo test --test slurm_flow` takes about 4 minutes.

use crate::common::ClusterGuard;
use assert_cmd::Command as Cmd;
use serde_json::Value;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Takes the cluster for one test, after checking that `sinfo` answers with a usable node.
fn cluster() -> ClusterGuard {
    crate::common::take_cluster()
}

/// The cluster reconfigured by `scripts/slurm-cluster up ARGS`; a plain `up` restores it on drop.
struct Reconfigured;

impl Reconfigured {
    fn up(args: &[&str]) -> Reconfigured {
        let guard = Reconfigured;
        slurm_cluster_up(args);
        guard
    }
}

impl Drop for Reconfigured {
    fn drop(&mut self) {
        slurm_cluster_up(&[]);
    }
}

fn slurm_cluster_up(args: &[&str]) {
    let out = Command::new(repo().join("scripts/slurm-cluster"))
        .arg("up")
        .args(args)
        .output()
        .expect("scripts/slurm-cluster");
    assert!(
        out.status.success(),
        "scripts/slurm-cluster up {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn roleplay() -> Cmd {
    let mut c = Cmd::cargo_bin("roleplay").unwrap();
    c.timeout(Duration::from_secs(120));
    c
}

struct Out {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run(args: &[&str]) -> Out {
    let out = roleplay().args(args).output().expect("roleplay runs");
    Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn ok(args: &[&str]) -> Out {
    let out = run(args);
    assert_eq!(out.code, 0, "roleplay {args:?}:\n{}\n{}", out.stdout, out.stderr);
    out
}

/// A copy of the quickstart grid on Slurm in a temp dir, planned into `<tmp>/run`.
struct Run {
    _dir: tempfile::TempDir,
    run: PathBuf,
}

impl Run {
    fn new(throttle: u32, grace_secs: f64) -> Run {
        Run::with(throttle, grace_secs, "run", |t| t)
    }

    fn with(throttle: u32, grace_secs: f64, run_dir: &str, edit: impl Fn(String) -> String) -> Run {
        let dir = tempfile::tempdir().unwrap();
        let text = std::fs::read_to_string(repo().join("jobs/quickstart-slurm.toml")).unwrap();
        let text = text
            .replace(
                "run_dir = \"../runs/quickstart-slurm\"",
                &format!("run_dir = {}", toml_string(run_dir)),
            )
            .replace("array_throttle = 4", &format!("array_throttle = {throttle}"))
            .replace("grace_secs = 20", &format!("grace_secs = {grace_secs:?}"));
        let text = edit(text);
        let file = dir.path().join("quickstart-slurm.toml");
        std::fs::write(&file, text).unwrap();
        ok(&["plan", file.to_str().unwrap()]);
        let run = dir.path().join(run_dir);
        Run { _dir: dir, run }
    }

    fn dir(&self) -> &str {
        self.run.to_str().unwrap()
    }

    fn status(&self, extra: &[&str]) -> (i32, Value) {
        let mut args = vec!["status", self.dir(), "--json"];
        args.extend_from_slice(extra);
        let out = run(&args);
        let v: Value = serde_json::from_str(&out.stdout)
            .unwrap_or_else(|e| panic!("status --json: {e}\n{}\n{}", out.stdout, out.stderr));
        (out.code, v)
    }

    /// Polls status every 2 s until `probe` accepts it, for at most `limit`.
    fn wait_status(&self, limit: Duration, what: &str, extra: &[&str], probe: impl Fn(&Value) -> bool) -> Value {
        let start = Instant::now();
        loop {
            let (_, v) = self.status(extra);
            if probe(&v) {
                return v;
            }
            assert!(
                start.elapsed() < limit,
                "gave up after {} s waiting for {what}; last status:\n{}",
                limit.as_secs(),
                serde_json::to_string_pretty(&v["shards"]).unwrap()
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// `status --watch` until nothing is queued or running: every shard done.
    fn watch_to_completion(&self, limit: Duration) {
        let out = roleplay()
            .timeout(limit)
            .args(["status", self.dir(), "--watch", "--interval", "2"])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(
            out.status.code(),
            Some(0),
            "status --watch did not end with every shard done:\n{}\n{}",
            stdout.lines().rev().take(20).collect::<Vec<_>>().join("\n"),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(stdout.contains("every shard is done"), "{stdout}");
    }

    fn state(&self, shard: u32) -> Option<Value> {
        let path = self.run.join(format!("state/shard-{shard:05}.json"));
        serde_json::from_slice(&std::fs::read(path).ok()?).ok()
    }

    /// Every planned unit has exactly one finished record in the journals, and merge writes all 60.
    fn assert_every_unit_exactly_once(&self) {
        let rd = roleplay::rundir::RunDir::new(&self.run);
        let plan = rd.load_plan().unwrap();
        let units = roleplay::plan::read_units(&rd.units_path(&plan)).unwrap();
        let mut done: HashMap<String, usize> = HashMap::new();
        for shard in 0..plan.shards.len() as u32 {
            let contents = roleplay::rundir::journal::read(&rd.journal_path(shard))
                .unwrap()
                .unwrap();
            for e in contents.entries {
                if let roleplay::rundir::journal::Entry::Done(d) = e {
                    assert!(!d.ending.reason.is_failure(), "unit {} failed: {:?}", d.unit, d.ending);
                    *done.entry(d.unit.to_string()).or_default() += 1;
                }
            }
        }
        assert_eq!(units.len(), 60);
        for u in &units {
            assert_eq!(
                done.get(&u.id.to_string()),
                Some(&1),
                "unit {} of shard {}",
                u.id,
                u.shard
            );
        }
        assert_eq!(done.len(), units.len(), "no record of an unplanned unit");
        let merged = ok(&["merge", self.dir()]);
        assert!(
            merged.stderr.contains("60 of 60 planned dialogues merged"),
            "{}",
            merged.stderr
        );
        assert!(self.run.join("out/dialogues.parquet").is_file());
    }
}

impl Drop for Run {
    fn drop(&mut self) {
        // Whatever the test left queued.
        let _ = roleplay().args(["cancel", self.dir()]).output();
    }
}

fn toml_string(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

fn shard(v: &Value, s: usize) -> &Value {
    &v["shards"][s]
}

fn state_of(v: &Value, s: usize) -> String {
    shard(v, s)["state"].as_str().unwrap_or("").to_string()
}

fn reason_of(v: &Value, s: usize) -> String {
    shard(v, s)["reason"].as_str().unwrap_or("").to_string()
}

/// Waits until every shard's worker runs (state file with this task and a pid).
fn wait_workers_running(r: &Run, shards: &[u32]) -> HashMap<u32, (String, u32)> {
    let start = Instant::now();
    loop {
        let found: HashMap<u32, (String, u32)> = shards
            .iter()
            .filter_map(|&s| {
                let st = r.state(s)?;
                (st["status"] == "running").then(|| {
                    (
                        s,
                        (
                            st["slurm_job_id"].as_str().unwrap_or("").to_string(),
                            st["pid"].as_u64().unwrap_or(0) as u32,
                        ),
                    )
                })
            })
            .collect();
        if found.len() == shards.len() {
            return found;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "workers did not all start: {found:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn slurm(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sigkill(pid: u32) {
    slurm("kill", &["-KILL", &pid.to_string()]);
}

// ---------------------------------------------------------------------------------------------
// On the cluster

#[test]
fn submit_watch_merge_every_unit_exactly_once() {
    let _lock = cluster();
    let t0 = Instant::now();
    let r = Run::new(4, 30.0);
    let dry = ok(&["submit", r.dir(), "--dry-run"]);
    assert_eq!(dry.stdout.trim(), "sbatch --parsable slurm/round-000-array-0.sbatch");
    let tested = ok(&["submit", r.dir(), "--test-only"]);
    assert!(tested.stdout.contains("to start at"), "{}", tested.stdout);
    assert!(
        !r.run.join("slurm/submissions.jrnl").exists(),
        "dry runs record nothing"
    );

    let submitted = ok(&["submit", r.dir(), "--merge-job"]);
    let ids: Vec<u64> = submitted.stdout.lines().map(|l| l.trim().parse().unwrap()).collect();
    assert_eq!(ids.len(), 2, "the array and the merge job: {}", submitted.stderr);
    let again = ok(&["submit", r.dir()]);
    assert!(again.stderr.contains("was submitted already"), "{}", again.stderr);
    assert_eq!(again.stdout.trim(), ids[0].to_string());

    r.watch_to_completion(Duration::from_secs(120));
    let (code, v) = r.status(&[]);
    assert_eq!(code, 0);
    assert_eq!(v["units"]["done"], 60);
    assert_eq!(v["units"]["left"], 0);
    // The merge job ran after the array, by itself.
    let start = Instant::now();
    while !r.run.join("out/dialogues.parquet").is_file() {
        assert!(start.elapsed() < Duration::from_secs(60), "the merge job did not merge");
        std::thread::sleep(Duration::from_secs(1));
    }
    assert!(r.run.join(format!("logs/slurm/merge-{}.out", ids[1])).is_file());
    r.assert_every_unit_exactly_once();
    eprintln!("submit/watch/merge: {:.0} s", t0.elapsed().as_secs_f64());
}

#[test]
fn requeue_cancel_and_sigkill_are_reported_and_resume_finishes() {
    let _lock = cluster();
    let t0 = Instant::now();
    // A short worker grace: a stop abandons in-flight dialogues at once (they resume later).
    let r = Run::new(6, 2.0);
    ok(&["submit", r.dir(), "--sim-server-arg=--latency-ms=1500"]);
    let workers = wait_workers_running(&r, &[0, 1, 2, 3, 4, 5]);
    std::thread::sleep(Duration::from_secs(3));
    let (requeued, cancelled, killed) = (&workers[&0], &workers[&1], &workers[&2]);
    slurm("scontrol", &["requeue", &requeued.0]);
    slurm("scancel", &[&cancelled.0]);
    sigkill(killed.1);

    let v = r.wait_status(Duration::from_secs(60), "the three to be told apart", &[], |v| {
        state_of(v, 0) == "pending"
            && reason_of(v, 0).contains("BeginTime")
            && state_of(v, 1) == "interrupted"
            && state_of(v, 2) == "failed"
    });
    assert_eq!(reason_of(&v, 1), "CANCELLED");
    assert_eq!(shard(&v, 2)["failed_attempts"], 1);
    assert_eq!(shard(&v, 1)["failed_attempts"], 0, "a cancel does not count");
    // sacct, once it caught up, tells how the killed worker ended.
    r.wait_status(Duration::from_secs(60), "sacct's word on the SIGKILL", &[], |v| {
        reason_of(v, 2).contains("SIGKILL")
    });

    // Resume: the cancelled and the killed shard, not the requeued one (queued) nor the running.
    let resumed = ok(&["resume", r.dir(), "--sim-server-arg=--latency-ms=0"]);
    assert!(
        resumed.stderr.contains("resubmitting 2 shards (1-2) as round 1"),
        "{}",
        resumed.stderr
    );
    let (_, v) = r.status(&[]);
    assert!(["pending", "running", "done"].contains(&state_of(&v, 0).as_str()));
    // The requeued task ran again from its journal (BeginTime waits 30 s on the test cluster).
    r.watch_to_completion(Duration::from_secs(150));
    let (_, v) = r.status(&[]);
    assert_eq!(shard(&v, 0)["submissions"], 1, "requeued in place, never resubmitted");
    assert_eq!(shard(&v, 1)["submissions"], 2);
    assert_eq!(shard(&v, 2)["submissions"], 2);
    r.assert_every_unit_exactly_once();
    eprintln!("requeue/cancel/kill/resume: {:.0} s", t0.elapsed().as_secs_f64());
}

#[test]
fn a_run_beyond_max_array_size_splits_into_arrays_and_cancel_then_resume_finish_it() {
    let _lock = cluster();
    let t0 = Instant::now();
    let _restore = Reconfigured::up(&["--max-array-size", "4"]);
    let r = Run::new(4, 2.0);
    let submitted = ok(&["submit", r.dir(), "--sim-server-arg=--latency-ms=300"]);
    assert!(
        submitted
            .stderr
            .contains("array limits: MaxArraySize 4, from `scontrol show config`"),
        "{}",
        submitted.stderr
    );
    assert!(submitted.stderr.contains("round 0 array 0 (--array=0-3%2, shards 0-3)"));
    assert!(submitted.stderr.contains("round 0 array 1 (--array=0-1%2, shards 4-5)"));
    let ids: Vec<String> = submitted.stdout.lines().map(str::to_string).collect();
    assert_eq!(ids.len(), 2);

    // Cancel the whole run: both arrays.
    let cancelled = ok(&["cancel", r.dir()]);
    let mut stopped: Vec<String> = cancelled.stdout.lines().map(str::to_string).collect();
    stopped.sort();
    assert_eq!(stopped, ids);
    let v = r.wait_status(Duration::from_secs(60), "the run to stop", &[], |v| {
        v["finished"] == true
    });
    assert_ne!(v["complete"], true);
    for s in 0..6 {
        let st = state_of(&v, s);
        assert!(
            ["interrupted", "done"].contains(&st.as_str()),
            "shard {s}: {st} ({})",
            reason_of(&v, s)
        );
        assert_eq!(shard(&v, s)["failed_attempts"], 0, "a cancel does not count");
    }
    let again = ok(&["cancel", r.dir()]);
    assert!(again.stderr.contains("no job"), "{}", again.stderr);

    let resumed = ok(&["resume", r.dir()]);
    assert!(resumed.stderr.contains("as round 1"), "{}", resumed.stderr);
    r.watch_to_completion(Duration::from_secs(120));
    r.assert_every_unit_exactly_once();
    eprintln!(
        "MaxArraySize split, cancel, resume: {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}

#[test]
fn without_accounting_status_relies_on_the_records_and_finds_the_lost() {
    let _lock = cluster();
    let t0 = Instant::now();
    let _restore = Reconfigured::up(&["--no-accounting"]);
    let r = Run::new(6, 2.0);
    ok(&["submit", r.dir(), "--sim-server-arg=--latency-ms=2000"]);
    let workers = wait_workers_running(&r, &[0, 1, 2, 3, 4, 5]);
    std::thread::sleep(Duration::from_secs(2));
    slurm("scancel", &[&workers[&1].0]);
    sigkill(workers[&2].1);
    // Nobody looks while squeue still remembers the two; then they have left it (MinJobAge 30 s).
    let task = |s: u32| workers[&s].0.clone();
    let start = Instant::now();
    loop {
        let out = Command::new("squeue")
            .args([
                "--noheader",
                "--states=all",
                "--format=%i",
                "--jobs",
                &format!("{},{}", task(1), task(2)),
            ])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        if !text.contains(&task(1)) && !text.contains(&task(2)) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "squeue did not forget {text}"
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let (_, v) = r.status(&["--lost-after", "5"]);
    assert_eq!(v["accounting"], "disabled on this cluster", "{v}");
    assert_eq!(state_of(&v, 1), "interrupted", "{}", reason_of(&v, 1));
    assert!(reason_of(&v, 1).contains("exit 75"), "{}", reason_of(&v, 1));
    assert_eq!(state_of(&v, 2), "lost", "{}", reason_of(&v, 2));
    assert!(reason_of(&v, 2).contains("gone from the queue"));
    // Offline, from the run's records alone.
    let offline = run(&["status", r.dir(), "--offline", "--lost-after", "5"]);
    assert_eq!(
        offline.code, 1,
        "nothing queued or running, not done: {}",
        offline.stderr
    );
    assert!(offline.stdout.contains("queue: not asked"), "{}", offline.stdout);
    assert!(
        offline.stdout.contains("resubmits 2 shards (1-2)"),
        "{}",
        offline.stdout
    );

    let resumed = ok(&[
        "resume",
        r.dir(),
        "--lost-after",
        "5",
        "--sim-server-arg=--latency-ms=0",
    ]);
    assert!(resumed.stderr.contains("shards (1-2)"), "{}", resumed.stderr);
    r.watch_to_completion(Duration::from_secs(120));
    r.assert_every_unit_exactly_once();
    eprintln!("no accounting, lost, resume: {:.0} s", t0.elapsed().as_secs_f64());
}

/// The grid with one persona whose feature value is `value`.
fn one_persona(text: String, value: &str) -> String {
    let start = text.find("[personas.sample]").unwrap();
    let end = text.find("# Goals").unwrap();
    format!(
        "{}fixed = [{{ age = {}, race = \"x\", gender = \"y\", education = \"z\", native_english = \"is\" }}]\n\n{}",
        &text[..start],
        toml_string(value),
        &text[end..]
    )
}

#[test]
fn hostile_run_dir_and_persona_survive_the_cluster_and_vllm_passes_test_only() {
    let _lock = cluster();
    let t0 = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let payload = format!("$(touch {m}) `touch {m}` \"'", m = marker.display());
    let hostile = "runs/it's a \"$(touch pwned)\" `touch pwned` dir";
    let r = Run::with(6, 30.0, hostile, |t| one_persona(t, &payload));
    ok(&["submit", r.dir()]);
    r.watch_to_completion(Duration::from_secs(120));
    assert!(!marker.exists(), "a command in the persona ran");
    assert!(
        !r.run.parent().unwrap().join("pwned").exists(),
        "a command in the path ran"
    );
    let script = std::fs::read_to_string(r.run.join("slurm/round-000-array-0.sbatch")).unwrap();
    assert!(!script.contains(&marker.display().to_string()), "{script}");
    assert!(
        script.contains("# --output and --error come on the sbatch command line"),
        "{script}"
    );
    let journal = std::fs::read_to_string(r.run.join("slurm/submissions.jrnl")).unwrap();
    assert!(
        journal.contains("--output="),
        "the log path went on the command line: {journal}"
    );
    assert_eq!(
        std::fs::read_dir(r.run.join("logs/slurm")).unwrap().count(),
        2,
        "two shards, two logs"
    );

    // The vllm template cannot run here (no GPU, no vLLM), but Slurm accepts its scripts.
    let v = Run::with(4, 30.0, "run", |t| {
        t.replace("template = \"sim\"", "template = \"vllm\"")
    });
    let tested = ok(&["submit", v.dir(), "--test-only"]);
    assert_eq!(
        tested.stdout.matches("to start at").count(),
        2,
        "one array per pair: {}",
        tested.stdout
    );
    eprintln!(
        "hostile values on the cluster, vllm --test-only: {:.0} s",
        t0.elapsed().as_secs_f64()
    );
}

// ---------------------------------------------------------------------------------------------
// Offline

/// A planned quickstart-slurm copy with `edit`, rendered with `--max-array-size 4`.
fn rendered(edit: impl Fn(String) -> String, env: &[(&str, &str)]) -> (tempfile::TempDir, PathBuf, Out) {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"");
    let file = dir.path().join("experiment.toml");
    std::fs::write(&file, edit(text)).unwrap();
    ok(&["plan", file.to_str().unwrap()]);
    let run_dir = dir.path().join("run");
    let mut cmd = roleplay();
    cmd.args(["render", run_dir.to_str().unwrap(), "--max-array-size", "4"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let out = Out {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    (dir, run_dir, out)
}

/// The script with machine-specific parts replaced: temp dir, binary, version, plan hash, run key.
fn redacted(run_dir: &Path, name: &str) -> String {
    let text = std::fs::read_to_string(run_dir.join("slurm").join(name)).unwrap();
    let rd = roleplay::rundir::RunDir::new(run_dir);
    let plan = rd.load_plan().unwrap();
    let canonical = std::fs::canonicalize(run_dir).unwrap();
    let key = roleplay::slurm::render::run_key(&plan.plan_hash, &canonical);
    let exe = assert_cmd::cargo::cargo_bin("roleplay");
    text.replace(canonical.to_str().unwrap(), "[RUN_DIR]")
        .replace(exe.to_str().unwrap(), "[ROLEPLAY]")
        .replace(&plan.plan_hash, "[PLAN_HASH]")
        .replace(&key, "[KEY]")
        .replace(&format!("roleplay {}", env!("CARGO_PKG_VERSION")), "roleplay [VERSION]")
}

fn bash_n(path: &Path) {
    let out = Command::new("bash").arg("-n").arg(path).output().unwrap();
    assert!(
        out.status.success(),
        "bash -n {}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn snapshot_sim_template() {
    let (_d, run_dir, out) = rendered(|t| t, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(
        out.stderr.contains("6 shards in 2 arrays (MaxArraySize 4, as given)"),
        "{}",
        out.stderr
    );
    for k in 0..2 {
        bash_n(&run_dir.join(format!("slurm/round-000-array-{k}.sbatch")));
    }
    insta::assert_snapshot!("slurm_sim_array_0", redacted(&run_dir, "round-000-array-0.sbatch"));
    insta::assert_snapshot!("slurm_sim_map_1", redacted(&run_dir, "round-000-array-1.json"));
}

#[test]
fn snapshot_api_template_names_keys_never_holds_them() {
    let secret = "sk-test-do-not-leak-0123456789abcdef";
    let (_d, run_dir, out) = rendered(
        |t| {
            t.replace("template = \"sim\"", "template = \"api\"\npartition = \"cpu\"\naccount = \"proj-1\"\nsetup = [\"module load python/3.11\"]")
                .replace(
                    "base_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"sim-assistant\"",
                    "base_url = \"https://api.example.com/v1\"\nmodel = \"sim-assistant\"\napi_key_env = \"ROLEPLAY_FLOW_TEST_KEY\"",
                )
        },
        &[("ROLEPLAY_FLOW_TEST_KEY", secret)],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    for entry in std::fs::read_dir(run_dir.join("slurm")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(secret), "a key was written into a script");
    }
    let script = redacted(&run_dir, "round-000-array-0.sbatch");
    assert!(
        script.contains("ROLEPLAY_FLOW_TEST_KEY"),
        "the variable's name is checked"
    );
    bash_n(&run_dir.join("slurm/round-000-array-0.sbatch"));
    insta::assert_snapshot!("slurm_api_array_0", script);
}

#[test]
fn snapshot_vllm_template_one_array_per_pair() {
    let (_d, run_dir, out) = rendered(
        |t| t.replace("template = \"sim\"", "template = \"vllm\"\ngpus = \"a100:2\""),
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("6 shards in 2 arrays"), "{}", out.stderr);
    for k in 0..2 {
        bash_n(&run_dir.join(format!("slurm/round-000-array-{k}.sbatch")));
    }
    insta::assert_snapshot!("slurm_vllm_array_0", redacted(&run_dir, "round-000-array-0.sbatch"));
}

/// The `vllm` template with `vllm_replicas = 2` on 4 GPUs, run as a Slurm task would run it (no
/// cluster needed: the batch script under bash with the array task's variables) with a fake
/// `vllm` that records its GPUs and serves the simulator on the port it is given: two servers per
/// model, each on its own two GPUs, and the worker, given both URLs, finishes its shard on them.
#[test]
fn vllm_replicas_split_the_gpus_and_the_worker_uses_every_replica() {
    let (dir, run_dir, out) = rendered(
        |t| {
            t.replace(
                "template = \"sim\"",
                "template = \"vllm\"\ngpus = \"a100:4\"\nvllm_replicas = 2",
            )
        },
        &[],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    let script = run_dir.join("slurm/round-000-array-0.sbatch");
    bash_n(&script);
    let bin = dir.path().join("fakebin");
    std::fs::create_dir_all(&bin).unwrap();
    let log = dir.path().join("vllm.log");
    let roleplay = assert_cmd::cargo::cargo_bin("roleplay");
    let fake = format!(
        "#!/bin/bash\n# vllm serve MODEL --host H --port P ...: log, then serve the simulator there.\n\
         port=\"\"; while [ $# -gt 0 ]; do [ \"$1\" = --port ] && port=$2; shift; done\n\
         echo \"gpus=$CUDA_VISIBLE_DEVICES port=$port\" >> {log}\n\
         exec {roleplay} sim-server --host 127.0.0.1 --port \"$port\"\n",
        log = log.display(),
        roleplay = roleplay.display()
    );
    let vllm = bin.join("vllm");
    std::fs::write(&vllm, fake).unwrap();
    std::fs::set_permissions(&vllm, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let status = Command::new("bash")
        .arg(&script)
        .env("PATH", path)
        .env("SLURM_ARRAY_JOB_ID", "1")
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env_remove("CUDA_VISIBLE_DEVICES")
        .output()
        .unwrap();
    assert!(
        status.status.success(),
        "the script failed:\n{}{}",
        String::from_utf8_lossy(&status.stdout),
        String::from_utf8_lossy(&status.stderr)
    );
    let started = std::fs::read_to_string(&log).unwrap();
    let mut gpus: Vec<&str> = started.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    gpus.sort();
    assert_eq!(
        gpus,
        vec!["gpus=0,1", "gpus=0,1", "gpus=2,3", "gpus=2,3"],
        "two replicas of each of the pair's two models, each on its own GPUs:\n{started}"
    );
    // The shard of array index 0 is done, on the replicas the script started.
    let rd = roleplay::rundir::RunDir::new(&run_dir);
    let map: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(run_dir.join("slurm/round-000-array-0.json")).unwrap()).unwrap();
    let shard = map["shards"][0].as_u64().unwrap() as u32;
    let state = roleplay::rundir::state::read(&rd, shard).expect("the worker wrote its state");
    assert_eq!(
        (state.done, state.status),
        (state.units, roleplay::rundir::state::ShardStatus::Done)
    );
}

#[test]
fn snapshot_merge_job_and_dry_run_commands() {
    let (_d, run_dir, out) = rendered(|t| t, &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let dry = ok(&["submit", run_dir.to_str().unwrap(), "--dry-run", "--merge-job"]);
    assert_eq!(
        dry.stdout.lines().collect::<Vec<_>>(),
        vec![
            "sbatch --parsable slurm/round-000-array-0.sbatch",
            "sbatch --parsable slurm/round-000-array-1.sbatch",
            "sbatch --parsable slurm/round-000-merge.sbatch",
        ]
    );
    bash_n(&run_dir.join("slurm/round-000-merge.sbatch"));
    insta::assert_snapshot!("slurm_merge_job", redacted(&run_dir, "round-000-merge.sbatch"));
}

#[test]
fn hostile_values_are_refused_or_quoted_and_nothing_runs() {
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("pwned");
    let payload = format!("$(touch {m})`touch {m}`'\"", m = marker.display());
    // An experiment name is checked when planning: it becomes part of job names.
    let file = dir.path().join("bad-name.toml");
    let text = std::fs::read_to_string(repo().join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace(
            "name = \"quickstart-slurm\"",
            &format!("name = {}", toml_string(&payload)),
        )
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"");
    std::fs::write(&file, text).unwrap();
    let refused = run(&["plan", file.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(refused.stderr.contains("name"), "{}", refused.stderr);

    // A run directory and a persona full of shell: quoted, or never in the script at all.
    let (_d, run_dir, out) = rendered(|t| one_persona(t, &payload), &[]);
    assert_eq!(out.code, 0, "{}", out.stderr);
    let hostile_dir = run_dir
        .parent()
        .unwrap()
        .join("it's \"$(touch pwned)\" `touch pwned` here");
    std::fs::rename(&run_dir, &hostile_dir).unwrap();
    let rendered_again = ok(&["render", hostile_dir.to_str().unwrap(), "--max-array-size", "4"]);
    assert!(rendered_again.stdout.contains("round-000-array-0.sbatch"));
    // One persona: 12 units, one shard per pair, one array.
    let path = hostile_dir.join("slurm/round-000-array-0.sbatch");
    bash_n(&path);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(
        !text.contains(&marker.display().to_string()),
        "persona text reached a script"
    );
    assert!(!text.contains("#SBATCH --output"), "an unsafe path in an #SBATCH line");
    // Run the script as a job would (without Slurm): its sim-server and the worker on the shard of
    // array 0, index 0, and nothing else.
    let out = Command::new("bash")
        .arg(hostile_dir.join("slurm/round-000-array-0.sbatch"))
        .current_dir(dir.path())
        .env("SLURM_ARRAY_JOB_ID", "1")
        .env("SLURM_ARRAY_TASK_ID", "0")
        .env("TMPDIR", dir.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("shard 0: 6 of 6 dialogues finished"),
        "the worker ran shard 0: {stderr}"
    );
    assert!(!marker.exists(), "a command in a value ran");
    assert!(!dir.path().join("pwned").exists());
    assert!(!hostile_dir.parent().unwrap().join("pwned").exists());

    // A run directory Slurm would misread is refused with a clear error.
    let pct = hostile_dir.parent().unwrap().join("100%");
    std::fs::rename(&hostile_dir, &pct).unwrap();
    let e = run(&["render", pct.to_str().unwrap(), "--max-array-size", "4"]);
    assert_eq!(e.code, 2, "{}", e.stderr);
    assert!(e.stderr.contains("Slurm reads"), "{}", e.stderr);
    assert!(e.stderr.contains("hint:"), "{}", e.stderr);
}

/// "failed" is the word for tasks: the units line says `with backend errors`; and a `merge` that
/// exits 1 says that it wrote a partial dataset all the same (README: "What status reports").
#[test]
fn status_words_for_units_and_a_partial_merge_says_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(repo().join("jobs/quickstart-slurm.toml"))
        .unwrap()
        .replace("run_dir = \"../runs/quickstart-slurm\"", "run_dir = \"run\"");
    let file = dir.path().join("experiment.toml");
    std::fs::write(&file, text).unwrap();
    ok(&["plan", file.to_str().unwrap()]);
    let run_dir = dir.path().join("run");
    let status = run(&["status", run_dir.to_str().unwrap(), "--offline"]);
    assert_eq!(status.code, 1, "{}", status.stdout);
    assert!(
        status.stdout.contains("units: 0 done, 0 with backend errors, 60 left"),
        "{}",
        status.stdout
    );
    assert!(status.stdout.contains("failed runs"), "{}", status.stdout);
    let merged = run(&["merge", run_dir.to_str().unwrap()]);
    assert_eq!(merged.code, 1, "{}", merged.stderr);
    assert!(run_dir.join("out/dialogues.parquet").is_file());
    assert!(
        merged.stderr.contains("written all the same") && merged.stderr.contains("a partial dataset (exit 1)"),
        "{}",
        merged.stderr
    );
}
