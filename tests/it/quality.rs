//! Fidelity indicators and `roleplay compare`, through the real binary.
//!
//! - Hand-made dialogues: one `replay` inquirer model per scenario (its canned turns trip one
//!   indicator, or come close without tripping it) against one `replay` responder, run with
//!   `roleplay run`; the indicator columns are read back from both Parquet files with arrow-rs.
//! - The quickstart run: indicator columns, the report's quality section in every format, and
//!   `compare` against the shipped fake reference and against the run's own exports (distance 0).

use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::LazyLock;

const BIN: &str = env!("CARGO_BIN_EXE_roleplay");

fn roleplay(args: &[&str]) -> std::process::Output {
    Command::new(BIN)
        .args(args)
        .env_remove("ROLEPLAY_BASE_URL")
        .output()
        .expect("run roleplay")
}

fn ok(out: &std::process::Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(0),
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Every column of a Parquet file as JSON values, row by row (the types the tables use).
fn read_rows(path: &Path) -> Vec<serde_json::Map<String, Value>> {
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{DataType, Float64Type, UInt32Type, UInt64Type};
    fn value(a: &dyn Array, i: usize) -> Value {
        if a.is_null(i) {
            return Value::Null;
        }
        match a.data_type() {
            DataType::Utf8 => json!(a.as_string::<i32>().value(i)),
            DataType::UInt32 => json!(a.as_primitive::<UInt32Type>().value(i)),
            DataType::UInt64 => json!(a.as_primitive::<UInt64Type>().value(i)),
            DataType::Float64 => json!(a.as_primitive::<Float64Type>().value(i)),
            DataType::Boolean => json!(a.as_boolean().value(i)),
            DataType::List(_) => {
                let l = a.as_list::<i32>().value(i);
                Value::Array((0..l.len()).map(|k| value(l.as_ref(), k)).collect())
            }
            DataType::Struct(fields) => {
                let s = a.as_struct();
                Value::Object(
                    fields
                        .iter()
                        .zip(s.columns())
                        .map(|(f, c)| (f.name().clone(), value(c.as_ref(), i)))
                        .collect(),
                )
            }
            other => panic!("unexpected column type {other}"),
        }
    }
    let f = std::fs::File::open(path).unwrap_or_else(|e| panic!("open `{}`: {e}", path.display()));
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("Parquet")
        .build()
        .expect("reader");
    let mut rows = Vec::new();
    for b in reader {
        let b = b.expect("batch");
        let schema = b.schema();
        for i in 0..b.num_rows() {
            rows.push(
                schema
                    .fields()
                    .iter()
                    .zip(b.columns())
                    .map(|(f, c)| (f.name().clone(), value(c.as_ref(), i)))
                    .collect(),
            );
        }
    }
    rows
}

// ---------------------------------------------------------------- hand-made dialogues

const GOAL: &str = "You want to know how many cups of feed your 20 chickens need for the final meal.";
const MAX_TURNS: u32 = 5;

/// A responder reply longer than any inquirer turn below (so the length signal stays quiet) and
/// without repeated n-grams (so the degeneration check does not end the dialogue).
const REPLY: &str = "Twenty chickens eating three cups each need sixty cups a day. You already gave fifteen in the \
morning and twenty five in the afternoon, which makes forty, so the evening meal needs the remaining twenty cups. \
If the birds leave feed behind, reduce the evening portion a little; if they finish everything quickly and look \
hungry, check whether the afternoon amount was measured with the same scoop as the morning one.";

/// (model name, the inquirer's turns: its prompts, `None` for the stop token) per scenario.
fn scenarios() -> Vec<(&'static str, Vec<Option<&'static str>>)> {
    vec![
        (
            "plain",
            vec![
                Some("How much feed should my hens get tonight?"),
                Some("And what if two of them are sick and eat less?"),
                Some("OK. Should I switch brands?"),
                None,
            ],
        ),
        (
            "near-miss",
            vec![
                Some("Hi! My chickens seem hungry at night. How much should I feed them?"),
                Some("So far they had:\n- 15 cups in the morning\n- 25 cups in the afternoon"),
                Some("How much feed do sick hens need, compared with healthy ones?"),
                None,
            ],
        ),
        (
            "flip",
            vec![
                Some("How much feed should my hens get tonight?"),
                Some("I'd be happy to help you with that! As an AI, I can provide a feeding plan."),
                None,
            ],
        ),
        (
            "leak",
            vec![
                Some("You want to know how many cups of feed your 20 chickens need for the final meal."),
                None,
            ],
        ),
        (
            "loop",
            vec![
                Some("How much feed should my hens get tonight?"),
                Some("Is layer pellet better than mash for them?"),
                Some("Is layer pellet better than mash for them?"),
                None,
            ],
        ),
        (
            "restart",
            vec![
                Some("How much feed should my hens get tonight?"),
                Some("Is layer pellet better than mash for them?"),
                Some("Hello! I have a question about my chickens."),
                None,
            ],
        ),
        (
            "shift",
            vec![
                Some("hey can u help me w my hens? they're hungry lol"),
                Some("ok cool, so how much is left? idk the math"),
                Some(
                    "I would kindly request a comprehensive breakdown of the daily feed requirements of the flock. \
                     Furthermore, please include the cost of the feed over one month.",
                ),
                Some(
                    "Additionally, I would appreciate your assistance regarding the storage of the feed. Please \
                     provide detailed recommendations concerning humidity.",
                ),
                None,
            ],
        ),
        ("first-stop", vec![None]),
        (
            "max-turns",
            vec![
                Some("How much feed should my hens get tonight?"),
                Some("What about tomorrow morning?"),
                Some("Which feed keeps longest in a shed?"),
                Some("Do they need grit as well?"),
                Some("How often should I clean the feeder?"),
            ],
        ),
    ]
}

/// The run of every scenario, made once for all the tests of this file.
struct ReplayRun {
    /// Scenario -> its dialogue's row of dialogues.parquet.
    dialogues: HashMap<String, serde_json::Map<String, Value>>,
    /// Scenario -> its rows of turns.parquet, by turn.
    turns: HashMap<String, Vec<serde_json::Map<String, Value>>>,
}

static REPLAY_RUN: LazyLock<ReplayRun> = LazyLock::new(|| {
    // One directory per test process (CI and a developer may share a target directory).
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("quality-replay-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let mut toml = format!(
        r#"name = "quality-replay"
run_dir = "run"

[dialogue]
max_turns = {MAX_TURNS}
stop_token = "FINISH"
seeds = [1]

[personas]
template = "a <AGE> chicken keeper"
fixed = [{{ age = "young" }}]

[goals]
items = [{{ id = "feed", text = "{GOAL}\nThen you want a budget." }}]

[[models]]
name = "bot"
roles = ["responder"]
backend = "replay"
replay_file = "responder.jsonl"
"#
    );
    let responder: Vec<String> = (0..MAX_TURNS)
        .map(|t| json!({"unit": "*", "role": "responder", "turn": t, "text": REPLY}).to_string())
        .collect();
    std::fs::write(dir.join("responder.jsonl"), responder.join("\n") + "\n").unwrap();
    for (name, turns) in scenarios() {
        let lines: Vec<String> = turns
            .iter()
            .enumerate()
            .map(|(t, prompt)| {
                let text = match prompt {
                    Some(p) => format!("I would write: \"{p}\""),
                    None => "FINISH".to_string(),
                };
                json!({"unit": "*", "role": "inquirer", "turn": t, "text": text}).to_string()
            })
            .collect();
        let file = format!("{name}.jsonl");
        std::fs::write(dir.join(&file), lines.join("\n") + "\n").unwrap();
        toml.push_str(&format!(
            r#"
[[models]]
name = "{name}"
roles = ["inquirer"]
backend = "replay"
replay_file = "{file}"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when your goal is reached."
first_turn = "Your goal: <OBJECTIVE>. Give your prompt within double quotes."
response_forwarding = "Assistant: <RESPONSE>. Ask more within double quotes."

[[pairs]]
inquirer = "{name}"
responder = "bot"
"#
        ));
    }
    let file = dir.join("experiment.toml");
    std::fs::write(&file, toml).unwrap();
    ok(&roleplay(&[
        "run",
        file.to_str().unwrap(),
        "--no-progress",
        "--no-fsync",
    ]));
    let out = dir.join("run/out");
    let dialogues: HashMap<String, _> = read_rows(&out.join("dialogues.parquet"))
        .into_iter()
        .map(|r| (r["inquirer"].as_str().unwrap().to_string(), r))
        .collect();
    let scenario_of: HashMap<String, String> = dialogues
        .iter()
        .map(|(s, r)| (r["unit_id"].as_str().unwrap().to_string(), s.clone()))
        .collect();
    let mut turns: HashMap<String, Vec<_>> = HashMap::new();
    for r in read_rows(&out.join("turns.parquet")) {
        let s = scenario_of[r["unit_id"].as_str().unwrap()].clone();
        turns.entry(s).or_default().push(r);
    }
    for v in turns.values_mut() {
        v.sort_by_key(|r| r["turn"].as_u64());
    }
    ReplayRun { dialogues, turns }
});

fn dialogue(scenario: &str) -> &'static serde_json::Map<String, Value> {
    REPLAY_RUN
        .dialogues
        .get(scenario)
        .unwrap_or_else(|| panic!("no dialogue of `{scenario}`"))
}

/// A per-turn column of a scenario, from turns.parquet; the nested `turns` column of
/// dialogues.parquet must hold the same.
fn turn_column(scenario: &str, col: &str) -> Vec<Value> {
    let flat: Vec<Value> = REPLAY_RUN
        .turns
        .get(scenario)
        .map(|t| t.iter().map(|r| r[col].clone()).collect())
        .unwrap_or_default();
    let nested: Vec<Value> = dialogue(scenario)["turns"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t[col].clone())
        .collect();
    assert_eq!(
        flat, nested,
        "{scenario}.{col}: turns.parquet and the nested turns differ"
    );
    flat
}

#[test]
fn every_scenario_ran_as_written() {
    for (name, turns) in scenarios() {
        let d = dialogue(name);
        let completed = turns.iter().filter(|t| t.is_some()).count();
        assert_eq!(d["num_turns"], json!(completed), "{name}: {d:?}");
        let reason = if turns.last().unwrap().is_none() {
            "stop"
        } else {
            "max_turns"
        };
        assert_eq!(d["end_reason"], json!(reason), "{name}");
    }
}

/// The worker stored every finished dialogue's indicators in its `done` record (of this
/// version), so that the merge above used them rather than computing them (`merge::tests::
/// stored_and_computed_indicators_make_the_same_files` shows that both make the same files).
#[test]
fn the_worker_stores_the_indicators_in_its_records() {
    LazyLock::force(&REPLAY_RUN);
    let journals = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("quality-replay-{}", std::process::id()))
        .join("run/journal");
    let mut done = 0;
    for f in std::fs::read_dir(&journals).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        for line in text.lines() {
            let Some((_, json)) = line.split_once(' ') else {
                continue;
            };
            let v: Value = serde_json::from_str(json).unwrap();
            if v["t"] == "done" {
                let turns = v["turns"].as_array().unwrap().len();
                let ind = &v["indicators"];
                assert_eq!(ind["version"], json!(roleplay::quality::indicators::VERSION), "{v}");
                assert_eq!(ind["words"].as_array().map(Vec::len), Some(turns), "{v}");
                done += 1;
            }
        }
    }
    assert_eq!(done, scenarios().len());
}

#[test]
fn role_flip_trips_on_an_assistant_turn_and_not_on_a_user_turn() {
    assert_eq!(turn_column("flip", "role_flip"), [json!(false), json!(true)]);
    assert_eq!(
        turn_column("flip", "role_flip_signals")[1],
        json!(["assistant_phrase", "offer"])
    );
    let d = dialogue("flip");
    assert_eq!(
        (d["role_flip_turns"].clone(), d["role_flip_rate"].clone()),
        (json!(1), json!(0.5))
    );
    // A list against a longer reply is markdown without a flip.
    assert_eq!(turn_column("near-miss", "role_flip_signals")[1], json!(["markdown"]));
    for s in ["plain", "near-miss"] {
        assert!(turn_column(s, "role_flip").iter().all(|v| v == &json!(false)), "{s}");
        assert_eq!(dialogue(s)["role_flip_turns"], json!(0), "{s}");
    }
}

#[test]
fn goal_leakage_trips_on_a_copied_goal_and_not_on_a_natural_prompt() {
    let d = dialogue("leak");
    assert_eq!(d["goal_leak"], json!(true));
    assert_eq!(d["goal_word_share"], json!(1.0));
    assert_eq!(d["goal_lcs_share"], json!(1.0));
    assert_eq!(d["goal_lcs_chars"], json!(GOAL.chars().count()));
    for s in ["plain", "near-miss"] {
        let d = dialogue(s);
        assert_eq!(d["goal_leak"], json!(false), "{s}");
        assert!(d["goal_word_share"].as_f64().unwrap() < 0.5, "{s}: {d:?}");
        assert!(d["goal_lcs_share"].as_f64().unwrap() < 0.3, "{s}: {d:?}");
    }
    // The goal's first line has seven content words (cups, feed, 20, chickens, need, final, meal).
    assert_eq!(dialogue("plain")["goal_content_words"], json!(7));
}

#[test]
fn stopping_tells_a_first_turn_stop_a_stop_and_every_turn_used() {
    let d = dialogue("first-stop");
    assert_eq!(
        [
            &d["stop_token_used"],
            &d["stop_turn"],
            &d["stop_at_first_turn"],
            &d["num_turns"]
        ],
        [&json!(true), &json!(0), &json!(true), &json!(0)]
    );
    let d = dialogue("plain");
    assert_eq!(
        [
            &d["stop_token_used"],
            &d["stop_turn"],
            &d["stop_at_first_turn"],
            &d["max_turns_without_stop"]
        ],
        [&json!(true), &json!(3), &json!(false), &json!(false)]
    );
    let d = dialogue("max-turns");
    assert_eq!(
        [&d["stop_token_used"], &d["stop_turn"], &d["max_turns_without_stop"]],
        [&json!(false), &Value::Null, &json!(true)]
    );
    // A stop at the first turn leaves nothing to measure in the text.
    let d = dialogue("first-stop");
    assert_eq!(
        (d["goal_word_share"].clone(), d["style_shift"].clone()),
        (Value::Null, Value::Null)
    );
}

#[test]
fn loops_trip_on_a_repeated_turn_and_not_on_a_new_question() {
    assert_eq!(
        turn_column("loop", "near_duplicate"),
        [json!(false), json!(false), json!(true)]
    );
    assert_eq!(turn_column("loop", "repeat_jaccard")[2], json!(1.0));
    assert_eq!(turn_column("loop", "repeat_jaccard")[0], Value::Null);
    assert_eq!(dialogue("loop")["loop_turns"], json!(1));
    for s in ["plain", "near-miss", "restart", "max-turns"] {
        assert_eq!(
            dialogue(s)["loop_turns"],
            json!(0),
            "{s}: {:?}",
            turn_column(s, "repeat_jaccard")
        );
    }
}

#[test]
fn restarts_trip_on_a_greeting_after_turn_1_and_not_at_turn_1() {
    assert_eq!(
        turn_column("restart", "restart"),
        [json!(false), json!(false), json!(true)]
    );
    assert_eq!(dialogue("restart")["restart_turns"], json!(1));
    // "Hi!" opens the near-miss dialogue's first turn: no restart.
    for s in ["plain", "near-miss", "max-turns"] {
        assert_eq!(dialogue(s)["restart_turns"], json!(0), "{s}");
    }
}

#[test]
fn style_shift_trips_when_the_persona_changes_register() {
    let d = dialogue("shift");
    assert_eq!(d["style_shifted"], json!(true), "{d:?}");
    assert!(d["style_shift"].as_f64().unwrap() >= 0.25);
    let formality = turn_column("shift", "formality");
    assert_eq!(formality[0], json!(0.0));
    assert_eq!(formality[3], json!(1.0));
    assert_eq!(turn_column("shift", "inquirer_words")[0], json!(11));
    for s in ["plain", "loop", "max-turns"] {
        let d = dialogue(s);
        assert_eq!(d["style_shifted"], json!(false), "{s}: {d:?}");
    }
}

// ---------------------------------------------------------------- the quickstart

/// The quickstart experiment run into `dir/run` by the local executor.
fn quickstart(dir: &Path) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/quickstart.toml");
    let toml: Vec<String> = std::fs::read_to_string(src)
        .unwrap()
        .lines()
        .map(|l| {
            if l.starts_with("run_dir") {
                "run_dir = \"run\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect();
    let file = dir.join("quickstart.toml");
    std::fs::write(&file, toml.join("\n")).unwrap();
    ok(&roleplay(&[
        "run",
        file.to_str().unwrap(),
        "--no-progress",
        "--no-fsync",
    ]));
    dir.join("run")
}

const DIALOGUE_INDICATORS: &[&str] = &[
    "role_flip_turns",
    "role_flip_rate",
    "goal_content_words",
    "goal_word_share",
    "goal_lcs_chars",
    "goal_lcs_share",
    "goal_leak",
    "stop_token_used",
    "stop_turn",
    "stop_at_first_turn",
    "max_turns_without_stop",
    "loop_turns",
    "restart_turns",
    "style_drift",
    "style_shift",
    "style_shifted",
];

const TURN_INDICATORS: &[&str] = &[
    "inquirer_words",
    "question_ratio",
    "contraction_rate",
    "formality",
    "role_flip",
    "role_flip_signals",
    "repeat_jaccard",
    "near_duplicate",
    "restart",
];

#[test]
fn the_quickstart_has_indicator_columns_and_a_quality_section() {
    let dir = tempfile::tempdir().unwrap();
    let run = quickstart(dir.path());
    let rows = read_rows(&run.join("out/dialogues.parquet"));
    assert_eq!(rows.len(), 60);
    for r in &rows {
        for c in DIALOGUE_INDICATORS {
            assert!(r.contains_key(*c), "dialogues.parquet has no `{c}`");
        }
        assert_eq!(r["stop_token_used"], json!(r["end_reason"] == json!("stop")));
        assert_eq!(
            r["max_turns_without_stop"],
            json!(r["end_reason"] == json!("max_turns"))
        );
        if r["end_reason"] == json!("stop") {
            assert_eq!(r["stop_turn"], r["num_turns"]);
        }
    }
    let turns = read_rows(&run.join("out/turns.parquet"));
    let total: u64 = rows.iter().map(|r| r["num_turns"].as_u64().unwrap()).sum();
    assert_eq!(turns.len() as u64, total);
    for t in &turns {
        for c in TURN_INDICATORS {
            assert!(t.contains_key(*c), "turns.parquet has no `{c}`");
        }
    }
    // The simulator's turns open with "hey" now and then: restarts are there to be counted.
    let restarts: u64 = rows.iter().map(|r| r["restart_turns"].as_u64().unwrap()).sum();
    assert!(restarts > 0);

    let rd = run.to_str().unwrap();
    let j: Value = serde_json::from_str(&ok(&roleplay(&["report", rd, "--json"]))).unwrap();
    let q = &j["all"]["quality"];
    assert_eq!(q["inquirer_turns"].as_u64().unwrap(), total);
    assert!(q["loops"]["restart_turn_rate"].as_f64().unwrap() > 0.0);
    for kind in ["first_turns", "all_turns"] {
        let d = &q["diversity"][kind];
        assert!(d["sampled"].as_u64().unwrap() > 0, "{d}");
        for m in ["distinct_1", "distinct_2", "mtld", "self_bleu"] {
            let v = d[m].as_f64().unwrap_or_else(|| panic!("{kind}.{m}: {d}"));
            assert!(v > 0.0 && v.is_finite(), "{kind}.{m} = {v}");
        }
    }
    assert_eq!(j["pairs"].as_array().unwrap().len(), 2);
    assert!(j["pairs"][0]["quality"]["diversity"].is_object());
    assert!(j["goals"][0]["quality"]["diversity"].is_null(), "no diversity per goal");
    let cells: Vec<&Value> = j["cells"].as_array().unwrap().iter().collect();
    assert_eq!(cells.len(), 5, "one list of cells per persona feature");
    let text = ok(&roleplay(&["report", rd]));
    assert!(text.contains("quality by pair") && text.contains("self-BLEU"), "{text}");
    let csv = ok(&roleplay(&["report", rd, "--csv"]));
    let header = csv.lines().next().unwrap();
    assert!(
        header.contains("q_role_flip_turn_rate") && header.contains("q_all_self_bleu"),
        "{header}"
    );
    assert!(csv.lines().any(|l| l.starts_with("cell:gender,")), "{csv}");
    let html = dir.path().join("report.html");
    ok(&roleplay(&["report", rd, "--html", html.to_str().unwrap()]));
    let page = std::fs::read_to_string(html).unwrap();
    assert!(page.contains("<h2>Quality: fidelity indicators</h2>"));
    assert!(page.contains("aria-label=\"fidelity indicators by pair (inquirer -&gt; responder)\""));
}

fn reference_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/quality/fake_human_reference.jsonl")
}

fn all_pairs_cell(c: &Value) -> &Value {
    c["cells"]
        .as_array()
        .unwrap()
        .iter()
        .find(|x| x["pair"] == json!("all pairs") && x["feature"].is_null())
        .expect("an `all pairs` cell")
}

#[test]
fn compare_against_the_fake_reference_and_against_the_run_itself() {
    let dir = tempfile::tempdir().unwrap();
    let run = quickstart(dir.path());
    let rd = run.to_str().unwrap();
    let fixture = reference_fixture();

    // The shipped reference: numbers, offline, per pair and per feature value it carries.
    let c: Value = serde_json::from_str(&ok(&roleplay(&[
        "compare",
        rd,
        "--reference",
        fixture.to_str().unwrap(),
        "--json",
    ])))
    .unwrap();
    assert_eq!(c["reference_dialogues"], json!(14));
    assert_eq!(
        c["reference_layouts"],
        json!({"messages-jsonl": 12, "roleplay-jsonl": 2})
    );
    assert_eq!(c["reference_features"], json!(["education", "gender"]));
    let all = all_pairs_cell(&c);
    let d = &all["distance"];
    for m in ["turns_tv", "turns_w1", "user_words_tv", "unigram_jsd"] {
        let v = d[m].as_f64().unwrap_or_else(|| panic!("{m}: {d}"));
        assert!((0.0..=100.0).contains(&v) && v > 0.0, "{m} = {v}");
    }
    assert!(d["unigram_jsd"].as_f64().unwrap() <= 1.0);
    assert_eq!(all["reference"]["dialogues"], json!(14));
    // (all pairs + 2 pairs) x (overall + 2 education + 3 gender values).
    assert_eq!(c["cells"].as_array().unwrap().len(), 3 * 6);
    let text = ok(&roleplay(&["compare", rd, "--reference", fixture.to_str().unwrap()]));
    assert!(
        text.contains("all pairs, gender = Female") && text.contains("JSD"),
        "{text}"
    );

    // The run against its own exports: identical dialogues, distance 0.
    for (format, cells_with_features) in [("messages-jsonl", false), ("roleplay-jsonl", true)] {
        let export = dir.path().join(format!("self.{format}"));
        ok(&roleplay(&[
            "export",
            rd,
            "--format",
            format,
            "-o",
            export.to_str().unwrap(),
        ]));
        let c: Value = serde_json::from_str(&ok(&roleplay(&[
            "compare",
            rd,
            "--reference",
            export.to_str().unwrap(),
            "--json",
        ])))
        .unwrap();
        let mut checked = 0;
        for cell in c["cells"].as_array().unwrap() {
            if cell["pair"] != json!("all pairs") {
                continue;
            }
            let d = &cell["distance"];
            for m in [
                "unigram_jsd",
                "turns_tv",
                "turns_w1",
                "turns_mean",
                "user_words_mean",
                "user_words_tv",
                "distinct_1",
                "distinct_2",
                "role_flip_rate",
                "loop_rate",
                "restart_rate",
                "goal_leak_share",
                "style_shift_mean",
            ] {
                assert_eq!(d[m], json!(0.0), "{format}: {} {m}: {d}", cell["value"]);
            }
            assert_eq!(cell["generated"], cell["reference"], "{format}");
            checked += 1;
        }
        assert_eq!(checked > 1, cells_with_features, "{format}: {checked} cells");
    }
}

#[test]
fn a_bad_reference_is_refused_with_its_file_line_and_fix() {
    let dir = tempfile::tempdir().unwrap();
    let run = quickstart(dir.path());
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n\n{\"messages\": [{\"role\": \"human\", \"content\": \"hi\"}]}\n",
    )
    .unwrap();
    for (file, says) in [
        (
            bad.clone(),
            format!("`{}`: line 3: `messages[0]`: unknown role `human`", bad.display()),
        ),
        (
            dir.path().join("missing.jsonl"),
            "cannot read the reference file".to_string(),
        ),
    ] {
        let out = roleplay(&["compare", run.to_str().unwrap(), "--reference", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains(&says), "{says} in {stderr}");
        assert!(stderr.contains("hint:"), "{stderr}");
    }
}
