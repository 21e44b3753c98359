//! The report's quality section: the fidelity indicators (`quality::indicators`) summarised per
//! group, and lexical diversity (`quality::diversity`) per pair, per persona feature value and per
//! grid cell (a feature value within a pair).
//!
//! Per group: the share of inquirer turns that flip roles (and of dialogues with at least one flip,
//! and how often each signal fired), the share of dialogues that leak their goal (with the mean
//! shares and the distribution of the word share), stopping (the share stopped at the first turn,
//! the share that used every turn without the stop token, the turns at which the stop token came),
//! loops and restarts (per inquirer turn after the first, and per dialogue), and persona style
//! (mean drift and shift, the share shifted, the distribution of the shift). Shares are over the
//! group's dialogues with at least one turn, except the stopping figures (over all its dialogues).
//!
//! Diversity is computed on bounded samples (`DIVERSITY_SAMPLE` texts, the ones with the smallest
//! hash of (unit id, turn): uniform and the same whatever the order of the journals), of the first
//! turns and of all inquirer turns, so a group costs at most two samples of memory.

use crate::dialogue::DialogueRecord;
use crate::quality::diversity::{Diversity, Sample, sample_key};
use crate::quality::text::word_hashes;
use crate::quality::{DialogueIndicators, Signals, Stopping};
use serde::Serialize;
use std::collections::BTreeMap;

/// Bins of the share distributions: [0, 0.1), [0.1, 0.2), ..., [0.9, 1].
pub const SHARE_BINS: usize = 10;

fn share_bin(x: f64) -> usize {
    ((x * SHARE_BINS as f64) as usize).min(SHARE_BINS - 1)
}

/// One dialogue's indicators with what the samples need, computed once for all its groups.
pub struct Assessed<'a> {
    pub record: &'a DialogueRecord,
    pub unit_id: [u8; 10],
    pub indicators: DialogueIndicators,
    pub stopping: Stopping,
}

/// Running sums of one group.
#[derive(Debug, Clone)]
pub struct QualityAcc {
    dialogues: u64,
    with_turns: u64,
    turns: u64,
    later_turns: u64,
    role_flip_turns: u64,
    role_flip_dialogues: u64,
    signals: [u64; Signals::ALL.len()],
    goal_leaks: u64,
    word_share: (f64, u64),
    lcs_share: (f64, u64),
    word_share_hist: [u64; SHARE_BINS],
    stop_at_first: u64,
    max_turns_without_stop: u64,
    stop_turns: Vec<u64>,
    loop_turns: u64,
    loop_dialogues: u64,
    restart_turns: u64,
    restart_dialogues: u64,
    drift: (f64, u64),
    shift: (f64, u64),
    shifted: u64,
    shift_hist: [u64; SHARE_BINS],
    /// First turns and all inquirer turns, for diversity (groups without: none).
    samples: Option<Box<(Sample, Sample)>>,
}

impl QualityAcc {
    pub fn new(diversity: bool) -> QualityAcc {
        QualityAcc {
            dialogues: 0,
            with_turns: 0,
            turns: 0,
            later_turns: 0,
            role_flip_turns: 0,
            role_flip_dialogues: 0,
            signals: [0; Signals::ALL.len()],
            goal_leaks: 0,
            word_share: (0.0, 0),
            lcs_share: (0.0, 0),
            word_share_hist: [0; SHARE_BINS],
            stop_at_first: 0,
            max_turns_without_stop: 0,
            stop_turns: Vec::new(),
            loop_turns: 0,
            loop_dialogues: 0,
            restart_turns: 0,
            restart_dialogues: 0,
            drift: (0.0, 0),
            shift: (0.0, 0),
            shifted: 0,
            shift_hist: [0; SHARE_BINS],
            samples: diversity.then(|| Box::new((Sample::default(), Sample::default()))),
        }
    }

    pub fn add(&mut self, a: &Assessed) {
        let (ind, s) = (&a.indicators, &a.stopping);
        self.dialogues += 1;
        self.stop_at_first += s.stop_at_first_turn as u64;
        self.max_turns_without_stop += s.max_turns_without_stop as u64;
        if let Some(t) = s.stop_turn {
            let t = t as usize;
            if self.stop_turns.len() <= t {
                self.stop_turns.resize(t + 1, 0);
            }
            self.stop_turns[t] += 1;
        }
        let n = ind.turns.len() as u64;
        if n == 0 {
            return;
        }
        self.with_turns += 1;
        self.turns += n;
        self.later_turns += n - 1;
        self.role_flip_turns += ind.role_flip_turns as u64;
        self.role_flip_dialogues += (ind.role_flip_turns > 0) as u64;
        for t in &ind.turns {
            for (k, (sig, _)) in Signals::ALL.iter().enumerate() {
                self.signals[k] += t.signals.has(*sig) as u64;
            }
        }
        self.goal_leaks += ind.goal.leak as u64;
        if let Some(w) = ind.goal.word_share {
            self.word_share.0 += w;
            self.word_share.1 += 1;
            self.word_share_hist[share_bin(w)] += 1;
        }
        if let Some(l) = ind.goal.lcs_share {
            self.lcs_share.0 += l;
            self.lcs_share.1 += 1;
        }
        self.loop_turns += ind.loop_turns as u64;
        self.loop_dialogues += (ind.loop_turns > 0) as u64;
        self.restart_turns += ind.restart_turns as u64;
        self.restart_dialogues += (ind.restart_turns > 0) as u64;
        if let Some(d) = ind.style_drift {
            self.drift.0 += d;
            self.drift.1 += 1;
        }
        if let Some(x) = ind.style_shift {
            self.shift.0 += x;
            self.shift.1 += 1;
            self.shift_hist[share_bin(x)] += 1;
        }
        self.shifted += ind.style_shifted as u64;
        if let Some(samples) = &mut self.samples {
            let (first, all) = &mut **samples;
            let turns = &a.record.turns;
            let tokens = |k: usize| {
                move || {
                    let mut v = Vec::new();
                    word_hashes(&turns[k].prompt, &mut v);
                    v
                }
            };
            first.offer(sample_key(&[&a.unit_id]), tokens(0));
            for k in 0..turns.len() {
                all.offer(sample_key(&[&a.unit_id, &(k as u32).to_le_bytes()]), tokens(k));
            }
        }
    }

    pub fn finish(&self) -> Quality {
        let share = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        let mean = |(s, n): (f64, u64)| (n > 0).then(|| s / n as f64);
        Quality {
            dialogues_with_turns: self.with_turns,
            inquirer_turns: self.turns,
            role_flip: RoleFlip {
                turn_rate: share(self.role_flip_turns, self.turns),
                dialogue_share: share(self.role_flip_dialogues, self.with_turns),
                signals: Signals::ALL
                    .iter()
                    .zip(self.signals)
                    .map(|((_, name), c)| (name.to_string(), c))
                    .collect(),
            },
            goal_leak: GoalLeak {
                share: share(self.goal_leaks, self.with_turns),
                word_share_mean: mean(self.word_share),
                lcs_share_mean: mean(self.lcs_share),
                word_share_distribution: self.word_share_hist.to_vec(),
            },
            stopping: StoppingStats {
                stop_at_first_turn_share: share(self.stop_at_first, self.dialogues),
                max_turns_without_stop_share: share(self.max_turns_without_stop, self.dialogues),
                stop_turns: self.stop_turns.clone(),
            },
            loops: Loops {
                turn_rate: share(self.loop_turns, self.later_turns),
                dialogue_share: share(self.loop_dialogues, self.with_turns),
                restart_turn_rate: share(self.restart_turns, self.later_turns),
                restart_dialogue_share: share(self.restart_dialogues, self.with_turns),
            },
            style: StyleStats {
                drift_mean: mean(self.drift),
                shift_mean: mean(self.shift),
                shifted_share: share(self.shifted, self.shift.1),
                shift_distribution: self.shift_hist.to_vec(),
            },
            diversity: self.samples.as_ref().map(|s| DiversityPair {
                first_turns: s.0.diversity(),
                all_turns: s.1.diversity(),
            }),
        }
    }
}

/// A group's quality figures (`null` where the group has nothing to measure).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Quality {
    pub dialogues_with_turns: u64,
    pub inquirer_turns: u64,
    pub role_flip: RoleFlip,
    pub goal_leak: GoalLeak,
    pub stopping: StoppingStats,
    pub loops: Loops,
    pub style: StyleStats,
    /// Per pair, persona feature value and cell (not per inquirer or goal).
    pub diversity: Option<DiversityPair>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct RoleFlip {
    /// Role-flip turns over inquirer turns.
    pub turn_rate: Option<f64>,
    /// Dialogues with a role-flip turn over dialogues with turns.
    pub dialogue_share: Option<f64>,
    /// Turns on which each signal fired.
    pub signals: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct GoalLeak {
    /// Dialogues that leak their goal over dialogues with turns.
    pub share: Option<f64>,
    pub word_share_mean: Option<f64>,
    pub lcs_share_mean: Option<f64>,
    /// Dialogues per tenth of the goal word share ([0, 0.1), ..., [0.9, 1]).
    pub word_share_distribution: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoppingStats {
    /// Over all the group's dialogues.
    pub stop_at_first_turn_share: Option<f64>,
    pub max_turns_without_stop_share: Option<f64>,
    /// Dialogues stopped by the stop token at turn 0, 1, 2, ... (0-based, as the `turn` column).
    pub stop_turns: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Loops {
    /// Near-duplicate turns over inquirer turns after the first.
    pub turn_rate: Option<f64>,
    pub dialogue_share: Option<f64>,
    /// Restart turns over inquirer turns after the first.
    pub restart_turn_rate: Option<f64>,
    pub restart_dialogue_share: Option<f64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StyleStats {
    pub drift_mean: Option<f64>,
    pub shift_mean: Option<f64>,
    /// Dialogues whose style shifted over dialogues with at least two turns.
    pub shifted_share: Option<f64>,
    /// Dialogues per tenth of the style shift.
    pub shift_distribution: Vec<u64>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct DiversityPair {
    pub first_turns: Diversity,
    pub all_turns: Diversity,
}

/// The indicator rates the report shows side by side (chart, tables, CSV), with their labels.
pub fn rates(q: &Quality) -> [(&'static str, Option<f64>); 7] {
    [
        ("role flip (turns)", q.role_flip.turn_rate),
        ("goal leak", q.goal_leak.share),
        ("stop at turn 1", q.stopping.stop_at_first_turn_share),
        ("max turns, no stop", q.stopping.max_turns_without_stop_share),
        ("loops (turns)", q.loops.turn_rate),
        ("restarts (turns)", q.loops.restart_turn_rate),
        ("style shifted", q.style.shifted_share),
    ]
}
