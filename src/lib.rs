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

/// Run one command line; returns the exit code for a run that completed (0, or 1 when some work
/// failed), or the error to render.
pub fn run(cli: cli::Cli) -> Result<i32> {
    use cli::Command;
    match cli.command {
        Command::Init(a) => commands::init::run(a),
        Command::Validate(a) => commands::validate::run(a),
        Command::Plan(a) => commands::plan::run(a),
        Command::Run(a) => commands::run::run(a),
        Command::Worker(a) => commands::worker::run(a),
        Command::Try(a) => commands::try_one::run(a),
        Command::SimServer(a) => commands::sim_server::run(a),
        Command::Merge(a) => commands::merge::run(a),
        Command::Report(a) => commands::report::run(a),
        Command::Export(a) => commands::export::run(a),
        Command::Compare(a) => commands::compare::run(a),
        Command::Judge(a) => commands::judge::run(a),
        Command::Render(a) => commands::render::run(a),
        Command::Submit(a) => commands::submit::run(a),
        Command::Status(a) => commands::status::run(a),
        Command::Resume(a) => commands::resume::run(a),
        Command::Cancel(a) => commands::cancel::run(a),
    }
}
