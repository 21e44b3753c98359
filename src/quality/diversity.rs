//! Lexical diversity of a set of texts (a grid cell's first turns, or all its inquirer turns):
//! distinct-n, MTLD and self-BLEU, on a bounded, deterministic sample of the texts
//! ([`Sample`], `DIVERSITY_SAMPLE` texts). Texts are word-hash sequences from
//! [`super::text::word_hashes`].

use super::text::fmix;
use super::thresholds::{BLEU_EPSILON, BLEU_MAX_N, DIVERSITY_SAMPLE, MTLD_TTR};
use serde::Serialize;
use std::collections::{BinaryHeap, HashMap, HashSet};

/// The texts with the smallest keys (a bottom-k sample: with keys that hash the text's identity it
/// is a uniform sample, the same whatever the order the texts come in), at most `cap`.
#[derive(Debug, Clone)]
pub struct Sample {
    cap: usize,
    seen: u64,
    heap: BinaryHeap<(u64, Vec<u64>)>,
}

impl Default for Sample {
    fn default() -> Sample {
        Sample::new(DIVERSITY_SAMPLE)
    }
}

impl Sample {
    pub fn new(cap: usize) -> Sample {
        Sample {
            cap,
            seen: 0,
            heap: BinaryHeap::new(),
        }
    }

    /// Offer a text under `key`; `text` is only called when the text is kept.
    pub fn offer(&mut self, key: u64, text: impl FnOnce() -> Vec<u64>) {
        self.seen += 1;
        if self.cap == 0 {
            return;
        }
        if self.heap.len() < self.cap {
            self.heap.push((key, text()));
        } else if self.heap.peek().is_some_and(|(top, _)| key < *top) {
            self.heap.pop();
            self.heap.push((key, text()));
        }
    }

    /// Texts offered in all.
    pub fn seen(&self) -> u64 {
        self.seen
    }

    /// The kept texts, by key.
    pub fn texts(&self) -> Vec<&[u64]> {
        let mut v: Vec<&(u64, Vec<u64>)> = self.heap.iter().collect();
        v.sort_by_key(|(k, _)| *k);
        v.into_iter().map(|(_, t)| t.as_slice()).collect()
    }

    pub fn diversity(&self) -> Diversity {
        Diversity::of(self.seen, &self.texts())
    }
}

/// A key for [`Sample::offer`] from an identity (a unit id's bytes, a turn index, a line number).
pub fn sample_key(parts: &[&[u8]]) -> u64 {
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for p in parts {
        for chunk in p.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            h = fmix(h ^ u64::from_le_bytes(b));
        }
        h = fmix(h ^ p.len() as u64);
    }
    h
}

/// The diversity figures of one set of texts.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Diversity {
    /// Texts in the set.
    pub texts: u64,
    /// Texts the figures were computed on (at most `DIVERSITY_SAMPLE`).
    pub sampled: usize,
    pub distinct_1: Option<f64>,
    pub distinct_2: Option<f64>,
    pub mtld: Option<f64>,
    pub self_bleu: Option<f64>,
}

impl Diversity {
    pub fn of(texts: u64, sample: &[&[u64]]) -> Diversity {
        let tokens: Vec<u64> = sample.iter().flat_map(|t| t.iter().copied()).collect();
        Diversity {
            texts,
            sampled: sample.len(),
            distinct_1: distinct_n(sample, 1),
            distinct_2: distinct_n(sample, 2),
            mtld: mtld(&tokens),
            self_bleu: self_bleu(sample),
        }
    }
}

/// Hash of the n-gram `w` (its order is part of the hash).
#[inline]
fn gram(w: &[u64]) -> u64 {
    let mut h = w.len() as u64;
    for t in w {
        h = fmix(h.rotate_left(17) ^ *t);
    }
    h
}

/// distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation
/// Models"): distinct n-grams over all n-grams of the texts (n-grams do not cross texts). `None`
/// without an n-gram.
pub fn distinct_n(texts: &[&[u64]], n: usize) -> Option<f64> {
    let mut seen = HashSet::new();
    let mut total = 0u64;
    for t in texts {
        for w in t.windows(n) {
            total += 1;
            seen.insert(gram(w));
        }
    }
    (total > 0).then(|| seen.len() as f64 / total as f64)
}

/// One direction of MTLD: tokens over factors, where a factor ends each time the running
/// type-token ratio falls to `MTLD_TTR` and the remainder counts as the part of a factor its ratio
/// went down (`(1 - ttr) / (1 - MTLD_TTR)`). `None` when no factor is counted.
fn mtld_pass(tokens: impl Iterator<Item = u64>) -> Option<f64> {
    let mut types = HashSet::new();
    let (mut count, mut total, mut factors) = (0u64, 0u64, 0.0);
    let mut ttr = 1.0;
    for t in tokens {
        total += 1;
        count += 1;
        types.insert(t);
        ttr = types.len() as f64 / count as f64;
        if ttr <= MTLD_TTR {
            factors += 1.0;
            types.clear();
            count = 0;
            ttr = 1.0;
        }
    }
    factors += (1.0 - ttr) / (1.0 - MTLD_TTR);
    (factors > 0.0).then(|| total as f64 / factors)
}

/// MTLD, the measure of textual lexical diversity (McCarthy and Jarvis, 2010, "MTLD, vocd-D, and
/// HD-D: A validation study of sophisticated approaches to lexical diversity assessment"): the mean
/// of a forward and a backward pass over the tokens, as the `lexical_diversity` Python package
/// computes it. `None` for a text without a factor (every token distinct, or no token).
pub fn mtld(tokens: &[u64]) -> Option<f64> {
    let f = mtld_pass(tokens.iter().copied())?;
    let b = mtld_pass(tokens.iter().rev().copied())?;
    Some((f + b) / 2.0)
}

/// The highest count of an n-gram in any text, the text it is in, and the highest in the others.
#[derive(Debug, Clone, Copy)]
struct Top2 {
    best: u32,
    who: u32,
    second: u32,
}

/// Self-BLEU (Zhu et al., 2018, "Texygen: A Benchmarking Platform for Text Generation Models"):
/// the mean over the texts of the BLEU of each one against all the others as references. BLEU
/// (Papineni et al., 2002) with n-grams up to `BLEU_MAX_N` and uniform weights, counts clipped by
/// the highest count in any reference, the brevity penalty of the closest reference length (the
/// shorter on a tie), 0 without a matching unigram, and Chen and Cherry's smoothing method 1 for an
/// order without a match (`BLEU_EPSILON` over the order's n-grams): NLTK's `sentence_bleu` with
/// `SmoothingFunction().method1`. `None` with fewer than two texts.
pub fn self_bleu(texts: &[&[u64]]) -> Option<f64> {
    if texts.len() < 2 {
        return None;
    }
    // Per text and order, its n-grams with their counts; over all texts, the top two counts.
    let mut per_text: Vec<[Vec<(u64, u32)>; BLEU_MAX_N]> = Vec::with_capacity(texts.len());
    let mut top: HashMap<u64, Top2> = HashMap::new();
    for (i, t) in texts.iter().enumerate() {
        let orders: [Vec<(u64, u32)>; BLEU_MAX_N] = std::array::from_fn(|k| {
            let mut g: Vec<u64> = t.windows(k + 1).map(gram).collect();
            g.sort_unstable();
            let mut counted: Vec<(u64, u32)> = Vec::with_capacity(g.len());
            for h in g {
                match counted.last_mut() {
                    Some((last, c)) if *last == h => *c += 1,
                    _ => counted.push((h, 1)),
                }
            }
            counted
        });
        for (h, c) in orders.iter().flatten() {
            let e = top.entry(*h).or_insert(Top2 {
                best: 0,
                who: u32::MAX,
                second: 0,
            });
            if *c > e.best {
                e.second = e.best;
                e.best = *c;
                e.who = i as u32;
            } else if *c > e.second {
                e.second = *c;
            }
        }
        per_text.push(orders);
    }
    let mut lengths: Vec<usize> = texts.iter().map(|t| t.len()).collect();
    lengths.sort_unstable();
    let mut sum = 0.0;
    for (i, t) in texts.iter().enumerate() {
        let mut log_p = 0.0;
        let mut zero_unigrams = false;
        for (k, grams) in per_text[i].iter().enumerate() {
            let total: u32 = grams.iter().map(|(_, c)| c).sum();
            let clipped: u32 = grams
                .iter()
                .map(|(h, c)| {
                    let e = top[h];
                    let others = if e.who == i as u32 { e.second } else { e.best };
                    (*c).min(others)
                })
                .sum();
            let den = total.max(1) as f64;
            if k == 0 && clipped == 0 {
                zero_unigrams = true;
                break;
            }
            let p = if clipped == 0 {
                BLEU_EPSILON / den
            } else {
                clipped as f64 / den
            };
            log_p += p.ln() / BLEU_MAX_N as f64;
        }
        if zero_unigrams {
            continue; // BLEU 0
        }
        let c = t.len();
        let r = closest_other_length(&lengths, c);
        let bp = if c > r { 1.0 } else { (1.0 - r as f64 / c as f64).exp() };
        sum += bp * log_p.exp();
    }
    Some(sum / texts.len() as f64)
}

/// The length in `sorted` (all texts' lengths) closest to `c` once one text of length `c` (the
/// hypothesis itself) is left out; the shorter on a tie.
fn closest_other_length(sorted: &[usize], c: usize) -> usize {
    let lo = sorted.partition_point(|&l| l < c);
    let hi = sorted.partition_point(|&l| l <= c);
    if hi - lo >= 2 {
        return c;
    }
    let below = lo.checked_sub(1).map(|i| sorted[i]);
    let above = sorted.get(hi).copied();
    match (below, above) {
        (Some(b), Some(a)) => {
            if c - b <= a - c {
                b
            } else {
                a
            }
        }
        (Some(b), None) => b,
        (None, Some(a)) => a,
        (None, None) => c,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quality::text::word_hashes;

    fn toks(s: &str) -> Vec<u64> {
        let mut v = Vec::new();
        word_hashes(s, &mut v);
        v
    }

    #[test]
    fn distinct_n_counts_distinct_grams_over_grams() {
        let a = toks("the cat sat on the mat");
        let b = toks("the cat ran");
        let texts = [a.as_slice(), b.as_slice()];
        // Unigrams: 9 in all, distinct: the cat sat on mat ran = 6.
        assert_eq!(distinct_n(&texts, 1), Some(6.0 / 9.0));
        // Bigrams: 5 + 2 = 7; distinct: the-cat (twice) => 6.
        assert_eq!(distinct_n(&texts, 2), Some(6.0 / 7.0));
        assert_eq!(distinct_n(&[], 1), None);
    }

    #[test]
    fn mtld_matches_the_lexical_diversity_package() {
        // Forward: a b a -> ttr 2/3 <= 0.72 at the third token: one factor; then b a: ttr 1,
        // excess 0 => 1 factor, 5 tokens => 5.0. Backward reads the same sequence: 5.0.
        let t: Vec<u64> = [1, 2, 1, 2, 1].to_vec();
        assert_eq!(mtld(&t), Some(5.0));
        // a a: ttr 0.5 at the second token: 1 factor, 2 tokens => 2.
        assert_eq!(mtld(&[7, 7]), Some(2.0));
        // All distinct: no factor, undefined.
        assert_eq!(mtld(&[1, 2, 3]), None);
        // a b c a: ttr 1, 1, 1, 0.75 (> 0.72): remainder (1 - 0.75) / 0.28 factors.
        let f = 4.0 / (0.25 / 0.28);
        let got = mtld(&[1, 2, 3, 1]).unwrap();
        assert!((got - f).abs() < 1e-12, "{got} vs {f}");
    }

    #[test]
    fn self_bleu_of_identical_texts_is_one_and_of_disjoint_texts_zero() {
        let a = toks("how many cups of feed does the last meal need");
        let texts = [a.as_slice(), a.as_slice(), a.as_slice()];
        let s = self_bleu(&texts).unwrap();
        assert!((s - 1.0).abs() < 1e-12, "{s}");
        let b = toks("completely different words here please");
        assert_eq!(self_bleu(&[a.as_slice(), b.as_slice()]), Some(0.0));
        assert_eq!(self_bleu(&[a.as_slice()]), None);
    }

    #[test]
    fn self_bleu_matches_nltk_on_a_small_case() {
        // NLTK: sentence_bleu([ref], hyp, smoothing_function=SmoothingFunction().method1)
        // hyp = "the cat sat on the mat", ref = "the cat is on the mat":
        // p1 = 5/6, p2 = 3/5, p3 = 1/4, p4 = eps/3 (no match), BP = 1 (equal lengths).
        let hyp = toks("the cat sat on the mat");
        let r = toks("the cat is on the mat");
        let expected_one =
            ((5.0f64 / 6.0).ln() + (3.0f64 / 5.0).ln() + (1.0f64 / 4.0).ln() + (0.1f64 / 3.0).ln()) / 4.0;
        // Symmetric here: the reference scored against the hypothesis has the same precisions.
        let expected = expected_one.exp();
        let got = self_bleu(&[hyp.as_slice(), r.as_slice()]).unwrap();
        assert!((got - expected).abs() < 1e-12, "{got} vs {expected}");
    }

    #[test]
    fn the_brevity_penalty_uses_the_closest_other_length() {
        assert_eq!(closest_other_length(&[3, 5, 9], 5), 3);
        assert_eq!(closest_other_length(&[3, 5, 5, 9], 5), 5);
        assert_eq!(closest_other_length(&[4, 5, 6], 5), 4, "ties go to the shorter");
        assert_eq!(closest_other_length(&[5, 8], 5), 8);
    }

    #[test]
    fn a_sample_keeps_the_smallest_keys_whatever_the_order() {
        let mut a = Sample::new(3);
        let mut b = Sample::new(3);
        let items: Vec<(u64, Vec<u64>)> = (0..10u64).map(|i| (sample_key(&[&i.to_le_bytes()]), vec![i])).collect();
        for (k, t) in &items {
            a.offer(*k, || t.clone());
        }
        for (k, t) in items.iter().rev() {
            b.offer(*k, || t.clone());
        }
        assert_eq!(a.texts(), b.texts());
        assert_eq!(a.texts().len(), 3);
        assert_eq!(a.seen(), 10);
        let mut keys: Vec<u64> = items.iter().map(|(k, _)| *k).collect();
        keys.sort_unstable();
        let kept: Vec<u64> = a.texts().iter().map(|t| t[0]).collect();
        let want: Vec<u64> = keys[..3]
            .iter()
            .map(|k| items.iter().find(|(kk, _)| kk == k).unwrap().1[0])
            .collect();
        assert_eq!(kept, want);
    }
}
