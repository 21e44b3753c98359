//! A model served by several replicas of one server (`base_url = [...]`): one client per replica
//! behind one [`ChatModel`].
//!
//! - **Sticky.** A dialogue's requests go to the replica it started on, so the replica's prefix
//!   cache stays warm for its growing history.
//! - **Least loaded.** A new dialogue goes to the healthy replica with the fewest requests in flight
//!   (ties to the lowest index: deterministic for a quiet pool).
//! - **Out and back in.** A replica whose request fails as unreachable, or runs out of retries on
//!   5xx and timeouts, is taken out for [`COOLDOWN`]; after it, the next request that picks it is
//!   a probe: an answer takes it back in, another failure out again. The request that failed is
//!   sent again at once to another replica, and its dialogue stays there: it goes on from its
//!   journal as if nothing happened. Only when every replica failed does the engine see the error.
//! - **Truthful counts.** The requests a failed replica took are added to the call's `attempts`, so
//!   a dialogue's `http_attempts` is still every request sent, on any replica.
//!
//! Endpoints are not part of unit ids: adding or removing a replica changes where requests go,
//! never what is generated.

use super::{BoxFuture, CallError, ChatModel, Completion, ErrorKind, Halt, Request};
use crate::plan::UnitId;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long a replica that failed stays out before it is probed again.
pub const COOLDOWN: Duration = Duration::from_secs(10);

struct Replica {
    url: String,
    client: Arc<dyn ChatModel>,
    in_flight: AtomicUsize,
    /// Out until then (`None`: in).
    out_until: Mutex<Option<Instant>>,
}

impl Replica {
    fn is_in(&self, now: Instant) -> bool {
        self.out_until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_none_or(|t| now >= t)
    }
}

pub struct Pool {
    name: String,
    replicas: Vec<Replica>,
    /// The replica each dialogue sticks to.
    sticky: Mutex<HashMap<UnitId, usize>>,
}

impl Pool {
    /// A pool of `(url, client)` replicas of model `name` (at least one).
    pub fn new(name: &str, replicas: Vec<(String, Arc<dyn ChatModel>)>) -> Pool {
        Pool {
            name: name.to_string(),
            replicas: replicas
                .into_iter()
                .map(|(url, client)| Replica {
                    url,
                    client,
                    in_flight: AtomicUsize::new(0),
                    out_until: Mutex::new(None),
                })
                .collect(),
            sticky: Mutex::new(HashMap::new()),
        }
    }

    /// The replica for `unit`: its own if in, else the least loaded one that is in and not yet
    /// `tried` (every one out: the one back soonest, as a probe).
    fn pick(&self, unit: UnitId, tried: &[usize]) -> Option<usize> {
        let now = Instant::now();
        let mut sticky = self.sticky.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(&i) = sticky.get(&unit)
            && !tried.contains(&i)
            && self.replicas[i].is_in(now)
        {
            return Some(i);
        }
        let candidates = (0..self.replicas.len()).filter(|i| !tried.contains(i));
        let healthy = candidates
            .clone()
            .filter(|&i| self.replicas[i].is_in(now))
            .min_by_key(|&i| self.replicas[i].in_flight.load(Ordering::Relaxed));
        let chosen = healthy.or_else(|| {
            candidates.min_by_key(|&i| {
                self.replicas[i]
                    .out_until
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .map(|t| t.saturating_duration_since(now))
                    .unwrap_or_default()
            })
        })?;
        sticky.insert(unit, chosen);
        Some(chosen)
    }

    fn mark(&self, i: usize, ok: bool) {
        let mut out = self.replicas[i].out_until.lock().unwrap_or_else(|p| p.into_inner());
        *out = if ok { None } else { Some(Instant::now() + COOLDOWN) };
    }

    /// How many requests are in flight on each replica, by URL (for tests and status).
    pub fn load(&self) -> Vec<(String, usize)> {
        self.replicas
            .iter()
            .map(|r| (r.url.clone(), r.in_flight.load(Ordering::Relaxed)))
            .collect()
    }

    async fn call(&self, req: &Request, halt: &Halt) -> Result<Completion, CallError> {
        let mut tried: Vec<usize> = Vec::new();
        let mut earlier_attempts = 0u32;
        let mut last_error: Option<CallError> = None;
        while let Some(i) = self.pick(req.key.unit, &tried) {
            tried.push(i);
            let r = &self.replicas[i];
            r.in_flight.fetch_add(1, Ordering::Relaxed);
            let answer = r.client.complete_until(req, halt).await;
            r.in_flight.fetch_sub(1, Ordering::Relaxed);
            match answer {
                Ok(mut c) => {
                    self.mark(i, true);
                    c.attempts = c.attempts.saturating_add(earlier_attempts);
                    return Ok(c);
                }
                Err(e) if replica_down(e.kind) && tried.len() < self.replicas.len() => {
                    self.mark(i, false);
                    earlier_attempts = earlier_attempts.saturating_add(e.attempts);
                    eprintln!(
                        "model `{}`: replica `{}` taken out for {} s ({}); going on with another",
                        self.name,
                        r.url,
                        COOLDOWN.as_secs(),
                        e.kind.as_str()
                    );
                    last_error = Some(e);
                }
                Err(mut e) => {
                    if replica_down(e.kind) {
                        self.mark(i, false);
                    }
                    e.attempts = e.attempts.saturating_add(earlier_attempts);
                    return Err(e);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| CallError {
            kind: ErrorKind::Unreachable,
            message: format!("model `{}`: no replica to send the request to", self.name),
            attempts: earlier_attempts,
        }))
    }
}

/// Failures that say the replica, not the request, is at fault.
fn replica_down(kind: ErrorKind) -> bool {
    matches!(kind, ErrorKind::Unreachable | ErrorKind::RetriesExhausted)
}

impl ChatModel for Pool {
    fn name(&self) -> &str {
        &self.name
    }

    fn complete<'a>(&'a self, req: &'a Request) -> BoxFuture<'a, Result<Completion, CallError>> {
        Box::pin(async { self.call(req, &Halt::never()).await })
    }

    fn complete_until<'a>(&'a self, req: &'a Request, halt: &'a Halt) -> BoxFuture<'a, Result<Completion, CallError>> {
        Box::pin(self.call(req, halt))
    }

    /// The window of the first replica that reports one (replicas serve one model).
    fn server_window(&self) -> BoxFuture<'_, Option<u32>> {
        Box::pin(async {
            for r in &self.replicas {
                if let Some(n) = r.client.server_window().await {
                    return Some(n);
                }
            }
            None
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::experiment::{Role, Sampling};
    use crate::llm::{CallKey, Prompt};
    use std::sync::atomic::AtomicBool;

    /// A replica that answers, or fails as unreachable while `down`; counts its requests.
    struct Fake {
        down: AtomicBool,
        served: AtomicUsize,
    }

    impl ChatModel for Fake {
        fn name(&self) -> &str {
            "fake"
        }
        fn complete<'a>(&'a self, _req: &'a Request) -> BoxFuture<'a, Result<Completion, CallError>> {
            Box::pin(async move {
                if self.down.load(Ordering::Relaxed) {
                    return Err(CallError {
                        kind: ErrorKind::Unreachable,
                        message: "down".into(),
                        attempts: 1,
                    });
                }
                self.served.fetch_add(1, Ordering::Relaxed);
                Ok(Completion {
                    text: "ok".into(),
                    prompt_tokens: None,
                    completion_tokens: None,
                    finish_reason: Some("stop".into()),
                    latency_ms: 0.0,
                    attempts: 1,
                })
            })
        }
    }

    fn fake() -> Arc<Fake> {
        Arc::new(Fake {
            down: AtomicBool::new(false),
            served: AtomicUsize::new(0),
        })
    }

    fn req(unit: u8) -> Request {
        Request {
            key: CallKey {
                unit: UnitId([unit; 10]),
                seed: 0,
                turn: 0,
                role: Role::Responder,
                attempt: 0,
            },
            prompt: Prompt::Text("hi".into()),
            sampling: Sampling::default(),
        }
    }

    #[tokio::test]
    async fn dialogues_stick_spread_and_move_off_a_dead_replica() {
        let (a, b, c) = (fake(), fake(), fake());
        let pool = Pool::new(
            "m",
            vec![
                ("a".into(), a.clone() as Arc<dyn ChatModel>),
                ("b".into(), b.clone() as Arc<dyn ChatModel>),
                ("c".into(), c.clone() as Arc<dyn ChatModel>),
            ],
        );
        // Quiet pool: every new dialogue goes to the least loaded, ties to the first.
        for _ in 0..3 {
            pool.complete(&req(1)).await.unwrap();
        }
        assert_eq!(a.served.load(Ordering::Relaxed), 3, "dialogue 1 sticks to its replica");
        // b dies: a dialogue on it goes on elsewhere, the failed request counted in its attempts.
        pool.sticky.lock().unwrap().insert(UnitId([2; 10]), 1);
        b.down.store(true, Ordering::Relaxed);
        let got = pool.complete(&req(2)).await.unwrap();
        assert_eq!(got.attempts, 2, "one request on the dead replica, one that answered");
        assert_ne!(pool.sticky.lock().unwrap()[&UnitId([2; 10])], 1);
        // While b is out, it gets nothing.
        for u in 3..9 {
            pool.complete(&req(u)).await.unwrap();
        }
        assert_eq!(b.served.load(Ordering::Relaxed), 0);
        // Every replica dead: the error, with every request counted.
        a.down.store(true, Ordering::Relaxed);
        c.down.store(true, Ordering::Relaxed);
        let e = pool.complete(&req(9)).await.unwrap_err();
        assert_eq!(e.kind, ErrorKind::Unreachable);
        assert_eq!(e.attempts, 3);
    }
}
