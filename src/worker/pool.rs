//! Keeping a shard's tasks in flight: started while permits, the breaker and the stop signal allow,
//! then drained with the stop's grace period. Dialogue shards and judge shards share it.

use super::signals::Cancel;
use crate::error::{Error, Result};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};

/// The tasks of one shard run, and what their ends said.
pub(crate) struct Flight<T, F> {
    set: JoinSet<T>,
    cancel: Cancel,
    grace: Duration,
    /// Takes a finished task's value; an error stops the run (the first one is kept).
    on_done: F,
    /// Names the tasks in the error of one that panicked.
    what: &'static str,
    first_error: Option<Error>,
    interrupted: bool,
}

impl<T: Send + 'static, F: FnMut(T) -> Result<()>> Flight<T, F> {
    pub(crate) fn new(cancel: Cancel, grace: Duration, what: &'static str, on_done: F) -> Self {
        Flight {
            set: JoinSet::new(),
            cancel,
            grace,
            on_done,
            what,
            first_error: None,
            interrupted: false,
        }
    }

    fn done(on_done: &mut F, first_error: &mut Option<Error>, what: &str, res: std::result::Result<T, JoinError>) {
        let res = match res {
            Ok(value) => on_done(value),
            Err(e) if e.is_cancelled() => Ok(()),
            Err(e) => Err(Error::runtime(format!("a {what} task failed: {e}"))),
        };
        if let Err(e) = res {
            first_error.get_or_insert(e);
        }
    }

    /// Start a task per item, each holding a permit, until the items end, the stop signal, an
    /// error, or `may_start` says no (an open breaker, a reached budget). Tasks that finish while
    /// the next waits for its permit are taken as they come. Returns how many were started.
    pub(crate) async fn feed<I, Fut>(
        &mut self,
        permits: &Arc<Semaphore>,
        items: impl IntoIterator<Item = I>,
        may_start: impl Fn() -> bool,
        mut task: impl FnMut(I) -> Fut,
    ) -> u64
    where
        Fut: Future<Output = T> + Send + 'static,
    {
        let mut started = 0;
        let mut items = items.into_iter();
        loop {
            if self.first_error.is_some() || self.cancel.is_cancelled() || !may_start() {
                break;
            }
            let Some(item) = items.next() else { break };
            let Flight {
                set,
                cancel,
                on_done,
                what,
                first_error,
                ..
            } = self;
            let permit = loop {
                tokio::select! {
                    biased;
                    _ = cancel.cancelled() => break None,
                    Some(res) = set.join_next(), if !set.is_empty() => Self::done(on_done, first_error, what, res),
                    p = permits.clone().acquire_owned() => break p.ok(),
                }
            };
            let Some(permit) = permit else { break };
            if self.first_error.is_some() || !may_start() {
                break;
            }
            started += 1;
            let fut = task(item);
            self.set.spawn(async move {
                let _permit = permit;
                fut.await
            });
        }
        started
    }

    /// Wait for the tasks in flight. On a stop they get the grace period (counted from when the
    /// stop is first seen; no new request starts in them), then are abandoned; a second signal
    /// abandons them at once, and so does an error. Returns whether the stop signal came, or the
    /// first error.
    pub(crate) async fn drain(mut self) -> Result<bool> {
        if self.cancel.is_cancelled() {
            self.interrupted = true;
        }
        let mut deadline: Option<tokio::time::Instant> = None;
        let Flight {
            set,
            cancel,
            on_done,
            what,
            first_error,
            interrupted,
            grace,
        } = &mut self;
        while !set.is_empty() {
            if first_error.is_some() || cancel.is_cancelled_now() {
                set.abort_all();
            }
            if deadline.is_none() && (*interrupted || cancel.is_cancelled()) {
                deadline = Some(tokio::time::Instant::now() + *grace);
            }
            let next = match deadline {
                Some(at) => tokio::select! {
                    n = tokio::time::timeout_at(at, set.join_next()) => match n {
                        Ok(n) => n,
                        Err(_) => {
                            set.abort_all();
                            // Tasks that finished just before the abort still get their record.
                            while let Some(res) = set.join_next().await {
                                Self::done(on_done, first_error, what, res);
                            }
                            break;
                        }
                    },
                    _ = cancel.cancelled_now() => { set.abort_all(); continue; }
                },
                None => tokio::select! {
                    n = set.join_next() => n,
                    _ = cancel.cancelled() => { *interrupted = true; continue; }
                },
            };
            match next {
                Some(res) => Self::done(on_done, first_error, what, res),
                None => break,
            }
        }
        match self.first_error.take() {
            Some(e) => Err(e),
            None => Ok(self.interrupted || self.cancel.is_cancelled()),
        }
    }
}
