//! The progress display of the local executor: an indicatif bar on a terminal, a log line every
//! few seconds otherwise.
//!
//! Both count the plan's units, not the shards opened so far: the total is the plan's, the
//! position starts at what earlier runs finished (read from the run's records, as `status` reads
//! them), and the rate and the ETA come from what this run finished per second, so a resumed run
//! neither starts at zero nor claims an ETA from work it did not do.

use crate::worker::Progress;
use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Where the run stands when the display starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Units in the plan.
    pub total: u64,
    /// Units finished before this run (failed ones included).
    pub done_before: u64,
    /// Shards in the plan.
    pub shards: u64,
}

pub struct Display {
    bar: Option<indicatif::ProgressBar>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Display {
    pub fn start(progress: Arc<Progress>, start: Start, disabled: bool) -> Display {
        let (stop, mut stop_rx) = tokio::sync::watch::channel(false);
        let tty = std::io::stderr().is_terminal() && !disabled;
        let bar = tty.then(|| {
            let bar = indicatif::ProgressBar::new(start.total);
            bar.set_style(
                indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} dialogues  {msg}")
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
            );
            bar.set_position(start.done_before);
            bar
        });
        let task_bar = bar.clone();
        tokio::spawn(async move {
            let began = Instant::now();
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
                let line = Line::now(&progress, start, began.elapsed());
                match &task_bar {
                    Some(bar) => {
                        bar.set_position(line.position);
                        bar.set_message(line.message());
                    }
                    None => eprintln!(
                        "progress: {}/{} dialogues ({:.1}%), {}",
                        line.position,
                        start.total,
                        line.percent(),
                        line.message()
                    ),
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

/// One refresh of the display.
#[derive(Debug, Clone, PartialEq)]
struct Line {
    total: u64,
    /// Finished units, before and in this run.
    position: u64,
    /// Finished in this run.
    now: u64,
    failed: u64,
    per_sec: f64,
    shards_running: u64,
    shards_done: u64,
    shards: u64,
    failure_kinds: Vec<(&'static str, u64)>,
}

impl Line {
    fn now(p: &Progress, start: Start, elapsed: Duration) -> Line {
        let now = p.finished.load(Ordering::Relaxed);
        Line {
            total: start.total,
            position: (start.done_before + now).min(start.total),
            now,
            failed: p.failed.load(Ordering::Relaxed),
            per_sec: now as f64 / elapsed.as_secs_f64().max(1e-3),
            shards_running: p.shards_running.load(Ordering::Relaxed),
            shards_done: p.shards_done.load(Ordering::Relaxed),
            shards: start.shards,
            failure_kinds: p
                .failure_kinds
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .map(|(k, v)| (*k, *v))
                .collect(),
        }
    }

    fn percent(&self) -> f64 {
        if self.total == 0 {
            100.0
        } else {
            100.0 * self.position as f64 / self.total as f64
        }
    }

    /// The ETA from this run's rate; `None` before its first finished dialogue.
    fn eta(&self) -> Option<Duration> {
        (self.now > 0 && self.per_sec > 0.0)
            .then(|| Duration::from_secs_f64((self.total - self.position) as f64 / self.per_sec))
    }

    fn message(&self) -> String {
        let eta = match self.eta() {
            Some(d) => format!("eta {}", clock(d)),
            None => "eta --".to_string(),
        };
        let failed = if self.failure_kinds.is_empty() {
            format!("{} failed", self.failed)
        } else {
            let by: Vec<String> = self.failure_kinds.iter().map(|(k, v)| format!("{k} {v}")).collect();
            format!("{} failed ({})", self.failed, by.join(", "))
        };
        format!(
            "{:.2}/s  shards {} running, {} of {} done  {failed}  {eta}",
            self.per_sec, self.shards_running, self.shards_done, self.shards
        )
    }
}

/// `1h02m`, `3m05s`, `42s`.
fn clock(d: Duration) -> String {
    let s = d.as_secs();
    match (s / 3600, s % 3600 / 60, s % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, s) => format!("{m}m{s:02}s"),
        (h, m, _) => format!("{h}h{m:02}m"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_total_is_the_plans_and_the_eta_comes_from_this_runs_rate() {
        let p = Progress::default();
        let start = Start {
            total: 5000,
            done_before: 1000,
            shards: 50,
        };
        let line = Line::now(&p, start, Duration::from_secs(10));
        assert_eq!((line.position, line.total), (1000, 5000));
        assert_eq!(line.eta(), None, "no ETA before this run finished anything");
        assert!(line.message().contains("eta --"));
        p.finished.store(400, Ordering::Relaxed);
        p.shards_running.store(4, Ordering::Relaxed);
        let line = Line::now(&p, start, Duration::from_secs(100));
        assert_eq!(line.position, 1400);
        // 400 in 100 s: 4/s; 3,600 left: 900 s.
        assert_eq!(line.eta(), Some(Duration::from_secs(900)));
        assert!(line.message().contains("eta 15m00s"), "{}", line.message());
        assert!(
            line.message().contains("shards 4 running, 0 of 50 done"),
            "{}",
            line.message()
        );
        assert!((line.percent() - 28.0).abs() < 1e-9);
    }

    #[test]
    fn clocks() {
        assert_eq!(clock(Duration::from_secs(42)), "42s");
        assert_eq!(clock(Duration::from_secs(185)), "3m05s");
        assert_eq!(clock(Duration::from_secs(3720)), "1h02m");
    }
}
