//! `roleplay report`: what a run produced, per (inquirer, responder) pair, per inquirer, per
//! persona feature value and per goal.
//!
//! The figures come from the journals through `merge::scan` (exactly once, plan order, so a report
//! of a running experiment shows its progress). Per group: dialogues, how many the inquirer
//! finished with the stop token (and that share), turns (mean, median and the full distribution,
//! exact since turns are small integers), tokens and latency per role (means per dialogue over
//! every call the role made) and end reasons. Memory is one accumulator per group. Renderers:
//! [`text`] (terminal table), [`csv`](Report::write_csv), JSON (the serialised [`Report`]) and
//! [`html`] (one offline page with SVG charts).

pub mod compare;
pub mod html;
pub mod judgements;
pub mod quality;
pub mod text;

use crate::dialogue::EndReason;
use crate::error::{Error, Result};
use crate::merge::scan::{self, ScanStats};
use crate::merge::table::role_totals;
use crate::plan::Plan;
use crate::rundir::RunDir;
use serde::Serialize;
use std::collections::BTreeMap;

/// Running sums for one group.
#[derive(Debug, Clone)]
struct Acc {
    dialogues: u64,
    stop: u64,
    /// Dialogues by number of turns (0..=max_turns).
    hist: Vec<u64>,
    turns: u64,
    /// inquirer prompt, inquirer completion, responder prompt, responder completion.
    tokens: [u64; 4],
    /// Dialogues in which the role's server reported that token count.
    token_dialogues: [u64; 4],
    latency_ms: [f64; 2],
    end_reasons: [u64; EndReason::ALL.len()],
    quality: quality::QualityAcc,
}

impl Acc {
    fn new(max_turns: u32) -> Acc {
        Acc {
            dialogues: 0,
            stop: 0,
            hist: vec![0; max_turns as usize + 1],
            turns: 0,
            tokens: [0; 4],
            token_dialogues: [0; 4],
            latency_ms: [0.0; 2],
            end_reasons: [0; EndReason::ALL.len()],
            quality: quality::QualityAcc::new(false),
        }
    }

    /// With the quality section's diversity figures (pairs, feature values, cells).
    fn diverse(mut self) -> Acc {
        self.quality = quality::QualityAcc::new(true);
        self
    }

    fn add(&mut self, a: &quality::Assessed) {
        self.quality.add(a);
        let r = a.record;
        self.dialogues += 1;
        if r.ending.reason == EndReason::Stop {
            self.stop += 1;
        }
        let n = r.turns.len();
        if n >= self.hist.len() {
            self.hist.resize(n + 1, 0);
        }
        self.hist[n] += 1;
        self.turns += n as u64;
        let (i, o) = role_totals(r);
        for (k, v) in [
            i.prompt_tokens,
            i.completion_tokens,
            o.prompt_tokens,
            o.completion_tokens,
        ]
        .into_iter()
        .enumerate()
        {
            if let Some(v) = v {
                self.tokens[k] += v;
                self.token_dialogues[k] += 1;
            }
        }
        self.latency_ms[0] += i.latency_ms;
        self.latency_ms[1] += o.latency_ms;
        if let Some(k) = EndReason::ALL.iter().position(|e| *e == r.ending.reason) {
            self.end_reasons[k] += 1;
        }
    }

    fn finish(&self, key: String, extra: BTreeMap<String, String>) -> Group {
        let n = self.dialogues;
        let mean = |sum: f64, count: u64| (count > 0).then(|| sum / count as f64);
        let quantile = |q: f64| -> Option<f64> {
            if n == 0 {
                return None;
            }
            // The lower and upper middle for the median of an even count, as usual.
            let pos = |rank: u64| {
                let mut seen = 0;
                for (t, c) in self.hist.iter().enumerate() {
                    seen += c;
                    if seen > rank {
                        return t as f64;
                    }
                }
                (self.hist.len() - 1) as f64
            };
            let exact = q * (n - 1) as f64;
            let (lo, hi) = (exact.floor() as u64, exact.ceil() as u64);
            let (a, b) = (pos(lo), pos(hi));
            Some(a + (b - a) * (exact - lo as f64))
        };
        Group {
            key,
            labels: extra,
            dialogues: n,
            finished_by_stop: self.stop,
            finished_share: mean(self.stop as f64, n),
            turns: TurnStats {
                mean: mean(self.turns as f64, n),
                median: quantile(0.5),
                p10: quantile(0.1),
                p90: quantile(0.9),
                min: self.hist.iter().position(|c| *c > 0).map(|t| t as u32),
                max: self.hist.iter().rposition(|c| *c > 0).map(|t| t as u32),
                distribution: self.hist.clone(),
            },
            inquirer: RoleStats {
                prompt_tokens_mean: mean(self.tokens[0] as f64, self.token_dialogues[0]),
                completion_tokens_mean: mean(self.tokens[1] as f64, self.token_dialogues[1]),
                completion_tokens_total: self.tokens[1],
                latency_ms_mean: mean(self.latency_ms[0], n),
                latency_ms_total: self.latency_ms[0],
            },
            responder: RoleStats {
                prompt_tokens_mean: mean(self.tokens[2] as f64, self.token_dialogues[2]),
                completion_tokens_mean: mean(self.tokens[3] as f64, self.token_dialogues[3]),
                completion_tokens_total: self.tokens[3],
                latency_ms_mean: mean(self.latency_ms[1], n),
                latency_ms_total: self.latency_ms[1],
            },
            end_reasons: EndReason::ALL
                .iter()
                .zip(self.end_reasons)
                .filter(|(_, c)| *c > 0)
                .map(|(e, c)| (e.as_str().to_string(), c))
                .collect(),
            quality: self.quality.finish(),
        }
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TurnStats {
    pub mean: Option<f64>,
    pub median: Option<f64>,
    pub p10: Option<f64>,
    pub p90: Option<f64>,
    pub min: Option<u32>,
    pub max: Option<u32>,
    /// Dialogues with 0, 1, 2, ... turns.
    pub distribution: Vec<u64>,
}

/// Means are per dialogue, over every call the role made (regenerations and the last, unfinished
/// turn included). Token means are over the dialogues whose server reported tokens.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoleStats {
    pub prompt_tokens_mean: Option<f64>,
    pub completion_tokens_mean: Option<f64>,
    pub completion_tokens_total: u64,
    pub latency_ms_mean: Option<f64>,
    pub latency_ms_total: f64,
}

impl RoleStats {
    /// Latency per dialogue in seconds; `None` where none of the role's calls recorded one (the
    /// built-in simulator and replays record 0 ms), rather than a mean of zeros that reads as "fast".
    pub fn seconds_mean(&self) -> Option<f64> {
        self.latency_ms_mean
            .filter(|_| self.latency_ms_total > 0.0)
            .map(|ms| ms / 1000.0)
    }
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Group {
    /// What the group is: `asker -> helper`, `young`, `g1`, ...
    pub key: String,
    /// The group's defining fields (`inquirer`, `responder`, `feature`, `value`, `goal_id`).
    pub labels: BTreeMap<String, String>,
    pub dialogues: u64,
    pub finished_by_stop: u64,
    /// `finished_by_stop / dialogues`; `null` without dialogues.
    pub finished_share: Option<f64>,
    pub turns: TurnStats,
    pub inquirer: RoleStats,
    pub responder: RoleStats,
    /// Dialogues per end reason (reasons that occurred).
    pub end_reasons: BTreeMap<String, u64>,
    /// Fidelity indicators and diversity (`quality`).
    pub quality: quality::Quality,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Feature {
    pub name: String,
    pub values: Vec<Group>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub experiment: String,
    pub plan_hash: String,
    pub stop_token: String,
    pub max_turns: u32,
    pub planned: u64,
    pub finished: u64,
    pub missing: u64,
    pub failed: u64,
    pub all: Group,
    pub pairs: Vec<Group>,
    pub inquirers: Vec<Group>,
    pub features: Vec<Feature>,
    pub goals: Vec<Group>,
    /// Grid cells: one persona feature's values within each pair (`name` is the feature).
    pub cells: Vec<Feature>,
    /// Spent against the budget, when the experiment has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetReport>,
    /// The verdicts of the run's judge stages (`roleplay judge`), per stage and judge model.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub judgements: Vec<judgements::JudgeReport>,
    #[serde(skip)]
    pub stats: ScanStats,
}

/// What a run spent against its caps: in all, and per pair.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct BudgetReport {
    pub run: Spending,
    pub pairs: Vec<Spending>,
}

/// One group's spending and caps (the sum of its shards' shares).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Spending {
    pub name: String,
    pub spent: crate::budget::Usage,
    pub caps: crate::experiment::Caps,
    /// Shards stopped at their share.
    pub shards_at_budget: u64,
}

/// Every shard's spending, from its journal (calls of unfinished dialogues included), summed per
/// pair and for the run.
fn budget_report(rd: &RunDir, plan: &Plan) -> Result<Option<BudgetReport>> {
    let exp = &plan.experiment;
    if exp.budget.is_empty() {
        return Ok(None);
    }
    let mut per_pair: Vec<(crate::budget::Usage, Vec<crate::experiment::Caps>, u64)> =
        vec![Default::default(); exp.pairs.len()];
    for shard in &plan.shards {
        let pair = &exp.pairs[shard.pair as usize];
        let entries = crate::rundir::journal::read(&rd.journal_path(shard.index))?
            .map(|c| c.entries)
            .unwrap_or_default();
        let spent = crate::rundir::journal::spent(&entries, &crate::budget::prices(exp, pair));
        let slot = &mut per_pair[shard.pair as usize];
        slot.0.add(&spent);
        slot.1.push(crate::budget::shard_caps(exp, plan, shard.index));
        let at_budget = crate::rundir::state::read(rd, shard.index)
            .is_some_and(|s| s.plan_hash == plan.plan_hash && s.status == crate::rundir::state::ShardStatus::Budget);
        slot.2 += u64::from(at_budget);
    }
    let mut run = Spending {
        name: "all".into(),
        spent: Default::default(),
        caps: exp.budget.run,
        shards_at_budget: 0,
    };
    let pairs = exp
        .pairs
        .iter()
        .zip(per_pair)
        .map(|(p, (spent, caps, at))| {
            run.spent.add(&spent);
            run.shards_at_budget += at;
            Spending {
                name: format!("{} -> {}", p.inquirer, p.responder),
                spent,
                caps: crate::budget::sum_caps(&caps),
                shards_at_budget: at,
            }
        })
        .collect();
    Ok(Some(BudgetReport { run, pairs }))
}

fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// Read the run and compute its report.
pub fn build(rd: &RunDir, plan: &Plan) -> Result<Report> {
    let exp = &plan.experiment;
    let max_turns = exp.dialogue.max_turns;
    let mut all = Acc::new(max_turns).diverse();
    let mut pairs = vec![Acc::new(max_turns).diverse(); exp.pairs.len()];
    let mut goals = vec![Acc::new(max_turns); exp.goals.len()];
    let inquirer_names: Vec<&str> = {
        let mut v: Vec<&str> = exp.pairs.iter().map(|p| p.inquirer.as_str()).collect();
        v.sort_unstable();
        v.dedup();
        v
    };
    let mut inquirers = vec![Acc::new(max_turns); inquirer_names.len()];
    let pair_inquirer: Vec<usize> = exp
        .pairs
        .iter()
        .map(|p| inquirer_names.iter().position(|n| *n == p.inquirer).unwrap_or(0))
        .collect();
    // Feature name -> value -> accumulator; values in order of first appearance among personas.
    let mut features: BTreeMap<&str, Vec<(&str, Acc)>> = BTreeMap::new();
    let mut persona_slots: Vec<Vec<(&str, usize)>> = Vec::with_capacity(exp.personas.len());
    for p in &exp.personas {
        let mut slots = Vec::new();
        for (name, value) in &p.features {
            let values = features.entry(name.as_str()).or_default();
            let idx = match values.iter().position(|(v, _)| *v == value.as_str()) {
                Some(i) => i,
                None => {
                    values.push((value.as_str(), Acc::new(max_turns).diverse()));
                    values.len() - 1
                }
            };
            slots.push((name.as_str(), idx));
        }
        persona_slots.push(slots);
    }
    // Cells: feature name -> value index -> pair -> accumulator (made when first needed).
    let mut cells: BTreeMap<&str, Vec<Vec<Option<Acc>>>> = features
        .iter()
        .map(|(name, values)| (*name, vec![vec![None; exp.pairs.len()]; values.len()]))
        .collect();
    let mut analyzer = crate::quality::Analyzer::new();
    let mut goal_profiles: Vec<Option<crate::quality::GoalProfile>> = vec![None; exp.goals.len()];
    let stats = scan::scan(rd, plan, |batch| {
        for f in &batch.dialogues {
            let r = &f.record;
            let profile = goal_profiles
                .get_mut(f.unit.goal as usize)
                .ok_or_else(|| Error::config("the units file points outside its plan"))?;
            let indicators = analyzer.record(
                || {
                    profile
                        .get_or_insert_with(|| crate::quality::GoalProfile::new(&exp.goals[f.unit.goal as usize].text))
                },
                r,
            );
            let r = &quality::Assessed {
                record: r,
                unit_id: f.unit.id.0,
                indicators,
                stopping: crate::quality::stopping(r.ending.reason, r.turns.len(), max_turns),
            };
            all.add(r);
            let (pair, goal, persona) = (f.unit.pair as usize, f.unit.goal as usize, f.unit.persona as usize);
            let bad =
                || Error::config("the units file points outside its plan").with_hint("plan again with `--replan`");
            pairs.get_mut(pair).ok_or_else(bad)?.add(r);
            inquirers.get_mut(pair_inquirer[pair]).ok_or_else(bad)?.add(r);
            goals.get_mut(goal).ok_or_else(bad)?.add(r);
            for (name, idx) in persona_slots.get(persona).ok_or_else(bad)? {
                if let Some(values) = features.get_mut(name) {
                    values[*idx].1.add(r);
                }
                if let Some(cell) = cells.get_mut(name).and_then(|c| c[*idx].get_mut(pair)) {
                    cell.get_or_insert_with(|| Acc::new(max_turns).diverse()).add(r);
                }
            }
        }
        Ok(())
    })?;
    let sorted_cells = finish_cells(cells, &features, &exp.pairs);
    let sorted_features = finish_features(features);
    let budget = budget_report(rd, plan)?;
    let judgements = judgements::build(rd, plan)?;
    Ok(Report {
        budget,
        judgements,
        experiment: exp.name.clone(),
        plan_hash: plan.plan_hash.clone(),
        stop_token: exp.dialogue.stop_token.clone(),
        max_turns,
        planned: stats.planned,
        finished: stats.finished,
        missing: stats.missing.count,
        failed: stats.failed.count,
        all: all.finish("all".into(), BTreeMap::new()),
        pairs: exp
            .pairs
            .iter()
            .zip(&pairs)
            .map(|(p, acc)| {
                acc.finish(
                    format!("{} -> {}", p.inquirer, p.responder),
                    labels(&[("inquirer", &p.inquirer), ("responder", &p.responder)]),
                )
            })
            .collect(),
        inquirers: inquirer_names
            .iter()
            .zip(&inquirers)
            .map(|(n, acc)| acc.finish(n.to_string(), labels(&[("inquirer", n)])))
            .collect(),
        features: sorted_features,
        goals: exp
            .goals
            .iter()
            .zip(&goals)
            .map(|(g, acc)| acc.finish(g.id.clone(), labels(&[("goal_id", &g.id)])))
            .collect(),
        cells: sorted_cells,
        stats,
    })
}

/// Per persona feature value and pair, by feature name then group key.
fn finish_cells(
    cells: BTreeMap<&str, Vec<Vec<Option<Acc>>>>,
    features: &BTreeMap<&str, Vec<(&str, Acc)>>,
    pairs: &[crate::experiment::Pair],
) -> Vec<Feature> {
    let pair_name = |p: &crate::experiment::Pair| format!("{} -> {}", p.inquirer, p.responder);
    let mut sorted_cells: Vec<Feature> = cells
        .into_iter()
        .map(|(name, values)| {
            let mut groups = Vec::new();
            for (vi, per_pair) in values.into_iter().enumerate() {
                let value = features[name][vi].0;
                for (acc, p) in per_pair.into_iter().zip(pairs) {
                    let Some(acc) = acc else { continue };
                    groups.push(acc.finish(
                        format!("{value}, {}", pair_name(p)),
                        labels(&[
                            ("feature", name),
                            ("value", value),
                            ("inquirer", &p.inquirer),
                            ("responder", &p.responder),
                        ]),
                    ));
                }
            }
            groups.sort_by(|a, b| a.key.cmp(&b.key));
            Feature {
                name: name.to_string(),
                values: groups,
            }
        })
        .collect();
    sorted_cells.sort_by(|a, b| a.name.cmp(&b.name));
    sorted_cells
}

/// Per persona feature value, by feature name then value.
fn finish_features(features: BTreeMap<&str, Vec<(&str, Acc)>>) -> Vec<Feature> {
    let mut sorted_features: Vec<Feature> = features
        .into_iter()
        .map(|(name, values)| {
            let mut values: Vec<Group> = values
                .into_iter()
                .map(|(v, acc)| acc.finish(v.to_string(), labels(&[("feature", name), ("value", v)])))
                .collect();
            values.sort_by(|a, b| a.key.cmp(&b.key));
            Feature {
                name: name.to_string(),
                values,
            }
        })
        .collect();
    sorted_features.sort_by(|a, b| a.name.cmp(&b.name));
    sorted_features
}

impl Report {
    /// Every group with the name of its grouping (`all`, `pair`, `inquirer`, `feature:NAME`, `goal`).
    pub fn groups(&self) -> Vec<(String, &Group)> {
        let mut out = vec![("all".to_string(), &self.all)];
        out.extend(self.pairs.iter().map(|g| ("pair".to_string(), g)));
        out.extend(self.inquirers.iter().map(|g| ("inquirer".to_string(), g)));
        for f in &self.features {
            out.extend(f.values.iter().map(|g| (format!("feature:{}", f.name), g)));
        }
        out.extend(self.goals.iter().map(|g| ("goal".to_string(), g)));
        for f in &self.cells {
            out.extend(f.values.iter().map(|g| (format!("cell:{}", f.name), g)));
        }
        out
    }

    /// One CSV row per group; fixed columns, then one per end reason, then `turns_K` counts, the
    /// quality columns (`q_`), and the judgement columns (`j_`) that only the `judge:` rows fill.
    pub fn write_csv(&self, out: impl std::io::Write) -> Result<()> {
        let err = |e: csv::Error| Error::runtime(format!("cannot write the CSV report: {e}"));
        let width = self
            .groups()
            .iter()
            .map(|(_, g)| g.turns.distribution.len())
            .max()
            .unwrap_or(1);
        let mut w = csv::Writer::from_writer(out);
        let mut header: Vec<String> = [
            "grouping",
            "key",
            "dialogues",
            "finished_by_stop",
            "finished_share",
            "turns_mean",
            "turns_median",
            "turns_p10",
            "turns_p90",
            "turns_min",
            "turns_max",
            "inquirer_prompt_tokens_mean",
            "inquirer_completion_tokens_mean",
            "responder_prompt_tokens_mean",
            "responder_completion_tokens_mean",
            "inquirer_latency_ms_mean",
            "responder_latency_ms_mean",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        header.extend(EndReason::ALL.iter().map(|e| format!("end_{}", e.as_str())));
        header.extend((0..width).map(|k| format!("turns_{k}")));
        header.extend(quality_csv_header());
        let dialogue_columns = header.len();
        header.extend(JUDGE_CSV_HEADER.iter().map(|s| s.to_string()));
        w.write_record(&header).map_err(err)?;
        let f = |v: Option<f64>| v.map(|x| format!("{}", (x * 1e4).round() / 1e4)).unwrap_or_default();
        let u = |v: Option<u32>| v.map(|x| x.to_string()).unwrap_or_default();
        for (grouping, g) in self.groups() {
            let mut row = vec![
                grouping,
                g.key.clone(),
                g.dialogues.to_string(),
                g.finished_by_stop.to_string(),
                f(g.finished_share),
                f(g.turns.mean),
                f(g.turns.median),
                f(g.turns.p10),
                f(g.turns.p90),
                u(g.turns.min),
                u(g.turns.max),
                f(g.inquirer.prompt_tokens_mean),
                f(g.inquirer.completion_tokens_mean),
                f(g.responder.prompt_tokens_mean),
                f(g.responder.completion_tokens_mean),
                f(g.inquirer.latency_ms_mean),
                f(g.responder.latency_ms_mean),
            ];
            row.extend(
                EndReason::ALL
                    .iter()
                    .map(|e| g.end_reasons.get(e.as_str()).copied().unwrap_or(0).to_string()),
            );
            row.extend((0..width).map(|k| g.turns.distribution.get(k).copied().unwrap_or(0).to_string()));
            row.extend(quality_csv_row(&g.quality));
            row.extend(std::iter::repeat_n(String::new(), JUDGE_CSV_HEADER.len()));
            w.write_record(&row).map_err(err)?;
        }
        // The judgement section: a row per judge group, its cells in the `j_` columns.
        for j in &self.judgements {
            let groups = std::iter::once(("judge:all".to_string(), &j.all))
                .chain(j.pairs.iter().map(|g| ("judge:pair".to_string(), g)))
                .chain(j.features.iter().flat_map(|feat| {
                    feat.values
                        .iter()
                        .map(move |g| (format!("judge:feature:{}", feat.name), g))
                }));
            for (grouping, g) in groups {
                let mut row = vec![grouping, g.key.clone()];
                row.resize(dialogue_columns, String::new());
                row.extend([
                    j.stage.clone(),
                    j.judge.clone(),
                    g.verdicts.to_string(),
                    g.ok.to_string(),
                    g.unparsable.to_string(),
                    g.failed.to_string(),
                    g.goal_achieved.to_string(),
                    f(g.goal_achieved_share),
                    f(g.persona_adherence_mean),
                    f(g.human_likeness_mean),
                ]);
                w.write_record(&row).map_err(err)?;
            }
        }
        w.flush()
            .map_err(|e| Error::runtime(format!("cannot write the CSV report: {e}")))?;
        Ok(())
    }
}

/// The judgement columns of the CSV report, after the quality ones: empty on the dialogue rows;
/// the `judge:...` rows fill them (and `grouping`, `key`) only.
const JUDGE_CSV_HEADER: [&str; 10] = [
    "j_stage",
    "j_judge",
    "j_verdicts",
    "j_ok",
    "j_unparsable",
    "j_failed",
    "j_goal_achieved",
    "j_goal_achieved_share",
    "j_persona_adherence_mean",
    "j_human_likeness_mean",
];

// ---- The quality section in the CSV: appended after the turns_K columns. ----

/// The quality columns of the CSV report (`q_` prefix): indicator shares and means, then diversity
/// of the first turns and of all inquirer turns (empty for inquirers and goals).
fn quality_csv_header() -> Vec<String> {
    let mut h: Vec<String> = [
        "q_role_flip_turn_rate",
        "q_role_flip_dialogue_share",
        "q_goal_leak_share",
        "q_goal_word_share_mean",
        "q_goal_lcs_share_mean",
        "q_stop_at_first_turn_share",
        "q_max_turns_without_stop_share",
        "q_loop_turn_rate",
        "q_loop_dialogue_share",
        "q_restart_turn_rate",
        "q_restart_dialogue_share",
        "q_style_drift_mean",
        "q_style_shift_mean",
        "q_style_shifted_share",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for kind in ["first", "all"] {
        for m in ["sampled", "distinct_1", "distinct_2", "mtld", "self_bleu"] {
            h.push(format!("q_{kind}_{m}"));
        }
    }
    h
}

fn quality_csv_row(q: &quality::Quality) -> Vec<String> {
    let f = |v: Option<f64>| v.map(|x| format!("{}", (x * 1e4).round() / 1e4)).unwrap_or_default();
    let mut row: Vec<String> = [
        q.role_flip.turn_rate,
        q.role_flip.dialogue_share,
        q.goal_leak.share,
        q.goal_leak.word_share_mean,
        q.goal_leak.lcs_share_mean,
        q.stopping.stop_at_first_turn_share,
        q.stopping.max_turns_without_stop_share,
        q.loops.turn_rate,
        q.loops.dialogue_share,
        q.loops.restart_turn_rate,
        q.loops.restart_dialogue_share,
        q.style.drift_mean,
        q.style.shift_mean,
        q.style.shifted_share,
    ]
    .into_iter()
    .map(f)
    .collect();
    for kind in [
        q.diversity.as_ref().map(|d| &d.first_turns),
        q.diversity.as_ref().map(|d| &d.all_turns),
    ] {
        match kind {
            Some(d) => {
                row.push(d.sampled.to_string());
                row.extend([d.distinct_1, d.distinct_2, d.mtld, d.self_bleu].map(f));
            }
            None => row.extend(std::iter::repeat_n(String::new(), 5)),
        }
    }
    row
}

#[cfg(test)]
mod tests;
