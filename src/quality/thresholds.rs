//! Every threshold and scale of the indicators, in one place (README, "Fidelity indicators", names
//! them). Changing one changes what the merge writes: bump `merge::MERGE_VERSION` with it, so that
//! existing files are rewritten, and `indicators::VERSION`, so that the indicators journal records
//! store are computed again.

/// Role flip, weak signal `length`: the inquirer's turn has at least this many characters ...
pub const ROLE_FLIP_MIN_CHARS: usize = 200;
/// ... and at least this many times the characters of the responder's reply in the same turn.
pub const ROLE_FLIP_LENGTH_RATIO: f64 = 1.0;
/// Role flip, weak signal `markdown`: at least this many list-item lines (a header, a code fence
/// or `**bold**` fire it alone).
pub const ROLE_FLIP_MIN_LIST_ITEMS: usize = 2;

/// Goal leakage: a dialogue leaks its goal when turn 1's prompt holds at least this share of the
/// goal's distinct content words ...
pub const GOAL_LEAK_WORD_SHARE: f64 = 0.8;
/// ... or shares with the goal a substring of at least this share of the goal's characters.
pub const GOAL_LEAK_LCS_SHARE: f64 = 0.5;
/// Goals with fewer content words than this are judged by the substring alone.
pub const GOAL_LEAK_MIN_CONTENT_WORDS: usize = 3;

/// Loops: the character n-gram size of the Jaccard similarity between inquirer turns.
pub const NGRAM_CHARS: usize = 3;
/// Loops: a turn whose Jaccard similarity with an earlier inquirer turn is at least this is a
/// near-duplicate.
pub const LOOP_JACCARD: f64 = 0.8;
/// Restarts: a turn after the first whose Jaccard similarity with turn 1 is at least this restates
/// the opening request (a near-duplicate of turn 1 is both a loop and a restart).
pub const RESTART_JACCARD: f64 = 0.5;
/// Bins of the one-permutation MinHash that estimates the Jaccard similarity (see
/// `indicators::Sketch`): the standard error is about `sqrt(J (1 - J) / bins)`, 0.05 at J = 0.8.
pub const MINHASH_BINS: usize = 64;

/// Persona style: word counts are scaled as `ln(1 + words) / ln(1 + STYLE_WORDS_SCALE)` (1 at
/// this many words, capped there).
pub const STYLE_WORDS_SCALE: f64 = 256.0;
/// Persona style: contractions per word are scaled by this (one in ten words saturates at 1).
pub const STYLE_CONTRACTION_SCALE: f64 = 10.0;
/// Persona style: formality is `0.5 + STYLE_FORMALITY_SCALE * (formal - informal) / words`, clamped.
pub const STYLE_FORMALITY_SCALE: f64 = 5.0;
/// Persona style: a dialogue's style shifts when the mean absolute difference between the mean
/// signatures of its first and second halves is at least this.
pub const STYLE_SHIFT: f64 = 0.25;

/// Diversity (report, compare): texts per grid cell and kind (first turns, all inquirer turns) that
/// distinct-n, MTLD and self-BLEU are computed on: the ones whose hash of (unit id, turn) is
/// smallest, a uniform, deterministic sample.
pub const DIVERSITY_SAMPLE: usize = 200;
/// MTLD's factor threshold (McCarthy and Jarvis, 2010).
pub const MTLD_TTR: f64 = 0.72;
/// Self-BLEU: n-grams up to this order, uniform weights.
pub const BLEU_MAX_N: usize = 4;
/// Self-BLEU: the numerator given to an n-gram order without a match (Chen and Cherry's
/// smoothing method 1, as NLTK's `SmoothingFunction().method1`).
pub const BLEU_EPSILON: f64 = 0.1;
