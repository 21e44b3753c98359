//! roleplay: goal-oriented, persona-based multi-turn dialogues between two LLMs, at cluster scale.
//!
//! Layout (README.md, "Architecture"): `experiment` (experiment files) and `plan` (grid expansion)
//! form a pure core; `rundir` owns the run directory and every file format in it; `dialogue` is the
//! method, `llm` its backends, `worker` runs shards; `merge`, `report` and `slurm` build on the
//! run directory; `commands` holds one thin module per subcommand and `ui` what they print.

pub mod budget;
pub mod cli;
pub mod commands;
pub mod dialogue;
pub mod error;
pub mod experiment;
pub mod judge;
pub mod judgement;
pub mod llm;
pub mod merge;
pub mod plan;
pub mod quality;
pub mod report;
pub mod rundir;
pub mod simserver;
pub mod slurm;
pub mod ui;
pub mod worker;

pub use error::{Error, Result};
