//! The report's judgement section: per judge stage and judge model, the verdicts summarised in all,
//! per (inquirer, responder) pair and per persona feature value of the judged dialogues.
//!
//! Read from the stages' journals (`merge::verdicts`, the last verdict of each planned unit), each
//! verdict placed through its judged dialogue's unit in the run's plan. Shares and means are over
//! the `ok` verdicts; unparsable and failed ones are counted beside them.

use crate::error::Result;
use crate::judgement::{Status, Verdict};
use crate::merge::verdicts as scan;
use crate::plan::{Plan, UnitId};
use crate::rundir::RunDir;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Clone, Default)]
struct Acc {
    verdicts: u64,
    ok: u64,
    unparsable: u64,
    failed: u64,
    achieved: u64,
    adherence: u64,
    likeness: u64,
}

impl Acc {
    fn add(&mut self, v: &Verdict) {
        self.verdicts += 1;
        match v.status {
            Status::Ok => self.ok += 1,
            Status::Unparsable => self.unparsable += 1,
            Status::Failed => self.failed += 1,
        }
        if let Some(s) = &v.scores {
            self.achieved += u64::from(s.goal_achieved);
            self.adherence += u64::from(s.persona_adherence);
            self.likeness += u64::from(s.human_likeness);
        }
    }

    fn finish(&self, key: String, labels: BTreeMap<String, String>) -> JudgeGroup {
        let mean = |sum: u64| (self.ok > 0).then(|| sum as f64 / self.ok as f64);
        JudgeGroup {
            key,
            labels,
            verdicts: self.verdicts,
            ok: self.ok,
            unparsable: self.unparsable,
            failed: self.failed,
            goal_achieved: self.achieved,
            goal_achieved_share: mean(self.achieved),
            persona_adherence_mean: mean(self.adherence),
            human_likeness_mean: mean(self.likeness),
        }
    }
}

/// One group's verdicts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgeGroup {
    pub key: String,
    pub labels: BTreeMap<String, String>,
    /// Units with a verdict of any status.
    pub verdicts: u64,
    pub ok: u64,
    pub unparsable: u64,
    pub failed: u64,
    /// `ok` verdicts saying the goal was achieved, and their share of the `ok` ones.
    pub goal_achieved: u64,
    pub goal_achieved_share: Option<f64>,
    /// Means over the `ok` verdicts (1 to 5).
    pub persona_adherence_mean: Option<f64>,
    pub human_likeness_mean: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgeFeature {
    pub name: String,
    pub values: Vec<JudgeGroup>,
}

/// One judge model of one stage.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct JudgeReport {
    pub stage: String,
    pub judge: String,
    pub plan_hash: String,
    pub rubric_digest: String,
    /// Units of this judge planned, and those without a verdict yet.
    pub planned: u64,
    pub missing: u64,
    /// Verdicts on dialogues the run's current plan no longer has (counted in `all` only).
    pub unplaced: u64,
    pub all: JudgeGroup,
    pub pairs: Vec<JudgeGroup>,
    pub features: Vec<JudgeFeature>,
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// The judgement section of the run `rd` (empty without judge stages).
pub fn build(rd: &RunDir, plan: &Plan) -> Result<Vec<JudgeReport>> {
    let stages = scan::stages(rd)?;
    if stages.is_empty() {
        return Ok(Vec::new());
    }
    let exp = &plan.experiment;
    let units: HashMap<UnitId, crate::plan::Unit> = crate::plan::read_units(&rd.units_path(plan))?
        .into_iter()
        .map(|u| (u.id, u))
        .collect();
    let mut out = Vec::new();
    for (name, srd, splan) in &stages {
        let stage = splan.judge.as_ref().expect("a judge plan");
        struct PerJudge {
            planned: u64,
            unplaced: u64,
            all: Acc,
            pairs: Vec<Acc>,
            features: BTreeMap<String, BTreeMap<String, Acc>>,
        }
        let mut per: BTreeMap<String, PerJudge> = BTreeMap::new();
        for (i, p) in splan.experiment.pairs.iter().enumerate() {
            let planned = splan
                .shards
                .iter()
                .filter(|s| s.pair == i as u32)
                .map(|s| u64::from(s.units))
                .sum();
            per.insert(
                p.responder.clone(),
                PerJudge {
                    planned,
                    unplaced: 0,
                    all: Acc::default(),
                    pairs: vec![Acc::default(); exp.pairs.len()],
                    features: BTreeMap::new(),
                },
            );
        }
        scan::scan(srd, splan, |b| {
            let Some(j) = per.get_mut(&b.judge) else { return Ok(()) };
            for (u, v) in &b.verdicts {
                j.all.add(v);
                let Some(pu) = units.get(&u.parent) else {
                    j.unplaced += 1;
                    continue;
                };
                if let Some(acc) = j.pairs.get_mut(pu.pair as usize) {
                    acc.add(v);
                }
                if let Some(persona) = exp.personas.get(pu.persona as usize) {
                    for (f, value) in &persona.features {
                        j.features
                            .entry(f.clone())
                            .or_default()
                            .entry(value.clone())
                            .or_default()
                            .add(v);
                    }
                }
            }
            Ok(())
        })?;
        for (judge, j) in per {
            let judged = j.all.verdicts;
            out.push(JudgeReport {
                stage: name.clone(),
                judge: judge.clone(),
                plan_hash: splan.plan_hash.clone(),
                rubric_digest: stage.rubric.digest(),
                planned: j.planned,
                missing: j.planned.saturating_sub(judged),
                unplaced: j.unplaced,
                all: j.all.finish("all".into(), BTreeMap::new()),
                pairs: exp
                    .pairs
                    .iter()
                    .zip(&j.pairs)
                    .filter(|(_, a)| a.verdicts > 0)
                    .map(|(p, a)| {
                        a.finish(
                            format!("{} -> {}", p.inquirer, p.responder),
                            labels(&[("inquirer", &p.inquirer), ("responder", &p.responder)]),
                        )
                    })
                    .collect(),
                features: j
                    .features
                    .into_iter()
                    .map(|(f, values)| JudgeFeature {
                        values: values
                            .into_iter()
                            .map(|(v, a)| a.finish(v.clone(), labels(&[("feature", &f), ("value", &v)])))
                            .collect(),
                        name: f,
                    })
                    .collect(),
            });
        }
    }
    Ok(out)
}
