//! A model that fails every dialogue stops getting new ones.
//!
//! A wrong key, a dead endpoint or a proxy that refuses every request fails each dialogue the same
//! way; without a breaker a grid of thousands runs them all into the same error, one after the
//! other, retries included. The breaker counts, per model, the dialogues that ended in a row with a
//! backend failure of one kind on that model's side; at [`TRIP_AFTER`] it opens and the worker
//! starts no dialogue that uses the model (those units stay unfinished, not failed: fixing the
//! cause and running again does them). Any dialogue that ends without a failure of the model
//! closes its count again. One breaker serves every shard of a process.

use crate::dialogue::DialogueRecord;
use crate::experiment::{Pair, Role};
use crate::llm::ErrorKind;
use std::collections::HashMap;
use std::sync::Mutex;

/// Dialogues failing in a row, the same way on one model, that open its breaker.
pub const TRIP_AFTER: u32 = 5;

/// Why a model gets no new dialogues.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Trip {
    pub model: String,
    pub kind: ErrorKind,
    /// Dialogues that failed in a row before it opened.
    pub failures: u32,
    /// The last of their error messages (naming the model and endpoint; keys cut out).
    pub example: String,
}

impl std::fmt::Display for Trip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "model `{}` failed {} dialogues in a row ({}), so no more were started for it: {}",
            self.model,
            self.failures,
            self.kind.as_str(),
            self.example
        )
    }
}

#[derive(Default)]
struct Counts {
    /// Per model: the kind of its current run of failures and its length.
    runs: HashMap<String, (ErrorKind, u32)>,
    /// Models whose breaker is open, in the order they opened.
    open: Vec<Trip>,
}

#[derive(Default)]
pub struct Breaker {
    counts: Mutex<Counts>,
}

impl Breaker {
    /// Learn from a finished dialogue of `pair`; returns the trip when this one opened a breaker.
    pub fn observe(&self, pair: &Pair, record: &DialogueRecord) -> Option<Trip> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        let failed = record
            .ending
            .error
            .as_ref()
            .filter(|_| record.ending.reason.is_failure())
            .map(|e| (model_of(pair, e.role), e.kind, &e.message));
        for model in [&pair.inquirer, &pair.responder] {
            match failed {
                Some((m, kind, message)) if m == model => {
                    let run = c.runs.entry(model.clone()).or_insert((kind, 0));
                    if run.0 != kind {
                        *run = (kind, 0);
                    }
                    run.1 += 1;
                    let failures = run.1;
                    if failures >= TRIP_AFTER && !c.open.iter().any(|t| &t.model == model) {
                        let trip = Trip {
                            model: model.clone(),
                            kind,
                            failures,
                            example: message.clone(),
                        };
                        c.open.push(trip.clone());
                        return Some(trip);
                    }
                }
                // The other side failed: says nothing about this model.
                Some(_) => {}
                None => {
                    c.runs.remove(model);
                }
            }
        }
        None
    }

    /// Whether a dialogue of `pair` may start (neither model's breaker is open).
    pub fn allows(&self, pair: &Pair) -> bool {
        let c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        !c.open
            .iter()
            .any(|t| t.model == pair.inquirer || t.model == pair.responder)
    }

    /// The open breakers, in the order they opened.
    pub fn trips(&self) -> Vec<Trip> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).open.clone()
    }
}

fn model_of(pair: &Pair, role: Role) -> &String {
    match role {
        Role::Inquirer => &pair.inquirer,
        Role::Responder => &pair.responder,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dialogue::{BackendFailure, Counters, EndReason, Ending};
    use crate::plan::UnitId;

    fn pair() -> Pair {
        Pair {
            inquirer: "inq".into(),
            responder: "resp".into(),
        }
    }

    fn ended(failure: Option<(Role, ErrorKind)>) -> DialogueRecord {
        DialogueRecord {
            unit: UnitId([1; 10]),
            turns: vec![],
            ending: Ending {
                reason: if failure.is_some() {
                    EndReason::BackendError
                } else {
                    EndReason::Stop
                },
                error: failure.map(|(role, kind)| BackendFailure {
                    role,
                    kind,
                    message: format!("model at `http://x`: {}", kind.as_str()),
                    attempts: 1,
                    transient_retries: 0,
                    overflow_refusals: 0,
                    cut_replies: 0,
                }),
                last_inquirer: vec![],
                last_responder: None,
            },
            counters: Counters::default(),
            windows: Default::default(),
            indicators: None,
        }
    }

    #[test]
    fn opens_after_a_run_of_one_kind_on_one_model_and_a_success_resets_it() {
        let b = Breaker::default();
        let p = pair();
        let auth = ended(Some((Role::Responder, ErrorKind::Auth)));
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.observe(&p, &auth), None);
        }
        // A success resets the run: it takes TRIP_AFTER failures again.
        assert_eq!(b.observe(&p, &ended(None)), None);
        for _ in 0..TRIP_AFTER - 1 {
            assert_eq!(b.observe(&p, &auth), None);
        }
        assert!(b.allows(&p));
        let trip = b.observe(&p, &auth).expect("the fifth in a row opens it");
        assert_eq!(
            (trip.model.as_str(), trip.kind, trip.failures),
            ("resp", ErrorKind::Auth, TRIP_AFTER)
        );
        assert!(!b.allows(&p));
        assert!(b.allows(&Pair {
            inquirer: "inq".into(),
            responder: "other".into()
        }));
        assert_eq!(b.observe(&p, &auth), None, "said once");
        assert_eq!(b.trips().len(), 1);
    }

    #[test]
    fn another_kind_or_the_other_side_does_not_add_to_a_run() {
        let b = Breaker::default();
        let p = pair();
        for i in 0..20 {
            let kind = if i % 2 == 0 {
                ErrorKind::Auth
            } else {
                ErrorKind::Unreachable
            };
            assert_eq!(b.observe(&p, &ended(Some((Role::Responder, kind)))), None);
        }
        for _ in 0..TRIP_AFTER - 1 {
            b.observe(&p, &ended(Some((Role::Inquirer, ErrorKind::NotFound))));
            // The responder failing does not reset the inquirer's run.
            b.observe(&p, &ended(Some((Role::Responder, ErrorKind::Auth))));
        }
        let trip = b.observe(&p, &ended(Some((Role::Inquirer, ErrorKind::NotFound))));
        assert_eq!(trip.map(|t| t.model), Some("inq".to_string()));
    }
}
