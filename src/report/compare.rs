//! `roleplay compare`: a run's dialogues against human reference dialogues, per cell.
//!
//! **Cells.** `all pairs` and each (inquirer, responder) pair, each as a whole (`overall`) and, for
//! every persona feature the reference carries, per value of it that the reference holds: the
//! generated dialogues of that pair whose persona has that value against the reference dialogues
//! with that value. Human dialogues have no pair: every pair is compared with the same reference.
//!
//! **Dialogues.** Generated: finished dialogues with at least one turn, failed ones (backend
//! errors) left out, as `roleplay export --format messages-jsonl` does (so a run compared with its
//! own export is at distance 0). Reference: [`crate::quality::reference`]. A turn is the user's (the
//! inquirer's) message and the reply to it.
//!
//! **Per side:** dialogues; turns per dialogue (mean, distribution); words per user turn (mean,
//! distribution in the bins `0, 1, 2-3, 4-7, ..., 128-255, 256+`); distinct-1 and distinct-2 of the
//! user turns on a sample of `DIVERSITY_SAMPLE` turns (keyed by the turn's words and how often the
//! same words came before, so equal sets of dialogues give equal samples); the indicators: role
//! flips per user turn, near-duplicate (loop) and restart turns per user turn after the first,
//! goal leakage per dialogue that has a goal, and the mean style shift.
//!
//! **Distances** (generated minus reference for means, rates and distinct-n): total variation
//! distance `1/2 Σ|p - q|` of the turn-count and user-word distributions, the Wasserstein-1
//! (earth mover's) distance of turn counts `Σ_k |P(≤k) - Q(≤k)|`, and the Jensen-Shannon divergence
//! of the user turns' unigram distributions (base 2, from 0 for equal distributions to 1 for
//! disjoint ones) over all their words.

use crate::error::Result;
use crate::merge::scan::{self, ScanStats};
use crate::plan::Plan;
use crate::quality::diversity::{Sample, distinct_n};
use crate::quality::indicators::{Analyzer, DialogueIndicators, GoalProfile};
use crate::quality::reference::Reference;
use crate::quality::text::{fmix, word_hashes};
use crate::rundir::RunDir;
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// Bins of words per user turn: 0, 1, 2-3, 4-7, ..., 128-255, 256 and more.
pub const WORD_BINS: usize = 10;

pub fn word_bin_labels() -> Vec<String> {
    (0..WORD_BINS)
        .map(|b| match b {
            0 => "0".to_string(),
            1 => "1".to_string(),
            b if b == WORD_BINS - 1 => format!("{}+", 1u64 << (b - 1)),
            b => format!("{}-{}", 1u64 << (b - 1), (1u64 << b) - 1),
        })
        .collect()
}

fn word_bin(words: u32) -> usize {
    if words == 0 {
        0
    } else {
        (1 + words.ilog2() as usize).min(WORD_BINS - 1)
    }
}

/// One dialogue, analysed once and added to every cell it belongs to.
struct Analysed {
    ind: DialogueIndicators,
    /// Word hashes per user turn.
    tokens: Vec<Vec<u64>>,
    /// Sample key per user turn.
    keys: Vec<u64>,
    has_goal: bool,
}

/// Sample keys from the turn's words and how often the same words came before on this side.
#[derive(Default)]
struct Keys(HashMap<u64, u32>);

impl Keys {
    fn key(&mut self, tokens: &[u64]) -> u64 {
        let mut h = tokens.len() as u64;
        for t in tokens {
            h = fmix(h.rotate_left(23) ^ t);
        }
        let n = self.0.entry(h).or_insert(0);
        *n += 1;
        fmix(h ^ (*n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

fn analyse(keys: &mut Keys, ind: DialogueIndicators, has_goal: bool, turns: &[(&str, &str)]) -> Analysed {
    let tokens: Vec<Vec<u64>> = turns
        .iter()
        .map(|(u, _)| {
            let mut v = Vec::new();
            word_hashes(u, &mut v);
            v
        })
        .collect();
    let keys = tokens.iter().map(|t| keys.key(t)).collect();
    Analysed {
        ind,
        tokens,
        keys,
        has_goal,
    }
}

/// Running sums of one side of one cell.
#[derive(Default)]
struct SideAcc {
    dialogues: u64,
    turns_hist: Vec<u64>,
    user_turns: u64,
    user_words: u64,
    words_hist: [u64; WORD_BINS],
    unigrams: HashMap<u64, u64>,
    sample: Sample,
    role_flips: u64,
    loops: u64,
    restarts: u64,
    goal_dialogues: u64,
    goal_leaks: u64,
    shift_sum: f64,
    shift_dialogues: u64,
}

impl SideAcc {
    fn add(&mut self, a: &Analysed) {
        self.dialogues += 1;
        let n = a.tokens.len();
        if self.turns_hist.len() <= n {
            self.turns_hist.resize(n + 1, 0);
        }
        self.turns_hist[n] += 1;
        for ((t, key), ti) in a.tokens.iter().zip(&a.keys).zip(&a.ind.turns) {
            self.user_turns += 1;
            self.user_words += t.len() as u64;
            self.words_hist[word_bin(t.len() as u32)] += 1;
            for w in t {
                *self.unigrams.entry(*w).or_insert(0) += 1;
            }
            self.sample.offer(*key, || t.clone());
            self.role_flips += ti.role_flip as u64;
            self.loops += ti.near_duplicate as u64;
            self.restarts += ti.restart as u64;
        }
        if a.has_goal {
            self.goal_dialogues += 1;
            self.goal_leaks += a.ind.goal.leak as u64;
        }
        if let Some(s) = a.ind.style_shift {
            self.shift_sum += s;
            self.shift_dialogues += 1;
        }
    }

    fn stats(&self) -> SideStats {
        let ratio = |a: f64, b: u64| (b > 0).then(|| a / b as f64);
        let sample = self.sample.texts();
        SideStats {
            dialogues: self.dialogues,
            turns_mean: ratio(self.user_turns as f64, self.dialogues),
            turns_distribution: self.turns_hist.clone(),
            user_turns: self.user_turns,
            user_words_mean: ratio(self.user_words as f64, self.user_turns),
            user_words_distribution: self.words_hist.to_vec(),
            sampled_turns: sample.len(),
            distinct_1: distinct_n(&sample, 1),
            distinct_2: distinct_n(&sample, 2),
            role_flip_rate: ratio(self.role_flips as f64, self.user_turns),
            loop_rate: ratio(self.loops as f64, self.user_turns - self.dialogues),
            restart_rate: ratio(self.restarts as f64, self.user_turns - self.dialogues),
            goal_leak_share: ratio(self.goal_leaks as f64, self.goal_dialogues),
            style_shift_mean: ratio(self.shift_sum, self.shift_dialogues),
        }
    }
}

/// One side of a cell.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct SideStats {
    pub dialogues: u64,
    pub turns_mean: Option<f64>,
    /// Dialogues with 0, 1, 2, ... turns.
    pub turns_distribution: Vec<u64>,
    pub user_turns: u64,
    pub user_words_mean: Option<f64>,
    /// User turns per word bin (`user_words_bins`).
    pub user_words_distribution: Vec<u64>,
    /// User turns that distinct-n was computed on.
    pub sampled_turns: usize,
    pub distinct_1: Option<f64>,
    pub distinct_2: Option<f64>,
    /// Role-flip turns over user turns.
    pub role_flip_rate: Option<f64>,
    /// Near-duplicate turns over user turns after the first.
    pub loop_rate: Option<f64>,
    /// Restart turns over user turns after the first.
    pub restart_rate: Option<f64>,
    /// Dialogues that leak their goal over dialogues that have one.
    pub goal_leak_share: Option<f64>,
    pub style_shift_mean: Option<f64>,
}

/// How far the generated side is from the reference (`None` when either side is empty).
#[derive(Debug, Clone, Serialize, PartialEq, Default)]
pub struct Distances {
    /// Generated minus reference.
    pub turns_mean: Option<f64>,
    pub turns_tv: Option<f64>,
    pub turns_w1: Option<f64>,
    pub user_words_mean: Option<f64>,
    pub user_words_tv: Option<f64>,
    pub distinct_1: Option<f64>,
    pub distinct_2: Option<f64>,
    /// Jensen-Shannon divergence (bits) of the user turns' unigram distributions.
    pub unigram_jsd: Option<f64>,
    pub role_flip_rate: Option<f64>,
    pub loop_rate: Option<f64>,
    pub restart_rate: Option<f64>,
    pub goal_leak_share: Option<f64>,
    pub style_shift_mean: Option<f64>,
}

/// Total variation distance of two count distributions (`None` when either is empty).
pub fn total_variation(p: &[u64], q: &[u64]) -> Option<f64> {
    let (np, nq) = (p.iter().sum::<u64>(), q.iter().sum::<u64>());
    if np == 0 || nq == 0 {
        return None;
    }
    let n = p.len().max(q.len());
    let at = |v: &[u64], i: usize| v.get(i).copied().unwrap_or(0) as f64;
    Some(
        (0..n)
            .map(|i| (at(p, i) / np as f64 - at(q, i) / nq as f64).abs())
            .sum::<f64>()
            / 2.0,
    )
}

/// Wasserstein-1 distance of two distributions over 0, 1, 2, ... (`None` when either is empty).
pub fn wasserstein1(p: &[u64], q: &[u64]) -> Option<f64> {
    let (np, nq) = (p.iter().sum::<u64>(), q.iter().sum::<u64>());
    if np == 0 || nq == 0 {
        return None;
    }
    let n = p.len().max(q.len());
    let (mut cp, mut cq, mut d) = (0.0, 0.0, 0.0);
    for i in 0..n {
        cp += p.get(i).copied().unwrap_or(0) as f64 / np as f64;
        cq += q.get(i).copied().unwrap_or(0) as f64 / nq as f64;
        d += (cp - cq).abs();
    }
    Some(d)
}

/// Jensen-Shannon divergence (base 2) of two count maps (`None` when either is empty).
pub fn jensen_shannon<K: std::hash::Hash + Eq>(p: &HashMap<K, u64>, q: &HashMap<K, u64>) -> Option<f64> {
    let (np, nq) = (p.values().sum::<u64>() as f64, q.values().sum::<u64>() as f64);
    if np == 0.0 || nq == 0.0 {
        return None;
    }
    let term = |x: f64, m: f64| if x > 0.0 { x * (x / m).log2() } else { 0.0 };
    let mut d = 0.0;
    for (k, cp) in p {
        let (x, y) = (*cp as f64 / np, q.get(k).copied().unwrap_or(0) as f64 / nq);
        let m = (x + y) / 2.0;
        d += term(x, m) + term(y, m);
    }
    for (k, cq) in q {
        if !p.contains_key(k) {
            let y = *cq as f64 / nq;
            d += term(y, y / 2.0);
        }
    }
    // Rounding can leave a tiny negative or a hair above 1.
    Some((d / 2.0).clamp(0.0, 1.0))
}

fn distances(g: &SideAcc, gs: &SideStats, r: &SideAcc, rs: &SideStats) -> Distances {
    if g.dialogues == 0 || r.dialogues == 0 {
        return Distances::default();
    }
    let diff = |a: Option<f64>, b: Option<f64>| Some(a? - b?);
    Distances {
        turns_mean: diff(gs.turns_mean, rs.turns_mean),
        turns_tv: total_variation(&gs.turns_distribution, &rs.turns_distribution),
        turns_w1: wasserstein1(&gs.turns_distribution, &rs.turns_distribution),
        user_words_mean: diff(gs.user_words_mean, rs.user_words_mean),
        user_words_tv: total_variation(&gs.user_words_distribution, &rs.user_words_distribution),
        distinct_1: diff(gs.distinct_1, rs.distinct_1),
        distinct_2: diff(gs.distinct_2, rs.distinct_2),
        unigram_jsd: jensen_shannon(&g.unigrams, &r.unigrams),
        role_flip_rate: diff(gs.role_flip_rate, rs.role_flip_rate),
        loop_rate: diff(gs.loop_rate, rs.loop_rate),
        restart_rate: diff(gs.restart_rate, rs.restart_rate),
        goal_leak_share: diff(gs.goal_leak_share, rs.goal_leak_share),
        style_shift_mean: diff(gs.style_shift_mean, rs.style_shift_mean),
    }
}

/// One cell of the comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Cell {
    /// `all pairs` or `INQUIRER -> RESPONDER`.
    pub pair: String,
    /// The persona feature and value, or none for the pair as a whole.
    pub feature: Option<String>,
    pub value: Option<String>,
    pub generated: SideStats,
    pub reference: SideStats,
    pub distance: Distances,
}

impl Cell {
    /// `all pairs`, `a -> b, age = young`.
    pub fn label(&self) -> String {
        match (&self.feature, &self.value) {
            (Some(f), Some(v)) => format!("{}, {f} = {v}", self.pair),
            _ => self.pair.clone(),
        }
    }
}

/// The whole comparison.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Comparison {
    pub experiment: String,
    pub plan_hash: String,
    pub reference: String,
    /// Reference dialogues read per layout.
    pub reference_layouts: BTreeMap<String, u64>,
    pub reference_dialogues: u64,
    pub reference_without_user_message: u64,
    /// Persona features the reference carries (they make the feature cells).
    pub reference_features: Vec<String>,
    /// Generated dialogues compared (finished, not failed, with a turn).
    pub generated_dialogues: u64,
    pub generated_failed: u64,
    pub generated_without_turns: u64,
    pub planned: u64,
    pub missing: u64,
    pub user_words_bins: Vec<String>,
    pub cells: Vec<Cell>,
    #[serde(skip)]
    pub stats: ScanStats,
}

/// Compare the run's dialogues with `reference`.
pub fn build(rd: &RunDir, plan: &Plan, reference: &Reference) -> Result<Comparison> {
    let exp = &plan.experiment;
    // The (feature, value) cells: the values the reference holds.
    let mut fv: BTreeSet<(String, String)> = BTreeSet::new();
    for d in &reference.dialogues {
        for (k, v) in &d.features {
            fv.insert((k.clone(), v.clone()));
        }
    }
    let fv: Vec<(String, String)> = fv.into_iter().collect();
    let fv_index: HashMap<(&str, &str), usize> = fv
        .iter()
        .enumerate()
        .map(|(i, (k, v))| ((k.as_str(), v.as_str()), i + 1))
        .collect();
    let slots = fv.len() + 1;
    let all = exp.pairs.len();
    let mut generated: Vec<Vec<SideAcc>> = (0..=all)
        .map(|_| (0..slots).map(|_| SideAcc::default()).collect())
        .collect();
    let mut refs: Vec<SideAcc> = (0..slots).map(|_| SideAcc::default()).collect();

    let mut analyzer = Analyzer::new();
    let mut ref_keys = Keys::default();
    for d in &reference.dialogues {
        let turns: Vec<(&str, &str)> = d.turns.iter().map(|(u, a)| (u.as_str(), a.as_str())).collect();
        let goal = GoalProfile::new(d.goal.as_deref().unwrap_or(""));
        let ind = analyzer.dialogue(&goal, turns.iter().copied());
        let a = analyse(&mut ref_keys, ind, d.goal.is_some(), &turns);
        refs[0].add(&a);
        for (k, v) in &d.features {
            if let Some(&i) = fv_index.get(&(k.as_str(), v.as_str())) {
                refs[i].add(&a);
            }
        }
    }

    let mut gen_keys = Keys::default();
    let mut goals: HashMap<u32, GoalProfile> = HashMap::new();
    let (mut used, mut failed, mut empty) = (0u64, 0u64, 0u64);
    let stats = scan::scan(rd, plan, |batch| {
        for f in &batch.dialogues {
            let r = &f.record;
            if r.ending.reason.is_failure() {
                failed += 1;
                continue;
            }
            if r.turns.is_empty() {
                empty += 1;
                continue;
            }
            used += 1;
            // The indicators the worker stored, or computed here.
            let goals = &mut goals;
            let ind = analyzer.record(
                || {
                    goals
                        .entry(f.unit.goal)
                        .or_insert_with(|| GoalProfile::new(&exp.goals[f.unit.goal as usize].text))
                },
                r,
            );
            let turns: Vec<(&str, &str)> = r
                .turns
                .iter()
                .map(|t| (t.prompt.as_str(), t.responder.output.as_str()))
                .collect();
            let a = analyse(&mut gen_keys, ind, true, &turns);
            let pair = f.unit.pair as usize;
            let mut targets = vec![0usize];
            for (k, v) in &exp.personas[f.unit.persona as usize].features {
                if let Some(&i) = fv_index.get(&(k.as_str(), v.as_str())) {
                    targets.push(i);
                }
            }
            for slot in targets {
                generated[pair][slot].add(&a);
                generated[all][slot].add(&a);
            }
        }
        Ok(())
    })?;

    let ref_stats: Vec<SideStats> = refs.iter().map(SideAcc::stats).collect();
    let mut cells = Vec::new();
    for p in std::iter::once(all).chain(0..all) {
        let pair = if p == all {
            "all pairs".to_string()
        } else {
            format!("{} -> {}", exp.pairs[p].inquirer, exp.pairs[p].responder)
        };
        for slot in 0..slots {
            let (g, r) = (&generated[p][slot], &refs[slot]);
            let gs = g.stats();
            let (feature, value) = match slot {
                0 => (None, None),
                i => (Some(fv[i - 1].0.clone()), Some(fv[i - 1].1.clone())),
            };
            cells.push(Cell {
                pair: pair.clone(),
                feature,
                value,
                distance: distances(g, &gs, r, &ref_stats[slot]),
                generated: gs,
                reference: ref_stats[slot].clone(),
            });
        }
    }
    let mut features: Vec<String> = fv.iter().map(|(k, _)| k.clone()).collect();
    features.dedup();
    Ok(Comparison {
        experiment: exp.name.clone(),
        plan_hash: plan.plan_hash.clone(),
        reference: reference.path.clone(),
        reference_layouts: reference.layouts.clone(),
        reference_dialogues: reference.dialogues.len() as u64,
        reference_without_user_message: reference.without_user_message,
        reference_features: features,
        generated_dialogues: used,
        generated_failed: failed,
        generated_without_turns: empty,
        planned: stats.planned,
        missing: stats.missing.count,
        user_words_bins: word_bin_labels(),
        cells,
        stats,
    })
}

fn num(v: Option<f64>, d: usize) -> String {
    v.map(|x| format!("{x:.d$}")).unwrap_or_else(|| "-".into())
}

fn pct(v: Option<f64>) -> String {
    v.map(|x| format!("{:.1}%", x * 100.0)).unwrap_or_else(|| "-".into())
}

fn signed(v: Option<f64>, d: usize) -> String {
    v.map(|x| format!("{x:+.d$}")).unwrap_or_else(|| "-".into())
}

/// Left-aligned first column, the others right-aligned.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            let pad = " ".repeat(w.saturating_sub(c.chars().count()));
            if i == 0 {
                s.push_str(c);
                s.push_str(&pad);
            } else {
                s.push_str("  ");
                s.push_str(&pad);
                s.push_str(c);
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

/// The comparison as text tables: generated/reference per cell, then the distances.
pub fn text(c: &Comparison) -> String {
    let layouts: Vec<String> = c.reference_layouts.iter().map(|(k, v)| format!("{v} {k}")).collect();
    let mut out = format!(
        "run {} (plan {}): {} generated dialogues compared ({} failed and {} without turns left out; {} of {} planned missing)\n\
         reference `{}`: {} dialogues ({}; {} without a user message left out){}\n\
         g/r: generated / reference; Δ: generated - reference; TV: total variation distance; W1: earth mover's distance;\n\
         JSD: Jensen-Shannon divergence (bits) of the user turns' words; role flips per user turn, loops and restarts\n\
         per user turn after the first, goal leak per dialogue with a goal\n\n",
        c.experiment,
        &c.plan_hash[..c.plan_hash.len().min(12)],
        c.generated_dialogues,
        c.generated_failed,
        c.generated_without_turns,
        c.missing,
        c.planned,
        c.reference,
        c.reference_dialogues,
        layouts.join(", "),
        c.reference_without_user_message,
        if c.reference_features.is_empty() {
            String::new()
        } else {
            format!("; persona features: {}", c.reference_features.join(", "))
        }
    );
    let gr = |g: String, r: String| format!("{g}/{r}");
    let rows: Vec<Vec<String>> = c
        .cells
        .iter()
        .map(|x| {
            let (g, r, d) = (&x.generated, &x.reference, &x.distance);
            vec![
                x.label(),
                gr(g.dialogues.to_string(), r.dialogues.to_string()),
                gr(num(g.turns_mean, 2), num(r.turns_mean, 2)),
                num(d.turns_tv, 3),
                num(d.turns_w1, 2),
                gr(num(g.user_words_mean, 1), num(r.user_words_mean, 1)),
                num(d.user_words_tv, 3),
                gr(num(g.distinct_1, 3), num(r.distinct_1, 3)),
                gr(num(g.distinct_2, 3), num(r.distinct_2, 3)),
                num(d.unigram_jsd, 3),
            ]
        })
        .collect();
    out.push_str("shape and words\n");
    out.push_str(&table(
        &[
            "cell",
            "dialogues g/r",
            "turns mean g/r",
            "turns TV",
            "turns W1",
            "user words g/r",
            "words TV",
            "distinct-1 g/r",
            "distinct-2 g/r",
            "JSD",
        ],
        &rows,
    ));
    let rows: Vec<Vec<String>> = c
        .cells
        .iter()
        .map(|x| {
            let (g, r, d) = (&x.generated, &x.reference, &x.distance);
            vec![
                x.label(),
                gr(pct(g.role_flip_rate), pct(r.role_flip_rate)),
                gr(pct(g.loop_rate), pct(r.loop_rate)),
                gr(pct(g.restart_rate), pct(r.restart_rate)),
                gr(pct(g.goal_leak_share), pct(r.goal_leak_share)),
                gr(num(g.style_shift_mean, 3), num(r.style_shift_mean, 3)),
                signed(d.turns_mean, 2),
                signed(d.user_words_mean, 1),
                signed(d.distinct_2, 3),
            ]
        })
        .collect();
    out.push_str("\nindicators and differences\n");
    out.push_str(&table(
        &[
            "cell",
            "role flip g/r",
            "loops g/r",
            "restarts g/r",
            "goal leak g/r",
            "style shift g/r",
            "Δ turns",
            "Δ user words",
            "Δ distinct-2",
        ],
        &rows,
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distribution_distances() {
        assert_eq!(total_variation(&[1, 1], &[1, 1]), Some(0.0));
        assert_eq!(total_variation(&[2, 0], &[0, 5]), Some(1.0));
        assert_eq!(total_variation(&[1, 1], &[0, 0, 4]), Some(1.0));
        assert_eq!(total_variation(&[1, 3], &[3, 1]), Some(0.5));
        assert_eq!(total_variation(&[], &[1]), None);
        assert_eq!(wasserstein1(&[0, 1], &[0, 0, 0, 1]), Some(2.0));
        assert_eq!(wasserstein1(&[1, 1], &[2, 2]), Some(0.0));
        assert_eq!(wasserstein1(&[1, 0, 1], &[0, 2]), Some(1.0));
    }

    #[test]
    fn jensen_shannon_divergence() {
        let m = |kv: &[(u8, u64)]| kv.iter().copied().collect::<HashMap<u8, u64>>();
        assert_eq!(jensen_shannon(&m(&[(1, 2), (2, 3)]), &m(&[(1, 4), (2, 6)])), Some(0.0));
        assert_eq!(jensen_shannon(&m(&[(1, 2)]), &m(&[(2, 3)])), Some(1.0));
        // P = (1/2, 1/2), Q = (1, 0): M = (3/4, 1/4);
        // JSD = 1/2 [1/2 log2(2/3) + 1/2 log2(2)] + 1/2 [log2(4/3)].
        let want = 0.5 * (0.5 * (2.0f64 / 3.0).log2() + 0.5 * 2.0f64.log2()) + 0.5 * (4.0f64 / 3.0).log2();
        let got = jensen_shannon(&m(&[(1, 1), (2, 1)]), &m(&[(1, 5)])).unwrap();
        assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        assert_eq!(jensen_shannon(&m(&[]), &m(&[(1, 1)])), None);
    }

    #[test]
    fn word_bins() {
        assert_eq!(
            word_bin_labels(),
            [
                "0", "1", "2-3", "4-7", "8-15", "16-31", "32-63", "64-127", "128-255", "256+"
            ]
        );
        let bins: Vec<usize> = [0, 1, 2, 3, 4, 7, 8, 255, 256, 10_000]
            .iter()
            .map(|w| word_bin(*w))
            .collect();
        assert_eq!(bins, [0, 1, 2, 2, 3, 3, 4, 8, 9, 9]);
    }

    #[test]
    fn equal_sides_are_at_distance_zero() {
        let dialogues: [&[(&str, &str)]; 3] = [
            &[
                ("hi, how many cups do my hens need?", "20 cups."),
                ("thanks!", "You're welcome."),
            ],
            &[("what's a cheap trip to Rome?", "Take the train.")],
            &[
                ("I'd be happy to help you!", "Thanks?"),
                ("hi, how many cups?", "20."),
                ("ok", "ok"),
            ],
        ];
        let mut analyzer = Analyzer::new();
        let goal = GoalProfile::new("You want to know how many cups of feed your hens need.");
        let mut sides = [SideAcc::default(), SideAcc::default()];
        for (side, order) in sides.iter_mut().zip([[0, 1, 2], [2, 0, 1]]) {
            let mut keys = Keys::default();
            for i in order {
                let ind = analyzer.dialogue(&goal, dialogues[i].iter().copied());
                side.add(&analyse(&mut keys, ind, true, dialogues[i]));
            }
        }
        let (a, b) = (sides[0].stats(), sides[1].stats());
        assert_eq!(a, b);
        let d = distances(&sides[0], &a, &sides[1], &b);
        assert_eq!(d.unigram_jsd, Some(0.0));
        assert_eq!(d.turns_tv, Some(0.0));
        assert_eq!(d.turns_w1, Some(0.0));
        assert_eq!(d.turns_mean, Some(0.0));
        assert_eq!(d.distinct_2, Some(0.0));
        assert_eq!(d.role_flip_rate, Some(0.0));
        assert_eq!(a.role_flip_rate, Some(1.0 / 6.0));
        assert_eq!(a.turns_distribution, [0, 1, 1, 1]);
    }
}
