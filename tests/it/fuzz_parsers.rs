//! Property tests ("fuzzing") of the two parsers that read what users and crashes leave behind:
//! the experiment file and the shard journal. Neither may panic on any input. CI runs the default
//! number of cases; `scripts/fuzz` runs many more (`PROPTEST_CASES`).

use proptest::prelude::*;
use roleplay::rundir::journal;
use std::path::Path;

/// A valid experiment to mutate: small, but it touches every table.
const SEED: &str = include_str!("../../jobs/quickstart.toml");

fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(256)))]

    #[test]
    fn experiment_parser_never_panics_on_arbitrary_text(text in "\\PC{0,400}") {
        let _ = roleplay::experiment::load_str(&text, Path::new("/nonexistent/fuzz.toml"));
    }

    #[test]
    fn experiment_parser_never_panics_on_mutated_experiments(
        cut in 0usize..SEED.len(),
        len in 0usize..40,
        insert in "[\\[\\]{}=\"<>a-zA-Z0-9_.,\n -]{0,30}",
    ) {
        let mut s = SEED.to_string();
        let start = (0..=cut).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
        let end = (start + len).min(s.len());
        let end = (end..=s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
        s.replace_range(start..end, &insert);
        let _ = roleplay::experiment::load_str(&s, Path::new("/nonexistent/fuzz.toml"));
    }

    #[test]
    fn journal_reader_never_panics_on_arbitrary_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = journal::parse(Path::new("fuzz.jrnl"), &bytes);
    }

    #[test]
    fn journal_reader_survives_any_truncation_and_bit_flip_of_a_real_journal(
        cut in 0usize..4096,
        flip in proptest::option::of((0usize..4096, any::<u8>())),
    ) {
        let mut bytes = real_journal().to_vec();
        if let Some((at, x)) = flip {
            let at = at % bytes.len();
            bytes[at] ^= x;
        }
        bytes.truncate(cut.min(bytes.len()));
        if let Ok(c) = journal::parse(Path::new("fuzz.jrnl"), &bytes) {
            // What parsed is a prefix of what was written: never more entries than the original.
            prop_assert!(c.entries.len() <= real_entries());
            prop_assert!(c.valid_len as usize <= bytes.len());
        }
    }
}

/// A journal written by a real worker run of the quickstart experiment (built once per process).
fn real_journal() -> &'static [u8] {
    static J: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    J.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let exp = dir.path().join("q.toml");
        std::fs::write(
            &exp,
            SEED.replace("run_dir = \"../runs/quickstart\"", "run_dir = \"run\""),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_roleplay"))
            .args(["run", "--no-progress"])
            .arg(&exp)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        std::fs::read(dir.path().join("run/journal/shard-00000.jrnl")).unwrap()
    })
}

fn real_entries() -> usize {
    static N: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *N.get_or_init(|| journal::parse(Path::new("j"), real_journal()).unwrap().entries.len())
}
