//! `roleplay judge`: the judge stage on the quickstart, offline (the simulator's judge mode); judging
//! again and re-planning reuse every verdict whose inputs did not change; killed with SIGKILL
//! mid-stage against a real `roleplay sim-server` and resumed, every dialogue is judged once and no
//! completed call is made again; the verdicts read back by pyarrow, polars and DuckDB; and a judge
//! stage as a Slurm array with the `sim` template on the real cluster.

use crate::common::{Out, Proc, SimServer, roleplay};
use roleplay::judgement::{Status, Verdict};
use roleplay::plan::UnitId;
use roleplay::rundir::RunDir;
use roleplay::rundir::journal::Entry;
use serde_json::{Value, json};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const LIMIT: Duration = Duration::from_secs(120);

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn run(dir: &Path, args: &[&str]) -> Out {
    roleplay(&dir.join("logs"), args, &[], LIMIT)
}

/// The quickstart experiment, run in `dir/run` (in-process simulator, 60 dialogues).
fn quickstart(dir: &Path) -> PathBuf {
    let text = std::fs::read_to_string(repo().join("jobs/quickstart.toml"))
        .unwrap()
        .replace("run_dir = \"../runs/quickstart\"", "run_dir = \"run\"");
    let file = dir.join("quickstart.toml");
    std::fs::write(&file, text).unwrap();
    run(dir, &["run", file.to_str().unwrap(), "--no-progress"]).expect_code(0);
    dir.join("run")
}

/// A judge file in `dir`: `models` are `[[models]]` tables, `extra` further tables.
fn judge_file(dir: &Path, file: &str, models: &str, extra: &str) -> PathBuf {
    let path = dir.join(file);
    std::fs::write(&path, format!("name = \"j\"\nmax_malformed = 2\n{models}\n{extra}\n")).unwrap();
    path
}

const SIM_JUDGE: &str = "[[models]]\nname = \"sim-judge\"\nbackend = \"sim\"\n[models.sim]\nmalformed_rate = 0.3\n";

/// The planned units of a stage (id -> judged dialogue).
fn stage_units(stage: &Path) -> HashMap<UnitId, UnitId> {
    let rd = RunDir::new(stage);
    let plan = rd.load_plan().unwrap();
    roleplay::rundir::judge_units::read(&rd.units_path(&plan), None)
        .unwrap()
        .into_iter()
        .map(|u| (u.id, u.parent))
        .collect()
}

/// Every record of a stage's journals.
fn entries(stage: &Path) -> Vec<Entry> {
    crate::common::journals(stage)
        .into_values()
        .flat_map(|c| {
            assert!(c.damaged_lines.is_empty(), "damaged journal records");
            c.entries
        })
        .collect()
}

fn call_keys(stage: &Path) -> Vec<String> {
    entries(stage)
        .iter()
        .filter_map(|e| match e {
            Entry::Call(c) => Some(crate::common::call_key(c)),
            _ => None,
        })
        .collect()
}

/// Every planned unit has exactly one verdict and one `done` mark, its calls are its attempts
/// 0..calls once each, and nothing else is recorded. Returns the verdicts.
fn assert_every_unit_judged_once(stage: &Path) -> HashMap<UnitId, Verdict> {
    let units = stage_units(stage);
    let mut verdicts: HashMap<UnitId, Vec<Verdict>> = HashMap::new();
    let mut done: HashMap<UnitId, u32> = HashMap::new();
    let mut calls: HashMap<UnitId, Vec<u32>> = HashMap::new();
    for e in entries(stage) {
        match e {
            Entry::Verdict(v) => verdicts.entry(v.unit).or_default().push(*v),
            Entry::Done(d) => *done.entry(d.unit).or_default() += 1,
            Entry::Call(c) => calls.entry(c.key.unit).or_default().push(c.key.attempt),
            Entry::Attempt(_) => {}
        }
    }
    assert_eq!(
        verdicts.keys().collect::<HashSet<_>>(),
        units.keys().collect::<HashSet<_>>(),
        "every planned unit has a verdict, and only they"
    );
    let mut out = HashMap::new();
    for (id, vs) in verdicts {
        assert_eq!(vs.len(), 1, "unit {id} judged {} times", vs.len());
        assert_eq!(done.get(&id), Some(&1), "unit {id}: one done mark");
        let v = vs.into_iter().next().unwrap();
        assert_eq!(v.parent, units[&id]);
        let mut attempts = calls.remove(&id).unwrap_or_default();
        attempts.sort_unstable();
        assert_eq!(
            attempts,
            (0..v.calls).collect::<Vec<_>>(),
            "unit {id}: its calls, once each"
        );
        match v.status {
            Status::Ok => assert!(v.scores.is_some() && v.errors.len() as u32 == v.calls - 1),
            Status::Unparsable => assert!(v.raw_output.is_some() && v.errors.len() as u32 == v.calls),
            Status::Failed => assert!(v.failure.is_some()),
        }
        out.insert(id, v);
    }
    out
}

/// Finished, non-failed dialogues of the run with at least one message: what is judged.
fn judgeable(run: &Path) -> HashSet<UnitId> {
    crate::common::done_records(run)
        .into_iter()
        .filter(|(_, r)| {
            let r = r.last().unwrap();
            !r.ending.reason.is_failure()
                && (!r.turns.is_empty() || r.ending.reason == roleplay::dialogue::EndReason::Stop)
        })
        .map(|(id, _)| id)
        .collect()
}

#[test]
fn the_quickstart_is_judged_offline_and_judging_again_reuses_every_verdict() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = quickstart(dir.path());
    let judge = judge_file(
        dir.path(),
        "judge.toml",
        SIM_JUDGE,
        "[sharding]\nunits_per_shard = 20\n",
    );
    let (r, j) = (run_dir.to_str().unwrap(), judge.to_str().unwrap());
    let first = run(dir.path(), &["judge", r, j, "--no-progress"]);
    first.expect_code(0);
    assert!(first.stdout.contains("planned"), "{}", first.text());
    let stage = run_dir.join("judge/j");
    let verdicts = assert_every_unit_judged_once(&stage);
    let wanted = judgeable(&run_dir);
    assert_eq!(verdicts.values().map(|v| v.parent).collect::<HashSet<_>>(), wanted);
    let by = |s: Status| verdicts.values().filter(|v| v.status == s).count();
    let re_asked = verdicts.values().filter(|v| v.calls > 1).count();
    assert!(re_asked > 0, "a malformed rate of 0.3 re-asks some");
    assert_eq!(by(Status::Failed), 0);
    assert!(run_dir.join("out/judgements.parquet").is_file());
    // The simulated judge: achieved exactly when the dialogue ended with the stop token.
    let records = crate::common::done_records(&run_dir);
    for v in verdicts.values().filter(|v| v.status == Status::Ok) {
        let stop = records[&v.parent].last().unwrap().ending.reason == roleplay::dialogue::EndReason::Stop;
        let s = v.scores.as_ref().unwrap();
        assert_eq!(
            s.goal_achieved,
            stop && !records[&v.parent].last().unwrap().turns.is_empty()
        );
    }
    // `status` on the stage, as on any run directory.
    let st = run(dir.path(), &["status", stage.to_str().unwrap(), "--offline", "--json"]);
    st.expect_code(0);
    let v: Value = serde_json::from_str(&st.stdout).unwrap();
    assert_eq!(v["units"]["done"], json!(wanted.len()));

    // Again: nothing to do, no call made.
    let calls = call_keys(&stage).len();
    let again = run(dir.path(), &["judge", r, j, "--no-progress"]);
    again.expect_code(0);
    assert!(again.stderr.contains("up to date"), "{}", again.text());
    assert_eq!(call_keys(&stage).len(), calls);

    // A second judge: a re-plan that keeps every verdict of the first.
    let second =
        format!("{SIM_JUDGE}[[models]]\nname = \"strict\"\nbackend = \"sim\"\n[models.sampling]\ntemperature = 0.0\n");
    let judge2 = judge_file(dir.path(), "judge.toml", &second, "[sharding]\nunits_per_shard = 20\n");
    let before: HashSet<String> = call_keys(&stage).into_iter().collect();
    let out = run(dir.path(), &["judge", r, judge2.to_str().unwrap(), "--no-progress"]);
    out.expect_code(0);
    assert!(
        out.stdout.contains(&format!("{} units kept their id", wanted.len())),
        "{}",
        out.text()
    );
    let after = assert_every_unit_judged_once(&stage);
    assert_eq!(after.len(), 2 * wanted.len());
    for (id, v) in &verdicts {
        assert_eq!(after.get(id), Some(v), "the first judge's verdict is kept as it was");
    }
    let now: Vec<String> = call_keys(&stage);
    assert_eq!(
        now.iter().collect::<HashSet<_>>().len(),
        now.len(),
        "no call journaled twice"
    );
    assert!(before.iter().all(|k| now.contains(k)));

    // A changed rubric changes every unit.
    let rubric = format!(
        "[rubric]\nprompt = \"\"\"{}\"\"\"\n",
        roleplay::plan::stage::DEFAULT_PROMPT.replace("Reply with the JSON object only.", "Only JSON.")
    );
    let judge3 = judge_file(dir.path(), "judge.toml", SIM_JUDGE, &rubric);
    let out = run(dir.path(), &["judge", r, judge3.to_str().unwrap(), "--no-progress"]);
    out.expect_code(0);
    assert!(out.stdout.contains("0 units kept their id"), "{}", out.text());
    assert_every_unit_judged_once(&stage);
    assert!(stage.join("archive").is_dir());

    // The report's judgement section (JSON).
    let rep = run(dir.path(), &["report", r, "--json"]);
    rep.expect_code(0);
    let v: Value = serde_json::from_str(&rep.stdout).unwrap();
    let j0 = &v["judgements"][0];
    assert_eq!(j0["stage"], "j");
    assert_eq!(j0["all"]["verdicts"], json!(wanted.len()));
    assert_eq!(j0["pairs"].as_array().unwrap().len(), 2);
    assert!(j0["all"]["human_likeness_mean"].as_f64().unwrap() >= 1.0);
    let text = run(dir.path(), &["report", r]);
    assert!(text.stdout.contains("judge `j` (sim-judge"), "{}", text.stdout);
    // CSV: the judge rows carry the JSON's counts in the `j_` columns.
    let csv_out = run(dir.path(), &["report", r, "--csv"]);
    csv_out.expect_code(0);
    let mut rdr = csv::Reader::from_reader(csv_out.stdout.as_bytes());
    let header = rdr.headers().unwrap().clone();
    let col = |name: &str| header.iter().position(|h| h == name).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(|r| r.unwrap()).collect();
    let judge_rows: Vec<&csv::StringRecord> = rows
        .iter()
        .filter(|r| r[col("grouping")].starts_with("judge:"))
        .collect();
    let all = judge_rows
        .iter()
        .find(|r| &r[col("grouping")] == "judge:all")
        .expect("a judge:all row");
    assert_eq!(
        (&all[col("j_stage")], &all[col("j_judge")]),
        ("j", j0["judge"].as_str().unwrap())
    );
    assert_eq!(all[col("j_verdicts")].parse::<u64>().unwrap(), wanted.len() as u64);
    assert_eq!(all[col("j_ok")], j0["all"]["ok"].to_string());
    assert_eq!(all[col("dialogues")], *"", "dialogue columns stay empty on judge rows");
    let per_pair: u64 = judge_rows
        .iter()
        .filter(|r| &r[col("grouping")] == "judge:pair")
        .map(|r| r[col("j_verdicts")].parse::<u64>().unwrap())
        .sum();
    assert_eq!(per_pair, wanted.len() as u64);
    let feature_rows = j0["features"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["values"].as_array().unwrap().len())
        .sum::<usize>();
    assert_eq!(judge_rows.len(), 1 + 2 + feature_rows);
    assert!(rows.iter().all(|r| r.len() == header.len()));
    // HTML: a table per judge, its first row all the verdicts.
    let page = dir.path().join("report.html");
    run(dir.path(), &["report", r, "--html", page.to_str().unwrap()]).expect_code(0);
    let html = std::fs::read_to_string(&page).unwrap();
    let (_, section) = html.split_once("<h2>Judgements</h2>").expect("a judgement section");
    let first_row = format!(
        "<tr><td class=\"k\">all</td><td>{}</td><td>{}</td>",
        wanted.len(),
        j0["all"]["ok"]
    );
    assert!(section.contains(&first_row), "{first_row} not in the judgement table");
    assert!(section.contains(&format!("Stage j, judge {}", j0["judge"].as_str().unwrap())));
}

#[test]
fn a_judge_file_with_mistakes_is_refused_with_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = quickstart(dir.path());
    let bad = judge_file(
        dir.path(),
        "bad.toml",
        "[[models]]\nname = \"x\"\nbackend = \"sim\"\ntemprature = 1\n",
        "",
    );
    let out = run(dir.path(), &["judge", run_dir.to_str().unwrap(), bad.to_str().unwrap()]);
    out.expect_code(2);
    assert!(out.stderr.contains("unknown field `temprature`"), "{}", out.text());
    assert!(!run_dir.join("judge/j").exists(), "nothing is planned");
}

/// Judged against a real sim-server (malformed verdicts, latency): SIGKILL mid-stage, resume.
#[test]
fn sigkill_mid_stage_then_resume_judges_every_dialogue_once_without_repeating_a_call() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = quickstart(dir.path());
    let server = SimServer::start(dir.path(), &["--latency-ms", "25", "--judge-malformed-rate", "0.3"]);
    let models = format!(
        "[[models]]\nname = \"http-judge\"\nbackend = \"openai\"\nbase_url = \"{}\"\nmodel = \"sim\"\nmax_retries = 2\ntimeout_secs = 10\n",
        server.base_url()
    );
    let judge = judge_file(
        dir.path(),
        "judge.toml",
        &models,
        "[sharding]\nunits_per_shard = 30\n[worker]\nconcurrency = 4\ngrace_secs = 5\n",
    );
    let stage = run_dir.join("judge/j");
    let args = [
        "judge",
        run_dir.to_str().unwrap(),
        judge.to_str().unwrap(),
        "--no-progress",
    ];
    let mut first = Proc::spawn(&dir.path().join("logs"), &args, &[]);
    let deadline = Instant::now() + LIMIT;
    while call_keys(&stage).len() < 20 {
        assert!(
            first.try_status().is_none(),
            "judge ended early:\n{}",
            first.output(None).text()
        );
        assert!(Instant::now() < deadline, "fewer than 20 calls journaled");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert!(first.kill(), "killed mid-stage");
    let before: HashSet<String> = call_keys(&stage).into_iter().collect();
    let planned = stage_units(&stage).len();
    let verdicts_before = entries(&stage)
        .iter()
        .filter(|e| matches!(e, Entry::Verdict(_)))
        .count();
    assert!(verdicts_before < planned, "the kill came before the end");

    run(dir.path(), &args).expect_code(0);
    let verdicts = assert_every_unit_judged_once(&stage);
    assert_eq!(verdicts.len(), planned);
    assert_eq!(
        verdicts.values().map(|v| v.parent).collect::<HashSet<_>>(),
        judgeable(&run_dir)
    );
    let served = server.served();
    for key in &before {
        assert_eq!(
            served.get(key),
            Some(&1),
            "call {key} was journaled before the kill but served again"
        );
    }
    let journaled: HashSet<String> = call_keys(&stage).into_iter().collect();
    let repeated: Vec<_> = served
        .iter()
        .filter(|(k, n)| **n > 1 && k.as_str() != "anonymous")
        .collect();
    assert!(repeated.len() <= 4, "more repeats than calls in flight: {repeated:?}");
    for k in &journaled {
        assert!(served.contains_key(k), "{k} journaled but never served");
    }
    let re_asked = verdicts.values().filter(|v| v.calls > 1).count();
    let unparsable = verdicts.values().filter(|v| v.status == Status::Unparsable).count();
    crate::common::record_figures(
        "judge-sigkill",
        json!({
            "units": planned,
            "calls_before_kill": before.len(),
            "verdicts_before_kill": verdicts_before,
            "calls": journaled.len(),
            "served_twice": repeated.len(),
            "re_asked": re_asked,
            "unparsable": unparsable,
        }),
    );
    assert!(re_asked > 0, "the server's malformed verdicts were asked again");
}

fn expectation(run_dir: &Path, simulated: bool) -> Value {
    let rd = RunDir::new(run_dir);
    let plan = rd.load_plan().unwrap();
    let mut rows = Vec::new();
    let mut stages = Vec::new();
    for (name, srd, splan) in roleplay::merge::verdicts::stages(&rd).unwrap() {
        let digest = splan.judge.as_ref().unwrap().rubric.digest();
        roleplay::merge::verdicts::scan(&srd, &splan, |b| {
            for (u, v) in &b.verdicts {
                let s = v.scores.as_ref();
                rows.push(json!({
                    "unit_id": u.parent.to_string(),
                    "judge": name,
                    "judge_model": b.judge,
                    "judge_unit_id": u.id.to_string(),
                    "rubric_digest": digest,
                    "status": v.status.as_str(),
                    "goal_achieved": s.map(|s| s.goal_achieved),
                    "goal_turn": s.and_then(|s| s.goal_turn),
                    "persona_adherence": s.map(|s| s.persona_adherence),
                    "human_likeness": s.map(|s| s.human_likeness),
                    "rationale": s.map(|s| s.rationale.clone()),
                    "calls": v.calls,
                    "malformed": v.errors.len(),
                    "raw_output": if v.status == Status::Unparsable { v.raw_output.clone() } else { None },
                }));
            }
            Ok(())
        })
        .unwrap();
        stages.push(name);
    }
    let columns: Vec<String> = roleplay::merge::judgements::schema()
        .fields()
        .iter()
        .map(|f| f.name().clone())
        .collect();
    json!({"plan_hash": plan.plan_hash, "stages": stages, "rows": rows, "columns": columns, "simulated": simulated})
}

#[test]
fn pyarrow_polars_and_duckdb_read_the_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = quickstart(dir.path());
    // Every verdict malformed for one judge (all unparsable), valid ones for the other stage.
    let broken = judge_file(
        dir.path(),
        "broken.toml",
        "[[models]]\nname = \"broken\"\nbackend = \"sim\"\n[models.sim]\nmalformed_rate = 1.0\n",
        "",
    );
    std::fs::write(
        &broken,
        std::fs::read_to_string(&broken)
            .unwrap()
            .replace("name = \"j\"", "name = \"broken\""),
    )
    .unwrap();
    let good = judge_file(dir.path(), "good.toml", SIM_JUDGE, "");
    let r = run_dir.to_str().unwrap();
    run(dir.path(), &["judge", r, broken.to_str().unwrap(), "--no-progress"]).expect_code(0);
    run(dir.path(), &["judge", r, good.to_str().unwrap(), "--no-progress"]).expect_code(0);
    let broken_verdicts = assert_every_unit_judged_once(&run_dir.join("judge/broken"));
    assert!(
        broken_verdicts
            .values()
            .all(|v| v.status == Status::Unparsable && v.calls == 3)
    );
    let exp = dir.path().join("expected.json");
    std::fs::write(&exp, serde_json::to_vec(&expectation(&run_dir, true)).unwrap()).unwrap();
    let script = repo().join("tests/python/check_judgements.py");
    let out = std::process::Command::new("python3")
        .arg(&script)
        .arg(&exp)
        .arg(run_dir.join("out/judgements.parquet"))
        .arg(run_dir.join("out/dialogues.parquet"))
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3 and `python3 -m pip install pyarrow polars duckdb`")
        });
    assert!(
        out.status.success(),
        "the readers disagree:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // `roleplay merge` on a stage (what its Slurm merge job runs) writes the same file again.
    let m = run(dir.path(), &["merge", run_dir.join("judge/j").to_str().unwrap()]);
    m.expect_code(0);
    assert!(m.stderr.contains("up to date"), "{}", m.text());
}

/// A judge stage as a Slurm array with the `sim` template on the real cluster (`scripts/test`
/// starts it): plan-only, submit with a merge job, status --watch to done, every unit judged once.
#[test]
fn a_judge_stage_runs_as_a_slurm_array_with_the_sim_template() {
    let _cluster = crate::common::take_cluster();
    let dir = tempfile::tempdir().unwrap();
    let run_dir = quickstart(dir.path());
    let judge = judge_file(
        dir.path(),
        "judge.toml",
        "[[models]]\nname = \"slurm-judge\"\nbackend = \"openai\"\nbase_url = \"http://127.0.0.1:8000/v1\"\nmodel = \"sim\"\nmax_retries = 3\n",
        "[sharding]\nunits_per_shard = 15\n[worker]\nconcurrency = 8\n[slurm]\ntemplate = \"sim\"\narray_throttle = 2\ntime = \"10\"\n",
    );
    let r = run_dir.to_str().unwrap();
    let planned = run(dir.path(), &["judge", r, judge.to_str().unwrap(), "--plan-only"]);
    planned.expect_code(0);
    assert!(planned.stdout.contains("in 4 shards"), "{}", planned.text());
    let stage = run_dir.join("judge/j");
    let s = stage.to_str().unwrap();
    let submitted = run(
        dir.path(),
        &[
            "submit",
            s,
            "--merge-job",
            "--sim-server-arg=--judge-malformed-rate=0.3",
        ],
    );
    submitted.expect_code(0);
    let ids: Vec<&str> = submitted.stdout.lines().collect();
    assert_eq!(ids.len(), 2, "the array and the merge job: {}", submitted.text());
    let watched = roleplay(
        &dir.path().join("logs"),
        &["status", s, "--watch", "--interval", "2"],
        &[],
        Duration::from_secs(300),
    );
    watched.expect_code(0);
    let verdicts = assert_every_unit_judged_once(&stage);
    assert_eq!(verdicts.len(), judgeable(&run_dir).len());
    assert!(
        verdicts.values().any(|v| v.calls > 1),
        "malformed verdicts were asked again"
    );
    let start = Instant::now();
    while !run_dir.join("out/judgements.parquet").is_file() {
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the merge job did not merge the judgements"
        );
        std::thread::sleep(Duration::from_secs(1));
    }
    let states: Vec<String> = (0..4)
        .map(|i| {
            let v: Value =
                serde_json::from_slice(&std::fs::read(stage.join(format!("state/shard-{i:05}.json"))).unwrap())
                    .unwrap();
            v["slurm_job_id"].as_str().unwrap_or("").to_string()
        })
        .collect();
    assert!(
        states.iter().all(|j| j.contains('_')),
        "every shard ran in an array task: {states:?}"
    );
}
