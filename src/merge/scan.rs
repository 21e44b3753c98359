//! Reading a run's finished dialogues back from its shard journals, once each, in plan order.
//!
//! Shards are read one at a time (memory: one shard's finished records, never the whole run). For
//! each shard the planned units are streamed from the units file (sorted by shard, then id), the
//! journal is read line by line and the last valid `done` record of each unit wins (a retried
//! failure is superseded by its retry). Records of units that the plan does not place in that
//! shard are ignored with a warning; planned units without a record are *missing*; units whose
//! winning record ended with a backend failure are *failed*. Both lists are kept as a count and
//! the first [`LISTED`] ids.
//!
//! The journal is read with the worker's own reader (`rundir::journal::scan`: a bad last line is a
//! torn tail, a bad line elsewhere is damaged and skipped), streaming, with `call` records skipped
//! unchecked and undecoded and `done` records decoded straight into [`DialogueRecord`] (the `t` tag
//! is an ignored field), which is what makes a merge faster than the journals are long.

use crate::dialogue::DialogueRecord;
use crate::error::{Error, Result};
use crate::plan::{Plan, Unit, UnitId, UnitsReader};
use crate::rundir::RunDir;
use crate::rundir::journal::{self, Entry};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::BufReader;
use std::path::Path;

/// How many ids of missing, failed or ignored units are listed (the rest are counted).
pub const LISTED: usize = 20;

/// A finished dialogue with its place in the plan.
#[derive(Debug, Clone)]
pub struct Finished {
    pub unit: Unit,
    pub record: DialogueRecord,
    /// The worker attempt on the shard during which the dialogue finished (0 if unrecorded).
    pub worker_attempt: u32,
}

/// The finished dialogues of one shard, in the units file's order (by id).
#[derive(Debug, Default)]
pub struct ShardBatch {
    pub shard: u32,
    pub dialogues: Vec<Finished>,
}

/// Ids and a count: the first [`LISTED`] ids are kept.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdList {
    pub count: u64,
    pub first: Vec<String>,
}

impl IdList {
    pub fn push(&mut self, id: impl std::fmt::Display) {
        self.count += 1;
        if self.first.len() < LISTED {
            self.first.push(id.to_string());
        }
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// `a, b, c and 17 more`.
    pub fn describe(&self) -> String {
        let more = self.count.saturating_sub(self.first.len() as u64);
        let mut s = self.first.join(", ");
        if more > 0 {
            s.push_str(&format!(" and {more} more"));
        }
        s
    }
}

/// What a scan found, beside the dialogues themselves.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanStats {
    pub planned: u64,
    /// Units with a finished record (failed ones included).
    pub finished: u64,
    pub missing: IdList,
    pub failed: IdList,
    /// `done` records of units the plan does not place in the journal's shard.
    pub ignored: IdList,
    /// `done` records superseded by a later one of the same unit.
    pub superseded: u64,
    /// Damaged records skipped, as `journal/shard-NNNNN.jrnl:LINE`.
    pub damaged: IdList,
    /// Journals whose last record was cut short (a crash mid-write, or a worker still writing).
    pub torn_tails: u64,
    /// Files in `journal/` that belong to no shard of the plan.
    pub stray_journals: IdList,
}

impl ScanStats {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.failed.is_empty()
    }
}

/// Check the plan's indices once, so that rows can index the experiment without panicking.
fn check_unit(plan: &Plan, path: &Path, u: &Unit) -> Result<()> {
    let exp = &plan.experiment;
    if (u.persona as usize) < exp.personas.len()
        && (u.goal as usize) < exp.goals.len()
        && (u.pair as usize) < exp.pairs.len()
        && exp.model(&exp.pairs[u.pair as usize].inquirer).is_some()
        && exp.model(&exp.pairs[u.pair as usize].responder).is_some()
    {
        return Ok(());
    }
    Err(
        Error::config(format!("`{}`: unit {} points outside its plan", path.display(), u.id))
            .with_hint("the run directory is damaged; plan again with `--replan`"),
    )
}

/// The journal of one shard, read: the winning record per unit, with the attempt it finished in.
struct ShardJournal {
    done: HashMap<UnitId, (DialogueRecord, u32)>,
}

/// `call` records are skipped without being checked or decoded; `done` records decode straight into a record.
const CALL_PREFIX: &[u8] = br#"{"t":"call""#;
const DONE_PREFIX: &[u8] = br#"{"t":"done""#;

fn read_shard_journal(
    path: &Path,
    rel: &str,
    plan_hash: &str,
    shard: u32,
    stats: &mut ScanStats,
) -> Result<Option<ShardJournal>> {
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("cannot open `{}`: {e}", path.display()), e)),
    };
    let mut out = ShardJournal { done: HashMap::new() };
    let mut attempt = 0u32;
    let mut superseded = 0u64;
    let mut keep = |rec: DialogueRecord, attempt: u32| {
        if out.done.insert(rec.unit, (rec, attempt)).is_some() {
            superseded += 1;
        }
    };
    let info = journal::scan(
        path,
        BufReader::with_capacity(1 << 20, file),
        |json| !json.starts_with(CALL_PREFIX),
        |_, json| {
            if json.starts_with(DONE_PREFIX) {
                return match serde_json::from_slice::<DialogueRecord>(json) {
                    Ok(rec) => {
                        keep(rec, attempt);
                        true
                    }
                    Err(_) => false,
                };
            }
            // Anything else (attempts, or records serialised in another key order) takes the general path.
            match serde_json::from_slice::<Entry>(json) {
                Ok(Entry::Attempt(a)) => attempt = a.attempt,
                Ok(Entry::Done(rec)) => keep(*rec, attempt),
                Ok(Entry::Call(_) | Entry::Verdict(_)) => {}
                Err(_) => return false,
            }
            true
        },
    )?;
    stats.superseded += superseded;
    if info.torn_tail {
        // Cut short by a crash (or a worker writing right now): ignored, like the worker does.
        stats.torn_tails += 1;
    }
    for line in info.damaged_lines {
        stats.damaged.push(format!("{rel}:{line}"));
    }
    if let Some(h) = info.header
        && (h.meta.plan_hash != plan_hash || h.meta.shard != shard)
    {
        return Err(Error::config(format!(
            "`{}` belongs to another plan or shard (plan {}, shard {}; expected plan {plan_hash}, shard {shard})",
            path.display(),
            h.meta.plan_hash,
            h.meta.shard
        ))
        .with_hint("the run directory was changed by hand; run `roleplay plan --replan` to carry finished work over"));
    }
    Ok(Some(out))
}

/// Read every shard of the plan in order and hand each shard's finished dialogues to `sink`.
/// `sink` may stop the scan early by returning an error (which is returned).
pub fn scan(rd: &RunDir, plan: &Plan, mut sink: impl FnMut(ShardBatch) -> Result<()>) -> Result<ScanStats> {
    let mut stats = ScanStats::default();
    let units_path = rd.units_path(plan);
    let mut units = UnitsReader::open(&units_path)?;
    for shard in 0..plan.shards.len() as u32 {
        let planned = units.units_of(shard)?;
        if planned.len() as u64 != plan.shards[shard as usize].units as u64 {
            return Err(Error::config(format!(
                "the units file `{}` does not match its plan (shard {shard})",
                units_path.display()
            ))
            .with_hint("the run directory is damaged; plan again with `--replan`"));
        }
        stats.planned += planned.len() as u64;
        let path = rd.journal_path(shard);
        let rel = format!("journal/shard-{shard:05}.jrnl");
        let journal = read_shard_journal(&path, &rel, &plan.plan_hash, shard, &mut stats)?;
        let mut done = journal.map(|j| j.done).unwrap_or_default();
        let mut batch = ShardBatch {
            shard,
            dialogues: Vec::with_capacity(done.len()),
        };
        for u in planned {
            check_unit(plan, &units_path, &u)?;
            match done.remove(&u.id) {
                Some((record, worker_attempt)) => {
                    stats.finished += 1;
                    if record.ending.reason.is_failure() {
                        stats.failed.push(u.id);
                    }
                    batch.dialogues.push(Finished {
                        unit: u,
                        record,
                        worker_attempt,
                    });
                }
                None => stats.missing.push(u.id),
            }
        }
        let mut strays: Vec<UnitId> = done.into_keys().collect();
        strays.sort_unstable();
        for id in strays {
            stats.ignored.push(format!("{id} (in {rel})"));
        }
        sink(batch)?;
    }
    if let Some(u) = units.next_unit()? {
        return Err(Error::config(format!(
            "the units file `{}` has units of shard {}, which its plan does not have",
            units_path.display(),
            u.shard
        ))
        .with_hint("the run directory is damaged; plan again with `--replan`"));
    }
    // Journals of shards the plan does not have (a hand-made file, a plan with fewer shards).
    if let Ok(entries) = fs_err::read_dir(rd.journal_dir()) {
        let mut names: Vec<String> = entries
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".jrnl"))
            .collect();
        names.sort();
        for n in names {
            let known = crate::rundir::shard_of_journal_name(&n).is_some_and(|s| (s as usize) < plan.shards.len());
            if !known {
                stats.stray_journals.push(format!("journal/{n}"));
            }
        }
    }
    Ok(stats)
}

/// Warnings about what was skipped (ignored records, damaged lines, stray files), one per line.
pub fn warnings(stats: &ScanStats) -> Vec<String> {
    let mut w = Vec::new();
    if !stats.ignored.is_empty() {
        w.push(format!(
            "warning: ignored {} finished record(s) of units the plan does not place in that shard: {}",
            stats.ignored.count,
            stats.ignored.describe()
        ));
    }
    if !stats.damaged.is_empty() {
        w.push(format!(
            "warning: skipped {} damaged journal record(s) at {} (their units run again on the next `roleplay run`)",
            stats.damaged.count,
            stats.damaged.describe()
        ));
    }
    if !stats.stray_journals.is_empty() {
        w.push(format!(
            "warning: ignored {} journal file(s) that belong to no shard of the plan: {}",
            stats.stray_journals.count,
            stats.stray_journals.describe()
        ));
    }
    w
}
