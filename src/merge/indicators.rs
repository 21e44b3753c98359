//! The fidelity indicator columns of both tables (`quality::indicators`; README, "Fidelity
//! indicators"): the ones each finished dialogue's record stores (the worker computed them), or
//! else computed from its text while its batch is built: no model, no extra pass over the
//! journals. Kept apart from `table`'s own columns, after them: per turn at
//! the end of the turn fields (so in `turns.parquet` and in the nested `turns` column alike), per
//! dialogue after the `turns` column.

use super::scan::Finished;
use crate::experiment::Experiment;
use crate::quality::{Analyzer, GoalProfile, stopping};
use arrow::array::{ArrayRef, BooleanBuilder, Float64Builder, ListBuilder, StringBuilder, UInt32Builder};
use arrow::datatypes::{DataType, Field};
use std::sync::{Arc, OnceLock};

/// The list items of `role_flip_signals`.
fn signal_item() -> Arc<Field> {
    Arc::new(Field::new("element", DataType::Utf8, false))
}

/// The per-turn indicator fields, in order.
pub fn turn_fields() -> Vec<Field> {
    let u32c = |n: &str| Field::new(n, DataType::UInt32, false);
    let f64c = |n: &str| Field::new(n, DataType::Float64, false);
    let f64n = |n: &str| Field::new(n, DataType::Float64, true);
    let boolc = |n: &str| Field::new(n, DataType::Boolean, false);
    vec![
        u32c("inquirer_words"),
        f64c("question_ratio"),
        f64c("contraction_rate"),
        f64c("formality"),
        boolc("role_flip"),
        Field::new("role_flip_signals", DataType::List(signal_item()), false),
        f64n("repeat_jaccard"),
        boolc("near_duplicate"),
        boolc("restart"),
    ]
}

/// The per-dialogue indicator fields, in order.
pub fn dialogue_fields() -> Vec<Field> {
    let u32c = |n: &str| Field::new(n, DataType::UInt32, false);
    let u32n = |n: &str| Field::new(n, DataType::UInt32, true);
    let f64n = |n: &str| Field::new(n, DataType::Float64, true);
    let boolc = |n: &str| Field::new(n, DataType::Boolean, false);
    vec![
        u32c("role_flip_turns"),
        f64n("role_flip_rate"),
        u32c("goal_content_words"),
        f64n("goal_word_share"),
        u32n("goal_lcs_chars"),
        f64n("goal_lcs_share"),
        boolc("goal_leak"),
        boolc("stop_token_used"),
        u32n("stop_turn"),
        boolc("stop_at_first_turn"),
        boolc("max_turns_without_stop"),
        u32c("loop_turns"),
        u32c("restart_turns"),
        f64n("style_drift"),
        f64n("style_shift"),
        boolc("style_shifted"),
    ]
}

/// The indicator columns of one batch.
pub struct Columns {
    analyzer: Analyzer,
    // Per turn.
    words: UInt32Builder,
    style: [Float64Builder; 3],
    role_flip: BooleanBuilder,
    signals: ListBuilder<StringBuilder>,
    repeat_jaccard: Float64Builder,
    near_duplicate: BooleanBuilder,
    restart: BooleanBuilder,
    // Per dialogue.
    /// role_flip_turns, goal_content_words, loop_turns, restart_turns.
    counts: [UInt32Builder; 4],
    /// goal_lcs_chars, stop_turn.
    optional_counts: [UInt32Builder; 2],
    /// role_flip_rate, goal_word_share, goal_lcs_share, style_drift, style_shift.
    shares: [Float64Builder; 5],
    /// goal_leak, stop_token_used, stop_at_first_turn, max_turns_without_stop, style_shifted.
    flags: [BooleanBuilder; 5],
}

impl Columns {
    pub fn new(dialogues: usize, turns: usize) -> Columns {
        let f = |n: usize| Float64Builder::with_capacity(n);
        let b = |n: usize| BooleanBuilder::with_capacity(n);
        let u = |n: usize| UInt32Builder::with_capacity(n);
        Columns {
            analyzer: Analyzer::new(),
            words: u(turns),
            style: std::array::from_fn(|_| f(turns)),
            role_flip: b(turns),
            signals: ListBuilder::with_capacity(StringBuilder::with_capacity(turns / 8, turns), turns)
                .with_field(signal_item()),
            repeat_jaccard: f(turns),
            near_duplicate: b(turns),
            restart: b(turns),
            counts: std::array::from_fn(|_| u(dialogues)),
            optional_counts: std::array::from_fn(|_| u(dialogues)),
            shares: std::array::from_fn(|_| f(dialogues)),
            flags: std::array::from_fn(|_| b(dialogues)),
        }
    }

    /// Append one dialogue's indicators (its turn rows and its row): the ones its record stores,
    /// or computed here against its goal's profile in `goals` (one per goal of the experiment,
    /// built when first needed, for the whole merge).
    pub fn push(&mut self, exp: &Experiment, goals: &[OnceLock<GoalProfile>], f: &Finished) {
        let r = &f.record;
        // Indices were checked against the experiment when the units were read (`scan`).
        let g = f.unit.goal as usize;
        let ind = self
            .analyzer
            .record(|| goals[g].get_or_init(|| GoalProfile::new(&exp.goals[g].text)), r);
        for t in &ind.turns {
            self.words.append_value(t.style.words);
            self.style[0].append_value(t.style.question_ratio);
            self.style[1].append_value(t.style.contraction_rate);
            self.style[2].append_value(t.style.formality);
            self.role_flip.append_value(t.role_flip);
            for name in t.signals.names() {
                self.signals.values().append_value(name);
            }
            self.signals.append(true);
            self.repeat_jaccard.append_option(t.repeat_jaccard);
            self.near_duplicate.append_value(t.near_duplicate);
            self.restart.append_value(t.restart);
        }
        let s = stopping(r.ending.reason, r.turns.len(), exp.dialogue.max_turns);
        let g = &ind.goal;
        for (b, v) in
            self.counts
                .iter_mut()
                .zip([ind.role_flip_turns, g.content_words, ind.loop_turns, ind.restart_turns])
        {
            b.append_value(v);
        }
        for (b, v) in self.optional_counts.iter_mut().zip([g.lcs_chars, s.stop_turn]) {
            b.append_option(v);
        }
        for (b, v) in self.shares.iter_mut().zip([
            ind.role_flip_rate,
            g.word_share,
            g.lcs_share,
            ind.style_drift,
            ind.style_shift,
        ]) {
            b.append_option(v);
        }
        for (b, v) in self.flags.iter_mut().zip([
            g.leak,
            s.stop_token_used,
            s.stop_at_first_turn,
            s.max_turns_without_stop,
            ind.style_shifted,
        ]) {
            b.append_value(v);
        }
    }

    /// The per-turn arrays, in [`turn_fields`]' order.
    pub fn finish_turns(&mut self) -> Vec<ArrayRef> {
        let [q, c, f] = &mut self.style;
        vec![
            Arc::new(self.words.finish()),
            Arc::new(q.finish()),
            Arc::new(c.finish()),
            Arc::new(f.finish()),
            Arc::new(self.role_flip.finish()),
            Arc::new(self.signals.finish()),
            Arc::new(self.repeat_jaccard.finish()),
            Arc::new(self.near_duplicate.finish()),
            Arc::new(self.restart.finish()),
        ]
    }

    /// The per-dialogue arrays, in [`dialogue_fields`]' order.
    pub fn finish_dialogues(&mut self) -> Vec<ArrayRef> {
        let [flips, content, loops, restarts] = &mut self.counts;
        let [lcs, stop_turn] = &mut self.optional_counts;
        let [flip_rate, word_share, lcs_share, drift, shift] = &mut self.shares;
        let [leak, stop, first, max_turns, shifted] = &mut self.flags;
        vec![
            Arc::new(flips.finish()),
            Arc::new(flip_rate.finish()),
            Arc::new(content.finish()),
            Arc::new(word_share.finish()),
            Arc::new(lcs.finish()),
            Arc::new(lcs_share.finish()),
            Arc::new(leak.finish()),
            Arc::new(stop.finish()),
            Arc::new(stop_turn.finish()),
            Arc::new(first.finish()),
            Arc::new(max_turns.finish()),
            Arc::new(loops.finish()),
            Arc::new(restarts.finish()),
            Arc::new(drift.finish()),
            Arc::new(shift.finish()),
            Arc::new(shifted.finish()),
        ]
    }
}
