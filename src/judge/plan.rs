//! Planning a judge stage: the judged run's finished dialogues (read with `merge::scan`) become
//! content-addressed units, written with the plan store like any plan.
//!
//! One unit per (judge, finished dialogue that did not fail and shows at least one message). Its
//! id hashes the judge's behaviour (everything that shapes its replies, as for a dialogue's models,
//! and the simulator's malformed rate), the judged dialogue's unit id, and the exact messages the
//! judge is first sent (the rubric filled with the persona, the goal, the stop token and the
//! turns' texts). So a re-plan keeps every verdict whose judge, rubric and dialogue are unchanged,
//! and judges again exactly those whose dialogue changed (a unit that was resumed or retried) or
//! whose judge or rubric did. The dialogue's id is in the hash so that two dialogues that read the
//! same are still two units; it costs no reuse, since a dialogue keeps its id exactly when its
//! own inputs did not change.
//!
//! Units are taken in the judged run's plan order (shard, then id) and cut into shards of one judge
//! each, judge after judge. Two scans: one counts the dialogues (for `[sharding] shards`), the
//! other writes each shard's inputs as it goes, so memory holds the units' ids, never the texts.

use super::config::JudgeFile;
use super::record::Input;
use super::rubric::{self, Dialogue, Exchange};
use crate::dialogue::{DialogueRecord, EndReason};
use crate::error::{Error, Result};
use crate::experiment::{Experiment, Pair, Sharding};
use crate::merge::scan;
use crate::plan::stage::{Judge, Stage};
use crate::plan::{self, Plan, Shard, UnitId};
use crate::rundir::RunDir;
use crate::rundir::judge_units::{self as units, Unit};
use crate::rundir::plans::{PlanFiles, Status};
use std::io::Write;
use std::path::PathBuf;

/// A judge stage planned.
pub struct Planned {
    pub stage_dir: PathBuf,
    pub status: Status,
    /// With a re-plan: units whose id did not change (their verdicts are kept).
    pub kept: Option<u64>,
    pub plan: Plan,
}

/// What one judge's behaviour hashes to.
pub fn judge_digest(model: &crate::experiment::Model, judge: &Judge) -> [u8; 32] {
    plan::digest_of("judge", &(&model.behaviour, judge.malformed_rate))
}

/// A unit's id: the judge, the judged dialogue, and the first request's messages.
pub fn unit_id(judge: &[u8; 32], parent: UnitId, messages: &[crate::llm::Message]) -> UnitId {
    let mut h = blake3::Hasher::new();
    h.update(plan::JUDGE_SCHEME.as_bytes());
    h.update(judge);
    h.update(&parent.0);
    h.update(&serde_json::to_vec(messages).expect("serialisable"));
    let mut id = [0u8; 10];
    id.copy_from_slice(&h.finalize().as_bytes()[..10]);
    UnitId(id)
}

/// What a judge reads of a finished dialogue of `parent`.
pub fn dialogue_of(parent: &Experiment, f: &scan::Finished) -> Dialogue {
    let r: &DialogueRecord = &f.record;
    Dialogue {
        persona: parent.personas[f.unit.persona as usize].text.clone(),
        goal: parent.goals[f.unit.goal as usize].text.clone(),
        stop_token: parent.dialogue.stop_token.clone(),
        turns: r
            .turns
            .iter()
            .map(|t| Exchange {
                user: t.prompt.clone(),
                assistant: t.responder.output.clone(),
            })
            .collect(),
        closing: (r.ending.reason == EndReason::Stop)
            .then(|| r.ending.last_inquirer.last().map(|c| c.output.clone()))
            .flatten(),
    }
}

/// Where a run's stage of this name lives.
pub fn stage_dir(parent: &RunDir, name: &str) -> PathBuf {
    parent.judge_stage_dir(name)
}

/// Plan (or re-plan) the stage `file` describes in the run `parent_rd`. An unchanged stage is left
/// as it is; a changed one (the judge file, or the run's finished dialogues) is re-planned, every
/// verdict of an unchanged unit kept.
pub fn plan_stage(parent_rd: &RunDir, file: &JudgeFile) -> Result<Planned> {
    let parent = parent_rd.load_plan()?;
    if parent.judge.is_some() {
        return Err(
            Error::config(format!("`{}` is a judge stage, not a run", parent_rd.root.display()))
                .with_hint("judge the run directory itself (the folder above `judge/`)"),
        );
    }
    let stage_dir = stage_dir(parent_rd, &file.name);
    let rd = RunDir::new(&stage_dir);
    let pexp = &parent.experiment;
    let tally = count_dialogues(parent_rd, &parent)?;
    let count = tally.judged;
    let per_shard: u64 = match file.sharding {
        Sharding::UnitsPerShard(n) => u64::from(n),
        Sharding::Shards(n) => (count * file.models.len() as u64).div_ceil(u64::from(n)).max(1),
    }
    .max(1);
    let shards_per_judge = count.div_ceil(per_shard);

    // Pass 2: units and inputs, shard by shard.
    fs_err::create_dir_all(parent_rd.judge_dir())?;
    let staging = tempfile::Builder::new()
        .prefix(&format!(".{}.inputs.", file.name))
        .tempdir_in(parent_rd.judge_dir())
        .map_err(|e| {
            Error::io(
                format!("cannot create a folder in `{}`: {e}", parent_rd.judge_dir().display()),
                e,
            )
        })?;
    let mut shards: Vec<Shard> = (0..file.models.len() as u32)
        .flat_map(|j| {
            (0..shards_per_judge).map(move |k| Shard {
                index: (u64::from(j) * shards_per_judge + k) as u32,
                pair: j,
                units: 0,
            })
        })
        .collect();
    let layout = Layout {
        per_shard,
        shards_per_judge,
        capacity: count as usize,
    };
    let (all, k) = write_inputs(parent_rd, &parent, file, staging.path(), &layout, &mut shards)?;
    crate::rundir::sync_dir(staging.path())?;
    if k != count {
        return Err(Error::runtime(format!(
            "the dialogues of `{}` changed while the stage was planned ({count} then {k}); plan again",
            parent_rd.root.display()
        )));
    }
    let mut ids: Vec<UnitId> = all.iter().map(|u| u.id).collect();
    ids.sort_unstable();
    if let Some(w) = ids.windows(2).find(|w| w[0] == w[1]) {
        return Err(Error::runtime(format!(
            "two judge units share the id {} (a hash collision)",
            w[0]
        )));
    }
    let mut tsv = Vec::with_capacity(all.len() * 48);
    units::write(&mut tsv, &all).expect("writing to memory");
    let digest = blake3::hash(&tsv).to_hex().to_string();
    let inputs = format!("inputs-{}", &digest[..16]);
    let exp = stage_experiment(pexp, file);
    let stage = Stage {
        name: file.name.clone(),
        parent_experiment: pexp.name.clone(),
        parent_plan_hash: parent.plan_hash.clone(),
        judges: file.judges.clone(),
        rubric: file.rubric.clone(),
        max_malformed: file.max_malformed,
        inputs: inputs.clone(),
        dialogues: count,
        empty: tally.empty,
        failed: tally.failed,
        missing: tally.missing,
    };
    let plan = Plan::judge(
        exp,
        stage,
        shards,
        all.len() as u64,
        file.source.display().to_string(),
        &tsv,
    );
    let pairs: Vec<(UnitId, u32)> = all.iter().map(|u| (u.id, u.shard)).collect();
    let files = PlanFiles {
        units: &pairs,
        units_tsv: &tsv,
        index: None,
        staged: Some((staging.path(), &inputs)),
    };
    let (status, kept) = crate::rundir::plans::store(&rd, &plan, &files, true)?;
    // An unchanged stage keeps its inputs: the staged copy goes with the temporary folder.
    drop(staging);
    Ok(Planned {
        stage_dir,
        status,
        kept,
        plan,
    })
}

/// What pass 1 found in the run: dialogues judged, finished without a turn, failed, missing.
struct Tally {
    judged: u64,
    empty: u64,
    failed: u64,
    missing: u64,
}

/// A finished dialogue is judged when it did not fail and has a turn to judge.
fn judgeable(pexp: &Experiment, f: &scan::Finished) -> bool {
    !f.record.ending.reason.is_failure() && !dialogue_of(pexp, f).is_empty()
}

/// Pass 1: how many of the run's dialogues are judged.
fn count_dialogues(parent_rd: &RunDir, parent: &Plan) -> Result<Tally> {
    let mut t = Tally {
        judged: 0,
        empty: 0,
        failed: 0,
        missing: 0,
    };
    let stats = scan::scan(parent_rd, parent, |b| {
        for f in &b.dialogues {
            if f.record.ending.reason.is_failure() {
                t.failed += 1;
            } else if judgeable(&parent.experiment, f) {
                t.judged += 1;
            } else {
                t.empty += 1;
            }
        }
        Ok(())
    })?;
    t.missing = stats.missing.count;
    Ok(t)
}

/// How a stage's units fall into shards.
struct Layout {
    per_shard: u64,
    shards_per_judge: u64,
    /// The dialogues judged (the first pass's count).
    capacity: usize,
}

/// Pass 2: every judgeable dialogue's unit per judge, its input written to its shard's file in
/// `staging` (flushed and synced), the shards' unit counts filled in. Returns the units and the
/// number of dialogues seen.
fn write_inputs(
    parent_rd: &RunDir,
    parent: &Plan,
    file: &JudgeFile,
    staging: &std::path::Path,
    layout: &Layout,
    shards: &mut [Shard],
) -> Result<(Vec<Unit>, u64)> {
    let pexp = &parent.experiment;
    let digests: Vec<[u8; 32]> = file
        .models
        .iter()
        .zip(&file.judges)
        .map(|(m, j)| judge_digest(m, j))
        .collect();
    let mut all: Vec<Unit> = Vec::with_capacity(layout.capacity.saturating_mul(file.models.len()));
    struct Open {
        shard: u32,
        file: std::io::BufWriter<fs_err::File>,
    }
    let mut open: Vec<Option<Open>> = (0..file.models.len()).map(|_| None).collect();
    let io = |p: &std::path::Path, e: std::io::Error| {
        Error::io(format!("cannot write `{}`: {e}", p.display()), e).with_hint(crate::rundir::WRITE_HINT)
    };
    let mut k = 0u64;
    scan::scan(parent_rd, parent, |b| {
        for f in &b.dialogues {
            if !judgeable(pexp, f) {
                continue;
            }
            let d = dialogue_of(pexp, f);
            let messages = rubric::messages(&file.rubric, &d, &[]);
            for (j, digest) in digests.iter().enumerate() {
                let shard = (j as u64 * layout.shards_per_judge + k / layout.per_shard) as u32;
                let id = unit_id(digest, f.unit.id, &messages);
                if open[j].as_ref().is_none_or(|o| o.shard != shard) {
                    if let Some(mut o) = open[j].take() {
                        o.file.flush().map_err(|e| io(staging, e))?;
                    }
                    let path = staging.join(crate::rundir::shard_inputs_name(shard));
                    open[j] = Some(Open {
                        shard,
                        file: std::io::BufWriter::new(fs_err::File::create(&path)?),
                    });
                }
                let o = open[j].as_mut().expect("opened above");
                let input = Input {
                    unit: id,
                    parent: f.unit.id,
                    dialogue: d.clone(),
                };
                let mut line = serde_json::to_vec(&input).expect("serialisable");
                line.push(b'\n');
                o.file.write_all(&line).map_err(|e| io(staging, e))?;
                shards[shard as usize].units += 1;
                all.push(Unit {
                    id,
                    shard,
                    parent: f.unit.id,
                });
            }
            k += 1;
        }
        Ok(())
    })?;
    for o in open.into_iter().flatten() {
        let mut w = o.file;
        w.flush().map_err(|e| io(staging, e))?;
        w.into_inner()
            .map_err(|e| io(staging, e.into_error()))?
            .sync_all()
            .map_err(|e| io(staging, e))?;
    }
    Ok((all, k))
}

/// The experiment of a judge stage: one pair per judge model (itself on both sides).
fn stage_experiment(pexp: &Experiment, file: &JudgeFile) -> Experiment {
    Experiment {
        name: format!("{}-judge-{}", pexp.name, file.name),
        dialogue: pexp.dialogue.clone(),
        personas: Vec::new(),
        goals: Vec::new(),
        models: file.models.clone(),
        pairs: file
            .models
            .iter()
            .map(|m| Pair {
                inquirer: m.name.clone(),
                responder: m.name.clone(),
            })
            .collect(),
        sharding: file.sharding.clone(),
        worker: file.worker.clone(),
        slurm: file.slurm.clone(),
        budget: Default::default(),
    }
}

impl Planned {
    /// The lines `roleplay judge` prints about the plan.
    pub fn summary(&self) -> String {
        let s = self.plan.judge.as_ref().expect("a judge plan");
        let verb = match self.status {
            Status::DryRun => "would plan",
            Status::Created => "planned",
            Status::Unchanged => "judge stage is up to date:",
            Status::Replanned => "re-planned",
        };
        let judges: Vec<&str> = s.judges.iter().map(|j| j.name.as_str()).collect();
        let mut out = format!(
            "{verb} {} verdicts in {} shards: {} dialogues x {} judge{} ({})",
            self.plan.total_units,
            self.plan.shards.len(),
            s.dialogues,
            judges.len(),
            if judges.len() == 1 { "" } else { "s" },
            judges.join(", ")
        );
        let mut not = Vec::new();
        if s.failed > 0 {
            not.push(format!("{} failed dialogues", s.failed));
        }
        if s.empty > 0 {
            not.push(format!("{} dialogues without any turn", s.empty));
        }
        if s.missing > 0 {
            not.push(format!("{} dialogues not finished yet", s.missing));
        }
        if !not.is_empty() {
            out.push_str(&format!("\n  not judged: {}", not.join(", ")));
        }
        if let Some(k) = self.kept {
            out.push_str(&format!("\n  {k} units kept their id (and any verdict)"));
        }
        out
    }
}
