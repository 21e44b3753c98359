//! Command-line types (clap derive) and nothing else: commands turn these into validated calls.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Goal-oriented, persona-based multi-turn dialogues between two LLMs, at cluster scale.
///
/// An inquirer model plays a persona pursuing a goal; a responder model is the chatbot under
/// study (the LLM Roleplay method of Tamoyan, Schuff and Gurevych, 2024). An experiment file
/// (TOML) names personas, goals, models and seeds; `roleplay plan` expands it into a run
/// directory of content-addressed work units.
///
/// Exit codes: 0 ok, 1 finished with failures, 2 usage or configuration error,
/// 75 interrupted but resumable.
#[derive(Debug, Parser)]
#[command(name = "roleplay", version, propagate_version = true, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter experiment that runs as is on the built-in simulator.
    Init(InitArgs),
    /// Check an experiment file (and the persona and goal files it names) without writing anything.
    Validate(ValidateArgs),
    /// Expand an experiment into work units and shards, and write the plan into its run directory.
    ///
    /// Planning an unchanged experiment again does nothing. A changed experiment is refused unless
    /// `--replan` is given; then units whose ids did not change keep their finished work.
    Plan(PlanArgs),
}

#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Folder to write `experiment.toml` into (created if missing).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Overwrite an existing `experiment.toml`.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, clap::Args)]
pub struct ValidateArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct PlanArgs {
    /// The experiment file (TOML).
    pub file: PathBuf,
    /// Run directory to write the plan into (default: the experiment's `run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Print the grid and shard sizes; write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Replace an existing, different plan; finished work of unchanged units is kept.
    #[arg(long)]
    pub replan: bool,
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// An experiment file (TOML) or a run directory made by `roleplay plan`.
    pub target: PathBuf,
    /// Run directory to use (default: the experiment's `run_dir`).
    #[arg(long)]
    pub run_dir: Option<PathBuf>,
    /// Replace an existing, different plan first (see `roleplay plan --replan`).
    #[arg(long)]
    pub replan: bool,
    /// Run dialogues that ended with a backend failure again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Shards open at once (default: enough to keep `worker.concurrency` dialogues in flight).
    #[arg(long)]
    pub parallel_shards: Option<u32>,
    /// Plain log lines instead of a progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// Do not fsync the journal (faster, loses the last moments on a machine crash; for benchmarks).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
}

#[derive(Debug, clap::Args)]
pub struct WorkerArgs {
    /// The run directory.
    pub run_dir: PathBuf,
    /// The shard to run (default: from SLURM_ARRAY_TASK_ID through `--array-map`).
    #[arg(long)]
    pub shard: Option<u32>,
    /// JSON map from array task index to shard (`{"shards": [...]}`), written by `roleplay render`.
    #[arg(long)]
    pub array_map: Option<PathBuf>,
    /// Run dialogues that ended with a backend failure again.
    #[arg(long)]
    pub retry_failed: bool,
    /// Do not fsync the journal (for benchmarks).
    #[arg(long, hide = true)]
    pub no_fsync: bool,
}
