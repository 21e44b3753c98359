//! The local executor: every shard of a plan run on this machine, several at once, by one process
//! that shares model clients, the dialogue budget and the stop signal among them.

use super::{ShardOutcome, Shared};
use crate::error::Error;
use crate::plan::Plan;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use tokio::task::JoinSet;

/// How many shards to keep open at once: `requested`, else the experiment's `parallel_shards`,
/// else enough to keep `concurrency` dialogues in flight; never more than the plan has.
pub fn parallel_shards(plan: &Plan, requested: Option<u32>) -> u32 {
    let exp = &plan.experiment;
    let per_shard = plan.shards.iter().map(|s| s.units).max().unwrap_or(1).max(1);
    requested
        .or(exp.worker.parallel_shards)
        .unwrap_or_else(|| exp.worker.concurrency.div_ceil(per_shard) + 1)
        .clamp(1, plan.shards.len().max(1) as u32)
}

/// What running the shards gave.
pub struct LocalOutcome {
    /// Shards that ran to their end or to the stop signal.
    pub outcomes: Vec<ShardOutcome>,
    /// Shards that stopped with an error of their own (a locked shard, a full disk), in the order
    /// they stopped.
    pub errors: Vec<Error>,
    /// The stop signal came.
    pub cancelled: bool,
    /// Models whose breaker opened: their remaining dialogues were not started.
    pub trips: Vec<super::breaker::Trip>,
}

/// Run every shard of the plan, `parallel` at a time, until all are done or the stop signal.
/// One broken shard does not stop the others: `on_error` sees each error after the first as it
/// happens (the first is returned for the caller to render).
pub async fn run_all(shared: &Shared, parallel: u32, on_error: impl Fn(&Error)) -> LocalOutcome {
    let gate = Arc::new(tokio::sync::Semaphore::new(parallel as usize));
    let mut set = JoinSet::new();
    for shard in 0..shared.plan.shards.len() as u32 {
        let shared = shared.clone();
        let gate = gate.clone();
        set.spawn(async move {
            let _slot = gate.acquire_owned().await;
            if shared.cancel.is_cancelled() {
                return Ok(None);
            }
            let p = &shared.progress;
            p.shards_running.fetch_add(1, Ordering::Relaxed);
            let outcome = super::run_shard(&shared, shard).await;
            p.shards_running.fetch_sub(1, Ordering::Relaxed);
            if outcome.as_ref().is_ok_and(|o| !o.interrupted && o.halted == 0) {
                p.shards_done.fetch_add(1, Ordering::Relaxed);
            }
            outcome.map(Some)
        });
    }
    let mut outcomes = Vec::new();
    let mut errors: Vec<Error> = Vec::new();
    while let Some(res) = set.join_next().await {
        let e = match res {
            Ok(Ok(Some(o))) => {
                outcomes.push(o);
                continue;
            }
            Ok(Ok(None)) => continue,
            Ok(Err(e)) => e,
            Err(e) => Error::runtime(format!("a shard task failed: {e}")),
        };
        if !errors.is_empty() {
            on_error(&e);
        }
        errors.push(e);
    }
    LocalOutcome {
        outcomes,
        errors,
        cancelled: shared.cancel.is_cancelled(),
        trips: shared.breaker.trips(),
    }
}
