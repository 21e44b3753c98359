//! Merge unit tests: exactly-once rows from synthetic journals, partial runs, damaged journals,
//! the up-to-date check, and metadata without secrets.

use super::*;
use crate::dialogue::DialogueRecord;
use crate::rundir::journal::{Entry, Journal};
use arrow::array::{Array, AsArray};
use arrow::datatypes::UInt32Type;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use std::collections::HashSet;

const EXPERIMENT: &str = r#"
name = "mergetest"
run_dir = "run"

[dialogue]
max_turns = 6
stop_token = "FINISH"
seeds = [1, 2]

[personas]
template = "<AGE> person from <CITY>"
fixed = [
  { age = "young", city = "Oslo" },
  { age = "old", city = "Lima" },
  { age = "middle", city = "Pune" },
]

[goals]
items = [
  { id = "g1", text = "You want a recipe.\nThen you want a wine." },
  { id = "g2", text = "You want to plan a trip." },
]

[[models]]
name = "asker"
roles = ["inquirer"]
backend = "sim"
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Give the prompt within double quotes."
response_forwarding = "Ask more within double quotes. Assistant: <RESPONSE>"

[[models]]
name = "asker2"
roles = ["inquirer"]
backend = "sim"
[models.sampling]
temperature = 0.3
[models.templates]
system_prompt = "You are <PERSONA>. Say <CONV_STOP> when done."
first_turn = "Goal: <OBJECTIVE>. Give the prompt within double quotes."
response_forwarding = "Ask more within double quotes. Assistant: <RESPONSE>"

[[models]]
name = "helper"
roles = ["responder"]
backend = "openai"
base_url = "http://127.0.0.1:9/v1?api-key=abc123"
model = "org/helper-7b"
api_key_env = "HELPER_API_KEY"

[sharding]
units_per_shard = 5

[slurm]
template = "api"
setup = ["export HELPER_API_KEY=sk-proj0123456789abcdefghijkl"]
"#;

/// A planned run in a temporary folder.
pub(crate) fn planned(toml: &str) -> (tempfile::TempDir, RunDir) {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("exp.toml");
    std::fs::write(&file, toml).unwrap();
    let p = crate::rundir::plans::plan_experiment(crate::experiment::load(&file).unwrap(), None, false, false).unwrap();
    let rd = RunDir::new(p.run_dir);
    (dir, rd)
}

fn read_all(path: &Path) -> (Vec<RecordBatch>, parquet::file::metadata::ParquetMetaData) {
    let f = std::fs::File::open(path).unwrap();
    let b = ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
    let meta = b.metadata().as_ref().clone();
    let batches = b.build().unwrap().map(|b| b.unwrap()).collect();
    (batches, meta)
}

fn strings(batches: &[RecordBatch], col: &str) -> Vec<Option<String>> {
    batches
        .iter()
        .flat_map(|b| {
            let a = b.column_by_name(col).unwrap().as_string::<i32>().clone();
            (0..a.len())
                .map(|i| (!a.is_null(i)).then(|| a.value(i).to_string()))
                .collect::<Vec<_>>()
        })
        .collect()
}

fn kv(meta: &parquet::file::metadata::ParquetMetaData, key: &str) -> Option<String> {
    meta.file_metadata()
        .key_value_metadata()?
        .iter()
        .find(|k| k.key == key)
        .and_then(|k| k.value.clone())
}

#[test]
fn every_planned_dialogue_exactly_once_with_missing_and_failed_listed() {
    let (_d, rd) = planned(EXPERIMENT);
    let opts = synth::Options {
        missing_every: 7,
        failed_every: 5,
        retried_every: 3,
        ..Default::default()
    };
    let w = synth::synthesize(&rd, &opts).unwrap();
    assert_eq!(w.units, 24);
    let s = merge_run(&rd, false).unwrap();
    assert_eq!(s.stats.planned, 24);
    assert_eq!(s.dialogues, w.finished);
    assert_eq!(s.turns, w.turns);
    assert_eq!(s.stats.missing.count, w.missing);
    assert_eq!(s.stats.failed.count, w.failed);
    assert!(s.stats.superseded > 0, "retried units have two records");
    assert_eq!(s.exit_code(), exit::FAILURES);
    assert!(!s.up_to_date);

    let (batches, meta) = read_all(&s.dialogues_path);
    let ids = strings(&batches, "unit_id");
    assert_eq!(ids.len() as u64, w.finished);
    let unique: HashSet<_> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "a unit appears twice");
    // Retried units: the later, finished record wins.
    let reasons = strings(&batches, "end_reason");
    let failed = reasons.iter().filter(|r| r.as_deref() == Some("backend_error")).count() as u64;
    assert_eq!(failed, w.failed);
    // Persona features are columns; the nested turns match num_turns.
    assert_eq!(
        strings(&batches, "persona_city").iter().flatten().count() as u64,
        w.finished
    );
    let mut nested = 0u64;
    for b in &batches {
        let n = b.column_by_name("num_turns").unwrap().as_primitive::<UInt32Type>();
        let l = b.column_by_name("turns").unwrap().as_list::<i32>();
        for i in 0..b.num_rows() {
            assert_eq!(l.value(i).len() as u32, n.value(i));
            nested += n.value(i) as u64;
        }
    }
    assert_eq!(nested, w.turns);
    assert_eq!(kv(&meta, meta::KEY_TABLE).as_deref(), Some("dialogues"));
    assert_eq!(kv(&meta, "roleplay.complete").as_deref(), Some("false"));

    let (tb, tmeta) = read_all(&s.turns_path);
    assert_eq!(tb.iter().map(|b| b.num_rows() as u64).sum::<u64>(), w.turns);
    assert_eq!(kv(&tmeta, meta::KEY_TABLE).as_deref(), Some("turns"));
    let turn_units: HashSet<_> = strings(&tb, "unit_id").into_iter().collect();
    assert!(turn_units.iter().all(|u| unique.contains(u)));

    let again = merge_run(&rd, true).unwrap();
    assert!(again.up_to_date);
    assert_eq!(again.exit_code(), exit::OK);
    assert_eq!(again.dialogues, s.dialogues);
}

#[test]
fn metadata_carries_the_plan_and_no_secret() {
    let (_d, rd) = planned(EXPERIMENT);
    synth::synthesize(&rd, &synth::Options::default()).unwrap();
    let s = merge_run(&rd, false).unwrap();
    assert_eq!(s.exit_code(), exit::OK);
    let plan = rd.load_plan().unwrap();
    for path in [&s.dialogues_path, &s.turns_path] {
        let (_, meta) = read_all(path);
        assert_eq!(kv(&meta, meta::KEY_PLAN_HASH), Some(plan.plan_hash.clone()));
        assert_eq!(
            kv(&meta, meta::KEY_TOOL_VERSION).as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let exp = kv(&meta, meta::KEY_EXPERIMENT).unwrap();
        let back: crate::experiment::Experiment = serde_json::from_str(&exp).unwrap();
        assert_eq!(back.personas, plan.experiment.personas);
        assert!(exp.contains("HELPER_API_KEY"), "env var names are kept");
        let all: String = meta
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .iter()
            .map(|k| format!("{}={}\n", k.key, k.value.clone().unwrap_or_default()))
            .collect();
        assert!(!all.contains("sk-proj"), "a key from slurm.setup leaked: {all}");
        assert!(!all.contains("abc123"), "a base_url query leaked");
        assert!(kv(&meta, meta::KEY_REDACTED).unwrap().contains("slurm.setup"));
    }
}

#[test]
fn a_changed_journal_is_merged_again_and_a_stray_unit_is_ignored() {
    let (_d, rd) = planned(EXPERIMENT);
    synth::synthesize(
        &rd,
        &synth::Options {
            missing_every: 4,
            ..Default::default()
        },
    )
    .unwrap();
    let first = merge_run(&rd, false).unwrap();
    assert_eq!(first.stats.missing.count, 6);
    let plan = rd.load_plan().unwrap();
    let units = crate::plan::read_units(&rd.units_path(&plan)).unwrap();
    let missing: crate::plan::UnitId = first.stats.missing.first[0].parse().unwrap();
    let unit = units.iter().find(|u| u.id == missing).unwrap();
    let (j, _) = Journal::open(&rd.journal_path(unit.shard), &plan.plan_hash, unit.shard, false).unwrap();
    let rec = synth::record(unit, 6, "FINISH", &synth::Options::default(), false);
    j.append(&Entry::Done(Box::new(rec.clone()))).unwrap();
    let mut stray: DialogueRecord = rec;
    stray.unit = crate::plan::UnitId([0xab; 10]);
    j.append(&Entry::Done(Box::new(stray))).unwrap();
    drop(j);
    let second = merge_run(&rd, false).unwrap();
    assert!(!second.up_to_date);
    assert_eq!(second.dialogues, first.dialogues + 1);
    assert_eq!(second.stats.missing.count, 5);
    assert_eq!(second.stats.ignored.count, 1);
    assert!(second.stats.ignored.first[0].starts_with("abababab"));
    assert!(!scan::warnings(&second.stats).is_empty());
}

#[test]
fn an_empty_run_merges_to_empty_files() {
    let (_d, rd) = planned(EXPERIMENT);
    let s = merge_run(&rd, false).unwrap();
    assert_eq!((s.dialogues, s.turns), (0, 0));
    assert_eq!(s.stats.missing.count, 24);
    assert_eq!(s.stats.missing.first.len(), scan::LISTED);
    assert_eq!(s.exit_code(), exit::FAILURES);
    let (batches, meta) = read_all(&s.dialogues_path);
    assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    assert_eq!(
        meta.file_metadata().schema_descr().root_schema().get_fields().len(),
        43 + super::indicators::dialogue_fields().len()
    );
}

#[test]
fn damaged_journals_are_reported_never_panic() {
    let (_d, rd) = planned(EXPERIMENT);
    synth::synthesize(
        &rd,
        &synth::Options {
            calls: false,
            ..Default::default()
        },
    )
    .unwrap();
    // Flip a byte inside the second done record of shard 0, and tear the last one of shard 1.
    let p0 = rd.journal_path(0);
    let mut bytes = std::fs::read(&p0).unwrap();
    let starts: Vec<usize> = bytes
        .iter()
        .enumerate()
        .filter(|(_, b)| **b == b'\n')
        .map(|(i, _)| i + 1)
        .collect();
    bytes[starts[2] + 40] ^= 0x01;
    std::fs::write(&p0, &bytes).unwrap();
    let p1 = rd.journal_path(1);
    let b1 = std::fs::read(&p1).unwrap();
    std::fs::write(&p1, &b1[..b1.len() - 30]).unwrap();
    let s = merge_run(&rd, true).unwrap();
    assert_eq!(s.stats.damaged.count, 1, "{:?}", s.stats);
    assert!(s.stats.damaged.first[0].starts_with("journal/shard-00000.jrnl:"));
    assert_eq!(s.stats.torn_tails, 1);
    assert_eq!(s.stats.missing.count, 2);
    assert_eq!(s.exit_code(), exit::OK, "--allow-partial");

    // Garbage, and a journal of another plan, are errors that name the file.
    std::fs::write(&p0, b"not a journal\nat all\n").unwrap();
    let e = merge_run(&rd, true).unwrap_err();
    assert!(
        e.message.contains("shard-00000.jrnl") && e.message.contains("bad header"),
        "{}",
        e.message
    );
    std::fs::remove_file(&p0).unwrap();
    drop(Journal::open(&p0, "0123456789abcdef0123456789abcdef", 0, false).unwrap());
    let e = merge_run(&rd, true).unwrap_err();
    assert!(e.message.contains("belongs to another plan"), "{}", e.message);
    assert!(e.hint.is_some());
    // A stray file in journal/ is only a warning.
    std::fs::remove_file(&p0).unwrap();
    std::fs::write(rd.journal_dir().join("shard-99999.jrnl"), b"x").unwrap();
    let s = merge_run(&rd, true).unwrap();
    assert_eq!(s.stats.stray_journals.count, 1);
    for bytes in [&b""[..], b"\n\n", b"\xff\xfe\x00", b"12345678 {}\n12345678 {}"] {
        std::fs::write(&p0, bytes).unwrap();
        let _ = merge_run(&rd, true);
    }
}

#[test]
fn rows_follow_the_plan_order_and_turns_are_keyed() {
    let (_d, rd) = planned(EXPERIMENT);
    synth::synthesize(&rd, &synth::Options::default()).unwrap();
    let s = merge_run(&rd, false).unwrap();
    let plan = rd.load_plan().unwrap();
    let units = crate::plan::read_units(&rd.units_path(&plan)).unwrap();
    let (batches, _) = read_all(&s.dialogues_path);
    let ids: Vec<String> = strings(&batches, "unit_id").into_iter().flatten().collect();
    let planned: Vec<String> = units.iter().map(|u| u.id.to_string()).collect();
    assert_eq!(ids, planned);
    let (tb, _) = read_all(&s.turns_path);
    let mut keys = Vec::new();
    for b in &tb {
        let u = b.column_by_name("unit_id").unwrap().as_string::<i32>();
        let t = b.column_by_name("turn").unwrap().as_primitive::<UInt32Type>();
        for i in 0..b.num_rows() {
            keys.push((u.value(i).to_string(), t.value(i)));
        }
    }
    let unique: HashSet<_> = keys.iter().collect();
    assert_eq!(unique.len(), keys.len());
    assert_eq!(
        strings(&batches, "responder_model")[0].as_deref(),
        Some("org/helper-7b")
    );
}

/// The indicators a worker stores in its records and the ones merge computes for records without
/// them (journals written before workers stored them) make the same files; stored indicators of
/// this version are used as they are, those of another version computed again; `--no-indicators`
/// leaves the columns out, and the next merge with them rewrites the files.
#[test]
fn stored_and_computed_indicators_make_the_same_files() {
    use crate::quality::indicators::VERSION;
    let opts = |indicators| synth::Options {
        missing_every: 5,
        failed_every: 4,
        indicators,
        ..Default::default()
    };
    let (_a, stored) = planned(EXPERIMENT);
    let (_b, computed) = planned(EXPERIMENT);
    synth::synthesize(&stored, &opts(true)).unwrap();
    synth::synthesize(&computed, &opts(false)).unwrap();
    let plan = stored.load_plan().unwrap();
    let mut with = 0;
    scan::scan(&stored, &plan, |b| {
        for f in &b.dialogues {
            assert_eq!(f.record.indicators.as_ref().map(|i| i.version), Some(VERSION));
            with += 1;
        }
        Ok(())
    })
    .unwrap();
    assert!(with > 10);
    let (s, c) = (merge_run(&stored, true).unwrap(), merge_run(&computed, true).unwrap());
    for (a, b) in [(&s.dialogues_path, &c.dialogues_path), (&s.turns_path, &c.turns_path)] {
        let (x, y) = (read_all(a).0, read_all(b).0);
        assert_eq!(x.len(), y.len());
        for (x, y) in x.iter().zip(&y) {
            for (k, f) in x.schema().fields().iter().enumerate() {
                if let (Some(l), Some(m)) = (x.column(k).as_list_opt::<i32>(), y.column(k).as_list_opt::<i32>())
                    && let (Some(l), Some(m)) = (l.values().as_struct_opt(), m.values().as_struct_opt())
                {
                    for (i, name) in l.column_names().iter().enumerate() {
                        assert_eq!(l.column(i), m.column(i), "{}: turns.{name}", a.display());
                    }
                }
                assert_eq!(x.column(k), y.column(k), "{}: {}", a.display(), f.name());
            }
        }
    }

    // A later record of one unit stores another version's values (computed again), and one of
    // another unit this version's with a marked drift (used as stored).
    let units = crate::plan::read_units(&stored.units_path(&plan)).unwrap();
    let (stale, marked) = (units[1], units[2]);
    let (j, _) = Journal::open(&stored.journal_path(stale.shard), &plan.plan_hash, stale.shard, false).unwrap();
    for (u, version, drift) in [(stale, VERSION + 1, 0.125), (marked, VERSION, 0.625)] {
        let mut rec = synth::record(&u, 6, "FINISH", &synth::Options::default(), false);
        let n = rec.turns.len();
        rec.indicators = Some(crate::dialogue::record::Indicators {
            version,
            words: vec![999; n],
            question_ratio: vec![0.0; n],
            contraction_rate: vec![0.0; n],
            formality: vec![0.5; n],
            signals: vec![0; n],
            repeat_jaccard: (0..n).map(|k| (k > 0).then_some(0.0)).collect(),
            restart: vec![false; n],
            style_drift: (n >= 2).then_some(drift),
            style_shift: (n >= 2).then_some(0.0),
            ..Default::default()
        });
        assert!(
            stale.shard == u.shard && n >= 2,
            "the test's units share a shard and have turns"
        );
        j.append(&Entry::Done(Box::new(rec))).unwrap();
    }
    drop(j);
    let again = merge_run(&stored, true).unwrap();
    let (batches, _) = read_all(&again.dialogues_path);
    let drift_of = |unit: crate::plan::UnitId| {
        let id = unit.to_string();
        batches.iter().find_map(|b| {
            let ids = b.column_by_name("unit_id").unwrap().as_string::<i32>();
            let d = b
                .column_by_name("style_drift")
                .unwrap()
                .as_primitive::<arrow::datatypes::Float64Type>();
            (0..b.num_rows()).find(|&i| ids.value(i) == id).map(|i| d.value(i))
        })
    };
    assert_eq!(
        drift_of(marked.id),
        Some(0.625),
        "stored indicators of this version are used"
    );
    let recomputed = drift_of(stale.id).unwrap();
    assert_ne!(recomputed, 0.125, "another version's are computed again");
    let fresh = crate::quality::indicators::dialogue(
        &plan.experiment.goals[stale.goal as usize].text,
        synth::record(&stale, 6, "FINISH", &synth::Options::default(), false)
            .turns
            .iter()
            .map(|t| (t.prompt.as_str(), t.responder.output.as_str()))
            .collect::<Vec<_>>(),
    );
    assert_eq!(Some(recomputed), fresh.style_drift);

    let bare = merge_with(
        &stored,
        MergeOptions {
            allow_partial: true,
            indicators: false,
        },
    )
    .unwrap();
    assert!(!bare.up_to_date && !bare.indicators);
    let (batches, meta) = read_all(&bare.dialogues_path);
    assert!(batches[0].column_by_name("style_drift").is_none());
    assert!(batches[0].column_by_name("role_flip_rate").is_none());
    assert_eq!(kv(&meta, meta::KEY_INDICATORS).as_deref(), Some("false"));
    let (turns, _) = read_all(&bare.turns_path);
    assert!(turns[0].column_by_name("repeat_jaccard").is_none());
    let full = merge_run(&stored, true).unwrap();
    assert!(
        !full.up_to_date && full.indicators,
        "a merge with other options rewrites"
    );
    let (batches, meta) = read_all(&full.dialogues_path);
    assert!(batches[0].column_by_name("style_drift").is_some());
    assert_eq!(kv(&meta, meta::KEY_INDICATORS).as_deref(), Some("true"));
    assert!(merge_run(&stored, true).unwrap().up_to_date);
}
