//! The tokenizer every indicator and diversity measure shares, and the word lists they look up.
//!
//! **Words** are maximal runs of Unicode alphanumerics (`char::is_alphanumeric`) and apostrophes,
//! lower-cased, with the right single quotation mark `’` read as `'`, apostrophes at either end of a
//! run dropped and a run of apostrophes inside a word read as one: `"Don’t STOP—it's 3.5km!"` is
//! `don't`, `stop`, `it's`, `3`, `5km`. Lower-casing takes the first character of
//! `char::to_lowercase` (exact for every letter but a handful, such as `İ`).
//!
//! Words are handled as 64-bit hashes of their folded UTF-8 bytes ([`hash_folded`]): a collision
//! between two of the few thousand distinct words of a text or a cell is about one chance in
//! 10^12. ASCII text takes a byte-wise fast path ([`ascii_words`], and the indicators' own scan);
//! other text goes character by character; both give the same words and hashes.

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

/// MurmurHash3's 64-bit finaliser.
#[inline]
pub fn fmix(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// A word hash's last mixing (cheaper than [`fmix`]: the chunks were mixed as they came in).
#[inline]
fn finish(h: u64) -> u64 {
    let h = (h ^ (h >> 32)).wrapping_mul(0xd6e8_feb8_6659_fd93);
    h ^ (h >> 29)
}

#[inline]
fn absorb(h: u64, chunk: u64) -> u64 {
    (h ^ chunk).wrapping_mul(MUL).rotate_left(29)
}

/// The hash of a folded word's UTF-8 bytes (8 bytes at a time, then finalised with the length).
pub fn hash_folded(b: &[u8]) -> u64 {
    let mut h = SEED;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        h = absorb(h, u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]));
    }
    let r = chunks.remainder();
    if !r.is_empty() {
        let mut x = [0u8; 8];
        x[..r.len()].copy_from_slice(r);
        h = absorb(h, u64::from_le_bytes(x));
    }
    finish(h ^ b.len() as u64)
}

/// [`hash_folded`] of an ASCII word of letters, digits and single apostrophes, lower-casing on the
/// way (`| 0x20` lower-cases a letter and leaves digits and `'` as they are).
#[inline]
pub fn hash_ascii_lower(b: &[u8]) -> u64 {
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let mut h = SEED;
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        h = absorb(
            h,
            u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) | LOWER,
        );
    }
    let r = chunks.remainder();
    if !r.is_empty() {
        let mut x = [0u8; 8];
        x[..r.len()].copy_from_slice(r);
        let mask = u64::MAX >> (64 - 8 * r.len());
        h = absorb(h, (u64::from_le_bytes(x) | LOWER) & mask);
    }
    finish(h ^ b.len() as u64)
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

/// ASCII byte classes (a table, so that the fast paths branch on one load).
pub const WORD: u8 = 1;
pub const APOSTROPHE: u8 = 2;
pub const SPACE: u8 = 4;
/// `.`, `!`, `?`
pub const TERMINATOR: u8 = 8;
/// What may stand between a terminator and the space that ends the sentence: `"`, `'`, `)`.
pub const CLOSER: u8 = 16;

pub static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut b = 0;
    while b < 128 {
        let c = b as u8;
        t[b] = if c.is_ascii_alphanumeric() {
            WORD
        } else if c == b'\'' {
            APOSTROPHE | CLOSER
        } else if c == b' ' || (c >= 0x09 && c <= 0x0d) {
            // char::is_whitespace's ASCII set (vertical tab included).
            SPACE
        } else if c == b'.' || c == b'!' || c == b'?' {
            TERMINATOR
        } else if c == b'"' || c == b')' {
            CLOSER
        } else {
            0
        };
        b += 1;
    }
    t
};

/// The hash of the ASCII word `text[start..end]`, which may hold apostrophes (runs read as one):
/// [`ascii_word_hash`] reading whole 8-byte chunks of `text` where they are in bounds.
#[inline]
pub fn ascii_word_hash_in(text: &[u8], start: usize, end: usize, apostrophe: bool) -> u64 {
    if apostrophe || end + 8 > text.len() {
        return ascii_word_hash(&text[start..end], apostrophe);
    }
    const LOWER: u64 = 0x2020_2020_2020_2020;
    let load = |i: usize| {
        let c = &text[i..i + 8];
        u64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
    };
    let mut h = SEED;
    let mut i = start;
    while i + 8 <= end {
        h = absorb(h, load(i) | LOWER);
        i += 8;
    }
    if i < end {
        let mask = u64::MAX >> (64 - 8 * (end - i));
        h = absorb(h, (load(i) | LOWER) & mask);
    }
    finish(h ^ (end - start) as u64)
}

/// The hash of an ASCII word `b` that may hold apostrophes (runs read as one).
#[inline]
pub fn ascii_word_hash(b: &[u8], apostrophe: bool) -> u64 {
    if !apostrophe || !b.windows(2).any(|w| w == b"''") {
        return hash_ascii_lower(b);
    }
    let mut v: Vec<u8> = Vec::with_capacity(b.len());
    for &c in b {
        if !(c == b'\'' && v.last() == Some(&b'\'')) {
            v.push(c | 0x20);
        }
    }
    hash_folded(&v)
}

/// The words of an ASCII text, byte by byte.
#[inline]
pub fn ascii_words(b: &[u8], mut f: impl FnMut(Word)) {
    let (mut in_word, mut start, mut end, mut apostrophe, mut pending) = (false, 0, 0, false, false);
    for (i, &c) in b.iter().enumerate() {
        let cls = CLASS[c as usize];
        if cls & WORD != 0 {
            if !in_word {
                in_word = true;
                start = i;
                apostrophe = false;
            } else if pending {
                apostrophe = true;
            }
            pending = false;
            end = i + 1;
        } else if cls & APOSTROPHE != 0 {
            pending = in_word;
        } else if in_word {
            in_word = false;
            pending = false;
            f(Word {
                hash: ascii_word_hash(&b[start..end], apostrophe),
                contraction: apostrophe,
                start,
                end,
            });
        }
    }
    if in_word {
        f(Word {
            hash: ascii_word_hash(&b[start..end], apostrophe),
            contraction: apostrophe,
            start,
            end,
        });
    }
}

/// The tokenizer as a state machine fed one (already folded) character at a time: the path for
/// text that is not all ASCII.
#[derive(Debug, Default, Clone)]
pub struct Words {
    buf: Vec<u8>,
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
            if self.buf.is_empty() {
                self.start = pos;
                self.contraction = false;
            } else if self.pending_apostrophe {
                self.buf.push(b'\'');
                self.contraction = true;
            }
            self.pending_apostrophe = false;
            let mut tmp = [0u8; 4];
            self.buf.extend_from_slice(c.encode_utf8(&mut tmp).as_bytes());
            self.end = pos + len;
            None
        } else if c == '\'' {
            // Inside a word it may join two parts; at either end it is dropped.
            self.pending_apostrophe = !self.buf.is_empty();
            None
        } else {
            self.finish()
        }
    }

    /// End the text: the last word, if one is open.
    #[inline]
    pub fn finish(&mut self) -> Option<Word> {
        self.pending_apostrophe = false;
        if self.buf.is_empty() {
            return None;
        }
        let w = Word {
            hash: hash_folded(&self.buf),
            contraction: self.contraction,
            start: self.start,
            end: self.end,
        };
        self.buf.clear();
        Some(w)
    }
}

/// Call `f` with every word of `text`, in order.
pub fn for_each_word(text: &str, mut f: impl FnMut(Word)) {
    if text.is_ascii() {
        return ascii_words(text.as_bytes(), f);
    }
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
    for_each_word(text, |w| out.push(folded(&text[w.start..w.end])));
    out
}

/// A word's characters folded, apostrophe runs read as one.
fn folded(word: &str) -> String {
    let mut s = String::with_capacity(word.len());
    for c in word.chars().map(fold) {
        if !(c == '\'' && s.ends_with('\'')) {
            s.push(c);
        }
    }
    s
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

    /// The word's index among the set's words (sorted by hash).
    #[inline]
    pub fn position(&self, h: u64) -> Option<usize> {
        if !self.may_contain(h) {
            return None;
        }
        self.sorted.binary_search(&h).ok()
    }

    pub fn len(&self) -> usize {
        self.sorted.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
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

    /// The word path for text that is not all ASCII, forced.
    fn char_path(text: &str) -> Vec<Word> {
        let mut out = Vec::new();
        let mut w = Words::default();
        for (pos, c) in text.char_indices() {
            out.extend(w.step(fold(c), pos, c.len_utf8()));
        }
        out.extend(w.finish());
        out
    }

    proptest::proptest! {
        #[test]
        fn the_ascii_path_and_the_char_path_agree(text in "[a-zA-Z0-9' .,!?\n\t-]{0,60}") {
            let mut fast = Vec::new();
            ascii_words(text.as_bytes(), |w| fast.push(w));
            proptest::prop_assert_eq!(fast, char_path(&text));
        }
    }

    #[test]
    fn the_in_place_ascii_hash_agrees() {
        let text = b"Hello, I'd like THREE cups; abcdefghijklmnop xy";
        ascii_words(text, |w| {
            assert_eq!(
                ascii_word_hash_in(text, w.start, w.end, w.contraction),
                hash_folded(String::from_utf8_lossy(&text[w.start..w.end]).to_lowercase().as_bytes())
            );
        });
    }

    #[test]
    fn the_ascii_hash_is_the_hash_of_the_lowered_bytes() {
        for w in ["a", "Don't", "ABCDEFGH", "abcdefghi", "x9Y8z7W6v5U4", "o'clock'ish"] {
            assert_eq!(
                hash_ascii_lower(w.as_bytes()),
                hash_folded(w.to_lowercase().as_bytes()),
                "{w}"
            );
        }
        assert_eq!(hash_word("rock''n''roll"), hash_word("rock'n'roll"));
        assert_eq!(hash_word("ÉTÉ"), hash_folded("été".as_bytes()));
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
