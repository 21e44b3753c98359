//! `roleplay run FILE_OR_RUN_DIR`: the local executor. Plans if needed, runs every shard on this
//! machine, shows progress, survives Ctrl-C, and resumes when run again.

use crate::cli::RunArgs;
use crate::error::{Result, exit};
use crate::store::RunDir;
use crate::worker::{self, Options, Progress, ShardOutcome, Shared, signals::Cancel};
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::task::JoinSet;

pub fn run(args: RunArgs) -> Result<i32> {
    // A folder is a run directory (load_plan says so if it is not one); a file is an experiment.
    let rd = if args.target.is_dir() {
        RunDir::new(&args.target)
    } else {
        let planned = super::plan::plan_experiment(&args.target, args.run_dir.as_deref(), args.replan, false)?;
        if planned.status != "unchanged" {
            super::plan::print_planned(&planned);
        }
        RunDir::new(planned.run_dir)
    };
    let plan = Arc::new(rd.load_plan()?);
    let exp = &plan.experiment;
    let per_shard = plan.shards.iter().map(|s| s.units).max().unwrap_or(1).max(1);
    // Enough shards open at once to keep `concurrency` dialogues in flight.
    let parallel = args
        .parallel_shards
        .or(exp.worker.parallel_shards)
        .unwrap_or_else(|| exp.worker.concurrency.div_ceil(per_shard) + 1)
        .clamp(1, plan.shards.len().max(1) as u32);
    let options = Options {
        retry_failed: args.retry_failed,
        durable: !args.no_fsync,
        grace: Duration::from_secs_f64(exp.worker.grace_secs),
        slurm_job_id: None,
    };
    let rt = super::runtime()?;
    let started = Instant::now();
    let (outcomes, errors, cancelled, progress) = rt.block_on(async {
        let cancel = Cancel::new();
        worker::signals::install(&cancel)?;
        let shared = Shared::new(
            rd.clone(),
            plan.clone(),
            options,
            cancel.clone(),
            crate::llm::client_for,
        )?;
        let display = Display::start(shared.progress.clone(), args.no_progress);
        let gate = Arc::new(tokio::sync::Semaphore::new(parallel as usize));
        let mut set = JoinSet::new();
        for shard in 0..plan.shards.len() as u32 {
            let shared = shared.clone();
            let gate = gate.clone();
            set.spawn(async move {
                let _slot = gate.acquire_owned().await;
                if shared.cancel.is_cancelled() {
                    return Ok(None);
                }
                worker::run_shard(&shared, shard).await.map(Some)
            });
        }
        let mut outcomes: Vec<ShardOutcome> = Vec::new();
        let mut errors = Vec::new();
        while let Some(res) = set.join_next().await {
            match res {
                Ok(Ok(Some(o))) => outcomes.push(o),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    // One broken shard (a locked one, a full disk) should not hide the others' work;
                    // the first error is returned (and printed once, by main), the rest shown here.
                    if !errors.is_empty() {
                        display.println(&format!("{e}"));
                    }
                    errors.push(e);
                }
                Err(e) => errors.push(crate::Error::runtime(format!("a shard task failed: {e}"))),
            }
        }
        display.finish();
        Ok::<_, crate::Error>((outcomes, errors, cancel.is_cancelled(), shared.progress.clone()))
    })?;

    let total: u64 = plan.total_units;
    let failed: u64 = outcomes.iter().map(|o| o.failed).sum();
    let reasons = progress.end_reasons.lock().unwrap_or_else(|p| p.into_inner()).clone();
    // From the live counters, so shards that stopped with an error still count what they finished.
    let finished_now: u64 = reasons.values().sum();
    let done: u64 = progress.done.load(Ordering::Relaxed);
    let reasons: Vec<String> = reasons.iter().map(|(k, v)| format!("{k} {v}")).collect();
    eprintln!(
        "{done} of {total} dialogues finished ({finished_now} in this run, {:.1}s), {failed} failed",
        started.elapsed().as_secs_f64()
    );
    if !reasons.is_empty() {
        eprintln!("end reasons (this run): {}", reasons.join(", "));
    }
    crate::outln!("run directory: {}", rd.root.display());
    if let Some(e) = errors.into_iter().next() {
        return Err(e);
    }
    if cancelled && done < total {
        eprintln!("interrupted: run the same command again to resume");
        return Ok(exit::INTERRUPTED);
    }
    // The dataset is what the user came for: merge what finished (a partial merge is fine here;
    // missing and failed units are listed, and this command's exit code says whether all is done).
    match crate::merge::merge_run(&rd, true) {
        Ok(m) => super::merge::print_summary(&m),
        Err(e) => {
            eprintln!("{e}");
            return Ok(exit::FAILURES);
        }
    }
    if failed > 0 {
        eprintln!(
            "hint: `roleplay run {} --retry-failed` runs the failed dialogues again",
            rd.root.display()
        );
        return Ok(exit::FAILURES);
    }
    Ok(exit::OK)
}

/// Progress: an indicatif bar on a terminal, a log line every few seconds otherwise.
struct Display {
    bar: Option<indicatif::ProgressBar>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Display {
    fn start(progress: Arc<Progress>, disabled: bool) -> Display {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let tty = std::io::stderr().is_terminal() && !disabled;
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} dialogues  {msg}  eta {eta}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar
        });
        let task_bar = bar.clone();
        tokio::spawn(async move {
            let started = Instant::now();
            let every = if task_bar.is_some() {
                Duration::from_millis(200)
            } else {
                Duration::from_secs(10)
            };
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop_rx.changed() => break,
                }
                let (done, total, failed) = (
                    progress.done.load(Ordering::Relaxed),
                    progress.total.load(Ordering::Relaxed),
                    progress.failed.load(Ordering::Relaxed),
                );
                let rate =
                    progress.calls.load(Ordering::Relaxed) as f64 / 2.0 / started.elapsed().as_secs_f64().max(1e-3);
                let kinds = progress.failure_kinds.lock().unwrap_or_else(|p| p.into_inner()).clone();
                let msg = if kinds.is_empty() {
                    format!("{rate:.1} turns/s  {failed} failed")
                } else {
                    let by: Vec<String> = kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
                    format!("{rate:.1} turns/s  {failed} failed ({})", by.join(", "))
                };
                match &task_bar {
                    Some(bar) => {
                        bar.set_length(total);
                        bar.set_position(done);
                        bar.set_message(msg);
                    }
                    None => eprintln!("progress: {done}/{total} dialogues, {msg}"),
                }
            }
        });
        Display { bar, stop }
    }

    fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    fn finish(&self) {
        let _ = self.stop.send(true);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
