//! `roleplay report RUN_DIR [--json|--csv|--html [FILE]]`: the run summarised per pair, persona
//! feature value and goal (see `report`). Tables on stdout by default.

use crate::cli::ReportArgs;
use crate::error::{Error, Result};
use crate::report;
use crate::rundir::RunDir;
use std::io::Write;

pub fn run(args: ReportArgs) -> Result<i32> {
    let rd = RunDir::new(&args.run_dir);
    let plan = rd.load_plan()?;
    let r = report::build(&rd, &plan)?;
    for w in crate::merge::scan::warnings(&r.stats) {
        eprintln!("{w}");
    }
    if args.json {
        let json = serde_json::to_string_pretty(&r).map_err(|e| Error::runtime(e.to_string()))?;
        crate::outln!("{json}");
    } else if args.csv {
        let mut buf = Vec::new();
        r.write_csv(&mut buf)?;
        crate::outln!("{}", String::from_utf8_lossy(&buf).trim_end());
    } else if let Some(path) = args.html {
        let path = match path {
            Some(p) => p,
            None => {
                let out = rd.out_dir();
                fs_err::create_dir_all(&out)?;
                out.join("report.html")
            }
        };
        let pending = crate::merge::Pending::new(&path)?;
        let mut f = pending.file();
        f.write_all(report::html::render(&r).as_bytes())
            .map_err(|e| Error::io(format!("cannot write `{}`: {e}", path.display()), e))?;
        pending.commit()?;
        eprintln!("wrote {}", path.display());
        crate::outln!("{}", path.display());
    } else {
        crate::outln!("{}", report::text::render(&r).trim_end());
    }
    if r.missing > 0 {
        eprintln!(
            "note: {} of {} planned dialogues are not finished yet: the figures cover the finished ones",
            r.missing, r.planned
        );
    }
    Ok(0)
}
