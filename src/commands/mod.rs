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

/// Run one command line; returns the exit code for a run that completed (0, or 1 when some work
/// failed), or the error to render.
pub fn dispatch(cli: crate::cli::Cli) -> crate::Result<i32> {
    use crate::cli::Command;
    match cli.command {
        Command::Init(a) => init::run(a),
        Command::Validate(a) => validate::run(a),
        Command::Plan(a) => plan::run(a),
        Command::Run(a) => run::run(a),
        Command::Worker(a) => worker::run(a),
        Command::Try(a) => try_one::run(a),
        Command::SimServer(a) => sim_server::run(a),
        Command::Merge(a) => merge::run(a),
        Command::Report(a) => report::run(a),
        Command::Export(a) => export::run(a),
        Command::Compare(a) => compare::run(a),
        Command::Judge(a) => judge::run(a),
        Command::Render(a) => render::run(a),
        Command::Submit(a) => submit::run(a),
        Command::Status(a) => status::run(a),
        Command::Resume(a) => resume::run(a),
        Command::Cancel(a) => cancel::run(a),
    }
}

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

/// How `run` and `judge` run a plan's shards on this machine (their shared flags).
pub(crate) struct Here {
    pub retry_failed: bool,
    pub no_fsync: bool,
    pub parallel_shards: Option<u32>,
    pub no_progress: bool,
}

/// What running the shards here came to.
pub(crate) struct RanHere {
    pub ran: crate::worker::local::LocalOutcome,
    /// This process's counters.
    pub progress: std::sync::Arc<crate::worker::Progress>,
    pub elapsed: std::time::Duration,
    /// Kept until the command ends: its signal handler goes on telling a Ctrl-C during the merge.
    pub runtime: tokio::runtime::Runtime,
}

/// Run every shard of the plan in `rd` here, with the progress display, until done or stopped
/// (Ctrl-C): the local executor behind `run` and `judge`.
pub(crate) fn run_here(
    rd: &crate::rundir::RunDir,
    plan: &std::sync::Arc<crate::plan::Plan>,
    here: Here,
) -> crate::Result<RanHere> {
    use crate::worker::{self, Options, Shared, local, signals::Cancel};
    let parallel = local::parallel_shards(plan, here.parallel_shards);
    let options = Options {
        retry_failed: here.retry_failed,
        durable: !here.no_fsync,
        grace: std::time::Duration::from_secs_f64(plan.experiment.worker.grace_secs),
        slurm_job_id: None,
    };
    let before = offline_totals(rd)?;
    let start = crate::ui::progress::Start {
        total: before.units,
        // Failed units run again with `--retry-failed`: they are not done yet.
        done_before: before.done + if here.retry_failed { 0 } else { before.failed },
        shards: plan.shards.len() as u64,
    };
    let rt = runtime()?;
    let started = std::time::Instant::now();
    let (ran, progress) = rt.block_on(async {
        let cancel = Cancel::new();
        worker::signals::install(&cancel)?;
        let shared = Shared::new(rd.clone(), plan.clone(), options, cancel, crate::llm::client_for)?;
        let display = crate::ui::progress::Display::start(shared.progress.clone(), start, here.no_progress);
        let ran = local::run_all(&shared, parallel, |e| display.println(&e.to_string())).await;
        display.finish();
        Ok::<_, crate::Error>((ran, shared.progress.clone()))
    })?;
    Ok(RanHere {
        ran,
        progress,
        elapsed: started.elapsed(),
        runtime: rt,
    })
}

/// Unit totals from a run's (or a judge stage's) records, as `status --offline` counts them.
pub(crate) fn offline_totals(rd: &crate::rundir::RunDir) -> crate::Result<crate::slurm::status::Totals> {
    let ctx = crate::slurm::render::RunCtx::open(&rd.root)?;
    let subs = crate::slurm::records::Submissions::read(&ctx.rd)?;
    let opts = crate::slurm::status::StatusOptions {
        offline: true,
        ..Default::default()
    };
    Ok(crate::slurm::status::collect(&ctx, None, &subs, &opts).units)
}
