//! One stop signal for the whole process. SIGTERM, SIGINT, SIGUSR1 and SIGUSR2 all mean the same
//! thing (Slurm sends TERM on preemption, `--signal=B:USR2@N` before the time limit; NCCL may
//! catch USR1): stop starting work, checkpoint, exit resumable.

use tokio::sync::watch;

/// A cloneable stop flag that tasks can await.
#[derive(Clone, Debug)]
pub struct Cancel {
    tx: std::sync::Arc<watch::Sender<Option<String>>>,
    rx: watch::Receiver<Option<String>>,
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
        }
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

    /// Resolves once the stop was asked for.
    pub async fn cancelled(&mut self) {
        let _ = self.rx.wait_for(|v| v.is_some()).await;
    }
}

/// Turn the four stop signals into `cancel`. Must be called inside a tokio runtime.
pub fn install(cancel: &Cancel) -> crate::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let kinds = [
        (SignalKind::terminate(), "SIGTERM"),
        (SignalKind::interrupt(), "SIGINT"),
        (SignalKind::user_defined1(), "SIGUSR1"),
        (SignalKind::user_defined2(), "SIGUSR2"),
    ];
    for (kind, name) in kinds {
        let mut s = signal(kind).map_err(|e| crate::Error::runtime(format!("cannot handle {name}: {e}")))?;
        let cancel = cancel.clone();
        tokio::spawn(async move {
            if s.recv().await.is_some() {
                eprintln!("{name} received: finishing in-flight calls, then stopping (run again to resume)");
                cancel.cancel(name);
            }
        });
    }
    Ok(())
}
