//! One module per subcommand: each turns CLI arguments into calls on the core and prints.
//! `slurm_ui` holds what the Slurm commands share; no command calls another.

pub mod cancel;
pub mod compare;
pub mod export;
pub mod init;
pub mod judge;
pub mod merge;
pub mod plan;
pub mod render;
pub mod report;
pub mod resume;
pub mod run;
pub mod sim_server;
mod slurm_ui;
pub mod status;
pub mod submit;
pub mod try_one;
pub mod validate;
pub mod worker;

/// An experiment file loaded and checked as every command that takes one checks it: resolution
/// (every key and cross-field rule) and the `[slurm]` template file rendered once with sample
/// values, so that no command accepts what `render` would refuse.
pub fn load_experiment(file: &std::path::Path) -> crate::Result<crate::experiment::Loaded> {
    let loaded = crate::experiment::load(file)?;
    crate::slurm::render::check_template_of(&loaded)?;
    for w in &loaded.warnings {
        eprintln!("warning: {w}");
    }
    Ok(loaded)
}

/// The async runtime for commands that talk to models: a multi-threaded tokio runtime.
pub fn runtime() -> crate::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| crate::Error::runtime(format!("cannot start the async runtime: {e}")))
}
