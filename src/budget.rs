//! Spending caps that hold across Slurm array tasks without a coordinator.
//!
//! A cap of the experiment (`[budget]`, and `[[budget.pairs]]` for single pairs) is split across
//! shards in proportion to their units, deterministically ([`shard_caps`]): every array task knows
//! its share from the plan alone. A worker's [`Ledger`] starts from what the shard's journal
//! already spent (tokens the servers reported, requests made, their cost), reserves each request's
//! worst case (prompt estimate plus `max_new_tokens`, every retry's request) before it is sent, and
//! settles it with what the server reported when it answers, returning the unused part. A request
//! whose reservation does not fit waits for the requests in flight to settle; when it does not fit
//! even with nothing else held, it is not sent: its dialogue waits in the journal, the shard starts
//! no new one, and it ends in its own state (`budget`), resumable once the caps are raised (a
//! re-plan keeps every unit's work). A shard's spending stays within its share, but for the
//! difference between what the requests in flight reserved (the prompt estimated from the
//! server's own count, `max_new_tokens`) and what the server then reported.

use crate::experiment::{Caps, Experiment, Price, Role};
use crate::plan::Plan;
use serde::Serialize;
use std::sync::Mutex;

/// What was, or may be, spent: the dimensions of [`Caps`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub inquirer_tokens: u64,
    pub responder_tokens: u64,
    pub requests: u64,
    pub cost: f64,
}

impl Usage {
    /// One role's tokens (and requests), priced with `price` when the model has one.
    pub fn of(role: Role, prompt: u64, completion: u64, requests: u64, price: Option<Price>) -> Usage {
        let tokens = prompt + completion;
        let (inquirer_tokens, responder_tokens) = match role {
            Role::Inquirer => (tokens, 0),
            Role::Responder => (0, tokens),
        };
        Usage {
            prompt_tokens: prompt,
            completion_tokens: completion,
            inquirer_tokens,
            responder_tokens,
            requests,
            cost: price.map_or(0.0, |p| {
                (prompt as f64 * p.input_per_million + completion as f64 * p.output_per_million) / 1e6
            }),
        }
    }

    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }

    pub fn add(&mut self, o: &Usage) {
        self.prompt_tokens += o.prompt_tokens;
        self.completion_tokens += o.completion_tokens;
        self.inquirer_tokens += o.inquirer_tokens;
        self.responder_tokens += o.responder_tokens;
        self.requests += o.requests;
        self.cost += o.cost;
    }

    fn sub(&mut self, o: &Usage) {
        self.prompt_tokens = self.prompt_tokens.saturating_sub(o.prompt_tokens);
        self.completion_tokens = self.completion_tokens.saturating_sub(o.completion_tokens);
        self.inquirer_tokens = self.inquirer_tokens.saturating_sub(o.inquirer_tokens);
        self.responder_tokens = self.responder_tokens.saturating_sub(o.responder_tokens);
        self.requests = self.requests.saturating_sub(o.requests);
        self.cost = (self.cost - o.cost).max(0.0);
    }

    /// The first cap this usage is over, by its key (`tokens`, `requests`, ...).
    pub fn over(&self, caps: &Caps) -> Option<&'static str> {
        let ints = [
            ("tokens", caps.tokens, self.tokens()),
            ("prompt_tokens", caps.prompt_tokens, self.prompt_tokens),
            ("completion_tokens", caps.completion_tokens, self.completion_tokens),
            ("inquirer_tokens", caps.inquirer_tokens, self.inquirer_tokens),
            ("responder_tokens", caps.responder_tokens, self.responder_tokens),
            ("requests", caps.requests, self.requests),
        ];
        for (key, cap, used) in ints {
            if cap.is_some_and(|c| used > c) {
                return Some(key);
            }
        }
        // A cent's billionth of rounding is not over.
        caps.cost.filter(|c| self.cost > c + 1e-9).map(|_| "cost")
    }
}

/// The caps one shard works within: its share of the run's caps and of its pair's, the smaller of
/// the two in each dimension.
pub fn shard_caps(exp: &Experiment, plan: &Plan, shard: u32) -> Caps {
    let Some(me) = plan.shards.get(shard as usize) else {
        return Caps::default();
    };
    let run = exact_share(&exp.budget.run, plan, shard, |_| true);
    let pair = exp
        .budget
        .pairs
        .iter()
        .find(|(p, _)| *p == me.pair)
        .map(|(_, caps)| exact_share(caps, plan, shard, |s| s.pair == me.pair))
        .unwrap_or_default();
    tighter(&run, &pair)
}

/// `caps` split over the shards `among` selects, in proportion to their units, with integer caps
/// adding up exactly (the flooring remainder goes one unit each to the first shards).
fn exact_share(caps: &Caps, plan: &Plan, shard: u32, among: impl Fn(&crate::plan::Shard) -> bool) -> Caps {
    let members: Vec<&crate::plan::Shard> = plan.shards.iter().filter(|s| among(s)).collect();
    let total: u64 = members.iter().map(|s| u64::from(s.units)).sum();
    let Some(rank) = members.iter().position(|s| s.index == shard) else {
        return Caps::default();
    };
    let units = u64::from(members[rank].units);
    let int = |c: Option<u64>| {
        c.map(|c| {
            let floor = |u: u64| (u128::from(c) * u128::from(u) / u128::from(total.max(1))) as u64;
            let floored: u64 = members.iter().map(|s| floor(u64::from(s.units))).sum();
            floor(units) + u64::from((rank as u64) < c.saturating_sub(floored))
        })
    };
    Caps {
        tokens: int(caps.tokens),
        prompt_tokens: int(caps.prompt_tokens),
        completion_tokens: int(caps.completion_tokens),
        inquirer_tokens: int(caps.inquirer_tokens),
        responder_tokens: int(caps.responder_tokens),
        requests: int(caps.requests),
        cost: caps.cost.map(|c| c * units as f64 / total.max(1) as f64),
    }
}

/// `1,234 of 2,000 tokens, 12 requests, 0.42 of 1.00 cost`: each dimension spent, with its cap.
pub fn describe(u: &Usage, caps: &Caps) -> String {
    let of = |v: u64, cap: Option<u64>, what: &str| match cap {
        Some(c) => format!("{v} of {c} {what}"),
        None => format!("{v} {what}"),
    };
    let mut parts = vec![
        of(u.tokens(), caps.tokens, "tokens"),
        of(u.requests, caps.requests, "requests"),
    ];
    for (v, cap, what) in [
        (u.prompt_tokens, caps.prompt_tokens, "prompt tokens"),
        (u.completion_tokens, caps.completion_tokens, "completion tokens"),
        (u.inquirer_tokens, caps.inquirer_tokens, "inquirer tokens"),
        (u.responder_tokens, caps.responder_tokens, "responder tokens"),
    ] {
        if cap.is_some() {
            parts.push(of(v, cap, what));
        }
    }
    if let Some(c) = caps.cost {
        parts.push(format!("{:.4} of {c:.4} cost", u.cost));
    }
    parts.join(", ")
}

/// The prices of a pair's (inquirer, responder), in that order.
pub fn prices(exp: &Experiment, pair: &crate::experiment::Pair) -> [Option<Price>; 2] {
    let price = |name: &str| exp.model(name).and_then(|m| m.transport.price);
    [price(&pair.inquirer), price(&pair.responder)]
}

/// Caps added up, dimension by dimension (a dimension any of them leaves uncapped is uncapped).
pub fn sum_caps(all: &[Caps]) -> Caps {
    fn sum<T: Copy + std::ops::Add<Output = T>>(xs: impl Iterator<Item = Option<T>>) -> Option<T> {
        xs.reduce(|a, b| a.zip(b).map(|(a, b)| a + b)).flatten()
    }
    Caps {
        tokens: sum(all.iter().map(|c| c.tokens)),
        prompt_tokens: sum(all.iter().map(|c| c.prompt_tokens)),
        completion_tokens: sum(all.iter().map(|c| c.completion_tokens)),
        inquirer_tokens: sum(all.iter().map(|c| c.inquirer_tokens)),
        responder_tokens: sum(all.iter().map(|c| c.responder_tokens)),
        requests: sum(all.iter().map(|c| c.requests)),
        cost: sum(all.iter().map(|c| c.cost)),
    }
}

/// The smaller of two caps in each dimension (`None` is no cap).
fn tighter(a: &Caps, b: &Caps) -> Caps {
    fn min<T: PartialOrd + Copy>(x: Option<T>, y: Option<T>) -> Option<T> {
        match (x, y) {
            (Some(x), Some(y)) => Some(if y < x { y } else { x }),
            (x, None) => x,
            (None, y) => y,
        }
    }
    Caps {
        tokens: min(a.tokens, b.tokens),
        prompt_tokens: min(a.prompt_tokens, b.prompt_tokens),
        completion_tokens: min(a.completion_tokens, b.completion_tokens),
        inquirer_tokens: min(a.inquirer_tokens, b.inquirer_tokens),
        responder_tokens: min(a.responder_tokens, b.responder_tokens),
        requests: min(a.requests, b.requests),
        cost: min(a.cost, b.cost),
    }
}

/// A request's reservation, returned by [`Ledger::reserve`] and given back to [`Ledger::settle`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reservation(Usage);

#[derive(Debug, Default)]
struct Books {
    spent: Usage,
    reserved: Usage,
    /// Reservations not settled yet (the sum above has a float part that need not come back to
    /// exactly zero).
    held: usize,
    /// The cap a reservation did not fit, once one did not.
    reached: Option<&'static str>,
}

/// One shard's account: its caps, what it spent, what requests in flight hold.
#[derive(Debug)]
pub struct Ledger {
    caps: Caps,
    books: Mutex<Books>,
    /// Woken when a reservation is settled (its unused part may let a waiting one through).
    settled: tokio::sync::Notify,
}

impl Ledger {
    /// A ledger for `caps` that has spent `spent` already (read from the journal).
    pub fn new(caps: Caps, spent: Usage) -> Ledger {
        Ledger {
            caps,
            books: Mutex::new(Books {
                spent,
                ..Books::default()
            }),
            settled: tokio::sync::Notify::new(),
        }
    }

    pub fn caps(&self) -> Caps {
        self.caps
    }

    /// Hold `worst` for a request about to be sent. While other requests hold reservations that
    /// leave no room, wait for them to settle (they give back what they did not use); `None`, and
    /// the ledger reached, when `worst` does not fit beside what is spent with nothing else held.
    pub async fn reserve(&self, worst: Usage) -> Option<Reservation> {
        loop {
            let settled = self.settled.notified();
            {
                let mut b = self.books.lock().unwrap_or_else(|p| p.into_inner());
                if b.reached.is_some() {
                    return None;
                }
                let mut would = b.spent;
                would.add(&b.reserved);
                would.add(&worst);
                match would.over(&self.caps) {
                    None => {
                        b.reserved.add(&worst);
                        b.held += 1;
                        return Some(Reservation(worst));
                    }
                    Some(cap) if b.held == 0 => {
                        b.reached = Some(cap);
                        drop(b);
                        // Everyone waiting learns it at once.
                        self.settled.notify_waiters();
                        return None;
                    }
                    Some(_) => {}
                }
            }
            settled.await;
        }
    }

    /// The request answered (or failed) having cost `actual`: the reservation is released and
    /// `actual` spent.
    pub fn settle(&self, r: Reservation, actual: Usage) {
        {
            let mut b = self.books.lock().unwrap_or_else(|p| p.into_inner());
            b.reserved.sub(&r.0);
            b.held = b.held.saturating_sub(1);
            if b.held == 0 {
                b.reserved = Usage::default();
            }
            b.spent.add(&actual);
        }
        self.settled.notify_waiters();
    }

    /// The cap the shard reached (no new request was let through since), if any.
    pub fn reached(&self) -> Option<&'static str> {
        self.books.lock().unwrap_or_else(|p| p.into_inner()).reached
    }

    pub fn spent(&self) -> Usage {
        self.books.lock().unwrap_or_else(|p| p.into_inner()).spent
    }
}

#[cfg(test)]
mod tests;
