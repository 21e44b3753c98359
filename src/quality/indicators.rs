//! Per-turn and per-dialogue fidelity indicators: pure functions of a dialogue's text (and, for
//! stopping, of its end reason), computed without a model.
//!
//! An [`Analyzer`] reads each inquirer turn once, character by character, and counts everything at
//! that pass: words and their hashes ([`super::text`]), contractions, sentences and questions,
//! formality markers, and the MinHash sketch of the turn's character 3-grams. Phrases and greetings
//! are then matched on the word hashes, Markdown on the lines, goal leakage on turn 1 alone. The
//! thresholds are in [`super::thresholds`]; README ("Fidelity indicators") gives every formula.

use super::text::{self, WordSet, fold, stop_words};
use super::thresholds::*;
use crate::dialogue::EndReason;
use crate::dialogue::record::{DialogueRecord, Indicators};
use std::sync::LazyLock;

/// Role-flip signals that fired on a turn (a bit set).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Signals(u8);

impl Signals {
    /// A phrase assistants say ("how can I help", "as an AI", "I'd be happy to", ...).
    pub const ASSISTANT_PHRASE: Signals = Signals(1);
    /// An offer instead of a request ("would you like me to", "let me explain", "here are some", ...).
    pub const OFFER: Signals = Signals(2);
    /// Markdown: a header, a code fence, `**bold**`, or at least two list items.
    pub const MARKDOWN: Signals = Signals(4);
    /// Long: at least `ROLE_FLIP_MIN_CHARS` characters and `ROLE_FLIP_LENGTH_RATIO` times the reply.
    pub const LENGTH: Signals = Signals(8);
    pub const ALL: [(Signals, &'static str); 4] = [
        (Signals::ASSISTANT_PHRASE, "assistant_phrase"),
        (Signals::OFFER, "offer"),
        (Signals::MARKDOWN, "markdown"),
        (Signals::LENGTH, "length"),
    ];

    pub fn has(self, s: Signals) -> bool {
        self.0 & s.0 != 0
    }

    pub fn set(&mut self, s: Signals) {
        self.0 |= s.0;
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// The names of the signals that fired, in [`Signals::ALL`]'s order.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        Signals::ALL
            .into_iter()
            .filter(move |(s, _)| self.has(*s))
            .map(|(_, n)| n)
    }

    /// A strong signal alone, or both weak ones.
    pub fn is_role_flip(self) -> bool {
        self.has(Signals::ASSISTANT_PHRASE)
            || self.has(Signals::OFFER)
            || (self.has(Signals::MARKDOWN) && self.has(Signals::LENGTH))
    }
}

/// A turn's style signature.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Style {
    pub words: u32,
    /// Sentences ending in `?` over sentences (0 without a sentence).
    pub question_ratio: f64,
    /// Words with an inner apostrophe over words (0 without a word).
    pub contraction_rate: f64,
    /// `0.5 + STYLE_FORMALITY_SCALE * (formal - informal) / words`, clamped to [0, 1] (0.5 without
    /// a word).
    pub formality: f64,
}

impl Style {
    /// The signature normalised to [0, 1] in every component: words (log-scaled), question ratio,
    /// contractions (scaled), formality.
    pub fn normalised(&self) -> [f64; 4] {
        [
            ((1.0 + self.words as f64).ln() / (1.0 + STYLE_WORDS_SCALE).ln()).min(1.0),
            self.question_ratio,
            (self.contraction_rate * STYLE_CONTRACTION_SCALE).min(1.0),
            self.formality,
        ]
    }
}

/// What one inquirer turn shows.
#[derive(Debug, Clone, PartialEq)]
pub struct TurnIndicators {
    pub style: Style,
    pub signals: Signals,
    pub role_flip: bool,
    /// The highest Jaccard similarity of the turn's character 3-grams with an earlier inquirer turn
    /// (`None` for turn 1).
    pub repeat_jaccard: Option<f64>,
    /// `repeat_jaccard >= LOOP_JACCARD`.
    pub near_duplicate: bool,
    /// After turn 1: Jaccard with turn 1 at least `RESTART_JACCARD`, or a greeting opens the turn.
    pub restart: bool,
}

/// How much of the goal turn 1's prompt gives away.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct GoalLeakage {
    /// Distinct content words (stop words removed) of the goal's first line.
    pub content_words: u32,
    /// Share of those found among turn 1's words (`None` without a turn or a content word).
    pub word_share: Option<f64>,
    /// Longest common substring of turn 1's prompt and the goal's first line, case-folded, in
    /// characters (`None` without a turn).
    pub lcs_chars: Option<u32>,
    /// `lcs_chars` over the goal's first line's characters (`None` without a turn or a goal).
    pub lcs_share: Option<f64>,
    /// `word_share >= GOAL_LEAK_WORD_SHARE` (for goals of at least `GOAL_LEAK_MIN_CONTENT_WORDS`
    /// content words) or `lcs_share >= GOAL_LEAK_LCS_SHARE`.
    pub leak: bool,
}

/// How the dialogue stopped, from its end reason and turns.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stopping {
    /// The inquirer ended the dialogue with the stop token.
    pub stop_token_used: bool,
    /// The (0-based, as the `turn` column) index of the inquirer turn that said the stop token:
    /// the number of completed turns.
    pub stop_turn: Option<u32>,
    /// The stop token came at the very first turn, before any exchange.
    pub stop_at_first_turn: bool,
    /// Every turn was used and the stop token never came.
    pub max_turns_without_stop: bool,
}

/// Stopping from a dialogue's end reason, its number of completed turns and the experiment's
/// `max_turns`.
pub fn stopping(reason: EndReason, turns: usize, max_turns: u32) -> Stopping {
    let stop = reason == EndReason::Stop;
    Stopping {
        stop_token_used: stop,
        stop_turn: stop.then_some(turns as u32),
        stop_at_first_turn: stop && turns == 0,
        max_turns_without_stop: !stop && (reason == EndReason::MaxTurns || turns as u32 >= max_turns),
    }
}

/// Everything about one dialogue's text.
#[derive(Debug, Clone, PartialEq)]
pub struct DialogueIndicators {
    pub turns: Vec<TurnIndicators>,
    pub role_flip_turns: u32,
    /// `role_flip_turns / turns` (`None` without a turn).
    pub role_flip_rate: Option<f64>,
    pub goal: GoalLeakage,
    /// Turns that near-duplicate an earlier one.
    pub loop_turns: u32,
    pub restart_turns: u32,
    /// Mean over consecutive turns of the mean absolute change of the normalised signature
    /// (`None` with fewer than two turns).
    pub style_drift: Option<f64>,
    /// Mean absolute difference between the mean normalised signatures of the first half of the
    /// turns (`0 .. n/2`) and the second (`n/2 .. n`) (`None` with fewer than two turns).
    pub style_shift: Option<f64>,
    /// `style_shift >= STYLE_SHIFT`.
    pub style_shifted: bool,
}

/// Bumped with any change to what the indicators compute (a formula, a threshold, a word list,
/// the tokenizer): indicators that a record stores from another version are computed again.
pub const VERSION: u32 = 1;

impl DialogueIndicators {
    /// The form a dialogue's record stores (`None` if a value is not finite: JSON has no such
    /// number, and the merge then computes them itself).
    pub fn to_record(&self) -> Option<Indicators> {
        let t = &self.turns;
        let r = Indicators {
            version: VERSION,
            words: t.iter().map(|t| t.style.words).collect(),
            question_ratio: t.iter().map(|t| t.style.question_ratio).collect(),
            contraction_rate: t.iter().map(|t| t.style.contraction_rate).collect(),
            formality: t.iter().map(|t| t.style.formality).collect(),
            signals: t.iter().map(|t| t.signals.0).collect(),
            repeat_jaccard: t.iter().map(|t| t.repeat_jaccard).collect(),
            restart: t.iter().map(|t| t.restart).collect(),
            goal_content_words: self.goal.content_words,
            goal_word_share: self.goal.word_share,
            goal_lcs_chars: self.goal.lcs_chars,
            goal_lcs_share: self.goal.lcs_share,
            goal_leak: self.goal.leak,
            style_drift: self.style_drift,
            style_shift: self.style_shift,
        };
        let finite = r
            .question_ratio
            .iter()
            .chain(&r.contraction_rate)
            .chain(&r.formality)
            .copied()
            .chain(r.repeat_jaccard.iter().flatten().copied())
            .chain(
                [r.goal_word_share, r.goal_lcs_share, r.style_drift, r.style_shift]
                    .into_iter()
                    .flatten(),
            )
            .all(f64::is_finite);
        finite.then_some(r)
    }

    /// The indicators a record stores, with what follows from them derived as
    /// [`Analyzer::dialogue`] derives it; `None` unless they are of this [`VERSION`] and of
    /// `turns` turns.
    pub fn from_record(r: &Indicators, turns: usize) -> Option<DialogueIndicators> {
        let lens = [
            r.words.len(),
            r.question_ratio.len(),
            r.contraction_rate.len(),
            r.formality.len(),
            r.signals.len(),
            r.repeat_jaccard.len(),
            r.restart.len(),
        ];
        if r.version != VERSION || lens.iter().any(|n| *n != turns) {
            return None;
        }
        let turns = (0..turns)
            .map(|k| {
                let style = Style {
                    words: r.words[k],
                    question_ratio: r.question_ratio[k],
                    contraction_rate: r.contraction_rate[k],
                    formality: r.formality[k],
                };
                TurnIndicators::new(style, Signals(r.signals[k]), r.repeat_jaccard[k], r.restart[k])
            })
            .collect();
        let goal = GoalLeakage {
            content_words: r.goal_content_words,
            word_share: r.goal_word_share,
            lcs_chars: r.goal_lcs_chars,
            lcs_share: r.goal_lcs_share,
            leak: r.goal_leak,
        };
        Some(DialogueIndicators::assemble(turns, goal, r.style_drift, r.style_shift))
    }

    /// From its turns and the dialogue-wide measures, with the counts, the rate and
    /// `style_shifted` derived (the one place they are: [`Analyzer::dialogue`] and
    /// [`DialogueIndicators::from_record`] both come here).
    fn assemble(
        turns: Vec<TurnIndicators>,
        goal: GoalLeakage,
        style_drift: Option<f64>,
        style_shift: Option<f64>,
    ) -> DialogueIndicators {
        let count = |f: fn(&TurnIndicators) -> bool| turns.iter().filter(|t| f(t)).count() as u32;
        let role_flip_turns = count(|t| t.role_flip);
        DialogueIndicators {
            role_flip_turns,
            role_flip_rate: (!turns.is_empty()).then(|| role_flip_turns as f64 / turns.len() as f64),
            goal,
            loop_turns: count(|t| t.near_duplicate),
            restart_turns: count(|t| t.restart),
            style_drift,
            style_shift,
            style_shifted: style_shift.is_some_and(|s| s >= STYLE_SHIFT),
            turns,
        }
    }
}

impl TurnIndicators {
    /// From what was measured of the turn, with `role_flip` and `near_duplicate` derived.
    fn new(style: Style, signals: Signals, repeat_jaccard: Option<f64>, restart: bool) -> TurnIndicators {
        TurnIndicators {
            style,
            signals,
            role_flip: signals.is_role_flip(),
            repeat_jaccard,
            near_duplicate: repeat_jaccard.is_some_and(|j| j >= LOOP_JACCARD),
            restart,
        }
    }
}

/// The goal side of goal leakage, computed once per goal: its first line's content words and a
/// suffix automaton of its case-folded characters.
#[derive(Debug, Clone)]
pub struct GoalProfile {
    content: WordSet,
    automaton: Lcs,
}

impl GoalProfile {
    /// From a goal's text: its first line (trimmed) is what the inquirer is given at turn 1.
    pub fn new(goal_text: &str) -> GoalProfile {
        let first = goal_text.lines().next().unwrap_or("").trim();
        let mut content = Vec::new();
        text::for_each_word(first, |w| {
            if !stop_words().contains(w.hash) {
                content.push(w.hash);
            }
        });
        GoalProfile {
            content: WordSet::of_hashes(content),
            automaton: Lcs::new(first),
        }
    }

    pub fn content_words(&self) -> usize {
        self.content.len()
    }

    /// Goal leakage of a first turn's prompt.
    pub fn leakage(&self, prompt_words: &[u64], prompt: &str) -> GoalLeakage {
        let n = self.content.len();
        let mut found = vec![false; n];
        for h in prompt_words {
            if let Some(i) = self.content.position(*h) {
                found[i] = true;
            }
        }
        let found = found.iter().filter(|f| **f).count();
        let word_share = (n > 0).then(|| found as f64 / n as f64);
        let lcs = self.automaton.longest_common(prompt) as u32;
        let lcs_share = (self.automaton.chars > 0).then(|| lcs as f64 / self.automaton.chars as f64);
        GoalLeakage {
            content_words: n as u32,
            word_share,
            lcs_chars: Some(lcs),
            lcs_share,
            leak: (n >= GOAL_LEAK_MIN_CONTENT_WORDS && word_share.is_some_and(|s| s >= GOAL_LEAK_WORD_SHARE))
                || lcs_share.is_some_and(|s| s >= GOAL_LEAK_LCS_SHARE),
        }
    }
}

/// The longest common substring of a fixed text and others, in characters, case-folded: a suffix
/// automaton of the fixed text (O(length) states, dense transitions over its own alphabet) walked
/// by the other text in one pass.
#[derive(Debug, Clone)]
struct Lcs {
    /// ASCII character -> alphabet index (`NO_CHAR` when absent).
    ascii: [u8; 128],
    /// Other characters, sorted, with their index.
    other: Vec<(char, u8)>,
    k: usize,
    next: Vec<u32>,
    link: Vec<u32>,
    len: Vec<u32>,
    /// The automaton as the walk reads it: per state a row of `k + 2` words, the transitions (as
    /// row offsets), the suffix link's row offset and the state's length; no multiplication and
    /// one array per step.
    rows: Vec<u32>,
    chars: usize,
}

const NONE: u32 = u32::MAX;
const NO_CHAR: u8 = u8::MAX;

impl Lcs {
    fn new(s: &str) -> Lcs {
        // A goal line is a sentence or two; one longer than this is read up to here (the rows
        // stay small and their offsets within 32 bits).
        const MAX_CHARS: usize = 20_000;
        let folded: Vec<char> = s.chars().take(MAX_CHARS).map(fold).collect();
        let mut alphabet: Vec<char> = folded.clone();
        alphabet.sort_unstable();
        alphabet.dedup();
        // An alphabet larger than 254 characters keeps its first 254 (a goal in a script with
        // that many distinct letters in one line is not expected; the rest then never match).
        alphabet.truncate(254);
        let mut a = Lcs {
            ascii: [NO_CHAR; 128],
            other: Vec::new(),
            k: alphabet.len().max(1),
            next: Vec::new(),
            link: vec![NONE],
            len: vec![0],
            rows: Vec::new(),
            chars: folded.len(),
        };
        for (i, c) in alphabet.iter().enumerate() {
            if c.is_ascii() {
                a.ascii[*c as usize] = i as u8;
            } else {
                a.other.push((*c, i as u8));
            }
        }
        a.next = vec![NONE; a.k];
        let mut last = 0u32;
        for c in folded {
            let Some(x) = a.index(c) else { continue };
            last = a.extend(last, x);
        }
        let (k, w) = (a.k, a.k + 2);
        a.rows = Vec::with_capacity(a.len.len() * w);
        for q in 0..a.len.len() {
            a.rows.extend(
                a.next[q * k..(q + 1) * k]
                    .iter()
                    .map(|t| if *t == NONE { NONE } else { t * w as u32 }),
            );
            let link = a.link[q];
            a.rows.push(if link == NONE { NONE } else { link * w as u32 });
            a.rows.push(a.len[q]);
        }
        a.next = Vec::new();
        a.link = Vec::new();
        a.len = Vec::new();
        a
    }

    #[inline]
    fn index(&self, c: char) -> Option<usize> {
        let i = if c.is_ascii() {
            self.ascii[c as usize]
        } else {
            self.other
                .binary_search_by(|(k, _)| k.cmp(&c))
                .map(|p| self.other[p].1)
                .unwrap_or(NO_CHAR)
        };
        (i != NO_CHAR).then_some(i as usize)
    }

    fn new_state(&mut self, len: u32, link: u32, copy_from: Option<u32>) -> u32 {
        let id = self.len.len() as u32;
        self.len.push(len);
        self.link.push(link);
        match copy_from {
            Some(q) => {
                let (s, k) = (q as usize * self.k, self.k);
                self.next.extend_from_within(s..s + k);
            }
            None => self.next.extend(std::iter::repeat_n(NONE, self.k)),
        }
        id
    }

    /// The classic online construction (Blumer et al., 1985).
    fn extend(&mut self, last: u32, x: usize) -> u32 {
        let k = self.k;
        let cur = self.new_state(self.len[last as usize] + 1, NONE, None);
        let mut p = last;
        while p != NONE && self.next[p as usize * k + x] == NONE {
            self.next[p as usize * k + x] = cur;
            p = self.link[p as usize];
        }
        if p == NONE {
            self.link[cur as usize] = 0;
            return cur;
        }
        let q = self.next[p as usize * k + x];
        if self.len[p as usize] + 1 == self.len[q as usize] {
            self.link[cur as usize] = q;
            return cur;
        }
        let clone = self.new_state(self.len[p as usize] + 1, self.link[q as usize], Some(q));
        while p != NONE && self.next[p as usize * k + x] == q {
            self.next[p as usize * k + x] = clone;
            p = self.link[p as usize];
        }
        self.link[q as usize] = clone;
        self.link[cur as usize] = clone;
        cur
    }

    /// The length in characters of the longest substring of `t` (case-folded) in the fixed text.
    fn longest_common(&self, t: &str) -> usize {
        if t.is_ascii() {
            return self.walk(t.bytes().map(|b| self.ascii[b.to_ascii_lowercase() as usize]));
        }
        self.walk(t.chars().map(|c| self.index(fold(c)).map_or(NO_CHAR, |x| x as u8)))
    }

    /// Walk the automaton with alphabet indices (`NO_CHAR` for a character the text lacks).
    #[inline]
    fn walk(&self, indices: impl Iterator<Item = u8>) -> usize {
        let (k, rows) = (self.k, &self.rows);
        // `v` is the current state's row offset; at the root (0) the matched length is 0.
        let (mut v, mut l, mut best) = (0usize, 0u32, 0u32);
        for x in indices {
            if x == NO_CHAR {
                v = 0;
                l = 0;
                continue;
            }
            let x = x as usize;
            loop {
                let t = rows[v + x];
                if t != NONE {
                    v = t as usize;
                    l += 1;
                    break;
                }
                if v == 0 {
                    l = 0;
                    break;
                }
                v = rows[v + k] as usize;
                l = rows[v + k + 1];
            }
            best = best.max(l);
        }
        best as usize
    }
}

/// One-permutation MinHash (Li, Owen and Zhang, 2012) of a set of hashed character n-grams: the
/// hash's top bits pick one of `MINHASH_BINS` bins, which keeps the smallest of its top 31 bits.
/// The Jaccard similarity of two sets is estimated as the share of equal bins among the bins that
/// are filled in either: exact while no bin holds two n-grams (short texts), a standard error of
/// about `sqrt(J (1 - J) / MINHASH_BINS)` beyond.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sketch([u32; MINHASH_BINS]);

const EMPTY_BIN: u32 = u32::MAX;

impl Default for Sketch {
    fn default() -> Sketch {
        Sketch([EMPTY_BIN; MINHASH_BINS])
    }
}

impl Sketch {
    /// The hash's top bits pick the bin; its top 31 bits are the value (never `EMPTY_BIN`).
    #[inline]
    pub fn add(&mut self, h: u64) {
        const SHIFT: u32 = 64 - MINHASH_BINS.trailing_zeros();
        let bin = (h >> SHIFT) as usize;
        // The top 31 bits (the bin's among them: constant within a bin, so harmless).
        let v = (h >> 33) as u32;
        let slot = &mut self.0[bin];
        *slot = (*slot).min(v);
    }

    /// The estimated Jaccard similarity; two empty sets are identical (1).
    pub fn jaccard(&self, other: &Sketch) -> f64 {
        let (mut equal, mut filled) = (0u32, 0u32);
        for (a, b) in self.0.iter().zip(&other.0) {
            let any = (*a != EMPTY_BIN) | (*b != EMPTY_BIN);
            filled += any as u32;
            equal += (any & (a == b)) as u32;
        }
        if filled == 0 { 1.0 } else { equal as f64 / filled as f64 }
    }

    /// The sketch of a text's character n-grams, as the analyzer computes it.
    pub fn of(text: &str) -> Sketch {
        let mut g = Grams::default();
        for c in text.chars() {
            g.push(fold(c));
        }
        g.finish()
    }
}

/// Character n-grams (`NGRAM_CHARS`) of a text, lower-cased, with whitespace runs read as one
/// space and leading and trailing whitespace left out, fed to a [`Sketch`]. A text shorter than
/// one n-gram is one n-gram of its own. The last n characters are packed 21 bits each (a code
/// point's width) into one word.
#[derive(Debug, Default)]
struct Grams {
    window: u64,
    seen: usize,
    space: bool,
    sketch: Sketch,
}

const _: () = assert!(NGRAM_CHARS >= 1 && NGRAM_CHARS <= 3, "n-grams are packed into 63 bits");
const GRAM_MASK: u64 = u64::MAX >> (64 - 21 * NGRAM_CHARS as u32);

/// A shift-xor and one multiplication: the top bits pick the bin, the next 31 the value;
/// independent from one character to the next (no dependency chain). (The multiplication alone
/// maps n-grams that differ by a constant, such as `abc`, `bcd`, `cde`, to an arithmetic
/// progression: the shift-xor breaks that.)
#[inline]
fn gram_hash(w: u64) -> u64 {
    (w ^ (w >> 29)).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

impl Grams {
    #[inline]
    fn push(&mut self, c: char) {
        if c.is_whitespace() {
            self.space = self.seen > 0;
            return;
        }
        if self.space {
            self.space = false;
            self.shift(' ' as u64);
        }
        self.shift(c as u64);
    }

    #[inline]
    fn shift(&mut self, c: u64) {
        self.window = ((self.window << 21) | c) & GRAM_MASK;
        self.seen += 1;
        if self.seen >= NGRAM_CHARS {
            self.sketch.add(gram_hash(self.window));
        }
    }

    fn finish(mut self) -> Sketch {
        if (1..NGRAM_CHARS).contains(&self.seen) {
            self.sketch.add(gram_hash(self.window | 1 << 63));
        }
        self.sketch
    }
}

/// Word lists, as hashes.
struct Lists {
    formal: WordSet,
    informal: WordSet,
    /// Every word any list or phrase starts with: the one filter a word goes through.
    any: WordSet,
    /// Phrases (word hash sequences) with their signal, sorted by first word.
    phrases: Vec<(Vec<u64>, Signals)>,
    phrase_first: WordSet,
    greetings: Vec<Vec<u64>>,
    greeting_first: WordSet,
}

/// Phrases assistants say. Matched as whole-word sequences, after the tokenizer (so `I’d` is `i'd`).
pub const ASSISTANT_PHRASES: &[&str] = &[
    "how can i help",
    "how may i help",
    "how can i assist",
    "how may i assist",
    "what can i do for you",
    "as an ai",
    "as a language model",
    "as an assistant",
    "i'm an ai",
    "i am an ai",
    "i'd be happy to",
    "i would be happy to",
    "i'd be glad to",
    "i would be glad to",
    "i'm happy to help",
    "happy to help",
    "glad to help",
    "i hope this helps",
    "hope this helps",
    "let me know if you have",
    "let me know if you need",
    "feel free to ask",
    "feel free to reach out",
    "is there anything else",
    "anything else i can",
    "great question",
    "i understand your concern",
    "certainly here",
    "sure here's",
    "sure here is",
    "of course here",
];

/// Offers instead of requests.
pub const OFFER_PHRASES: &[&str] = &[
    "would you like me to",
    "do you want me to",
    "shall i",
    "i can help you",
    "i can help with",
    "i can provide",
    "i can offer",
    "i can assist",
    "i can give you",
    "let me help",
    "let me explain",
    "let me provide",
    "let me walk you",
    "allow me to",
    "i'll help you",
    "i will help you",
    "here are some",
    "here's how",
    "here is how",
    "here's a",
    "i recommend",
    "i'd recommend",
    "i would recommend",
    "i suggest",
    "i'd suggest",
    "i would suggest",
    "you might want to",
    "you could try",
    "you can try",
    "you should try",
];

/// Words that mark a formal register.
pub const FORMAL_MARKERS: &[&str] = &[
    "please",
    "kindly",
    "would",
    "could",
    "appreciate",
    "appreciated",
    "regards",
    "sincerely",
    "dear",
    "furthermore",
    "moreover",
    "therefore",
    "thus",
    "however",
    "additionally",
    "consequently",
    "regarding",
    "concerning",
    "assistance",
    "inquire",
    "require",
    "request",
    "shall",
    "whom",
    "comprehensive",
];

/// Words that mark an informal register.
pub const INFORMAL_MARKERS: &[&str] = &[
    "hey", "hi", "yeah", "yep", "nope", "ok", "okay", "gonna", "wanna", "gotta", "lol", "btw", "thx", "pls", "plz",
    "u", "ur", "cool", "awesome", "stuff", "kinda", "sorta", "dunno", "omg", "ya", "yo", "hmm", "um", "uh", "haha",
    "idk",
];

/// Openings of a turn that start a conversation over.
pub const GREETINGS: &[&str] = &[
    "hi",
    "hello",
    "hey",
    "greetings",
    "good morning",
    "good afternoon",
    "good evening",
    "dear",
    "howdy",
];

fn phrase(p: &str) -> Vec<u64> {
    let mut v = Vec::new();
    text::word_hashes(p, &mut v);
    v
}

static LISTS: LazyLock<Lists> = LazyLock::new(|| {
    let mut phrases: Vec<(Vec<u64>, Signals)> = ASSISTANT_PHRASES
        .iter()
        .map(|p| (phrase(p), Signals::ASSISTANT_PHRASE))
        .chain(OFFER_PHRASES.iter().map(|p| (phrase(p), Signals::OFFER)))
        .collect();
    phrases.sort_by_key(|(p, _)| p[0]);
    let greetings: Vec<Vec<u64>> = GREETINGS.iter().map(|g| phrase(g)).collect();
    let phrase_first = WordSet::of_hashes(phrases.iter().map(|(p, _)| p[0]));
    let greeting_first = WordSet::of_hashes(greetings.iter().map(|g| g[0]));
    let formal = WordSet::new(FORMAL_MARKERS.iter().copied());
    let informal = WordSet::new(INFORMAL_MARKERS.iter().copied());
    let any = WordSet::of_hashes(
        phrases.iter().map(|(p, _)| p[0]).chain(
            FORMAL_MARKERS
                .iter()
                .chain(INFORMAL_MARKERS)
                .map(|w| text::hash_word(w)),
        ),
    );
    Lists {
        formal,
        informal,
        any,
        phrases,
        phrase_first,
        greetings,
        greeting_first,
    }
});

/// What one pass over a turn's text counted.
#[derive(Debug, Default, PartialEq)]
struct Scan {
    chars: usize,
    words: u32,
    contractions: u32,
    sentences: u32,
    questions: u32,
    formal: u32,
    informal: u32,
    sketch: Sketch,
}

/// Reusable buffers: one per thread that computes indicators (the merge's batch builder, the
/// report), so that a dialogue costs no allocation but its result.
#[derive(Debug, Default)]
pub struct Analyzer {
    words: Vec<u64>,
    sketches: Vec<Sketch>,
    styles: Vec<[f64; 4]>,
}

impl Analyzer {
    pub fn new() -> Analyzer {
        Analyzer::default()
    }

    /// The indicators of one dialogue: `turns` are (inquirer prompt, responder reply) in order.
    pub fn dialogue<'a>(
        &mut self,
        goal: &GoalProfile,
        turns: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> DialogueIndicators {
        let lists = &*LISTS;
        self.sketches.clear();
        self.styles.clear();
        let mut out_turns = Vec::new();
        let mut leakage = GoalLeakage {
            content_words: goal.content_words() as u32,
            ..GoalLeakage::default()
        };
        for (k, (inquirer, responder)) in turns.into_iter().enumerate() {
            self.words.clear();
            let s = scan(inquirer, &mut self.words, lists);
            let mut signals = Signals::default();
            phrases(&self.words, lists, &mut signals);
            if markdown(inquirer) {
                signals.set(Signals::MARKDOWN);
            }
            if s.chars >= ROLE_FLIP_MIN_CHARS
                && s.chars as f64 >= ROLE_FLIP_LENGTH_RATIO * responder.chars().count() as f64
            {
                signals.set(Signals::LENGTH);
            }
            let style = Style {
                words: s.words,
                question_ratio: if s.sentences > 0 {
                    s.questions as f64 / s.sentences as f64
                } else {
                    0.0
                },
                contraction_rate: if s.words > 0 {
                    s.contractions as f64 / s.words as f64
                } else {
                    0.0
                },
                formality: if s.words > 0 {
                    (0.5 + STYLE_FORMALITY_SCALE * (s.formal as f64 - s.informal as f64) / s.words as f64)
                        .clamp(0.0, 1.0)
                } else {
                    0.5
                },
            };
            let (mut repeat, mut restart) = (None, false);
            if k == 0 {
                leakage = goal.leakage(&self.words, inquirer);
            } else {
                let best = self.sketches.iter().map(|e| e.jaccard(&s.sketch)).fold(0.0, f64::max);
                repeat = Some(best);
                restart = self.sketches[0].jaccard(&s.sketch) >= RESTART_JACCARD || greeting(&self.words, lists);
            }
            self.sketches.push(s.sketch);
            self.styles.push(style.normalised());
            out_turns.push(TurnIndicators::new(style, signals, repeat, restart));
        }
        let n = out_turns.len();
        let (mut style_drift, mut style_shift) = (None, None);
        if n >= 2 {
            let dist = |a: &[f64; 4], b: &[f64; 4]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f64>() / 4.0;
            let drift = self.styles.windows(2).map(|w| dist(&w[0], &w[1])).sum::<f64>() / (n - 1) as f64;
            let mean = |s: &[[f64; 4]]| {
                let mut m = [0.0; 4];
                for v in s {
                    for (a, b) in m.iter_mut().zip(v) {
                        *a += b / s.len() as f64;
                    }
                }
                m
            };
            let shift = dist(&mean(&self.styles[..n / 2]), &mean(&self.styles[n / 2..]));
            style_drift = Some(drift);
            style_shift = Some(shift);
        }
        DialogueIndicators::assemble(out_turns, leakage, style_drift, style_shift)
    }
}

impl Analyzer {
    /// A finished dialogue's indicators: the ones its record stores
    /// ([`DialogueIndicators::from_record`]), or else computed against `goal()`'s profile.
    pub fn record<'g>(&mut self, goal: impl FnOnce() -> &'g GoalProfile, r: &DialogueRecord) -> DialogueIndicators {
        if let Some(d) = r
            .indicators
            .as_ref()
            .and_then(|i| DialogueIndicators::from_record(i, r.turns.len()))
        {
            return d;
        }
        self.dialogue(
            goal(),
            r.turns.iter().map(|t| (t.prompt.as_str(), t.responder.output.as_str())),
        )
    }
}

/// The indicators of one dialogue from its goal's text (builds the goal's profile: when many
/// dialogues share a goal, build a [`GoalProfile`] once and use [`Analyzer::dialogue`]).
pub fn dialogue<'a>(goal_text: &str, turns: impl IntoIterator<Item = (&'a str, &'a str)>) -> DialogueIndicators {
    Analyzer::new().dialogue(&GoalProfile::new(goal_text), turns)
}

/// One pass over a turn: words (their hashes into `words`), contractions, sentences, questions,
/// formality markers, characters and the n-gram sketch. ASCII text goes byte by byte.
fn scan(t: &str, words: &mut Vec<u64>, lists: &Lists) -> Scan {
    if t.is_ascii() {
        scan_ascii(t.as_bytes(), words, lists)
    } else {
        scan_chars(t, words, lists)
    }
}

#[inline]
fn count_word(s: &mut Scan, words: &mut Vec<u64>, lists: &Lists, word: text::Word) {
    s.words += 1;
    s.contractions += word.contraction as u32;
    words.push(word.hash);
    if lists.any.may_contain(word.hash) {
        if lists.formal.contains(word.hash) {
            s.formal += 1;
        } else if lists.informal.contains(word.hash) {
            s.informal += 1;
        }
    }
}

/// Sentences: a run of `.`, `!`, `?` (closing quotes and brackets may follow) ended by whitespace
/// or by the end of the text closes one if a word came since the last; it is a question when the
/// run holds a `?`. Text after the last run is one more sentence.
#[derive(Default)]
struct Sentences {
    in_run: bool,
    question: bool,
    content: bool,
}

impl Sentences {
    #[inline]
    fn terminator(&mut self, question: bool) {
        self.in_run = true;
        self.question |= question;
    }

    #[inline]
    fn space(&mut self, s: &mut Scan) {
        if self.in_run && self.content {
            s.sentences += 1;
            s.questions += self.question as u32;
            self.content = false;
        }
    }

    #[inline]
    fn other(&mut self, closer: bool, word: bool) {
        if !closer {
            self.in_run = false;
            self.question = false;
        }
        self.content |= word;
    }

    fn finish(&self, s: &mut Scan) {
        if self.content {
            s.sentences += 1;
            s.questions += (self.in_run && self.question) as u32;
        }
    }
}

/// The byte-wise scan of ASCII text, a word at a time (the inner loop over a word's bytes is the
/// hot path and branches only at the word's end); the n-grams are rolled in the same pass.
fn scan_ascii(b: &[u8], words: &mut Vec<u64>, lists: &Lists) -> Scan {
    use text::{APOSTROPHE, CLASS, CLOSER, SPACE, TERMINATOR, WORD};
    let mut s = Scan {
        chars: b.len(),
        ..Scan::default()
    };
    let mut sentences = Sentences::default();
    // N-grams: lower-cased, whitespace runs as one space, none at either end.
    let mut window = 0u64;
    let mut seen = 0u32;
    let mut space = false;
    let mut sketch = Sketch::default();
    macro_rules! gram {
        ($c:expr) => {{
            window = ((window << 21) | $c as u64) & GRAM_MASK;
            seen += 1;
            if seen >= NGRAM_CHARS as u32 {
                sketch.add(gram_hash(window));
            }
        }};
    }
    let n = b.len();
    let mut i = 0;
    while i < n {
        let c = b[i];
        let cls = CLASS[c as usize];
        if cls & WORD != 0 {
            if space {
                space = false;
                gram!(b' ');
            }
            let start = i;
            let mut apostrophe = false;
            let mut c = c;
            loop {
                if seen + 1 >= NGRAM_CHARS as u32 {
                    // The window is full: every byte of the run makes an n-gram.
                    loop {
                        window = ((window << 21) | (c | 0x20) as u64) & GRAM_MASK;
                        sketch.add(gram_hash(window));
                        seen += 1;
                        i += 1;
                        if i == n {
                            break;
                        }
                        c = b[i];
                        if CLASS[c as usize] & WORD == 0 {
                            break;
                        }
                    }
                } else {
                    gram!(c | 0x20);
                    i += 1;
                    if i < n {
                        c = b[i];
                        if CLASS[c as usize] & WORD != 0 {
                            continue;
                        }
                    }
                }
                if i == n {
                    break;
                }
                if CLASS[c as usize] & APOSTROPHE == 0 {
                    break;
                }
                // Apostrophes join the word only when a word character follows them.
                let mut j = i;
                while j < n && b[j] == b'\'' {
                    j += 1;
                }
                if j == n || CLASS[b[j] as usize] & WORD == 0 {
                    break;
                }
                apostrophe = true;
                while i < j {
                    gram!(b'\'');
                    i += 1;
                }
                c = b[i];
            }
            let word = text::Word {
                hash: text::ascii_word_hash_in(b, start, i, apostrophe),
                contraction: apostrophe,
                start,
                end: i,
            };
            count_word(&mut s, words, lists, word);
            sentences.other(false, true);
            continue;
        }
        if cls & SPACE != 0 {
            space = seen > 0;
            sentences.space(&mut s);
        } else {
            if space {
                space = false;
                gram!(b' ');
            }
            gram!(c.to_ascii_lowercase());
            if cls & TERMINATOR != 0 {
                sentences.terminator(c == b'?');
            } else {
                sentences.other(cls & CLOSER != 0, false);
            }
        }
        i += 1;
    }
    sentences.finish(&mut s);
    if (1..NGRAM_CHARS as u32).contains(&seen) {
        sketch.add(gram_hash(window | 1 << 63));
    }
    s.sketch = sketch;
    s
}

fn scan_chars(t: &str, words: &mut Vec<u64>, lists: &Lists) -> Scan {
    let mut s = Scan::default();
    let mut w = text::Words::default();
    let mut grams = Grams::default();
    let mut sentences = Sentences::default();
    for (pos, raw) in t.char_indices() {
        s.chars += 1;
        let c = fold(raw);
        if let Some(word) = w.step(c, pos, raw.len_utf8()) {
            count_word(&mut s, words, lists, word);
        }
        grams.push(c);
        if c.is_whitespace() {
            sentences.space(&mut s);
        } else if matches!(c, '.' | '!' | '?') {
            sentences.terminator(c == '?');
        } else {
            sentences.other(matches!(c, '"' | '\'' | ')'), text::is_word_char(c));
        }
    }
    if let Some(word) = w.finish() {
        count_word(&mut s, words, lists, word);
    }
    sentences.finish(&mut s);
    s.sketch = grams.finish();
    s
}

/// Set the phrase signals found among a turn's words.
fn phrases(words: &[u64], lists: &Lists, signals: &mut Signals) {
    for i in 0..words.len() {
        if !lists.phrase_first.contains(words[i]) {
            continue;
        }
        let from = lists.phrases.partition_point(|(p, _)| p[0] < words[i]);
        for (p, signal) in lists.phrases[from..].iter().take_while(|(p, _)| p[0] == words[i]) {
            if words[i..].starts_with(p) {
                signals.set(*signal);
            }
        }
    }
}

/// The turn opens with a greeting.
fn greeting(words: &[u64], lists: &Lists) -> bool {
    words.first().is_some_and(|w| lists.greeting_first.contains(*w))
        && lists.greetings.iter().any(|g| words.starts_with(g))
}

/// Markdown: a code fence, a header, `**bold**`, or `ROLE_FLIP_MIN_LIST_ITEMS` list-item lines.
pub fn markdown(t: &str) -> bool {
    let b = t.as_bytes();
    if b.contains(&b'*') && t.matches("**").nth(1).is_some() {
        return true;
    }
    let mut items = 0;
    for line in t.split('\n') {
        let l = line.trim_start_matches([' ', '\t']);
        let lb = l.as_bytes();
        let Some(&first) = lb.first() else { continue };
        match first {
            b'`' | b'~' if l.starts_with("```") || l.starts_with("~~~") => return true,
            b'#' => {
                let hashes = lb.iter().take_while(|&&c| c == b'#').count();
                if hashes <= 6 && lb.get(hashes) == Some(&b' ') {
                    return true;
                }
            }
            b'-' | b'*' | b'+' if lb.get(1) == Some(&b' ') => items += 1,
            b'0'..=b'9' => {
                let digits = lb.iter().take_while(|c| c.is_ascii_digit()).count();
                if digits <= 3 && matches!(lb.get(digits), Some(b'.' | b')')) && lb.get(digits + 1) == Some(&b' ') {
                    items += 1;
                }
            }
            _ if l.starts_with("• ") => items += 1,
            _ => {}
        }
        if items >= ROLE_FLIP_MIN_LIST_ITEMS {
            return true;
        }
    }
    false
}

#[cfg(test)]
mod tests;
