//! `roleplay export`: the reference implementation's record layout and chat messages, compared
//! with the journals (read with the worker's own journal reader), and the chat file read by polars
//! as one consistent table (what `datasets.load_dataset("json", ...)` needs).

use roleplay::dialogue::DialogueRecord;
use roleplay::merge::synth;
use roleplay::plan::{self, UnitId};
use roleplay::rundir::RunDir;
use roleplay::rundir::journal::{self, Entry};
use serde_json::Value;
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_roleplay");

const EXPERIMENT: &str = r#"
name = "export"
run_dir = "run"
[dialogue]
max_turns = 5
seeds = [3, 4]
[personas]
template = "<AGE> person"
fixed = [{ age = "young" }, { age = "old" }]
[goals]
file = "goals.jsonl"
id_field = "goal_id"
text_field = "instruction"
[[models]]
name = "asker"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Quote the prompt."
response_forwarding = "Ask more in quotes. <RESPONSE>"
[[models]]
name = "helper"
roles = ["responder"]
backend = "sim"
[models.templates]
system_prompt = "You are a helpful assistant."
[sharding]
units_per_shard = 3
"#;

fn setup(dir: &Path) -> (RunDir, synth::Written) {
    std::fs::write(
        dir.join("goals.jsonl"),
        "{\"goal_id\": \"g00\", \"instruction\": \"You want to bake bread.\\nThen you want jam.\"}\n{\"goal_id\": \"g01\", \"instruction\": \"You want \\\"quotes\\\" and ü.\"}\n",
    )
    .unwrap();
    let file = dir.join("exp.toml");
    std::fs::write(&file, EXPERIMENT).unwrap();
    let out = Command::new(BIN).arg("plan").arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rd = RunDir::new(dir.join("run"));
    let w = synth::synthesize(
        &rd,
        &synth::Options {
            failed_every: 4,
            ..Default::default()
        },
    )
    .unwrap();
    (rd, w)
}

/// The winning record of every unit, from the journals.
fn records(rd: &RunDir) -> HashMap<UnitId, DialogueRecord> {
    let plan = rd.load_plan().unwrap();
    let mut out = HashMap::new();
    for shard in 0..plan.shards.len() as u32 {
        if let Some(c) = journal::read(&rd.journal_path(shard)).unwrap() {
            for e in c.entries {
                if let Entry::Done(d) = e {
                    out.insert(d.unit, *d);
                }
            }
        }
    }
    out
}

fn export(rd: &RunDir, args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(["export", rd.root.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap()
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn roleplay_jsonl_has_the_reference_layout() {
    let dir = tempfile::tempdir().unwrap();
    let (rd, w) = setup(dir.path());
    // Failed units are left out and listed: exit 1 without `--allow-partial`, the file written anyway.
    let out = export(&rd, &["--format", "roleplay-jsonl"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("{} failed", w.failed)) && stderr.contains("failed units:"),
        "{stderr}"
    );
    let path = rd.root.join("out/roleplay.jsonl");
    let recs = lines(&path);
    assert_eq!(
        recs.len() as u64,
        w.finished - w.failed,
        "failed dialogues are left out"
    );
    let plan = rd.load_plan().unwrap();
    let units: HashMap<String, plan::Unit> = plan::read_units(&rd.units_path(&plan))
        .unwrap()
        .into_iter()
        .map(|u| (u.id.to_string(), u))
        .collect();
    let journal = records(&rd);
    for r in &recs {
        let keys: Vec<&str> = r.as_object().unwrap().keys().map(String::as_str).collect();
        for k in ["persona", "sample", "num_turns", "dialog"] {
            assert!(keys.contains(&k), "missing `{k}` in {r}");
        }
        let unit = &units[r["roleplay"]["unit_id"].as_str().unwrap()];
        let rec = &journal[&unit.id];
        let exp = &plan.experiment;
        assert_eq!(r["persona"], exp.personas[unit.persona as usize].text.as_str());
        let goal = &exp.goals[unit.goal as usize];
        assert_eq!(r["sample"]["goal_id"], goal.id.as_str());
        assert_eq!(r["sample"]["instruction"], goal.text.as_str());
        let dialog = r["dialog"].as_array().unwrap();
        assert_eq!(r["num_turns"].as_u64().unwrap() as usize, dialog.len());
        assert_eq!(dialog.len(), rec.turns.len());
        for (d, t) in dialog.iter().zip(&rec.turns) {
            let mut k: Vec<&String> = d.as_object().unwrap().keys().collect();
            k.sort();
            assert_eq!(k, ["model_inquirer", "model_responder", "turn"]);
            assert_eq!(d["turn"].as_u64().unwrap(), t.index as u64);
            assert_eq!(d["model_inquirer"], t.prompt.as_str());
            assert_eq!(d["model_responder"], t.responder.output.as_str());
        }
    }
}

#[test]
fn messages_jsonl_is_a_chat_dataset_from_the_responders_side() {
    let dir = tempfile::tempdir().unwrap();
    let (rd, w) = setup(dir.path());
    let path = dir.path().join("chat.jsonl");
    let out = export(
        &rd,
        &[
            "--format",
            "messages-jsonl",
            "-o",
            path.to_str().unwrap(),
            "--allow-partial",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let recs = lines(&path);
    assert_eq!(recs.len() as u64, w.finished - w.failed);
    let journal = records(&rd);
    for r in &recs {
        let id: UnitId = r["id"].as_str().unwrap().parse().unwrap();
        let rec = &journal[&id];
        let m = r["messages"].as_array().unwrap();
        assert_eq!(m[0]["role"], "system");
        assert_eq!(m[0]["content"], "You are a helpful assistant.");
        assert_eq!(m.len(), 1 + 2 * rec.turns.len());
        for (pair, t) in m[1..].chunks(2).zip(&rec.turns) {
            assert_eq!(pair[0]["role"], "user");
            assert_eq!(pair[0]["content"], t.prompt.as_str());
            assert_eq!(pair[1]["role"], "assistant");
            assert_eq!(pair[1]["content"], t.responder.output.as_str());
        }
        assert_eq!(r["num_turns"].as_u64().unwrap() as usize, rec.turns.len());
    }
    // One consistent table for dataframe and dataset loaders.
    let py = format!(
        "import sys\ntry:\n    import polars as pl\nexcept ImportError:\n    sys.exit('error: polars is missing; hint: python3 -m pip install pyarrow polars duckdb')\n\
         df = pl.read_ndjson({p:?})\nassert df.height == {n}, df.height\n\
         assert df.schema['messages'] == pl.List(pl.Struct({{'role': pl.String, 'content': pl.String}})), df.schema\n\
         print('ok', df.height)\n",
        p = path.to_str().unwrap(),
        n = recs.len()
    );
    let out = Command::new("python3").args(["-c", &py]).output().expect("python3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_partial_run_exits_1_unless_allowed_and_stdout_works() {
    let dir = tempfile::tempdir().unwrap();
    let (rd, _) = setup(dir.path());
    std::fs::remove_file(rd.journal_path(0)).unwrap();
    let out = export(&rd, &["--format", "messages-jsonl", "-o", "-"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("3 of 8 planned units missing") && stderr.contains("missing units:"),
        "{stderr}"
    );
    let n = String::from_utf8_lossy(&out.stdout).lines().count();
    assert!(n > 0);
    let out = export(&rd, &["--format", "messages-jsonl", "-o", "-", "--allow-partial"]);
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().count(), n);
    let out = export(&rd, &["--format", "nope"]);
    assert_eq!(out.status.code(), Some(2));
}
