//! `RUN_DIR/out/judgements.parquet`: the verdicts of every judge stage of a run (`judge/<name>/`),
//! one row per (stage, judge, judged dialogue), keyed by the judged dialogue's `unit_id` so it
//! joins `dialogues.parquet` and `turns.parquet` directly.
//!
//! Written like the other files (zstd, chunk statistics, the plan hash, the tool version and each
//! stage's resolved settings without secrets as key-value metadata), through a temporary file and
//! a rename, by `roleplay judge` at its end and by `roleplay merge` on a stage (what a stage's
//! Slurm merge job runs). A merge finding no stage's journal changed since the last does nothing.

use super::meta;
use super::verdicts::{self as scan, StageStats};
use crate::error::{Error, Result};
use crate::judgement::Status;
use crate::plan::Plan;
use crate::plan::stage::Stage;
use crate::rundir::{Lock, Pending, RunDir};
use arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, StringBuilder, UInt32Builder, UInt64Builder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

pub const JUDGEMENTS_FILE: &str = "judgements.parquet";
const MANIFEST_FILE: &str = ".judgements.json";
/// Bumped when the table's layout changes: a manifest of another version means a rewrite.
pub const JUDGEMENTS_VERSION: u32 = 1;
const BATCH_ROWS: usize = 4096;
/// Free text: no dictionary.
const FREE_TEXT: &[&str] = &["unit_id", "judge_unit_id", "rationale", "error_message", "raw_output"];

/// What merging the judgements did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct JudgementsSummary {
    pub path: PathBuf,
    pub rows: u64,
    /// Per stage, by name.
    pub stages: Vec<(String, StageStats)>,
    pub up_to_date: bool,
    pub seconds: f64,
}

impl JudgementsSummary {
    pub fn complete(&self) -> bool {
        self.stages.iter().all(|(_, s)| s.complete())
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    version: u32,
    tool_version: String,
    fingerprint: String,
    len: u64,
    summary: JudgementsSummary,
}

/// The table's schema.
pub fn schema() -> SchemaRef {
    let text = |n: &str| Field::new(n, DataType::Utf8, false);
    let textn = |n: &str| Field::new(n, DataType::Utf8, true);
    let u32c = |n: &str| Field::new(n, DataType::UInt32, false);
    let u32n = |n: &str| Field::new(n, DataType::UInt32, true);
    let u64n = |n: &str| Field::new(n, DataType::UInt64, true);
    Arc::new(Schema::new(vec![
        text("unit_id"),
        text("judge"),
        text("judge_model"),
        text("judge_unit_id"),
        text("rubric_digest"),
        text("status"),
        Field::new("goal_achieved", DataType::Boolean, true),
        u32n("goal_turn"),
        u32n("persona_adherence"),
        u32n("human_likeness"),
        textn("rationale"),
        u32c("calls"),
        u32c("malformed"),
        u64n("prompt_tokens"),
        u64n("completion_tokens"),
        Field::new("latency_ms", DataType::Float64, false),
        u32c("http_attempts"),
        textn("error_kind"),
        textn("error_message"),
        textn("raw_output"),
    ]))
}

#[derive(Default)]
struct Columns {
    unit_id: StringBuilder,
    judge: StringBuilder,
    judge_model: StringBuilder,
    judge_unit_id: StringBuilder,
    rubric_digest: StringBuilder,
    status: StringBuilder,
    goal_achieved: BooleanBuilder,
    goal_turn: UInt32Builder,
    persona_adherence: UInt32Builder,
    human_likeness: UInt32Builder,
    rationale: StringBuilder,
    calls: UInt32Builder,
    malformed: UInt32Builder,
    prompt_tokens: UInt64Builder,
    completion_tokens: UInt64Builder,
    latency_ms: Float64Builder,
    http_attempts: UInt32Builder,
    error_kind: StringBuilder,
    error_message: StringBuilder,
    raw_output: StringBuilder,
    rows: usize,
}

impl Columns {
    fn push(
        &mut self,
        stage: &str,
        judge: &str,
        rubric: &str,
        unit: &crate::rundir::judge_units::Unit,
        v: &crate::judgement::Verdict,
    ) {
        self.unit_id.append_value(unit.parent.to_string());
        self.judge.append_value(stage);
        self.judge_model.append_value(judge);
        self.judge_unit_id.append_value(unit.id.to_string());
        self.rubric_digest.append_value(rubric);
        self.status.append_value(v.status.as_str());
        let s = v.scores.as_ref();
        self.goal_achieved.append_option(s.map(|s| s.goal_achieved));
        self.goal_turn.append_option(s.and_then(|s| s.goal_turn));
        self.persona_adherence
            .append_option(s.map(|s| u32::from(s.persona_adherence)));
        self.human_likeness
            .append_option(s.map(|s| u32::from(s.human_likeness)));
        self.rationale.append_option(s.map(|s| s.rationale.as_str()));
        self.calls.append_value(v.calls);
        self.malformed.append_value(v.errors.len() as u32);
        self.prompt_tokens.append_option(v.prompt_tokens);
        self.completion_tokens.append_option(v.completion_tokens);
        self.latency_ms.append_value(v.latency_ms);
        self.http_attempts.append_value(v.http_attempts);
        self.error_kind
            .append_option(v.failure.as_ref().map(|f| f.kind.as_str()));
        let message = match v.status {
            Status::Failed => v.failure.as_ref().map(|f| f.message.as_str()),
            Status::Unparsable => v.errors.last().map(String::as_str),
            Status::Ok => None,
        };
        self.error_message.append_option(message);
        self.raw_output.append_option(
            (v.status == Status::Unparsable)
                .then_some(v.raw_output.as_deref())
                .flatten(),
        );
        self.rows += 1;
    }

    fn finish(&mut self, schema: &SchemaRef) -> Result<RecordBatch> {
        let cols: Vec<ArrayRef> = vec![
            Arc::new(self.unit_id.finish()),
            Arc::new(self.judge.finish()),
            Arc::new(self.judge_model.finish()),
            Arc::new(self.judge_unit_id.finish()),
            Arc::new(self.rubric_digest.finish()),
            Arc::new(self.status.finish()),
            Arc::new(self.goal_achieved.finish()),
            Arc::new(self.goal_turn.finish()),
            Arc::new(self.persona_adherence.finish()),
            Arc::new(self.human_likeness.finish()),
            Arc::new(self.rationale.finish()),
            Arc::new(self.calls.finish()),
            Arc::new(self.malformed.finish()),
            Arc::new(self.prompt_tokens.finish()),
            Arc::new(self.completion_tokens.finish()),
            Arc::new(self.latency_ms.finish()),
            Arc::new(self.http_attempts.finish()),
            Arc::new(self.error_kind.finish()),
            Arc::new(self.error_message.finish()),
            Arc::new(self.raw_output.finish()),
        ];
        self.rows = 0;
        RecordBatch::try_new(schema.clone(), cols)
            .map_err(|e| Error::runtime(format!("cannot build the judgements' Arrow batch: {e}")))
    }
}

/// A digest of every stage's plan and journals (name, length, modification time).
fn fingerprint(stages: &[(String, RunDir, Plan)]) -> String {
    let mut h = blake3::Hasher::new();
    for (name, rd, plan) in stages {
        h.update(format!("{name}\0{}\n", plan.plan_hash).as_bytes());
        let mut entries = Vec::new();
        if let Ok(dir) = std::fs::read_dir(rd.journal_dir()) {
            for e in dir.flatten() {
                if let Ok(m) = e.metadata() {
                    let mtime = m
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map(|d| d.as_nanos())
                        .unwrap_or(0);
                    entries.push((e.file_name().to_string_lossy().into_owned(), m.len(), mtime));
                }
            }
        }
        entries.sort();
        for (n, len, mtime) in entries {
            h.update(format!("{n}\0{len}\0{mtime}\n").as_bytes());
        }
    }
    h.finalize().to_hex()[..32].to_string()
}

/// What a stage's metadata entry says.
#[derive(Serialize)]
struct StageMeta<'a> {
    name: &'a str,
    plan_hash: &'a str,
    parent_plan_hash: &'a str,
    rubric_digest: String,
    rubric: &'a crate::plan::stage::Rubric,
    max_malformed: u32,
    experiment: serde_json::Value,
    #[serde(skip_serializing_if = "str::is_empty")]
    redacted: String,
}

/// Merge the verdicts of every judge stage of the run `parent` into `out/judgements.parquet`.
pub fn merge_judgements(parent: &RunDir) -> Result<JudgementsSummary> {
    let started = Instant::now();
    let parent_plan = parent.load_plan()?;
    if parent_plan.judge.is_some() {
        return Err(
            Error::config(format!("`{}` is a judge stage, not a run", parent.root.display()))
                .with_hint("merge the run directory above `judge/`"),
        );
    }
    let out = parent.out_dir();
    fs_err::create_dir_all(&out)?;
    fs_err::create_dir_all(parent.lock_dir())?;
    let _lock = Lock::try_acquire(&parent.judgements_lock_path(), "a merge of this run's judgements")?;
    let path = out.join(JUDGEMENTS_FILE);
    let manifest_path = out.join(MANIFEST_FILE);
    let stages = scan::stages(parent)?;
    let fp = fingerprint(&stages);
    let len = |p: &Path| std::fs::metadata(p).ok().map(|m| m.len());
    if let Some(m) = std::fs::read(&manifest_path)
        .ok()
        .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
        && m.version == JUDGEMENTS_VERSION
        && m.tool_version == env!("CARGO_PKG_VERSION")
        && m.fingerprint == fp
        && len(&path) == Some(m.len)
    {
        return Ok(JudgementsSummary {
            up_to_date: true,
            seconds: started.elapsed().as_secs_f64(),
            path,
            ..m.summary
        });
    }
    let schema = schema();
    let mut metas = Vec::new();
    for (name, _, plan) in &stages {
        let s: &Stage = plan.judge.as_ref().expect("stages() keeps judge plans");
        let (json, redacted) = meta::redacted_experiment(plan);
        metas.push(StageMeta {
            name,
            plan_hash: &plan.plan_hash,
            parent_plan_hash: &s.parent_plan_hash,
            rubric_digest: s.rubric.digest(),
            rubric: &s.rubric,
            max_malformed: s.max_malformed,
            experiment: serde_json::from_str(&json).unwrap_or(serde_json::Value::Null),
            redacted,
        });
    }
    let kv = vec![
        KeyValue::new(meta::KEY_TABLE.into(), "judgements".to_string()),
        KeyValue::new(meta::KEY_PLAN_HASH.into(), parent_plan.plan_hash.clone()),
        KeyValue::new(meta::KEY_TOOL_VERSION.into(), env!("CARGO_PKG_VERSION").to_string()),
        KeyValue::new(
            "roleplay.judges".into(),
            serde_json::to_string(&metas).expect("serialisable"),
        ),
    ];
    let descr = parquet::arrow::ArrowSchemaConverter::new()
        .convert(&schema)
        .map_err(|e| Error::runtime(format!("cannot convert the judgements' schema to Parquet: {e}")))?;
    let mut props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_bytes(Some(super::ROW_GROUP_BYTES))
        .set_created_by(format!("roleplay {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv));
    for col in descr.columns() {
        let name = col.path().parts().last().map(String::as_str).unwrap_or("");
        if FREE_TEXT.contains(&name) {
            props = props.set_column_dictionary_enabled(col.path().clone(), false);
        }
    }
    let pending = Pending::new(&path)?;
    let err = |e: parquet::errors::ParquetError| {
        Error::runtime(format!("cannot write `{}`: {e}", path.display()))
            .with_source(e)
            .with_hint("check free disk space in the run directory's `out/` folder")
    };
    let mut w = ArrowWriter::try_new(pending.file(), schema.clone(), Some(props.build())).map_err(err)?;
    let mut cols = Columns::default();
    let mut rows = 0u64;
    let mut summary_stages = Vec::new();
    for (name, rd, plan) in &stages {
        let s = plan.judge.as_ref().expect("a judge plan");
        let digest = s.rubric.digest();
        let stats = scan::scan(rd, plan, |b| {
            for (u, v) in &b.verdicts {
                cols.push(name, &b.judge, &digest, u, v);
                if cols.rows >= BATCH_ROWS {
                    rows += cols.rows as u64;
                    w.write(&cols.finish(&schema)?).map_err(err)?;
                }
            }
            Ok(())
        })?;
        summary_stages.push((name.clone(), stats));
    }
    if cols.rows > 0 {
        rows += cols.rows as u64;
        w.write(&cols.finish(&schema)?).map_err(err)?;
    }
    let planned: u64 = summary_stages.iter().map(|(_, s)| s.planned).sum();
    let missing: u64 = summary_stages.iter().map(|(_, s)| s.missing.count).sum();
    let failed: u64 = summary_stages.iter().map(|(_, s)| s.failed.count).sum();
    for (k, v) in [
        ("roleplay.units_planned", planned.to_string()),
        ("roleplay.units_missing", missing.to_string()),
        ("roleplay.units_failed", failed.to_string()),
        ("roleplay.complete", (missing == 0 && failed == 0).to_string()),
    ] {
        w.append_key_value_metadata(KeyValue::new(k.into(), v));
    }
    w.close().map_err(err)?;
    if manifest_path.exists() {
        fs_err::remove_file(&manifest_path)?;
    }
    pending.commit()?;
    let summary = JudgementsSummary {
        path: path.clone(),
        rows,
        stages: summary_stages,
        up_to_date: false,
        seconds: started.elapsed().as_secs_f64(),
    };
    let m = Manifest {
        version: JUDGEMENTS_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        fingerprint: fp,
        len: len(&path).unwrap_or(0),
        summary: summary.clone(),
    };
    crate::rundir::write_atomic(&manifest_path, &serde_json::to_vec_pretty(&m).expect("serialisable"))?;
    Ok(summary)
}

/// The judged run of a stage directory (`RUN_DIR/judge/<name>/` -> `RUN_DIR`).
pub fn parent_of_stage(stage: &RunDir) -> Result<RunDir> {
    let abs = std::path::absolute(&stage.root).unwrap_or_else(|_| stage.root.clone());
    let in_judge = abs.parent().and_then(Path::file_name) == Some(std::ffi::OsStr::new("judge"));
    match abs.parent().and_then(Path::parent) {
        Some(p) if in_judge => Ok(RunDir::new(p)),
        _ => Err(Error::config(format!(
            "`{}` is not inside a run's `judge/` folder",
            stage.root.display()
        ))
        .with_hint("judge stages live in `RUN_DIR/judge/<name>/`, where `roleplay judge` made them")),
    }
}
