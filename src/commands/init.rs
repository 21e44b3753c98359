//! `roleplay init [DIR]`: write a commented starter experiment that runs as is on the simulator.

use crate::cli::InitArgs;
use crate::error::{Error, Result};
use std::path::Path;

/// The starter experiment: the quickstart's grid and models under a header of its own, named
/// after its folder when that makes a usable name, with the run directory left to its default
/// (`runs/<name>` beside the file), so that renaming the experiment renames its run directory.
pub fn starter(name: &str) -> String {
    let quickstart = include_str!("../../jobs/quickstart.toml");
    let body = quickstart
        .split_once("\nname = \"quickstart\"\n")
        .map_or(quickstart, |(_, rest)| rest);
    let body = body.trim_start_matches("run_dir = \"../runs/quickstart\"\n");
    format!(
        "# A starter experiment written by `roleplay init`. It runs as is on the built-in simulator (no\n\
         # server, no GPU, no key), which only looks like a conversation: point the models at real\n\
         # endpoints to generate data (README.md, \"Experiment file reference\"; jobs/paper.toml is the\n\
         # paper's experiment).\n\
         #\n\
         #   roleplay validate experiment.toml\n\
         #   roleplay run experiment.toml\n\
         \n\
         name = \"{name}\"\n\
         # The run directory defaults to runs/{name} beside this file (runs/<name>); set `run_dir` to\n\
         # put it elsewhere.\n\
         {body}"
    )
}

/// The folder's name when it can name an experiment (letters, digits, `-_.`, starting with a
/// letter or digit), else `experiment`.
fn name_for(dir: &Path) -> String {
    let folder = std::path::absolute(dir)
        .ok()
        .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
    match folder {
        Some(n)
            if n.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
                && n.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) =>
        {
            n
        }
        _ => "experiment".to_string(),
    }
}

pub fn run(args: InitArgs) -> Result<i32> {
    let path = args.dir.join("experiment.toml");
    if path.exists() && !args.force {
        return Err(Error::config(format!("`{}` already exists", path.display()))
            .with_hint("pass `--force` to overwrite it, or choose another folder"));
    }
    fs_err::create_dir_all(&args.dir)?;
    crate::rundir::write_atomic(&path, starter(&name_for(&args.dir)).as_bytes())?;
    crate::outln!("wrote {}", path.display());
    eprintln!("next: `roleplay validate {0}`, then `roleplay run {0}`", path.display());
    Ok(0)
}
