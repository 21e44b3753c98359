//! One stop signal for the whole process. SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 all mean the same
//! thing (Slurm sends TERM on preemption, `--signal=B:USR2@N` before the time limit; NCCL may
//! catch USR1): start no new request, let the requests in flight finish within the grace,
//! checkpoint, exit resumable. A second signal ends the wait at once (the requests in flight are
//! dropped; what they would have answered is asked again on resume).

use tokio::sync::watch;

/// A cloneable stop flag that tasks can await.
#[derive(Clone, Debug)]
pub struct Cancel {
    tx: std::sync::Arc<watch::Sender<Option<String>>>,
    rx: watch::Receiver<Option<String>>,
    /// Set by a second signal: stop waiting for requests in flight.
    now: std::sync::Arc<watch::Sender<bool>>,
}

impl Default for Cancel {
    fn default() -> Self {
        Self::new()
    }
}

impl Cancel {
    pub fn new() -> Cancel {
        let (tx, rx) = watch::channel(None);
        Cancel {
            tx: std::sync::Arc::new(tx),
            rx,
            now: std::sync::Arc::new(watch::channel(false).0),
        }
    }

    /// Stop waiting for the requests in flight (a second signal); implies [`Cancel::cancel`].
    pub fn cancel_now(&self, why: &str) {
        self.cancel(why);
        self.now.send_replace(true);
    }

    pub fn is_cancelled_now(&self) -> bool {
        *self.now.borrow()
    }

    /// Resolves once [`Cancel::cancel_now`] was called.
    pub async fn cancelled_now(&self) {
        let mut rx = self.now.subscribe();
        let _ = rx.wait_for(|v| *v).await;
    }

    /// Ask everything to stop; `why` names the signal for the log.
    pub fn cancel(&self, why: &str) {
        self.tx.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(why.to_string());
                true
            } else {
                false
            }
        });
    }

    pub fn is_cancelled(&self) -> bool {
        self.rx.borrow().is_some()
    }

    /// This stop as the model backends see it (set by [`Cancel::cancel`]).
    pub fn halt(&self) -> crate::llm::Halt {
        crate::llm::Halt::of(self.rx.clone())
    }

    /// Resolves once the stop was asked for.
    pub async fn cancelled(&mut self) {
        let _ = self.rx.wait_for(|v| v.is_some()).await;
    }
}

/// Signals closer together than this are one stop (Slurm may signal a worker directly and through
/// the batch script that forwards it); a person pressing Ctrl-C twice is slower.
const SAME_SIGNAL: std::time::Duration = std::time::Duration::from_millis(250);

/// Turn the four stop signals into `cancel`. Must be called inside a tokio runtime.
pub fn install(cancel: &Cancel) -> crate::error::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ];
    let first_at: std::sync::Arc<std::sync::OnceLock<std::time::Instant>> = Default::default();
    for (kind, name) in kinds {
        let mut s = signal(kind).map_err(|e| crate::error::Error::runtime(format!("cannot handle {name}: {e}")))?;
        let cancel = cancel.clone();
        let first_at = first_at.clone();
        tokio::spawn(async move {
            while s.recv().await.is_some() {
                let first = *first_at.get_or_init(std::time::Instant::now);
                if cancel.is_cancelled() {
                    if first.elapsed() < SAME_SIGNAL {
                        // The same stop delivered twice (a batch script forwarding the signal
                        // its job also got), not a second request.
                        continue;
                    }
                    eprintln!("{name} received again: stopping now; calls in flight are asked again on resume");
                    cancel.cancel_now(name);
                } else {
                    eprintln!(
                        "{name} received: no new request starts; waiting for those in flight, then stopping \
                         (send it again to stop at once; run again to resume)"
                    );
                    cancel.cancel(name);
                }
            }
        });
    }
    Ok(())
}
