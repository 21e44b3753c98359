//! The progress display of the local executor: an indicatif bar on a terminal, a log line every
//! few seconds otherwise.

use crate::worker::Progress;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Progress: an indicatif bar on a terminal, a log line every few seconds otherwise.
pub struct Display {
    bar: Option<indicatif::ProgressBar>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Display {
    pub fn start(progress: Arc<Progress>, disabled: bool) -> Display {
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

    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    pub fn finish(&self) {
        let _ = self.stop.send(true);
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
