//! The tokenizer every indicator and diversity measure shares, and the word lists they look up.
//!
//! **Words** are maximal runs of Unicode alphanumerics (`char::is_alphanumeric`) and apostrophes,
//! lower-cased, with the right single quotation mark `’` read as `'`, apostrophes at either end of a
//! run dropped and a run of apostrophes inside a word read as one: `"Don’t STOP—it's 3.5km!"` is
//! `don't`, `stop`, `it's`, `3`, `5km`. Lower-casing takes the first character of
//! `char::to_lowercase` (exact for every letter but a handful, such as `İ`).
//!
//! Words are handled as 64-bit hashes of their characters ([`hash_word`]): a collision between two
//! of the few thousand distinct words of a text or a cell is about one chance in 10^12, and
//! hashing the characters as they are read is what keeps the indicators cheap.

/// The characters of one word are mixed into a hash with these (FxHash's multiplier, then
/// MurmurHash3's finaliser for well-spread bits).
const SEED: u64 = 0xcbf2_9ce4_8422_2325;
const MUL: u64 = 0x517c_c1b7_2722_0a95;

/// Lower-case `c` (the first character of its lower-case mapping), with `’` read as `'`.
#[inline]
pub fn fold(c: char) -> char {
    if c.is_ascii() {
        c.to_ascii_lowercase()
    } else if c == '\u{2019}' {
        '\''
    } else {
        c.to_lowercase().next().unwrap_or(c)
    }
}

/// A character that words are made of (apostrophes are handled apart).
#[inline]
pub fn is_word_char(c: char) -> bool {
    if c.is_ascii() {
        c.is_ascii_alphanumeric()
    } else {
        c.is_alphanumeric()
    }
}

#[inline]
fn mix(h: u64, c: char) -> u64 {
    (h.rotate_left(5) ^ c as u64).wrapping_mul(MUL)
}

/// MurmurHash3's 64-bit finaliser.
#[inline]
pub fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A word that ended: its hash, whether it holds an apostrophe (a contraction such as `don't`,
/// or a possessive), and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Word {
    pub hash: u64,
    pub contraction: bool,
    pub start: usize,
    pub end: usize,
}

/// The tokenizer as a state machine fed one (already folded) character at a time, so that the
/// indicators read a text once for everything they count.
#[derive(Debug, Default, Clone)]
pub struct Words {
    h: u64,
    chars: u32,
    pending_apostrophe: bool,
    contraction: bool,
    start: usize,
    end: usize,
}

impl Words {
    /// Feed the folded character `c` found at byte `pos` (`len` bytes long in the text); returns
    /// the word that `c` ended, if any.
    #[inline]
    pub fn step(&mut self, c: char, pos: usize, len: usize) -> Option<Word> {
        if is_word_char(c) {
            if self.chars == 0 {
                self.h = SEED;
                self.start = pos;
                self.contraction = false;
            } else if self.pending_apostrophe {
                self.h = mix(self.h, '\'');
                self.contraction = true;
            }
            self.pending_apostrophe = false;
            self.h = mix(self.h, c);
            self.chars += 1;
            self.end = pos + len;
            None
        } else if c == '\'' {
            // Inside a word it may join two parts; at either end it is dropped.
            self.pending_apostrophe = self.chars > 0;
            None
        } else {
            self.finish()
        }
    }

    /// End the text: the last word, if one is open.
    #[inline]
    pub fn finish(&mut self) -> Option<Word> {
        self.pending_apostrophe = false;
        if self.chars == 0 {
            return None;
        }
        self.chars = 0;
        Some(Word {
            hash: fmix(self.h),
            contraction: self.contraction,
            start: self.start,
            end: self.end,
        })
    }
}

/// Call `f` with every word of `text`, in order.
pub fn for_each_word(text: &str, mut f: impl FnMut(Word)) {
    let mut w = Words::default();
    for (pos, c) in text.char_indices() {
        if let Some(word) = w.step(fold(c), pos, c.len_utf8()) {
            f(word);
        }
    }
    if let Some(word) = w.finish() {
        f(word);
    }
}

/// The words of `text` as strings (for tests and messages; the measures use [`word_hashes`]).
pub fn words(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    for_each_word(text, |w| {
        let mut s = String::with_capacity(w.end - w.start);
        let mut apostrophe = false;
        for c in text[w.start..w.end].chars().map(fold) {
            if c == '\'' {
                apostrophe = true;
            } else if is_word_char(c) {
                if apostrophe {
                    s.push('\'');
                }
                apostrophe = false;
                s.push(c);
            } else {
                // Cannot happen inside a word's range; kept total.
                apostrophe = false;
            }
        }
        out.push(s);
    });
    out
}

/// Append the hashes of the words of `text` to `out`.
pub fn word_hashes(text: &str, out: &mut Vec<u64>) {
    for_each_word(text, |w| out.push(w.hash));
}

/// The hash of one word, as the tokenizer computes it (`hash_word("Don't") == hash_word("don’t")`).
pub fn hash_word(word: &str) -> u64 {
    let mut h = None;
    for_each_word(word, |w| {
        h.get_or_insert(w.hash);
    });
    h.unwrap_or(SEED)
}

/// A fixed set of words, looked up by hash: a 1,024-bit filter first (most words of a text are in
/// no list), then a binary search.
#[derive(Debug, Clone)]
pub struct WordSet {
    bloom: [u64; 16],
    sorted: Vec<u64>,
}

impl WordSet {
    pub fn new<'a>(words: impl IntoIterator<Item = &'a str>) -> WordSet {
        Self::of_hashes(words.into_iter().map(hash_word))
    }

    pub fn of_hashes(hashes: impl IntoIterator<Item = u64>) -> WordSet {
        let mut s = WordSet {
            bloom: [0; 16],
            sorted: hashes.into_iter().collect(),
        };
        s.sorted.sort_unstable();
        s.sorted.dedup();
        for &h in &s.sorted {
            let b = (h >> 54) as usize;
            s.bloom[b >> 6] |= 1 << (b & 63);
        }
        s
    }

    /// Maybe in the set (no false negatives).
    #[inline]
    pub fn may_contain(&self, h: u64) -> bool {
        let b = (h >> 54) as usize;
        self.bloom[b >> 6] & (1 << (b & 63)) != 0
    }

    #[inline]
    pub fn contains(&self, h: u64) -> bool {
        self.may_contain(h) && self.sorted.binary_search(&h).is_ok()
    }
}

/// A small English stop-word list (articles, pronouns, auxiliaries, prepositions, conjunctions and
/// the commonest adverbs): what goal leakage leaves out of a goal's content words.
pub const STOP_WORDS: &[&str] = &[
    "a",
    "about",
    "above",
    "after",
    "again",
    "against",
    "all",
    "also",
    "am",
    "an",
    "and",
    "any",
    "are",
    "as",
    "at",
    "be",
    "because",
    "been",
    "before",
    "being",
    "below",
    "between",
    "both",
    "but",
    "by",
    "can",
    "could",
    "did",
    "do",
    "does",
    "doing",
    "down",
    "during",
    "each",
    "either",
    "else",
    "even",
    "ever",
    "every",
    "few",
    "for",
    "from",
    "further",
    "had",
    "has",
    "have",
    "having",
    "he",
    "her",
    "here",
    "hers",
    "herself",
    "him",
    "himself",
    "his",
    "how",
    "i",
    "if",
    "in",
    "into",
    "is",
    "it",
    "its",
    "itself",
    "just",
    "let",
    "may",
    "me",
    "might",
    "more",
    "most",
    "much",
    "must",
    "my",
    "myself",
    "no",
    "nor",
    "not",
    "now",
    "of",
    "off",
    "on",
    "once",
    "one",
    "only",
    "or",
    "other",
    "our",
    "ours",
    "ourselves",
    "out",
    "over",
    "own",
    "same",
    "shall",
    "she",
    "should",
    "so",
    "some",
    "such",
    "than",
    "that",
    "the",
    "their",
    "theirs",
    "them",
    "themselves",
    "then",
    "there",
    "these",
    "they",
    "this",
    "those",
    "through",
    "to",
    "too",
    "under",
    "until",
    "up",
    "very",
    "was",
    "we",
    "were",
    "what",
    "when",
    "where",
    "whether",
    "which",
    "while",
    "who",
    "whom",
    "why",
    "will",
    "with",
    "within",
    "would",
    "you",
    "your",
    "yours",
    "yourself",
    "yourselves",
    "want",
    "wants",
    "know",
    "like",
    "get",
    "also",
    "many",
    "well",
    "i'm",
    "you're",
    "it's",
    "don't",
];

/// Goal leakage's stop words, as a set.
pub fn stop_words() -> &'static WordSet {
    static SET: std::sync::LazyLock<WordSet> = std::sync::LazyLock::new(|| WordSet::new(STOP_WORDS.iter().copied()));
    &SET
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lower_case_alphanumeric_runs_with_inner_apostrophes() {
        assert_eq!(
            words("Don’t STOP—it's 3.5km! 'quoted' students' rock''n''roll"),
            ["don't", "stop", "it's", "3", "5km", "quoted", "students", "rock'n'roll"]
        );
        assert_eq!(words("Ça va? Überall 漢字 ok"), ["ça", "va", "überall", "漢字", "ok"]);
        assert!(words(" -- ... ' ").is_empty());
        assert!(words("").is_empty());
    }

    #[test]
    fn the_streamed_hashes_are_the_hashes_of_the_words() {
        let text = "Hey, I’d like a PLAN for 3,000 dollars — can't you help?";
        let mut hashes = Vec::new();
        word_hashes(text, &mut hashes);
        let ws = words(text);
        assert_eq!(hashes.len(), ws.len());
        for (h, w) in hashes.iter().zip(&ws) {
            assert_eq!(*h, hash_word(w), "{w}");
        }
        assert_eq!(hash_word("Don't"), hash_word("don’t"));
        assert_ne!(hash_word("dont"), hash_word("don't"));
    }

    #[test]
    fn contractions_and_byte_ranges() {
        let mut got = Vec::new();
        for_each_word("I'm ok’", |w| got.push((w.contraction, w.start, w.end)));
        assert_eq!(got, [(true, 0, 3), (false, 4, 6)]);
    }

    #[test]
    fn word_sets_find_their_words_only() {
        let s = WordSet::new(["please", "kindly", "i'd"]);
        assert!(s.contains(hash_word("Please")));
        assert!(s.contains(hash_word("I’d")));
        assert!(!s.contains(hash_word("plea")));
        assert!(stop_words().contains(hash_word("The")));
        assert!(!stop_words().contains(hash_word("chickens")));
    }
}
