//! `roleplay export RUN_DIR --format FORMAT [-o FILE]`: the run's dialogues as JSON lines (see
//! `merge::export`), written atomically; `-o -` writes to stdout.

use crate::cli::ExportArgs;
use crate::error::{Error, Result, exit};
use crate::merge::export;
use crate::rundir::RunDir;
use std::io::Write;

pub fn run(args: ExportArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    let plan = rd.load_plan()?;
    let to_stdout = args.output.as_deref().is_some_and(|p| p.as_os_str() == "-");
    let e = if to_stdout {
        let stdout = std::io::stdout();
        let mut out = std::io::BufWriter::new(stdout.lock());
        match export::export(&rd, &plan, args.format, &mut out) {
            Err(e) if e.is_broken_pipe() => return Ok(exit::OK),
            other => other?,
        }
    } else {
        let path = match &args.output {
            Some(p) => p.clone(),
            None => {
                let out = rd.out_dir();
                fs_err::create_dir_all(&out)?;
                out.join(args.format.default_file())
            }
        };
        let pending = crate::merge::Pending::new(&path)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, pending.file());
        let e = export::export(&rd, &plan, args.format, &mut w)?;
        w.flush()
            .map_err(|e| Error::io(format!("cannot write `{}`: {e}", path.display()), e))?;
        drop(w);
        pending.commit()?;
        eprintln!("wrote {}", path.display());
        crate::outln!("{}", path.display());
        e
    };
    for w in crate::merge::scan::warnings(&e.stats) {
        eprintln!("{w}");
    }
    eprintln!(
        "{} dialogues exported as {} ({} failed and {} without turns left out; {} of {} planned units missing)",
        e.written,
        args.format.name(),
        e.skipped_failed,
        e.skipped_empty,
        e.stats.missing.count,
        e.stats.planned
    );
    if !e.stats.missing.is_empty() {
        eprintln!("missing units: {}", e.stats.missing.describe());
    }
    if !e.stats.failed.is_empty() {
        eprintln!("failed units: {}", e.stats.failed.describe());
    }
    if e.stats.complete() || args.allow_partial {
        Ok(exit::OK)
    } else {
        eprintln!("hint: finish the run first, or pass `--allow-partial` to accept a partial export");
        Ok(exit::FAILURES)
    }
}
