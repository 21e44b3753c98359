//! Render options: what shapes the scripts beyond the experiment's `[slurm]` section (array limits
//! given by hand, `sim-server` arguments, template variables), how they are read from the command
//! line, checked, and stored in `RUN_DIR/slurm/render.json` so that later commands render alike.

use crate::error::{Error, Result};
use crate::rundir::{self, RunDir};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

/// How to render, beyond the experiment's `[slurm]` section. Stored in `RUN_DIR/slurm/render.json`
/// by the command that gives them, so that `submit` and `resume` render the same way later.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RenderOptions {
    /// MaxArraySize to respect instead of asking `scontrol show config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_size: Option<u32>,
    /// max_array_tasks to respect instead of asking `scontrol show config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_array_tasks: Option<u32>,
    /// Extra arguments of `roleplay sim-server` (the `sim` template), e.g. `--latency-ms=500`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sim_server_args: Vec<String>,
    /// Template variables (`vars.NAME` in a template).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub vars: BTreeMap<String, String>,
}

impl RenderOptions {
    fn path(rd: &RunDir) -> PathBuf {
        rd.render_options_path()
    }

    /// The options stored by an earlier render (none stored: the defaults).
    pub fn load(rd: &RunDir) -> Result<RenderOptions> {
        let path = RenderOptions::path(rd);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                Error::config(format!("`{}` is not valid ({e})", path.display()))
                    .with_hint("delete it and pass the render options again")
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RenderOptions::default()),
            Err(e) => Err(Error::io(format!("cannot read `{}`: {e}", path.display()), e)),
        }
    }

    /// These options where given, the stored ones elsewhere; stores the result when it changed.
    pub fn merged_with_stored(self, rd: &RunDir, store: bool) -> Result<RenderOptions> {
        let stored = RenderOptions::load(rd)?;
        let merged = RenderOptions {
            max_array_size: self.max_array_size.or(stored.max_array_size),
            max_array_tasks: self.max_array_tasks.or(stored.max_array_tasks),
            sim_server_args: if self.sim_server_args.is_empty() {
                stored.sim_server_args.clone()
            } else {
                self.sim_server_args
            },
            vars: if self.vars.is_empty() {
                stored.vars.clone()
            } else {
                self.vars
            },
        };
        merged.check()?;
        if store {
            merged.store(rd)?;
        }
        Ok(merged)
    }

    /// Save these options as the run's (`slurm/render.json`) if they differ from what is stored.
    /// Callers hold the submit lock, so a command the lock turns away changes nothing.
    pub fn store(&self, rd: &RunDir) -> Result<()> {
        if *self == RenderOptions::load(rd)? {
            return Ok(());
        }
        fs_err::create_dir_all(rd.slurm_dir())?;
        rundir::write_atomic(
            &RenderOptions::path(rd),
            &serde_json::to_vec_pretty(self).expect("serialisable"),
        )
    }

    pub fn check(&self) -> Result<()> {
        for (name, value) in [
            ("--max-array-size", self.max_array_size),
            ("--max-array-tasks", self.max_array_tasks),
        ] {
            if value == Some(0) {
                return Err(Error::config(format!("`{name}` must be at least 1")));
            }
        }
        for name in self.vars.keys() {
            let ok = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && name
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(
                    Error::config(format!("`--var {name}=...`: `{name}` is not a variable name"))
                        .with_hint("use lower-case letters, digits and `_`, starting with a letter"),
                );
            }
        }
        if let Some(v) = self.vars.get("vllm_start_timeout")
            && v.parse::<u32>().is_err()
        {
            return Err(Error::config(format!(
                "`--var vllm_start_timeout={v}` is not a number of seconds"
            )));
        }
        Ok(())
    }
}

/// Parses `NAME=VALUE` command-line variables.
pub fn parse_vars(items: &[String]) -> Result<BTreeMap<String, String>> {
    let mut vars = BTreeMap::new();
    for item in items {
        let (k, v) = item.split_once('=').ok_or_else(|| {
            Error::config(format!("`--var {item}` is not NAME=VALUE")).with_hint("e.g. `--var vllm_start_timeout=1800`")
        })?;
        vars.insert(k.trim().to_string(), v.to_string());
    }
    Ok(vars)
}
