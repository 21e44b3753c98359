//! `roleplay merge`: a run's journals turned into two Parquet files, every planned dialogue exactly
//! once.
//!
//! ```text
//! RUN_DIR/out/dialogues.parquet   one row per dialogue, its turns as a nested list column
//! RUN_DIR/out/turns.parquet       one flat row per turn, keyed by (unit_id, turn)
//! RUN_DIR/out/.merge.json         what the files were made from (see "Merging again" below)
//! ```
//!
//! **Exactly once.** [`scan`] reads the shard journals in plan order, keeps the last valid `done`
//! record of each planned unit and ignores (with a warning) records of units the plan does not
//! place there. Planned units without a record are *missing*; units whose record ended with a
//! backend failure are *failed* (their rows are written, with `end_reason = backend_error`). Both
//! are listed; the command exits 1 unless `--allow-partial`. The files always hold what is done.
//!
//! **Streaming, bounded memory.** Four threads: the scanner parses one shard at a time, the
//! caller's thread turns groups of dialogues into Arrow batches ([`table`]), and one writer per
//! file encodes and compresses them (zstd). Channels between them hold two batches each and row
//! groups are capped at [`ROW_GROUP_BYTES`] of encoded data, so memory depends on the shard size
//! and those constants, never on the number of dialogues.
//!
//! **Atomic.** Each file is written to a temporary file in `out/`, synced, then renamed over the
//! old one; the manifest is removed first and written last, so after a crash the next merge never
//! trusts a half-replaced pair.
//!
//! **Merging again: a full rewrite, skipped when nothing changed.** The manifest records a
//! fingerprint of the plan and of every journal (name, length, modification time). When it still
//! matches and both files are as the manifest left them, a merge does nothing and reports the
//! recorded summary (0.00 s). When any journal changed (a resumed run), both files are rewritten
//! from all journals. Measured with `scripts/bench-merge` (BENCHMARKS.md, "Merge"; 100,000
//! dialogues of 1-12 turns, 2.8 GB of journals, two cores) before deciding:
//!
//! - a full merge takes 6.0 s (7.2 s on a cold first run) and 290 MB, so a resume that touched
//!   one shard of a million-dialogue run costs about a minute, against the hours or days that
//!   generating those dialogues takes with any real model;
//! - the alternative, per-shard part files under `out/parts/` plus combined files assembled by
//!   copying their encoded column chunks, would still have to write the combined files: copying
//!   the two outputs alone takes 0.42 s (7% of a full merge), so it could save at most 93%, and
//!   only while few shards changed;
//! - but it cuts the combined files into row groups of one shard each (100 dialogues by default).
//!   The same 100,000 dialogues in 1,000 row groups instead of 7 have a 9.3 MB footer instead of
//!   84 KB; reading it takes 38 ms instead of 0.5 ms and a DuckDB group-by over the file 88 ms
//!   instead of 3 ms. Every reader would pay that on every query, to save a minute once per resume.
//!
//! So the incremental scheme is not worth its cost; merging after a resume rewrites both files.

pub mod export;
pub mod indicators;
pub mod judgements;
pub mod meta;
pub mod scan;
pub mod synth;
pub mod table;
pub mod verdicts;

pub use scan::{IdList, ScanStats};

use crate::error::{Error, Result, exit};
use crate::plan::Plan;
use crate::rundir::{Lock, RunDir};
use arrow::datatypes::SchemaRef;
use arrow::record_batch::RecordBatch;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, sync_channel};
use std::time::Instant;

pub const DIALOGUES_FILE: &str = "dialogues.parquet";
pub const TURNS_FILE: &str = "turns.parquet";
pub const MANIFEST_FILE: &str = ".merge.json";
/// Bumped when the tables' layout changes: a manifest of another version means a rewrite.
/// 2: the fidelity indicator columns (`indicators`).
pub const MERGE_VERSION: u32 = 2;
/// Cap on a row group's encoded size (the writer buffers one row group per file in memory).
pub const ROW_GROUP_BYTES: usize = 64 << 20;
/// Dialogues per Arrow batch handed to the writers.
const BATCH_DIALOGUES: usize = 512;

/// What a merge did.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MergeSummary {
    pub dialogues_path: PathBuf,
    pub turns_path: PathBuf,
    /// Rows written to each file.
    pub dialogues: u64,
    pub turns: u64,
    pub stats: ScanStats,
    /// Nothing had changed since the last merge: the files were left as they were.
    pub up_to_date: bool,
    pub allow_partial: bool,
    /// The files hold the fidelity indicator columns (a manifest written before the option
    /// existed always had them).
    #[serde(default = "yes")]
    pub indicators: bool,
    pub seconds: f64,
}

fn yes() -> bool {
    true
}

/// How to merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MergeOptions {
    /// Exit 0 even if units are missing or failed ([`MergeSummary::exit_code`]).
    pub allow_partial: bool,
    /// Compute and write the fidelity indicator columns (`merge --no-indicators` leaves them out).
    pub indicators: bool,
}

impl MergeSummary {
    /// Every planned unit finished, none with a backend failure.
    pub fn complete(&self) -> bool {
        self.stats.complete()
    }

    /// 0, or 1 when units are missing or failed and `--allow-partial` was not given.
    pub fn exit_code(&self) -> i32 {
        if self.complete() || self.allow_partial {
            exit::OK
        } else {
            exit::FAILURES
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    format: String,
    version: u32,
    tool_version: String,
    plan_hash: String,
    fingerprint: String,
    dialogues_len: u64,
    turns_len: u64,
    summary: MergeSummary,
}

/// Merge the run's journals into `RUN_DIR/out/{dialogues,turns}.parquet` (see the module docs),
/// with the indicator columns. The caller prints [`scan::warnings`] of the summary's stats and
/// decides the exit code with [`MergeSummary::exit_code`].
pub fn merge_run(rd: &RunDir, allow_partial: bool) -> Result<MergeSummary> {
    merge_with(
        rd,
        MergeOptions {
            allow_partial,
            indicators: true,
        },
    )
}

/// [`merge_run`] with its options. Files merged with other options are rewritten.
pub fn merge_with(rd: &RunDir, opts: MergeOptions) -> Result<MergeSummary> {
    let MergeOptions {
        allow_partial,
        indicators,
    } = opts;
    let started = Instant::now();
    let plan = rd.load_plan()?;
    let out = rd.out_dir();
    fs_err::create_dir_all(&out)?;
    let _lock = Lock::try_acquire(&rd.merge_lock_path(), "a merge of this run")?;
    let dialogues_path = out.join(DIALOGUES_FILE);
    let turns_path = out.join(TURNS_FILE);
    let manifest_path = out.join(MANIFEST_FILE);
    // Taken before reading: a journal that grows during the merge makes the next merge run again.
    let fingerprint = fingerprint(rd, &plan)?;
    if let Some(m) = read_manifest(&manifest_path)
        && m.version == MERGE_VERSION
        && m.tool_version == env!("CARGO_PKG_VERSION")
        && m.plan_hash == plan.plan_hash
        && m.fingerprint == fingerprint
        && m.summary.indicators == indicators
        && file_len(&dialogues_path) == Some(m.dialogues_len)
        && file_len(&turns_path) == Some(m.turns_len)
    {
        return Ok(MergeSummary {
            up_to_date: true,
            allow_partial,
            seconds: started.elapsed().as_secs_f64(),
            dialogues_path,
            turns_path,
            ..m.summary
        });
    }
    let (dialogues, turns, stats) = write_tables(rd, &plan, indicators, &out, &dialogues_path, &turns_path)?;
    let summary = MergeSummary {
        dialogues_path: dialogues_path.clone(),
        turns_path: turns_path.clone(),
        dialogues,
        turns,
        stats,
        up_to_date: false,
        allow_partial,
        indicators,
        seconds: started.elapsed().as_secs_f64(),
    };
    let manifest = Manifest {
        format: "roleplay-merge".into(),
        version: MERGE_VERSION,
        tool_version: env!("CARGO_PKG_VERSION").into(),
        plan_hash: plan.plan_hash.clone(),
        fingerprint,
        dialogues_len: file_len(&dialogues_path).unwrap_or(0),
        turns_len: file_len(&turns_path).unwrap_or(0),
        summary: summary.clone(),
    };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::runtime(e.to_string()))?;
    crate::rundir::write_atomic(&manifest_path, &json)?;
    Ok(summary)
}

fn file_len(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

fn read_manifest(p: &Path) -> Option<Manifest> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

/// A digest of the plan and of every journal's name, length and modification time.
fn fingerprint(rd: &RunDir, plan: &Plan) -> Result<String> {
    let mut h = blake3::Hasher::new();
    h.update(plan.plan_hash.as_bytes());
    h.update(&[0]);
    let dir = rd.journal_dir();
    let mut entries = Vec::new();
    match std::fs::read_dir(&dir) {
        Ok(rd) => {
            for e in rd {
                let e = e.map_err(|e| Error::runtime(format!("cannot list `{}`: {e}", dir.display())))?;
                let m = e
                    .metadata()
                    .map_err(|err| Error::runtime(format!("cannot stat `{}`: {err}", e.path().display())))?;
                let mtime = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map(|d| d.as_nanos())
                    .unwrap_or(0);
                entries.push((e.file_name().to_string_lossy().into_owned(), m.len(), mtime));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::runtime(format!("cannot list `{}`: {e}", dir.display()))),
    }
    entries.sort();
    for (name, len, mtime) in entries {
        h.update(format!("{name}\0{len}\0{mtime}\n").as_bytes());
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// Writer settings: zstd, chunk statistics, row groups capped by encoded size, no dictionary for
/// free text.
fn writer_properties(schema: &SchemaRef, kv: Vec<KeyValue>) -> Result<WriterProperties> {
    let descr = parquet::arrow::ArrowSchemaConverter::new()
        .convert(schema)
        .map_err(|e| Error::runtime(format!("cannot convert the table schema to Parquet: {e}")))?;
    let mut b = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::default()))
        .set_statistics_enabled(EnabledStatistics::Chunk)
        .set_max_row_group_bytes(Some(ROW_GROUP_BYTES))
        .set_max_row_group_row_count(Some(1 << 20))
        .set_created_by(format!("roleplay {}", env!("CARGO_PKG_VERSION")))
        .set_key_value_metadata(Some(kv));
    for col in descr.columns() {
        let name = col.path().parts().last().map(String::as_str).unwrap_or("");
        if table::FREE_TEXT.contains(&name) {
            b = b.set_column_dictionary_enabled(col.path().clone(), false);
        }
    }
    Ok(b.build())
}

pub use crate::rundir::Pending;

/// Encode batches from `rx` into `file` until the channel closes; returns rows written.
fn write_file(
    file: &std::fs::File,
    path: &Path,
    schema: SchemaRef,
    props: WriterProperties,
    rx: Receiver<RecordBatch>,
    done_kv: impl FnOnce() -> Vec<KeyValue>,
) -> Result<u64> {
    let err = |e: parquet::errors::ParquetError| {
        Error::runtime(format!("cannot write `{}`: {e}", path.display()))
            .with_source(e)
            .with_hint("check free disk space in the run directory's `out/` folder")
    };
    let mut w = ArrowWriter::try_new(file, schema, Some(props)).map_err(err)?;
    let mut rows = 0u64;
    for batch in rx {
        rows += batch.num_rows() as u64;
        w.write(&batch).map_err(err)?;
    }
    for kv in done_kv() {
        w.append_key_value_metadata(kv);
    }
    w.close().map_err(err)?;
    Ok(rows)
}

fn write_tables(
    rd: &RunDir,
    plan: &Plan,
    indicators: bool,
    out: &Path,
    dialogues_path: &Path,
    turns_path: &Path,
) -> Result<(u64, u64, ScanStats)> {
    let exp = &plan.experiment;
    let layout = table::Layout::new(exp, indicators);
    let (experiment_json, redacted) = meta::redacted_experiment(plan);
    let kv = |table: &str| {
        let mut kv = vec![
            KeyValue::new(meta::KEY_TABLE.into(), table.to_string()),
            KeyValue::new(meta::KEY_PLAN_HASH.into(), plan.plan_hash.clone()),
            KeyValue::new(meta::KEY_TOOL_VERSION.into(), env!("CARGO_PKG_VERSION").to_string()),
            KeyValue::new(meta::KEY_EXPERIMENT.into(), experiment_json.clone()),
            KeyValue::new(meta::KEY_INDICATORS.into(), indicators.to_string()),
        ];
        if !redacted.is_empty() {
            kv.push(KeyValue::new(meta::KEY_REDACTED.into(), redacted.clone()));
        }
        kv
    };
    let d_props = writer_properties(&layout.dialogues, kv("dialogues"))?;
    let t_props = writer_properties(&layout.turns, kv("turns"))?;
    let d_file = Pending::new(dialogues_path)?;
    let t_file = Pending::new(turns_path)?;

    let stats_cell = std::sync::Mutex::new(None::<ScanStats>);
    let completion_kv = |stats: &std::sync::Mutex<Option<ScanStats>>| {
        let s = stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .unwrap_or_default();
        vec![
            KeyValue::new("roleplay.units_planned".into(), s.planned.to_string()),
            KeyValue::new("roleplay.units_missing".into(), s.missing.count.to_string()),
            KeyValue::new("roleplay.units_failed".into(), s.failed.count.to_string()),
            KeyValue::new("roleplay.complete".into(), s.complete().to_string()),
        ]
    };

    let result = std::thread::scope(|s| -> Result<(u64, u64, ScanStats)> {
        let (dtx, drx) = sync_channel::<RecordBatch>(2);
        let (ttx, trx) = sync_channel::<RecordBatch>(2);
        let (stx, srx) = sync_channel::<scan::ShardBatch>(2);
        let dschema = layout.dialogues.clone();
        let tschema = layout.turns.clone();
        let (df, tf) = (d_file.file(), t_file.file());
        let stats_ref = &stats_cell;
        // The writers wait for the scan's stats (sent when the batch channels close) for their footers.
        let dw = s.spawn(move || write_file(df, dialogues_path, dschema, d_props, drx, || completion_kv(stats_ref)));
        let tw = s.spawn(move || write_file(tf, turns_path, tschema, t_props, trx, || completion_kv(stats_ref)));
        let scanner = s.spawn(move || {
            scan::scan(rd, plan, |b| {
                stx.send(b)
                    .map_err(|_| Error::runtime("the merge stopped: a Parquet writer failed"))
            })
        });
        let mut pending: Vec<scan::Finished> = Vec::with_capacity(BATCH_DIALOGUES * 2);
        let mut send_err: Option<Error> = None;
        let flush = |pending: &mut Vec<scan::Finished>| -> Result<()> {
            if pending.is_empty() {
                return Ok(());
            }
            let (d, t) = layout
                .batches(exp, pending)
                .map_err(|e| Error::runtime(format!("cannot build the merge's Arrow batches: {e}")))?;
            pending.clear();
            let closed = || Error::runtime("the merge stopped: a Parquet writer failed");
            dtx.send(d).map_err(|_| closed())?;
            ttx.send(t).map_err(|_| closed())?;
            Ok(())
        };
        for batch in srx {
            pending.extend(batch.dialogues);
            if pending.len() >= BATCH_DIALOGUES
                && let Err(e) = flush(&mut pending)
            {
                send_err = Some(e);
                break;
            }
        }
        if send_err.is_none()
            && let Err(e) = flush(&mut pending)
        {
            send_err = Some(e);
        }
        let scanned = scanner
            .join()
            .unwrap_or_else(|_| Err(Error::runtime("the journal scan panicked")));
        if let Ok(stats) = &scanned {
            *stats_cell.lock().unwrap_or_else(|p| p.into_inner()) = Some(stats.clone());
        }
        drop(dtx);
        drop(ttx);
        let d_rows = dw
            .join()
            .unwrap_or_else(|_| Err(Error::runtime("the dialogues writer panicked")));
        let t_rows = tw
            .join()
            .unwrap_or_else(|_| Err(Error::runtime("the turns writer panicked")));
        // The most specific error first: a scan error explains why the writers were stopped.
        let stats = scanned?;
        let (d_rows, t_rows) = (d_rows?, t_rows?);
        if let Some(e) = send_err {
            return Err(e);
        }
        Ok((d_rows, t_rows, stats))
    });
    let (d_rows, t_rows, stats) = result?;
    // The old manifest goes first: a crash between the two renames must not look up to date.
    let manifest = out.join(MANIFEST_FILE);
    if manifest.exists() {
        fs_err::remove_file(&manifest)?;
    }
    d_file.commit()?;
    t_file.commit()?;
    Ok((d_rows, t_rows, stats))
}

#[cfg(test)]
mod tests;
