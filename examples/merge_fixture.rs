//! The merge benchmark's fixture (scripts/bench-merge): synthetic journals for a planned run, and
//! the same dialogues as JSON lines for the DuckDB baseline.
//!
//! Usage: cargo run --release --example merge_fixture -- RUN_DIR OUT.jsonl [--without-indicators]
//!
//! The `done` records store the fidelity indicators, as a worker writes them; with
//! `--without-indicators` they do not (journals written before workers stored them).

use roleplay::merge::synth;
use roleplay::rundir::RunDir;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (run, jsonl, indicators) = match args.as_slice() {
        [run, jsonl] => (run, jsonl, true),
        [run, jsonl, flag] if flag == "--without-indicators" => (run, jsonl, false),
        _ => {
            eprintln!("usage: merge_fixture RUN_DIR OUT.jsonl [--without-indicators]");
            std::process::exit(2);
        }
    };
    let rd = RunDir::new(run);
    let file = std::fs::File::create(jsonl).unwrap_or_else(|e| {
        eprintln!("error: cannot create `{jsonl}`: {e}");
        std::process::exit(1);
    });
    let mut out = std::io::BufWriter::new(file);
    match synth::synthesize_to(
        &rd,
        &synth::Options {
            indicators,
            ..Default::default()
        },
        Some(&mut out),
    ) {
        Ok(w) => {
            if let Err(e) = std::io::Write::flush(&mut out) {
                eprintln!("error: cannot write `{jsonl}`: {e}");
                std::process::exit(1);
            }
            println!("fixture: {} dialogues, {} turns", w.finished, w.turns);
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
    }
}
