//! The three text rules against the reference's own input -> output vectors
//! (`tests/fixtures/vectors/*.jsonl`, produced by running the reference rules). Every line is a
//! case; a line that does not parse fails the test rather than being skipped.

use roleplay::dialogue::rules::{extract_prompt, is_degenerate, is_stop};
use serde::Deserialize;
use std::path::Path;

fn cases<T: for<'de> Deserialize<'de>>(file: &str) -> Vec<(usize, T)> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/vectors")
        .join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let cases: Vec<(usize, T)> = text
        .lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| {
            let case = serde_json::from_str(line).unwrap_or_else(|e| panic!("{file}:{}: {e}", i + 1));
            (i + 1, case)
        })
        .collect();
    assert!(!cases.is_empty(), "{file} holds no cases");
    println!("{file}: {} cases", cases.len());
    cases
}

#[derive(Deserialize)]
struct ExtractCase {
    input: String,
    idx_of_possible_prompt: usize,
    prompt: Option<String>,
    num_prompts: usize,
}

#[test]
fn rule_a_extract_prompt_matches_the_reference() {
    let cases = cases::<ExtractCase>("extract_prompt.jsonl");
    for (line, c) in &cases {
        let got = extract_prompt(&c.input, c.idx_of_possible_prompt);
        assert_eq!(
            got.prompt,
            c.prompt.as_deref(),
            "extract_prompt.jsonl:{line}: prompt of {:?}",
            c.input
        );
        assert_eq!(
            got.num_prompts, c.num_prompts,
            "extract_prompt.jsonl:{line}: count of {:?}",
            c.input
        );
    }
    println!("extract_prompt.jsonl: {} cases agree", cases.len());
}

#[derive(Deserialize)]
struct StopCase {
    input: String,
    stop_token: String,
    stop: bool,
}

#[test]
fn rule_b_stop_dialog_matches_the_reference() {
    let cases = cases::<StopCase>("stop_dialog.jsonl");
    for (line, c) in &cases {
        assert_eq!(
            is_stop(&c.input, &c.stop_token),
            c.stop,
            "stop_dialog.jsonl:{line}: {:?}",
            c.input
        );
    }
    println!("stop_dialog.jsonl: {} cases agree", cases.len());
}

#[derive(Deserialize)]
struct DegenerationCase {
    input: String,
    max_n: usize,
    r: usize,
    non_coherent: bool,
}

#[test]
fn rule_c_non_coherent_matches_the_reference() {
    let cases = cases::<DegenerationCase>("non_coherent.jsonl");
    for (line, c) in &cases {
        assert_eq!(
            is_degenerate(&c.input, c.max_n, c.r),
            c.non_coherent,
            "non_coherent.jsonl:{line}: {:?} with max_n {} r {}",
            c.input,
            c.max_n,
            c.r
        );
    }
    println!("non_coherent.jsonl: {} cases agree", cases.len());
}
