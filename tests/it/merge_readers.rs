//! `roleplay merge` read back by independent readers: a planned run gets synthetic journals (with
//! missing, failed and retried units, and a secret in the Slurm setup), the binary merges it, and
//! `tests/python/check_parquet.py` reads both files with pyarrow, polars and DuckDB and compares
//! counts, schema and values with what the journals hold (read here with the worker's own journal
//! reader, not merge's). The readers must be installed (`python3 -m pip install pyarrow polars
//! duckdb`, done by scripts/test): a missing one fails the test with that hint.
//!
//! Also holds the benchmark's fixture builder (`bench_fixture`, ignored; see scripts/bench-merge).

use roleplay::dialogue::{Call, DialogueRecord};
use roleplay::merge::synth;
use roleplay::plan::{self, Plan};
use roleplay::rundir::RunDir;
use roleplay::rundir::journal::{self, Entry};
use serde_json::{Value, json};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_roleplay");
const SECRET: &str = "sk-proj9f8e7d6c5b4a39281706abcdef";

fn write_experiment(dir: &Path) -> PathBuf {
    std::fs::write(
        dir.join("personas.jsonl"),
        concat!(
            r#"{"text": "A 30-year-old nurse from Lyon.", "age": "30", "city": "Lyon", "job": "nurse"}"#,
            "\n",
            r#"{"text": "A 62-year-old from Quito.", "age": "62", "city": "Quito"}"#,
            "\n",
            r#"{"text": "Someone who says \"hi\" and ü, 漢字.", "age": "45", "job": "pilot"}"#,
            "\n",
        ),
    )
    .unwrap();
    let toml = format!(
        r#"
name = "readers"
run_dir = "run"

[dialogue]
max_turns = 7
stop_token = "FINISH"
seeds = [11, 12]

[personas]
file = "personas.jsonl"

[goals]
items = [
  {{ id = "trip", text = "You want to plan a trip.\nThen you want a packing list." }},
  {{ id = "cake", text = "You want a cake recipe." }},
]

[[models]]
name = "inq"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Give the prompt within double quotes."
response_forwarding = "Ask more within double quotes. Assistant: <RESPONSE>"

[[models]]
name = "inq-hot"
roles = ["inquirer"]
backend = "sim"
[models.sampling]
temperature = 1.2
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Give the prompt within double quotes."
response_forwarding = "Ask more within double quotes. Assistant: <RESPONSE>"

[[models]]
name = "resp"
roles = ["responder"]
backend = "openai"
base_url = "http://127.0.0.1:9/v1"
model = "acme/chat-13b"
api_key_env = "RESP_API_KEY"

[sharding]
units_per_shard = 4

[slurm]
template = "api"
setup = ["export RESP_API_KEY={SECRET}"]
"#
    );
    let file = dir.join("experiment.toml");
    std::fs::write(&file, toml).unwrap();
    file
}

fn roleplay(args: &[&str]) -> std::process::Output {
    Command::new(BIN).args(args).output().expect("run roleplay")
}

/// Sum of a role's calls (used turns, rejected generations, the ending's calls).
fn role_calls(r: &DialogueRecord, inquirer: bool) -> Vec<&Call> {
    let mut v = Vec::new();
    for t in &r.turns {
        if inquirer {
            v.push(&t.inquirer);
            v.extend(t.rejected.iter());
        } else {
            v.push(&t.responder);
        }
    }
    if inquirer {
        v.extend(r.ending.last_inquirer.iter());
    } else {
        v.extend(r.ending.last_responder.iter());
    }
    v
}

fn sum_tokens(calls: &[&Call], f: impl Fn(&Call) -> Option<u32>) -> Value {
    let known: Vec<u64> = calls.iter().filter_map(|c| f(c)).map(u64::from).collect();
    if known.is_empty() {
        Value::Null
    } else {
        json!(known.iter().sum::<u64>())
    }
}

/// What the files must hold, from the journals read with the worker's journal reader.
fn expectation(rd: &RunDir, plan: &Plan) -> Value {
    let exp = &plan.experiment;
    let units = plan::read_units(&rd.units_path(plan)).unwrap();
    let mut done: HashMap<plan::UnitId, (DialogueRecord, u32)> = HashMap::new();
    for shard in 0..plan.shards.len() as u32 {
        let Some(contents) = journal::read(&rd.journal_path(shard)).unwrap() else {
            continue;
        };
        let mut attempt = 0;
        for e in contents.entries {
            match e {
                Entry::Attempt(a) => attempt = a.attempt,
                Entry::Done(d) => {
                    done.insert(d.unit, (*d, attempt));
                }
                Entry::Call(_) | Entry::Verdict(_) => {}
            }
        }
    }
    let mut feature_names: Vec<String> = exp.personas.iter().flat_map(|p| p.features.keys().cloned()).collect();
    feature_names.sort();
    feature_names.dedup();
    let mut dialogues = Vec::new();
    let mut end_reasons: BTreeMap<String, u64> = BTreeMap::new();
    let mut responder_completion_tokens = 0u64;
    for u in &units {
        let Some((r, attempt)) = done.get(&u.id) else { continue };
        let persona = &exp.personas[u.persona as usize];
        let goal = &exp.goals[u.goal as usize];
        let pair = &exp.pairs[u.pair as usize];
        let (ic, rc) = (role_calls(r, true), role_calls(r, false));
        *end_reasons.entry(r.ending.reason.as_str().to_string()).or_default() += 1;
        responder_completion_tokens += rc
            .iter()
            .filter_map(|c| c.completion_tokens)
            .map(u64::from)
            .sum::<u64>();
        let turns: Vec<Value> = r
            .turns
            .iter()
            .map(|t| {
                json!({
                    "turn": t.index,
                    "inquirer_text": t.prompt,
                    "responder_text": t.responder.output,
                    "inquirer_output": t.inquirer.output,
                    "responder_finish_reason": t.responder.finish_reason,
                    "inquirer_completion_tokens": t.inquirer.completion_tokens,
                    "responder_latency_ms": t.responder.latency_ms,
                })
            })
            .collect();
        let model_id = |n: &str| exp.model(n).unwrap().behaviour.model.clone();
        dialogues.push(json!({
            "unit_id": u.id.to_string(),
            "persona_id": persona.id,
            "persona_text": persona.text,
            "features": persona.features,
            "goal_id": goal.id,
            "goal_text": goal.text,
            "inquirer": pair.inquirer,
            "inquirer_model": model_id(&pair.inquirer),
            "responder": pair.responder,
            "responder_model": model_id(&pair.responder),
            "seed": u.seed,
            "end_reason": r.ending.reason.as_str(),
            "error_kind": r.ending.error.as_ref().map(|e| serde_json::to_value(e.kind).unwrap()),
            "error_message": r.ending.error.as_ref().map(|e| e.message.clone()),
            "http_attempts": r.counters.http_attempts,
            "overflow_refusals": r.counters.overflow_refusals,
            "num_turns": r.turns.len(),
            "worker_attempt": attempt,
            "inquirer_completion_tokens": sum_tokens(&ic, |c| c.completion_tokens),
            "responder_prompt_tokens": sum_tokens(&rc, |c| c.prompt_tokens),
            "inquirer_latency_ms": ic.iter().map(|c| c.latency_ms).sum::<f64>(),
            "responder_latency_ms": rc.iter().map(|c| c.latency_ms).sum::<f64>(),
            "last_inquirer_output": r.ending.last_inquirer.last().map(|c| c.output.clone()),
            "turns": turns,
        }));
    }
    let text = "utf8";
    let mut dschema: Vec<(String, &str)> = ["unit_id"]
        .iter()
        .map(|c| (c.to_string(), text))
        .chain([("shard".to_string(), "uint32")])
        .chain(["persona_id", "persona_text"].iter().map(|c| (c.to_string(), text)))
        .chain(feature_names.iter().map(|f| (format!("persona_{f}"), text)))
        .collect();
    for (c, k) in [
        ("goal_id", text),
        ("goal_text", text),
        ("inquirer", text),
        ("inquirer_model", text),
        ("responder", text),
        ("responder_model", text),
        ("seed", "uint64"),
        ("end_reason", text),
        ("error_role", text),
        ("error_kind", text),
        ("error_message", text),
        ("num_turns", "uint32"),
        ("multiple_prompts", "uint32"),
        ("regenerations", "uint32"),
        ("regeneration_helped", "uint32"),
        ("self_reply_cuts", "uint32"),
        ("retries", "uint32"),
        ("trimmed_pairs", "uint32"),
        ("overflow_refusals", "uint32"),
        ("cut_replies", "uint32"),
        ("inquirer_calls", "uint32"),
        ("responder_calls", "uint32"),
        ("inquirer_prompt_tokens", "uint64"),
        ("inquirer_completion_tokens", "uint64"),
        ("responder_prompt_tokens", "uint64"),
        ("responder_completion_tokens", "uint64"),
        ("inquirer_latency_ms", "float64"),
        ("responder_latency_ms", "float64"),
        ("http_attempts", "uint32"),
        ("inquirer_context_length", "uint32"),
        ("inquirer_context_source", text),
        ("responder_context_length", "uint32"),
        ("responder_context_source", text),
        ("worker_attempt", "uint32"),
        ("last_inquirer_output", text),
        ("last_responder_output", text),
        ("turns", "list<struct>"),
    ] {
        dschema.push((c.to_string(), k));
    }
    dschema.extend(INDICATOR_DIALOGUE_SCHEMA.iter().map(|(c, k)| (c.to_string(), *k)));
    let mut tschema: Vec<(&str, &str)> = vec![
        ("unit_id", text),
        ("turn", "uint32"),
        ("inquirer_text", text),
        ("responder_text", text),
        ("inquirer_output", text),
        ("inquirer_raw_output", text),
        ("responder_raw_output", text),
        ("num_prompts", "uint32"),
        ("regenerations", "uint32"),
        ("inquirer_prompt_tokens", "uint32"),
        ("inquirer_completion_tokens", "uint32"),
        ("responder_prompt_tokens", "uint32"),
        ("responder_completion_tokens", "uint32"),
        ("inquirer_latency_ms", "float64"),
        ("responder_latency_ms", "float64"),
        ("inquirer_finish_reason", text),
        ("responder_finish_reason", text),
        ("inquirer_attempts", "uint32"),
        ("responder_attempts", "uint32"),
        ("inquirer_self_reply_cut", "bool"),
        ("responder_self_reply_cut", "bool"),
    ];
    tschema.extend(INDICATOR_TURN_SCHEMA.iter().copied());
    json!({
        "plan_hash": plan.plan_hash,
        "tool_version": env!("CARGO_PKG_VERSION"),
        "experiment_name": exp.name,
        "secrets": [SECRET],
        "feature_columns": feature_names.iter().map(|f| json!([f, format!("persona_{f}")])).collect::<Vec<_>>(),
        "dialogues_schema": dschema,
        "turns_schema": tschema,
        "end_reasons": end_reasons,
        "responder_completion_tokens": responder_completion_tokens,
        "dialogues": dialogues,
        "indicators": indicator_expectations(plan, &units, &done),
    })
}

// ---- Fidelity indicators: the columns merge appends, and their values from the library. ----

const INDICATOR_DIALOGUE_SCHEMA: &[(&str, &str)] = &[
    ("role_flip_turns", "uint32"),
    ("role_flip_rate", "float64"),
    ("goal_content_words", "uint32"),
    ("goal_word_share", "float64"),
    ("goal_lcs_chars", "uint32"),
    ("goal_lcs_share", "float64"),
    ("goal_leak", "bool"),
    ("stop_token_used", "bool"),
    ("stop_turn", "uint32"),
    ("stop_at_first_turn", "bool"),
    ("max_turns_without_stop", "bool"),
    ("loop_turns", "uint32"),
    ("restart_turns", "uint32"),
    ("style_drift", "float64"),
    ("style_shift", "float64"),
    ("style_shifted", "bool"),
];

const INDICATOR_TURN_SCHEMA: &[(&str, &str)] = &[
    ("inquirer_words", "uint32"),
    ("question_ratio", "float64"),
    ("contraction_rate", "float64"),
    ("formality", "float64"),
    ("role_flip", "bool"),
    ("role_flip_signals", "list<utf8>"),
    ("repeat_jaccard", "float64"),
    ("near_duplicate", "bool"),
    ("restart", "bool"),
];

/// Per unit id: the indicators `roleplay::quality` computes from the journal's record.
fn indicator_expectations(
    plan: &Plan,
    units: &[plan::Unit],
    done: &HashMap<plan::UnitId, (DialogueRecord, u32)>,
) -> Value {
    use roleplay::quality::{indicators, stopping};
    let exp = &plan.experiment;
    let mut out = serde_json::Map::new();
    for u in units {
        let Some((r, _)) = done.get(&u.id) else { continue };
        let goal = &exp.goals[u.goal as usize].text;
        let ind = indicators::dialogue(
            goal,
            r.turns.iter().map(|t| (t.prompt.as_str(), t.responder.output.as_str())),
        );
        let s = stopping(r.ending.reason, r.turns.len(), exp.dialogue.max_turns);
        let turns: Vec<Value> = ind
            .turns
            .iter()
            .map(|t| {
                json!({
                    "inquirer_words": t.style.words,
                    "formality": t.style.formality,
                    "role_flip": t.role_flip,
                    "role_flip_signals": t.signals.names().collect::<Vec<_>>(),
                    "repeat_jaccard": t.repeat_jaccard,
                    "restart": t.restart,
                })
            })
            .collect();
        out.insert(
            u.id.to_string(),
            json!({
                "role_flip_turns": ind.role_flip_turns,
                "goal_leak": ind.goal.leak,
                "goal_word_share": ind.goal.word_share,
                "goal_lcs_chars": ind.goal.lcs_chars,
                "stop_turn": s.stop_turn,
                "max_turns_without_stop": s.max_turns_without_stop,
                "loop_turns": ind.loop_turns,
                "style_shift": ind.style_shift,
                "turns": turns,
            }),
        );
    }
    Value::Object(out)
}

fn python_check(expected: &Path, dialogues: &Path, turns: &Path) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/check_parquet.py");
    let out = Command::new("python3")
        .arg(&script)
        .arg(expected)
        .arg(dialogues)
        .arg(turns)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run python3 ({e}): install Python 3 and `python3 -m pip install pyarrow polars duckdb`")
        });
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the Python readers disagree with the run (exit {:?}):\n{stderr}\n{stdout}",
        out.status.code()
    );
    eprintln!("{stdout}");
}

#[test]
fn pyarrow_polars_and_duckdb_read_what_the_run_produced() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_experiment(dir.path());
    let out = roleplay(&["plan", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let rd = RunDir::new(dir.path().join("run"));
    let plan = rd.load_plan().unwrap();
    let w = synth::synthesize(
        &rd,
        &synth::Options {
            missing_every: 5,
            failed_every: 7,
            retried_every: 3,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(w.units, 24);

    // Partial: listed, exit 1, files written all the same.
    let out = roleplay(&["merge", rd.root.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains(&format!("{} missing", w.missing)), "{stderr}");
    assert!(stderr.contains("missing units (no finished record):"), "{stderr}");
    assert!(stderr.contains(&format!("{} failed", w.failed)), "{stderr}");
    assert!(stderr.contains("failed units (backend errors):"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dialogues = rd.root.join("out/dialogues.parquet");
    let turns = rd.root.join("out/turns.parquet");
    assert!(stdout.contains("dialogues.parquet") && dialogues.is_file() && turns.is_file());

    let expected = expectation(&rd, &plan);
    assert_eq!(expected["dialogues"].as_array().unwrap().len() as u64, w.finished);
    let exp_path = dir.path().join("expected.json");
    std::fs::write(&exp_path, serde_json::to_vec(&expected).unwrap()).unwrap();
    python_check(&exp_path, &dialogues, &turns);

    // Merging again changes nothing and costs nothing; --allow-partial accepts the gaps.
    let before = std::fs::metadata(&dialogues).unwrap().modified().unwrap();
    let out = roleplay(&["merge", rd.root.to_str().unwrap(), "--allow-partial"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("up to date"), "{stderr}");
    assert_eq!(std::fs::metadata(&dialogues).unwrap().modified().unwrap(), before);
    // No temporary file is left behind.
    let leftovers: Vec<_> = std::fs::read_dir(rd.root.join("out"))
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // --no-indicators rewrites both files without the indicator columns, and says so in them;
    // the next merge without the flag puts them back. Read by pyarrow.
    let schema = || {
        let code = "import sys, pyarrow.parquet as pq\n\
            for f in sys.argv[1:]:\n\
            \tp = pq.ParquetFile(f)\n\
            \ts = p.schema_arrow\n\
            \tprint(p.metadata.metadata[b'roleplay.indicators'].decode(), 'repeat_jaccard' in str(s), 'style_drift' in s.names)";
        let out = Command::new("python3")
            .args(["-c", code, dialogues.to_str().unwrap(), turns.to_str().unwrap()])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let out = roleplay(&["merge", rd.root.to_str().unwrap(), "--allow-partial", "--no-indicators"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(
        !stderr.contains("up to date") && stderr.contains("without the fidelity indicator columns"),
        "{stderr}"
    );
    assert_eq!(schema(), "false False False\nfalse False False\n");
    let out = roleplay(&["merge", rd.root.to_str().unwrap(), "--allow-partial"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !stderr.contains("up to date"), "{stderr}");
    assert_eq!(schema(), "true True True\ntrue True False\n");
    python_check(&exp_path, &dialogues, &turns);
}

#[test]
fn a_resumed_run_is_merged_again_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let file = write_experiment(dir.path());
    assert!(roleplay(&["plan", file.to_str().unwrap()]).status.success());
    let rd = RunDir::new(dir.path().join("run"));
    let plan = rd.load_plan().unwrap();
    // First half of the work, merged.
    synth::synthesize(
        &rd,
        &synth::Options {
            missing_every: 2,
            ..Default::default()
        },
    )
    .unwrap();
    assert_eq!(roleplay(&["merge", rd.root.to_str().unwrap()]).status.code(), Some(1));
    // "Resume": every unit finishes, and the ones done before get a second record (a retry).
    synth::synthesize(&rd, &synth::Options::default()).unwrap();
    let out = roleplay(&["merge", rd.root.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(stderr.contains("24 of 24 planned dialogues merged"), "{stderr}");
    let expected = expectation(&rd, &plan);
    assert_eq!(expected["dialogues"].as_array().unwrap().len(), 24);
    let exp_path = dir.path().join("expected.json");
    std::fs::write(&exp_path, serde_json::to_vec(&expected).unwrap()).unwrap();
    python_check(
        &exp_path,
        &rd.root.join("out/dialogues.parquet"),
        &rd.root.join("out/turns.parquet"),
    );
}

#[test]
fn a_real_run_on_the_simulator_reads_back() {
    // The quickstart experiment, run by the local executor on the built-in simulator: regenerated
    // turns, raw completions, degenerate and empty endings, all through the real engine and worker.
    let dir = tempfile::tempdir().unwrap();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/quickstart.toml");
    let toml = std::fs::read_to_string(src).unwrap();
    let toml: String = toml
        .lines()
        .map(|l| {
            if l.starts_with("run_dir") {
                "run_dir = \"run\""
            } else {
                l
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    let file = dir.path().join("quickstart.toml");
    std::fs::write(&file, toml).unwrap();
    let out = roleplay(&["run", file.to_str().unwrap(), "--no-progress", "--no-fsync"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let rd = RunDir::new(dir.path().join("run"));
    let out = roleplay(&["merge", rd.root.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let plan = rd.load_plan().unwrap();
    let expected = expectation(&rd, &plan);
    assert_eq!(expected["dialogues"].as_array().unwrap().len() as u64, plan.total_units);
    let exp_path = dir.path().join("expected.json");
    std::fs::write(&exp_path, serde_json::to_vec(&expected).unwrap()).unwrap();
    python_check(
        &exp_path,
        &rd.root.join("out/dialogues.parquet"),
        &rd.root.join("out/turns.parquet"),
    );
}

#[test]
fn usage_errors_exit_2_with_a_hint() {
    let dir = tempfile::tempdir().unwrap();
    let out = roleplay(&["merge", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is not a run directory") && stderr.contains("hint:"),
        "{stderr}"
    );
}
