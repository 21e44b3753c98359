//! Output helpers: data goes to stdout, and a closed pipe (`roleplay plan ... | head`) ends the
//! program quietly instead of panicking.

use crate::merge::MergeSummary;
use std::io::Write;

pub mod progress;

/// Write one line to stdout; exit 0 at once if the reader has gone away.
pub fn outln(s: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{s}")
        && e.kind() == std::io::ErrorKind::BrokenPipe
    {
        std::process::exit(0);
    }
}

/// `println!` that survives a closed pipe.
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::ui::outln(format_args!($($arg)*)) };
}

/// The merge's outcome on stderr (warnings, counts, missing and failed units) and the two paths on
/// stdout. Also what `roleplay run` prints after merging.
pub fn print_merge(s: &MergeSummary) {
    for w in crate::merge::scan::warnings(&s.stats) {
        eprintln!("{w}");
    }
    let st = &s.stats;
    if s.up_to_date {
        eprintln!("merge is up to date: no journal changed since the last merge");
    }
    eprintln!(
        "{} of {} planned dialogues merged ({} turns, {} failed, {} missing){}",
        st.finished,
        st.planned,
        s.turns,
        st.failed.count,
        st.missing.count,
        if s.up_to_date {
            String::new()
        } else {
            format!(" in {:.1}s", s.seconds)
        }
    );
    if !s.indicators {
        eprintln!("without the fidelity indicator columns (--no-indicators)");
    }
    if !st.failed.is_empty() {
        eprintln!("failed units (backend errors): {}", st.failed.describe());
    }
    if !st.missing.is_empty() {
        eprintln!("missing units (no finished record): {}", st.missing.describe());
    }
    if !s.complete() {
        if s.allow_partial {
            eprintln!("the files hold the finished dialogues only");
        } else {
            eprintln!(
                "the files were written all the same, with the finished dialogues only: a partial dataset (exit 1)"
            );
            eprintln!(
                "hint: finish the run (`roleplay run RUN_DIR`, or `roleplay resume RUN_DIR` on Slurm, with `--retry-failed` for failed units) and merge again, or pass `--allow-partial` to accept the partial dataset (exit 0)"
            );
        }
    }
    crate::outln!("{}", s.dialogues_path.display());
    crate::outln!("{}", s.turns_path.display());
}

/// What merging the judgements did, on stderr, and the file's path on stdout.
pub fn print_judgements(s: &crate::merge::judgements::JudgementsSummary) {
    if s.up_to_date {
        eprintln!("judgements are up to date: no judge journal changed since the last merge");
    }
    for (name, st) in &s.stages {
        eprintln!(
            "judge `{name}`: {} of {} verdicts ({} ok, {} unparsable, {} failed, {} missing)",
            st.judged, st.planned, st.ok, st.unparsable, st.failed.count, st.missing.count
        );
        if !st.damaged.is_empty() {
            eprintln!(
                "warning: skipped {} damaged journal record(s) at {}",
                st.damaged.count,
                st.damaged.describe()
            );
        }
    }
    crate::outln!("{}", s.path.display());
}

/// Failed dialogues grouped by model and kind, each with its count, one example message and the
/// hint that fixes it; then the models whose breaker stopped new dialogues.
pub fn print_failures(progress: &crate::worker::Progress, trips: &[crate::worker::breaker::Trip]) {
    let groups = progress.failures.lock().unwrap_or_else(|p| p.into_inner()).clone();
    if !groups.is_empty() {
        eprintln!("failed dialogues, by model and kind:");
        for ((model, kind), g) in &groups {
            eprintln!("  {model}: {} x{}: {}", kind.as_str(), g.count, g.example);
            eprintln!("    hint: {}", kind.hint());
        }
    }
    for t in trips {
        eprintln!("stopped: {t}");
        eprintln!("  hint: {}", t.kind.hint());
    }
}

/// Shards that stopped at their share of the budget: one line per shard for a few, a sum for many.
pub fn print_budget_stops(stops: &[(u32, &crate::worker::BudgetStop)]) {
    if stops.is_empty() {
        return;
    }
    let mut stops = stops.to_vec();
    stops.sort_by_key(|(shard, _)| *shard);
    if stops.len() <= 5 {
        for (shard, b) in &stops {
            eprintln!(
                "budget: shard {shard} stopped at its share of `budget.{}`: spent {}",
                b.cap,
                crate::budget::describe(&b.spent, &b.caps)
            );
        }
    } else {
        let mut spent = crate::budget::Usage::default();
        let mut caps: Vec<crate::experiment::Caps> = Vec::new();
        let mut keys: Vec<&str> = Vec::new();
        for (_, b) in &stops {
            spent.add(&b.spent);
            caps.push(b.caps);
            if !keys.contains(&b.cap) {
                keys.push(b.cap);
            }
        }
        let sum = crate::budget::sum_caps(&caps);
        eprintln!(
            "budget: {} shards stopped at their share of `budget.{}`: together they spent {}",
            stops.len(),
            keys.join("`, `budget."),
            crate::budget::describe(&spent, &sum)
        );
    }
    eprintln!(
        "hint: raise the caps in `[budget]` and run again with `--replan` (`roleplay run FILE --replan`): \
         every finished call and dialogue is kept"
    );
}
