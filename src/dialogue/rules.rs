//! The three text rules of the method (METHOD.md rules A, B and C): prompt extraction, stop
//! detection and the degeneration ("non-coherent") check.
//!
//! They reproduce the reference implementation's Python exactly, so that
//! `tests/fixtures/vectors/*.jsonl` (produced by running the reference rules) pass line for line.
//! Two Python details matter and are spelled out here rather than left to Rust's defaults:
//! - "whitespace" is Python's `str.isspace()` set (used by `str.split()`, `str.strip()` and `\s`),
//!   which is Rust's `char::is_whitespace` plus the four ASCII separators U+001C..U+001F;
//! - "punctuation" is Python's `string.punctuation`, which is exactly `char::is_ascii_punctuation`.
//!
//! All three are total functions: any text, including empty and huge, gives an answer in linear
//! (rule A, B) or `O(words * max_n^2)` (rule C) time and never panics.

/// Python's `str.isspace()`: Unicode `White_Space` plus the ASCII information separators
/// U+001C..U+001F, which Python counts as whitespace (bidirectional class B or S) and Rust does not.
pub fn is_py_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Python's `s.strip()`.
pub fn py_strip(s: &str) -> &str {
    s.trim_matches(is_py_space)
}

/// Python's `s.split()`: runs of whitespace separate words; no empty words.
pub fn py_words(s: &str) -> impl DoubleEndedIterator<Item = &str> {
    s.split(is_py_space).filter(|w| !w.is_empty())
}

/// What rule A found in an output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extraction<'a> {
    /// The prompt to forward, `None` when there is none.
    pub prompt: Option<&'a str>,
    /// How many double-quoted spans the output holds (more than 1 is a "multiple prompts" event).
    pub num_prompts: usize,
}

/// Rule A: the prompt inside an inquirer's output.
///
/// The reference is `re.findall(r'"((?:.|[\n\t\r\b\\"])*?)"', s)`, i.e. every non-greedy
/// double-quoted span, newlines included (`re.DOTALL` in effect). A non-greedy span ends at the
/// very next `"`, so the matches are simply the text between quote 1 and 2, 3 and 4, and so on; a
/// last unpaired quote opens nothing. Only the ASCII `"` counts: curly quotes are text.
///
/// One span is the prompt whatever `idx_of_possible_prompt` says (as in the reference, which
/// indexes only when there are several). With several, the span at `idx` is chosen; when `idx` is
/// past the last span the reference raises `IndexError` and aborts the whole run, and we take the
/// last span instead: the output did hold prompts, and the last one is the nearest to the one asked
/// for.
pub fn extract_prompt(output: &str, idx: usize) -> Extraction<'_> {
    let spans = quoted_spans(output);
    let prompt = match spans.len() {
        0 => None,
        1 => Some(spans[0]),
        n => Some(spans[idx.min(n - 1)]),
    };
    Extraction {
        prompt,
        num_prompts: spans.len(),
    }
}

/// Every complete double-quoted span, in order, without its quotes.
pub fn quoted_spans(output: &str) -> Vec<&str> {
    // `"` is one byte in UTF-8 and never part of a multi-byte sequence, so byte offsets next to it
    // are character boundaries.
    let quotes: Vec<usize> = output.match_indices('"').map(|(i, _)| i).collect();
    quotes
        .chunks_exact(2)
        .map(|pair| &output[pair[0] + 1..pair[1]])
        .collect()
}

/// Rule B: the inquirer wants to stop (it considers its goal reached).
///
/// The reference strips the output, splits it on whitespace, takes the first and the last word,
/// deletes ASCII punctuation from each, and compares with the stop token and with
/// `stop_token.capitalize()` (first letter upper-case, the rest lower-case: `Finish` for `FINISH`).
/// An empty output has the single word "" and never stops.
pub fn is_stop(output: &str, stop_token: &str) -> bool {
    if stop_token.is_empty() {
        // The reference would stop on every all-punctuation first word; validation forbids an
        // empty token, and stopping on nothing is never what was meant.
        return false;
    }
    let capitalized = capitalize(stop_token);
    let mut words = py_words(output);
    let first = words.next().unwrap_or("");
    let last = words.next_back().unwrap_or(first);
    [first, last].iter().any(|w| {
        let bare: String = w.chars().filter(|c| !c.is_ascii_punctuation()).collect();
        bare == stop_token || bare == capitalized
    })
}

/// Python's `str.capitalize()` for the tokens validation admits (one word, no punctuation).
/// Python upper-cases the first character to title case, Rust to upper case; they differ only for a
/// handful of ligatures such as `ǆ`, never for an ASCII token.
fn capitalize(s: &str) -> String {
    let mut chars = s.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars.flat_map(char::to_lowercase)).collect(),
        None => String::new(),
    }
}

/// Rule C: the text is degenerate (it repeats itself), for `n`-grams with `n` from 2 to `max_n`
/// and `r` repetitions.
///
/// A line-for-line port of the reference's `is_non_coherent`:
/// ```text
/// for n in 2..=max_n:
///     n_grams = []
///     for i in 0..len(words):
///         g = words[i:i+n]                      # shorter than n near the end
///         if n_grams and len(n_grams) >= max(r, n) and (n_grams[-1] == g or n_grams[-n] == g):
///             if the last r n-grams are all equal: degenerate
///             if n_grams[-n::-n][:r] (every n-th n-gram backwards from n places back) are r
///                equal n-grams: degenerate
///         n_grams.append(g)
/// ```
/// Python's slices make `r == 0` never degenerate (`n_grams[-0:]` is the whole list, and zero
/// n-grams are not "all equal" to a set of one) and `r == 1` degenerate at the first repeat; both are
/// kept, although validation only admits `r >= 2`.
pub fn is_degenerate(text: &str, max_n: usize, r: usize) -> bool {
    let words: Vec<&str> = py_words(text).collect();
    // With fewer than n + 1 words the list never holds n n-grams before the last one is appended,
    // so larger n cannot fire: bounding n keeps a huge `max_n` cheap.
    let top = max_n.min(words.len().saturating_sub(1));
    (2..=top).any(|n| degenerate_at(&words, n, r))
}

fn degenerate_at(words: &[&str], n: usize, r: usize) -> bool {
    let mut grams: Vec<&[&str]> = Vec::with_capacity(words.len());
    for i in 0..words.len() {
        let gram = &words[i..(i + n).min(words.len())];
        let len = grams.len();
        if len > 0 && len >= r.max(n) && (grams[len - 1] == gram || grams[len - n] == gram) {
            if r > 0 && all_equal(grams[len - r..].iter().copied()) {
                return true;
            }
            // `grams[-n::-n][:r]`: indices len-n, len-2n, ... while >= 0, at most r of them.
            let stepped: Vec<&[&str]> = (0..=(len - n) / n).map(|k| grams[len - n - k * n]).take(r).collect();
            if r > 0 && stepped.len() == r && all_equal(stepped.into_iter()) {
                return true;
            }
        }
        grams.push(gram);
    }
    false
}

/// Python's `len(set(xs)) == 1` for a non-empty sequence.
fn all_equal<'a>(mut xs: impl Iterator<Item = &'a [&'a str]>) -> bool {
    match xs.next() {
        Some(first) => xs.all(|x| x == first),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(s: &str, idx: usize) -> (Option<&str>, usize) {
        let e = extract_prompt(s, idx);
        (e.prompt, e.num_prompts)
    }

    #[test]
    fn extraction_edge_cases() {
        // No quote at all, and no text at all.
        assert_eq!(ex("", 0), (None, 0));
        assert_eq!(ex("   \n\t ", 0), (None, 0));
        // An odd number of quotes: the last one opens nothing.
        assert_eq!(ex("\"a\" b \"c", 0), (Some("a"), 1));
        assert_eq!(ex("\"a\" \"b\" \"c", 1), (Some("b"), 2));
        assert_eq!(ex("\"", 0), (None, 0));
        // Unicode inside and around the quotes; curly and guillemet quotes are text.
        assert_eq!(ex("Ünïcödé «x» “y” \"日本語 🐈\" ok", 0), (Some("日本語 🐈"), 1));
        assert_eq!(ex("„quote“ and ‘single’", 0), (None, 0));
        // Only whitespace inside the quotes is still a (blank) prompt, as in the reference.
        assert_eq!(ex("\" \n \"", 0), (Some(" \n "), 1));
    }

    #[test]
    fn index_past_the_last_prompt_takes_the_last() {
        assert_eq!(ex("\"a\" \"b\"", 5), (Some("b"), 2));
        // With a single span the index is not consulted at all (reference behaviour).
        assert_eq!(ex("\"only\"", 7), (Some("only"), 1));
        assert_eq!(ex("no quotes", usize::MAX), (None, 0));
    }

    #[test]
    fn stop_edge_cases() {
        assert!(!is_stop("", "FINISH"));
        assert!(!is_stop(" \n\t ", "FINISH"));
        assert!(!is_stop("...", "FINISH"));
        assert!(is_stop("FINISH", "FINISH"));
        // Python's whitespace includes U+001F and the ideographic space.
        assert!(is_stop("done\u{1f}FINISH", "FINISH"));
        assert!(!is_stop("完成\u{3000}Finish。", "FINISH"));
        assert!(is_stop("完成\u{3000}Finish", "FINISH"));
        // Non-ASCII punctuation is not deleted.
        assert!(!is_stop("FINISH…", "FINISH"));
        assert!(!is_stop("FINISH", ""));
        assert!(is_stop("Done.", "DONE"));
        assert!(!is_stop("dONE", "DONE"));
    }

    #[test]
    fn degeneration_edge_cases() {
        assert!(!is_degenerate("", 4, 2));
        assert!(!is_degenerate(" \n ", 4, 2));
        assert!(!is_degenerate("x", 4, 2));
        assert!(is_degenerate("ä ö ä ö ä ö", 4, 2));
        assert!(is_degenerate("猫 猫 猫 猫", 4, 2));
        // r = 0 never fires; r = 1 fires on the first repeat that reaches the check.
        assert!(!is_degenerate("a a a a a a a a", 4, 0));
        assert!(!is_degenerate("a b c a b", 2, 1));
        assert!(is_degenerate("a b a b", 2, 1));
        // max_n below 2 checks nothing; a huge max_n is bounded by the word count.
        assert!(!is_degenerate("a a a a a a", 1, 2));
        assert!(is_degenerate("a a a a a a", usize::MAX, 2));
        // Long input stays fast: 200k words, no repeats of any n-gram.
        let long: String = (0..200_000).map(|i| format!("w{i} ")).collect();
        assert!(!is_degenerate(&long, 8, 2));
    }

    #[test]
    fn python_whitespace() {
        assert!(is_py_space('\u{1c}'));
        assert!(is_py_space('\u{a0}'));
        assert!(!is_py_space('\u{200b}'));
        assert_eq!(py_strip("\u{1e} a b \u{3000}"), "a b");
        assert_eq!(py_words("a\u{1d}b  c").collect::<Vec<_>>(), vec!["a", "b", "c"]);
    }
}
