//! `roleplay init [DIR]`: write a commented starter experiment that runs as is on the simulator.

use crate::cli::InitArgs;
use crate::error::{Error, Result};

/// The starter experiment: `jobs/quickstart.toml`, with its run directory beside the new file.
pub fn starter() -> String {
    include_str!("../../jobs/quickstart.toml")
        .replace("run_dir = \"../runs/quickstart\"", "run_dir = \"runs/experiment\"")
        .replace("name = \"quickstart\"", "name = \"experiment\"")
        .replace(
            "#   roleplay run jobs/quickstart.toml",
            "#   roleplay run experiment.toml",
        )
}

pub fn run(args: InitArgs) -> Result<i32> {
    let path = args.dir.join("experiment.toml");
    if path.exists() && !args.force {
        return Err(Error::config(format!("`{}` already exists", path.display()))
            .with_hint("pass `--force` to overwrite it, or choose another folder"));
    }
    fs_err::create_dir_all(&args.dir)?;
    crate::rundir::write_atomic(&path, starter().as_bytes())?;
    crate::outln!("wrote {}", path.display());
    eprintln!(
        "next: `roleplay validate {0}`, then `roleplay plan {0}`",
        path.display()
    );
    Ok(0)
}
