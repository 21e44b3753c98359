//! Reading a judge stage's verdicts back from its journals: the last `verdict` record of each
//! planned unit, shard by shard in plan order (memory: one shard's verdicts). Records of units the
//! plan does not place in that shard are ignored, like `merge::scan` ignores stray dialogues.

use super::scan::IdList;
use crate::error::{Error, Result};
use crate::judgement::{Status, Verdict};
use crate::plan::{Plan, UnitId};
use crate::rundir::RunDir;
use crate::rundir::journal::{self, Entry};
use crate::rundir::judge_units::{self as units, Unit};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// What a scan of a stage found beside the verdicts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageStats {
    pub planned: u64,
    /// Units with a verdict, of any status.
    pub judged: u64,
    pub ok: u64,
    pub unparsable: u64,
    pub failed: IdList,
    pub missing: IdList,
    /// Verdicts superseded by a later one of the same unit (failed ones judged again).
    pub superseded: u64,
    pub damaged: IdList,
}

impl StageStats {
    pub fn complete(&self) -> bool {
        self.missing.is_empty() && self.failed.is_empty()
    }
}

/// The verdicts of one shard, in the units file's order.
pub struct ShardVerdicts {
    pub shard: u32,
    /// The shard's judge (its pair's model).
    pub judge: String,
    pub verdicts: Vec<(Unit, Verdict)>,
}

const VERDICT_PREFIX: &[u8] = br#"{"t":"verdict""#;

/// Read every shard of the stage in order and hand each shard's verdicts to `sink`.
pub fn scan(rd: &RunDir, plan: &Plan, mut sink: impl FnMut(ShardVerdicts) -> Result<()>) -> Result<StageStats> {
    if plan.judge.is_none() {
        return Err(Error::config(format!("`{}` is not a judge stage", rd.root.display())));
    }
    let mut stats = StageStats::default();
    let all = units::read(&rd.units_path(plan), None)?;
    let mut by_shard: Vec<Vec<Unit>> = vec![Vec::new(); plan.shards.len()];
    for u in all {
        let slot = by_shard.get_mut(u.shard as usize).ok_or_else(|| {
            Error::config(format!(
                "`{}`: a unit of a shard the plan does not have",
                rd.root.display()
            ))
            .with_hint("the stage is damaged; run `roleplay judge` again")
        })?;
        slot.push(u);
    }
    for (shard, planned) in by_shard.into_iter().enumerate() {
        let shard = shard as u32;
        stats.planned += planned.len() as u64;
        let path = rd.journal_path(shard);
        let mut found: HashMap<UnitId, Verdict> = HashMap::new();
        if let Ok(file) = std::fs::File::open(&path) {
            let mut superseded = 0;
            let info = journal::scan(
                &path,
                std::io::BufReader::with_capacity(1 << 20, file),
                |json| json.starts_with(VERDICT_PREFIX),
                |_, json| match serde_json::from_slice::<Entry>(json) {
                    Ok(Entry::Verdict(v)) => {
                        if found.insert(v.unit, *v).is_some() {
                            superseded += 1;
                        }
                        true
                    }
                    Ok(_) => true,
                    Err(_) => false,
                },
            )?;
            stats.superseded += superseded;
            for line in info.damaged_lines {
                stats.damaged.push(format!("journal/shard-{shard:05}.jrnl:{line}"));
            }
            if let Some(h) = info.header
                && h.meta.plan_hash != plan.plan_hash
            {
                return Err(Error::config(format!(
                    "`{}` belongs to another plan (plan {}; expected {})",
                    path.display(),
                    h.meta.plan_hash,
                    plan.plan_hash
                ))
                .with_hint("the stage was changed by hand; run `roleplay judge` again"));
            }
        }
        let pair = plan.shards[shard as usize].pair as usize;
        let judge = plan
            .experiment
            .pairs
            .get(pair)
            .map(|p| p.responder.clone())
            .unwrap_or_default();
        let mut batch = ShardVerdicts {
            shard,
            judge,
            verdicts: Vec::with_capacity(planned.len()),
        };
        for u in planned {
            match found.remove(&u.id) {
                Some(v) => {
                    stats.judged += 1;
                    match v.status {
                        Status::Ok => stats.ok += 1,
                        Status::Unparsable => stats.unparsable += 1,
                        Status::Failed => stats.failed.push(u.parent),
                    }
                    batch.verdicts.push((u, v));
                }
                None => stats.missing.push(u.parent),
            }
        }
        sink(batch)?;
    }
    Ok(stats)
}

/// The stages of a run: every `judge/<name>/` that holds a judge plan, by name.
pub fn stages(parent: &RunDir) -> Result<Vec<(String, RunDir, Plan)>> {
    let dir = parent.judge_dir();
    let Ok(entries) = fs_err::read_dir(&dir) else {
        return Ok(Vec::new());
    };
    let mut names: Vec<String> = entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let rd = RunDir::new(dir.join(&name));
        if !rd.has_plan() {
            continue;
        }
        let plan = rd.load_plan()?;
        if plan.judge.is_some() {
            out.push((name, rd, plan));
        }
    }
    Ok(out)
}
