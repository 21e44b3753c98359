//! The indicators' share of a merge (scripts/bench-quality): reads a run's journals the way
//! `roleplay merge` does (`merge::scan`, plan order), then times, over exactly those records and
//! in batches of the merge's size, building the indicator columns (`merge::indicators::Columns`:
//! the analysis and the Arrow arrays, which is all the merge does for them when the records do not
//! store them; the ones they store are left out, so that they are computed). Prints one JSON line.
//!
//! Usage: cargo run --release --example quality_timing -- RUN_DIR [LIMIT]
//! (LIMIT: time the first LIMIT dialogues only, e.g. under `valgrind --tool=callgrind`.)

use roleplay::merge::indicators::Columns;
use roleplay::merge::scan::{self, Finished};
use roleplay::quality::GoalProfile;
use roleplay::rundir::RunDir;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// As `merge::BATCH_DIALOGUES`.
const BATCH: usize = 512;

/// This thread's CPU time (Linux: `/proc/thread-self/schedstat`, nanoseconds on a CPU), so that a
/// busy shared machine does not count against the indicators; `None` elsewhere.
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(s.split_whitespace().next()?.parse().ok()?))
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (run, limit) = match args.as_slice() {
        [run] => (run, usize::MAX),
        [run, n] if n.parse::<usize>().is_ok() => (run, n.parse().unwrap_or(usize::MAX)),
        _ => {
            eprintln!("usage: quality_timing RUN_DIR [LIMIT]");
            std::process::exit(2);
        }
    };
    let rd = RunDir::new(run);
    let result = (|| -> roleplay::Result<()> {
        let plan = rd.load_plan()?;
        let exp = &plan.experiment;
        let started = Instant::now();
        let mut records: Vec<Finished> = Vec::new();
        let full = scan::scan(&rd, &plan, |b| {
            let room = limit.saturating_sub(records.len());
            // The indicators a worker stored are left out: this times computing them.
            records.extend(b.dialogues.into_iter().take(room).map(|mut f| {
                f.record.indicators = None;
                f
            }));
            if records.len() >= limit {
                // Enough: stop the scan (its error is this one).
                return Err(roleplay::Error::runtime("limit reached"));
            }
            Ok(())
        });
        if full.is_err() && records.len() < limit {
            full?;
        }
        let scan_secs = started.elapsed().as_secs_f64();
        let turns: usize = records.iter().map(|f| f.record.turns.len()).sum();
        let chars: usize = records
            .iter()
            .flat_map(|f| &f.record.turns)
            .map(|t| t.prompt.len())
            .sum();
        // Three passes; the best counts (the machine is shared).
        let mut best = Duration::MAX;
        let mut best_cpu = Duration::MAX;
        let mut arrays = 0usize;
        for _ in 0..3 {
            let t0 = Instant::now();
            let c0 = thread_cpu();
            // The goals' profiles, built once per merge (`merge::table::Layout`).
            let goals: Vec<OnceLock<GoalProfile>> = exp.goals.iter().map(|_| OnceLock::new()).collect();
            for chunk in records.chunks(BATCH) {
                let n: usize = chunk.iter().map(|f| f.record.turns.len()).sum();
                let mut q = Columns::new(chunk.len(), n);
                for f in chunk {
                    q.push(exp, &goals, f);
                }
                arrays += q.finish_turns().len() + q.finish_dialogues().len();
            }
            best = best.min(t0.elapsed());
            if let (Some(a), Some(b)) = (c0, thread_cpu()) {
                best_cpu = best_cpu.min(b.saturating_sub(a));
            }
        }
        println!(
            "{{\"dialogues\": {}, \"turns\": {turns}, \"inquirer_bytes\": {chars}, \"scan_seconds\": {scan_secs:.3}, \"indicator_seconds\": {:.3}, \"indicator_cpu_seconds\": {:.3}, \"ns_per_inquirer_byte\": {:.2}, \"arrays\": {arrays}}}",
            records.len(),
            best.as_secs_f64(),
            best_cpu.as_secs_f64(),
            best_cpu.as_secs_f64() * 1e9 / chars.max(1) as f64
        );
        Ok(())
    })();
    if let Err(e) = result {
        eprintln!("{e}");
        std::process::exit(e.exit_code());
    }
}
