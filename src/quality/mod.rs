//! Quality of a run's dialogues, measured without a model: fidelity indicators per turn and per
//! dialogue (written by the merge as columns, summarised by the report), lexical diversity per
//! grid cell (the report), and human reference dialogues (read for `report::compare`).
//!
//! - [`text`]: the one tokenizer (lower-case words of Unicode alphanumerics and apostrophes) and
//!   the word lists;
//! - [`indicators`]: role flips, goal leakage, stopping, loops and restarts, persona style;
//! - [`diversity`]: distinct-n, MTLD and self-BLEU on bounded samples;
//! - [`reference`]: human dialogues read from JSON lines (the layouts `roleplay export` writes);
//! - [`thresholds`]: every threshold, in one place.
//!
//! Everything here but [`reference::read`] is a pure function of text: no I/O, no clock, no model.

pub mod diversity;
pub mod indicators;
pub mod reference;
pub mod text;
pub mod thresholds;

pub use indicators::{Analyzer, DialogueIndicators, GoalProfile, Signals, Stopping, TurnIndicators, stopping};
