//! Rate limits of HTTP endpoints, shared by every dialogue of a worker, and the log of every wait.
//!
//! One [`Endpoint`] per server model (`base_url` and `model`; for Azure the deployment) in a
//! process-wide registry, so two `[[models]]` entries naming the same server model share it, as
//! the provider counts them together. Before each HTTP attempt, [`Endpoint::admit`] waits, in
//! this order, for:
//!
//! 1. a slot of the adaptive window (`adaptive_concurrency`): the requests in flight allowed.
//!    Open until the first 429/503; then halved (not below 1) once per round of requests, and
//!    raised by 1 per window's worth of successes (AIMD, as TCP does). Requests sent before a
//!    decrease do not decrease it again when their refusals come back.
//! 2. the end of a pause the provider asked for: a 429/503 with `retry-after-ms` or
//!    `Retry-After` pauses the endpoint for that long, and `x-ratelimit-remaining-requests: 0`
//!    (or `-tokens`) until `x-ratelimit-reset-requests` (or `-tokens`) when no limit of that kind
//!    is configured (a configured one paces the requests itself, and the provider's count is
//!    expected to run near 0). Both are part of `adaptive_concurrency`.
//! 3. the token buckets of `requests_per_minute` and `tokens_per_minute`, each holding one
//!    second's worth (at least one request), as providers enforce per-minute limits over shorter
//!    periods, less a tenth of a second ([`MARGIN`]) for the network's jitter. A request reserves its time in both at once (one request; the prompt's estimated
//!    tokens plus `max_tokens`) and sleeps until then, so requests go at the configured rate in
//!    the order they asked, without polling. The estimate is corrected with the usage the server
//!    reports, and the characters-per-token ratio of the endpoint is learned from it.
//!
//! Every wait, and every retry wait of `openai.rs`, is counted per endpoint ([`stats`]) and
//! logged with its reason: one line on stderr (or to the sink set with [`log_waits_to`]), at most
//! one per endpoint and kind (retries, rate limits) every [`LINE_EVERY`], the next line saying how
//! many were left out and the longest of them.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// At most one log line per endpoint and kind of wait this often; the next one counts the rest.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// The longest pause taken on the word of `x-ratelimit-reset-*` headers (some providers report
/// the reset of a daily budget there).
pub const MAX_HEADER_PAUSE: Duration = Duration::from_secs(60);

/// Characters per token assumed for a prompt before the server's usage has said otherwise.
const START_TOKENS_PER_CHAR: f64 = 0.25;

/// How much later than the provider's bucket would allow a request is sent (see
/// [`Bucket::with_margin`]).
pub const MARGIN: Duration = Duration::from_millis(100);

/// Completion tokens assumed for a request without `max_tokens`, before the server's usage says.
const START_COMPLETION_TOKENS: f64 = 256.0;

/// The limits of one endpoint, as configured (`[[models]]` keys).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    pub requests_per_minute: Option<f64>,
    pub tokens_per_minute: Option<f64>,
    pub adaptive: bool,
}

impl From<&crate::experiment::RateLimits> for Settings {
    fn from(l: &crate::experiment::RateLimits) -> Settings {
        Settings {
            requests_per_minute: l.requests_per_minute,
            tokens_per_minute: l.tokens_per_minute,
            adaptive: l.adaptive_concurrency,
        }
    }
}

/// What has happened at one endpoint so far (see [`stats`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Stats {
    /// Requests sent.
    pub requests: u64,
    /// Waits for the `requests_per_minute` bucket.
    pub request_rate_waits: u64,
    /// Waits for the `tokens_per_minute` bucket.
    pub token_rate_waits: u64,
    /// Waits for a pause the provider asked for (headers, `Retry-After` of a refusal).
    pub provider_waits: u64,
    /// Waits for a slot of the adaptive window.
    pub window_waits: u64,
    /// Waits before a retry (backoff, honouring `Retry-After`).
    pub retry_waits: u64,
    /// All of those waits together.
    pub waited: Duration,
    /// Answers 429 and 503.
    pub refused: u64,
    /// Times the adaptive window was lowered.
    pub decreases: u64,
    /// Requests in flight the adaptive window allows now (`None` while it is open).
    pub window: Option<f64>,
    /// Log lines written, and waits left out of them.
    pub lines: u64,
    pub suppressed: u64,
}

impl Stats {
    pub fn waits(&self) -> u64 {
        self.request_rate_waits + self.token_rate_waits + self.provider_waits + self.window_waits + self.retry_waits
    }
}

/// Why a request waits.
#[derive(Debug, Clone, Copy)]
pub enum Reason<'a> {
    /// Before retry `attempt` (1 for the first retry) of `max`, after `detail` went wrong.
    Retry { attempt: u32, max: u32, detail: &'a str },
    /// The `requests_per_minute` bucket.
    RequestRate { per_minute: f64 },
    /// The `tokens_per_minute` bucket; `tokens` reserved by this request.
    TokenRate { per_minute: f64, tokens: u64 },
    /// A pause the provider asked for.
    Provider { why: &'a str },
    /// The adaptive window is full.
    Window { allowed: f64 },
}

/// The rate-limit headers of a response (OpenAI's names; vLLM, Azure, Groq and others use them).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Signals {
    pub remaining_requests: Option<u64>,
    pub remaining_tokens: Option<u64>,
    pub reset_requests: Option<Duration>,
    pub reset_tokens: Option<Duration>,
    /// `retry-after-ms`, else `Retry-After` (seconds or an HTTP date).
    pub retry_after: Option<Duration>,
}

impl Signals {
    /// Read the headers through `get` (a header's value by lower-case name).
    pub fn read<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Signals {
        let count = |name: &str| {
            get(name)
                .and_then(|v| v.trim().parse::<f64>().ok())
                .map(|v| v.max(0.0) as u64)
        };
        let reset = |name: &str| get(name).and_then(parse_duration);
        let retry_after = get("retry-after-ms")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|ms| ms.is_finite() && *ms >= 0.0)
            .map(|ms| secs(ms / 1000.0))
            .or_else(|| {
                get("retry-after").and_then(|v| super::retry::parse_retry_after(v, std::time::SystemTime::now()))
            });
        Signals {
            remaining_requests: count("x-ratelimit-remaining-requests"),
            remaining_tokens: count("x-ratelimit-remaining-tokens"),
            reset_requests: reset("x-ratelimit-reset-requests"),
            reset_tokens: reset("x-ratelimit-reset-tokens"),
            retry_after,
        }
    }
}

/// How an attempt ended, for the limiter.
#[derive(Debug, Clone, Copy)]
pub enum Answer<'a> {
    /// A completion, with the usage the server reported.
    Done {
        prompt_tokens: Option<u32>,
        completion_tokens: Option<u32>,
        signals: &'a Signals,
    },
    /// An HTTP status other than success.
    Status { status: u16, signals: &'a Signals },
    /// No usable answer (timeout, broken connection, bad body).
    Nothing,
}

/// A duration as OpenAI writes it in `x-ratelimit-reset-*` (Go's notation: `6m0s`, `1s`,
/// `120ms`, `1h2m3.5s`); a bare number is seconds. `None` for anything else.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let t = text.trim();
    if t.is_empty() {
        return None;
    }
    if let Ok(s) = t.parse::<f64>() {
        return (s.is_finite() && s >= 0.0).then(|| secs(s));
    }
    let mut total = 0.0;
    let mut rest = t;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        if num_len == 0 {
            return None;
        }
        let n: f64 = rest[..num_len].parse().ok()?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "h" => 3600.0,
            "m" => 60.0,
            "s" => 1.0,
            "ms" => 1e-3,
            "us" | "µs" | "μs" => 1e-6,
            "ns" => 1e-9,
            _ => return None,
        };
        rest = &rest[unit_len..];
        total += n * scale;
    }
    Some(secs(total))
}

/// A duration in the notation [`parse_duration`] reads, as OpenAI sends it: `20ms` below a
/// second (rounded up), `1.5s` below a minute, `6m0s` above.
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms < 1000.0 {
        return format!("{}ms", ms.ceil() as u64);
    }
    let s = d.as_secs_f64();
    let trim = |x: f64| {
        let t = format!("{x:.3}");
        t.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    if s < 60.0 {
        return format!("{}s", trim(s));
    }
    let m = (s / 60.0).floor();
    format!("{}m{}s", m as u64, trim(s - m * 60.0))
}

/// Seconds as a duration, clamped to [0, ~115 days] (never panics on NaN or overflow).
fn secs(s: f64) -> Duration {
    if s.is_nan() || s <= 0.0 {
        return Duration::ZERO;
    }
    Duration::from_secs_f64(s.min(1e7))
}

/// A token bucket as a virtual time (GCRA): the instant it is full again. Its level at `t` is
/// `burst - rate * (full_at - t)`, at most `burst`, below zero while reservations run ahead.
#[derive(Debug, Clone)]
pub struct Bucket {
    /// Units per second.
    rate: f64,
    /// Capacity in units.
    burst: f64,
    full_at: Instant,
}

impl Bucket {
    /// A full bucket of `per_minute / 60` units a second, holding one second's worth (at least one
    /// unit): a provider's.
    pub fn per_minute(per_minute: f64, now: Instant) -> Bucket {
        Bucket::with_margin(per_minute, Duration::ZERO, now)
    }

    /// The provider's bucket less `margin` of its refill: a client that keeps it sends every
    /// request at least `margin` after the provider's bucket could take it, so arrivals that
    /// come closer together than they were sent (network jitter) are not refused.
    pub fn with_margin(per_minute: f64, margin: Duration, now: Instant) -> Bucket {
        let rate = (per_minute / 60.0).max(1e-9);
        Bucket {
            rate,
            burst: rate.max(1.0) - rate * margin.as_secs_f64(),
            full_at: now,
        }
    }

    /// The earliest instant from `now` on at which `cost` units may be taken: when the bucket
    /// holds `cost`, or is full for a cost larger than it (which then leaves it in debt).
    pub fn earliest(&self, now: Instant, cost: f64) -> Instant {
        let need = cost.min(self.burst).max(0.0);
        let slack = secs((self.burst - need) / self.rate);
        self.full_at.checked_sub(slack).map_or(now, |t| t.max(now))
    }

    /// Take `cost` units at `at` (not before [`Bucket::earliest`]).
    pub fn take(&mut self, at: Instant, cost: f64) {
        self.full_at = self.full_at.max(at) + secs(cost / self.rate);
    }

    /// Give `units` back (or, negative, take more) after the fact, as of `now`.
    pub fn adjust(&mut self, now: Instant, units: f64) {
        if units >= 0.0 {
            let back = secs(units / self.rate);
            self.full_at = self.full_at.checked_sub(back).map_or(now, |t| t.max(now));
        } else {
            self.full_at = self.full_at.max(now) + secs(-units / self.rate);
        }
    }

    /// Whole units in the bucket at `now`.
    pub fn level(&self, now: Instant) -> f64 {
        let behind = self.full_at.saturating_duration_since(now).as_secs_f64();
        self.burst - self.rate * behind
    }

    /// How long until it is full again.
    pub fn until_full(&self, now: Instant) -> Duration {
        self.full_at.saturating_duration_since(now)
    }

    pub fn burst(&self) -> f64 {
        self.burst
    }
}

/// The adaptive window (AIMD) of requests in flight.
#[derive(Debug, Clone)]
struct Window {
    /// Allowed in flight; infinite until the first 429/503.
    allowed: f64,
    /// Calls holding a slot: admitted, waiting for their rate, or in flight.
    slots: u32,
    /// Requests sent and not answered yet (the flight size a decrease halves).
    sent: u32,
    /// Bumped at each decrease: refusals of requests sent before it do not decrease again.
    epoch: u64,
}

impl Window {
    fn open() -> Window {
        Window {
            allowed: f64::INFINITY,
            slots: 0,
            sent: 0,
            epoch: 0,
        }
    }

    fn has_room(&self) -> bool {
        f64::from(self.slots) < self.allowed.floor().max(1.0)
    }

    /// A 429/503 to a request sent in `epoch`: halve the flight size, once per round.
    fn congested(&mut self, epoch: u64) -> bool {
        if epoch != self.epoch {
            return false;
        }
        self.allowed = (self.allowed.min(f64::from(self.sent.max(1))) / 2.0).max(1.0);
        self.epoch += 1;
        true
    }

    /// A success: one more in flight per window's worth of successes, while the window binds.
    fn succeeded(&mut self) -> bool {
        if self.allowed.is_finite() && f64::from(self.slots) >= self.allowed.floor() {
            self.allowed += 1.0 / self.allowed;
            return true;
        }
        false
    }
}

/// The throttle of one kind of log line at one endpoint.
#[derive(Debug, Clone, Default)]
struct Lines {
    last: Option<Instant>,
    suppressed: u64,
    longest: Duration,
}

impl Lines {
    /// Whether to write a line for a wait of `wait` now; if so, the suffix telling what was left
    /// out since the last line.
    fn admit(&mut self, now: Instant, wait: Duration) -> Option<String> {
        if let Some(last) = self.last
            && now.duration_since(last) < LINE_EVERY
        {
            self.suppressed += 1;
            self.longest = self.longest.max(wait);
            return None;
        }
        let suffix = match self.suppressed {
            0 => String::new(),
            n => format!(
                " (and {n} more wait{} since the last line, up to {})",
                if n == 1 { "" } else { "s" },
                shown(self.longest)
            ),
        };
        *self = Lines {
            last: Some(now),
            ..Lines::default()
        };
        Some(suffix)
    }
}

struct State {
    settings: Settings,
    requests: Option<Bucket>,
    tokens: Option<Bucket>,
    window: Window,
    /// A pause the provider asked for, and why.
    hold: Option<(Instant, String)>,
    /// The reason of the last window decrease (for the log).
    decreased_after: String,
    tokens_per_char: f64,
    completion_tokens: f64,
    stats: Stats,
    retry_lines: Lines,
    limit_lines: Lines,
}

/// The limiter of one server model; see the module's documentation.
pub struct Endpoint {
    key: String,
    state: Mutex<State>,
    room: Notify,
}

type Registry = Mutex<HashMap<String, Weak<Endpoint>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Default::default)
}

/// The registry's key of a server model: `base_url` (without a trailing `/`) and the model id
/// (for Azure, the deployment).
pub fn endpoint_key(base_url: &str, model: &str) -> String {
    format!("{} {model}", base_url.trim_end_matches('/'))
}

/// The limiter of `key` ([`endpoint_key`]), shared by every client of this process that asks for
/// it while one is alive. A second client with other settings tightens it: the lower of two rates,
/// and adaptive if either is.
pub fn endpoint(key: &str, settings: Settings) -> Arc<Endpoint> {
    let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.retain(|_, e| e.strong_count() > 0);
    if let Some(e) = reg.get(key).and_then(Weak::upgrade) {
        e.tighten(settings);
        return e;
    }
    let now = Instant::now();
    let e = Arc::new(Endpoint {
        key: key.to_string(),
        state: Mutex::new(State {
            settings,
            requests: settings
                .requests_per_minute
                .map(|r| Bucket::with_margin(r, MARGIN, now)),
            tokens: settings.tokens_per_minute.map(|r| Bucket::with_margin(r, MARGIN, now)),
            window: Window::open(),
            hold: None,
            decreased_after: String::new(),
            tokens_per_char: START_TOKENS_PER_CHAR,
            completion_tokens: START_COMPLETION_TOKENS,
            stats: Stats::default(),
            retry_lines: Lines::default(),
            limit_lines: Lines::default(),
        }),
        room: Notify::new(),
    });
    reg.insert(key.to_string(), Arc::downgrade(&e));
    e
}

/// What has happened at the endpoint `key` ([`endpoint_key`]) while its limiter is alive.
pub fn stats(key: &str) -> Option<Stats> {
    let reg = registry().lock().unwrap_or_else(|p| p.into_inner());
    reg.get(key).and_then(Weak::upgrade).map(|e| e.stats())
}

type Sink = Box<dyn Fn(&str) + Send + Sync>;

static SINK: OnceLock<Sink> = OnceLock::new();

/// Send the wait log lines to `f` instead of stderr (at most one sink per process; false if one
/// was set already).
pub fn log_waits_to(f: impl Fn(&str) + Send + Sync + 'static) -> bool {
    SINK.set(Box::new(f)).is_ok()
}

fn write_line(line: &str) {
    match SINK.get() {
        Some(f) => f(line),
        None => {
            use std::io::IsTerminal;
            // On a terminal, clear the line first: a progress bar drawn there is redrawn below.
            if std::io::stderr().is_terminal() {
                eprintln!("\r\x1b[2K{line}");
            } else {
                eprintln!("{line}");
            }
        }
    }
}

/// A request's claim on an endpoint: its window slot and its reservations, given back when it
/// is dropped. Tell the limiter how the attempt ended with [`Ticket::finish`].
pub struct Ticket {
    endpoint: Arc<Endpoint>,
    slot: bool,
    sent: bool,
    epoch: u64,
    prompt_chars: usize,
    /// Tokens reserved for the prompt and for the completion.
    reserved: (f64, f64),
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if !(self.sent || self.slot) {
            return;
        }
        let e = self.endpoint.clone();
        let mut st = e.lock();
        let freed = self.release(&mut st);
        drop(st);
        if freed {
            e.room.notify_one();
        }
    }
}

impl Ticket {
    /// Leave the flight and the window; true when a slot came free.
    fn release(&mut self, st: &mut State) -> bool {
        if std::mem::take(&mut self.sent) {
            st.window.sent = st.window.sent.saturating_sub(1);
        }
        let slot = std::mem::take(&mut self.slot);
        if slot {
            st.window.slots = st.window.slots.saturating_sub(1);
        }
        slot
    }
}

impl Endpoint {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn stats(&self) -> Stats {
        let st = self.lock();
        let mut s = st.stats.clone();
        s.window = st.window.allowed.is_finite().then_some(st.window.allowed);
        s
    }

    fn tighten(&self, other: Settings) {
        let mut st = self.lock();
        let min = |a: Option<f64>, b: Option<f64>| match (a, b) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let s = Settings {
            requests_per_minute: min(st.settings.requests_per_minute, other.requests_per_minute),
            tokens_per_minute: min(st.settings.tokens_per_minute, other.tokens_per_minute),
            adaptive: st.settings.adaptive || other.adaptive,
        };
        let now = Instant::now();
        if s.requests_per_minute != st.settings.requests_per_minute {
            st.requests = s.requests_per_minute.map(|r| Bucket::with_margin(r, MARGIN, now));
        }
        if s.tokens_per_minute != st.settings.tokens_per_minute {
            st.tokens = s.tokens_per_minute.map(|r| Bucket::with_margin(r, MARGIN, now));
        }
        st.settings = s;
    }

    /// Count a wait and maybe log it (`model` and `url` name it in the line).
    pub fn note_wait(&self, model: &str, url: &str, wait: Duration, reason: Reason<'_>) {
        let now = Instant::now();
        let mut st = self.lock();
        let s = &mut st.stats;
        s.waited += wait;
        match reason {
            Reason::Retry { .. } => s.retry_waits += 1,
            Reason::RequestRate { .. } => s.request_rate_waits += 1,
            Reason::TokenRate { .. } => s.token_rate_waits += 1,
            Reason::Provider { .. } => s.provider_waits += 1,
            Reason::Window { .. } => s.window_waits += 1,
        }
        let lines = match reason {
            Reason::Retry { .. } => &mut st.retry_lines,
            _ => &mut st.limit_lines,
        };
        let Some(suffix) = lines.admit(now, wait) else {
            st.stats.suppressed += 1;
            return;
        };
        st.stats.lines += 1;
        let w = shown(wait);
        let line = match reason {
            Reason::Retry { attempt, max, detail } => {
                format!("retry {attempt}/{max} of model `{model}` at `{url}` in {w}: {detail}{suffix}")
            }
            Reason::RequestRate { per_minute } => format!(
                "rate limit: model `{model}` at `{url}` waits {w} for `requests_per_minute = {per_minute}`{suffix}"
            ),
            Reason::TokenRate { per_minute, tokens } => format!(
                "rate limit: model `{model}` at `{url}` waits {w} for `tokens_per_minute = {per_minute}` \
                 (this request: about {tokens} tokens){suffix}"
            ),
            Reason::Provider { why } => {
                format!("rate limit: model `{model}` at `{url}` waits {w}: {why}{suffix}")
            }
            Reason::Window { allowed } => format!(
                "rate limit: model `{model}` at `{url}` waits {w} for a slot: {} request{} in flight allowed \
                 after {} (`adaptive_concurrency`){suffix}",
                allowed.floor(),
                if allowed.floor() == 1.0 { "" } else { "s" },
                st.decreased_after
            ),
        };
        drop(st);
        write_line(&line);
    }

    /// Wait until a request may be sent (window, provider pauses, rates: see the module), and
    /// claim its place. `prompt_chars` and `max_tokens` size its token reservation.
    pub async fn admit(
        self: &Arc<Self>,
        model: &str,
        url: &str,
        prompt_chars: usize,
        max_tokens: Option<i64>,
    ) -> Ticket {
        let began = Instant::now();
        let mut ticket = Ticket {
            endpoint: self.clone(),
            slot: false,
            sent: false,
            epoch: 0,
            prompt_chars,
            reserved: (0.0, 0.0),
        };
        let adaptive = {
            // The usual case, in one lock: room in the window, no pause, no rate to keep.
            let mut st = self.lock();
            let adaptive = st.settings.adaptive;
            let now = Instant::now();
            let free = st.requests.is_none()
                && st.tokens.is_none()
                && st.hold.as_ref().is_none_or(|(until, _)| *until <= now)
                && (!adaptive || st.window.has_room());
            if free {
                if adaptive {
                    st.window.slots += 1;
                    ticket.slot = true;
                }
                st.window.sent += 1;
                st.stats.requests += 1;
                ticket.sent = true;
                ticket.epoch = st.window.epoch;
                return ticket;
            }
            adaptive
        };
        if adaptive {
            let mut waited = false;
            loop {
                let room = self.room.notified();
                tokio::pin!(room);
                room.as_mut().enable();
                {
                    let mut st = self.lock();
                    if st.window.has_room() {
                        st.window.slots += 1;
                        ticket.slot = true;
                        break;
                    }
                }
                waited = true;
                room.await;
            }
            if waited {
                let allowed = self.lock().window.allowed;
                self.note_wait(model, url, began.elapsed(), Reason::Window { allowed });
            }
        }
        loop {
            let now = Instant::now();
            let hold = self.lock().hold.clone().filter(|(until, _)| *until > now);
            if let Some((until, why)) = hold {
                self.note_wait(model, url, until - now, Reason::Provider { why: &why });
                tokio::time::sleep_until(tokio::time::Instant::from_std(until)).await;
                continue;
            }
            let (at, reason, reserved) = {
                let mut st = self.lock();
                let prompt = (prompt_chars as f64 * st.tokens_per_char).ceil();
                let completion = match max_tokens {
                    Some(n) if n > 0 => n as f64,
                    _ => st.completion_tokens.ceil(),
                };
                let cost = prompt + completion;
                let by_requests = st.requests.as_ref().map(|b| b.earliest(now, 1.0));
                let by_tokens = st.tokens.as_ref().map(|b| b.earliest(now, cost));
                let at = by_requests.into_iter().chain(by_tokens).max().unwrap_or(now);
                if let Some(b) = &mut st.requests {
                    b.take(at, 1.0);
                }
                let reserved = if let Some(b) = &mut st.tokens {
                    b.take(at, cost);
                    (prompt, completion)
                } else {
                    (0.0, 0.0)
                };
                let reason = if at <= now {
                    None
                } else if by_tokens == Some(at)
                    && let Some(per_minute) = st.settings.tokens_per_minute
                {
                    Some(Reason::TokenRate {
                        per_minute,
                        tokens: cost as u64,
                    })
                } else {
                    st.settings
                        .requests_per_minute
                        .map(|per_minute| Reason::RequestRate { per_minute })
                };
                (at, reason, reserved)
            };
            if let Some(reason) = reason {
                self.note_wait(model, url, at - now, reason);
                tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await;
            }
            let mut st = self.lock();
            let now = Instant::now();
            if st.hold.as_ref().is_some_and(|(until, _)| *until > now) {
                // The provider asked for a pause while this request waited for its turn: give
                // the turn back and wait for the pause to end.
                if let Some(b) = &mut st.requests {
                    b.adjust(now, 1.0);
                }
                if let Some(b) = &mut st.tokens {
                    b.adjust(now, reserved.0 + reserved.1);
                }
                continue;
            }
            st.window.sent += 1;
            st.stats.requests += 1;
            ticket.sent = true;
            ticket.epoch = st.window.epoch;
            ticket.reserved = reserved;
            return ticket;
        }
    }
}

impl Ticket {
    /// How the attempt ended: corrects the token reservation, learns the endpoint's token
    /// ratio, moves the adaptive window and takes the pauses the provider asks for.
    pub fn finish(mut self, answer: Answer<'_>) {
        let now = Instant::now();
        let e = self.endpoint.clone();
        let mut st = e.lock();
        let adaptive = st.settings.adaptive;
        let (prompt, completion) = self.reserved;
        let mut grew = false;
        let signals = match answer {
            Answer::Done {
                prompt_tokens,
                completion_tokens,
                signals,
            } => {
                if let Some(p) = prompt_tokens
                    && self.prompt_chars > 0
                {
                    let ratio = f64::from(p) / self.prompt_chars as f64;
                    st.tokens_per_char = (0.8 * st.tokens_per_char + 0.2 * ratio).clamp(0.01, 4.0);
                }
                if let Some(c) = completion_tokens {
                    st.completion_tokens = 0.8 * st.completion_tokens + 0.2 * f64::from(c);
                }
                if let (Some(b), Some(p), Some(c)) = (&mut st.tokens, prompt_tokens, completion_tokens) {
                    b.adjust(now, prompt + completion - f64::from(p) - f64::from(c));
                }
                if adaptive {
                    grew = st.window.succeeded();
                }
                Some(signals)
            }
            Answer::Status { status, signals } => {
                // Nothing was generated: the completion's share of the reservation comes back.
                if let Some(b) = &mut st.tokens {
                    b.adjust(now, completion);
                }
                if matches!(status, 429 | 503) {
                    st.stats.refused += 1;
                    if adaptive {
                        if st.window.congested(self.epoch) {
                            st.stats.decreases += 1;
                            st.decreased_after = format!("HTTP {status}");
                        }
                        if let Some(ra) = signals.retry_after.filter(|d| !d.is_zero()) {
                            let ra = ra.min(super::retry::Backoff::default().max_retry_after);
                            let why = format!(
                                "the server refused a request (HTTP {status}) and asked to wait {:.2} s",
                                ra.as_secs_f64()
                            );
                            hold(&mut st, now + ra, why);
                        }
                    }
                }
                Some(signals)
            }
            Answer::Nothing => None,
        };
        if adaptive && let Some(s) = signals {
            let spent = [
                (
                    "requests",
                    st.settings.requests_per_minute,
                    s.remaining_requests,
                    s.reset_requests,
                ),
                (
                    "tokens",
                    st.settings.tokens_per_minute,
                    s.remaining_tokens,
                    s.reset_tokens,
                ),
            ];
            for (what, configured, remaining, reset) in spent {
                if let (None, Some(0), Some(reset)) = (configured, remaining, reset) {
                    let why = format!(
                        "the server says no {what} are left (`x-ratelimit-remaining-{what}: 0`) until \
                         `x-ratelimit-reset-{what}: {}`",
                        format_duration(reset)
                    );
                    hold(&mut st, now + reset.min(MAX_HEADER_PAUSE), why);
                }
            }
        }
        // Give the slot back here, under the same lock, rather than in `drop`.
        let freed = self.release(&mut st);
        drop(st);
        if grew || freed {
            e.room.notify_one();
        }
    }
}

/// A wait for people: `35 ms` below a second, `1.2 s` above.
fn shown(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.1} s", d.as_secs_f64())
    }
}

/// Pause the endpoint until `until`, unless a longer pause is on.
fn hold(st: &mut State, until: Instant, why: String) {
    if st.hold.as_ref().is_none_or(|(u, _)| *u < until) {
        st.hold = Some((until, why));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_as_openai_writes_them() {
        let ms = Duration::from_millis;
        assert_eq!(parse_duration("6m0s"), Some(Duration::from_secs(360)));
        assert_eq!(parse_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_duration("120ms"), Some(ms(120)));
        assert_eq!(parse_duration("1h2m3.5s"), Some(ms(3_723_500)));
        assert_eq!(parse_duration("2m59.56s"), Some(ms(179_560)));
        assert_eq!(parse_duration(" 20 "), Some(Duration::from_secs(20)));
        assert_eq!(parse_duration("0.5"), Some(ms(500)));
        assert_eq!(parse_duration("250us"), Some(Duration::from_micros(250)));
        for bad in ["", "s", "5x", "-1s", "1s2", "ms", "NaN", "1..2s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
        for d in [
            ms(0),
            ms(1),
            ms(20),
            ms(999),
            ms(1000),
            ms(1500),
            ms(59_999),
            ms(360_000),
            ms(3_723_500),
        ] {
            let text = format_duration(d);
            let back = parse_duration(&text).expect(&text);
            assert!(back >= d && back - d < ms(1), "{d:?} -> {text} -> {back:?}");
        }
        assert_eq!(format_duration(ms(20)), "20ms");
        assert_eq!(format_duration(Duration::from_micros(19_200)), "20ms");
        assert_eq!(format_duration(ms(1500)), "1.5s");
        assert_eq!(format_duration(ms(360_000)), "6m0s");
    }

    #[test]
    fn signals_come_from_the_headers() {
        let headers = [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-remaining-tokens", "1234"),
            ("x-ratelimit-reset-requests", "1s"),
            ("x-ratelimit-reset-tokens", "6m0s"),
            ("retry-after-ms", "20"),
            ("retry-after", "1"),
        ];
        let get = |name: &str| headers.iter().find(|(k, _)| *k == name).map(|(_, v)| *v);
        let s = Signals::read(get);
        assert_eq!(
            s,
            Signals {
                remaining_requests: Some(0),
                remaining_tokens: Some(1234),
                reset_requests: Some(Duration::from_secs(1)),
                reset_tokens: Some(Duration::from_secs(360)),
                retry_after: Some(Duration::from_millis(20)),
            }
        );
        // Without the precise header, `Retry-After` in seconds.
        let s = Signals::read(|n| (n == "retry-after").then_some("2"));
        assert_eq!(s.retry_after, Some(Duration::from_secs(2)));
        assert_eq!(Signals::read(|_| None), Signals::default());
    }

    #[test]
    fn a_bucket_holds_one_second_and_paces_the_rest() {
        let t0 = Instant::now();
        let mut b = Bucket::per_minute(600.0, t0); // 10 a second
        assert_eq!(b.burst(), 10.0);
        let mut times = Vec::new();
        for _ in 0..30 {
            let at = b.earliest(t0, 1.0);
            b.take(at, 1.0);
            times.push(at.duration_since(t0).as_secs_f64());
        }
        // The first ten at once, then one every 100 ms.
        assert!(times[..10].iter().all(|t| *t == 0.0), "{times:?}");
        for (i, t) in times[10..].iter().enumerate() {
            assert!((t - 0.1 * (i + 1) as f64).abs() < 1e-6, "{i}: {t}");
        }
        // A slow rate still lets one request through at once.
        let b = Bucket::per_minute(6.0, t0);
        assert_eq!((b.burst(), b.earliest(t0, 1.0)), (1.0, t0));
    }

    #[test]
    fn a_cost_larger_than_the_bucket_waits_for_it_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut b = Bucket::per_minute(6000.0, t0); // 100 a second
        b.take(t0, 50.0);
        // 250 > 100: waits until full (0.5 s), then the bucket is 2.5 s in debt.
        let at = b.earliest(t0, 250.0);
        assert!((at.duration_since(t0).as_secs_f64() - 0.5).abs() < 1e-6);
        b.take(at, 250.0);
        assert!((b.until_full(t0).as_secs_f64() - 3.0).abs() < 1e-6);
        assert!((b.level(at) + 150.0).abs() < 1e-6);
        // Usage below the reservation gives the difference back, never beyond full.
        b.adjust(t0, 200.0);
        assert!((b.until_full(t0).as_secs_f64() - 1.0).abs() < 1e-6);
        b.adjust(t0, 1e6);
        assert_eq!(b.until_full(t0), Duration::ZERO);
        // More than reserved is charged.
        b.adjust(t0, -100.0);
        assert!((b.until_full(t0).as_secs_f64() - 1.0).abs() < 1e-6);
    }

    #[test]
    fn the_window_halves_once_per_round_and_grows_by_one_per_window() {
        let mut w = Window::open();
        assert!(w.has_room());
        w.slots = 64;
        w.sent = 64;
        assert!(!w.succeeded(), "an open window does not grow");
        assert!(w.congested(0));
        assert_eq!(w.allowed, 32.0);
        // The other refusals of that round leave it.
        assert!(!w.congested(0));
        assert_eq!(w.allowed, 32.0);
        assert!(!w.has_room());
        // Successes while it binds: +1 per window's worth.
        w.slots = 32;
        for _ in 0..32 {
            w.succeeded();
        }
        assert!((w.allowed - 33.0).abs() < 0.05, "{}", w.allowed);
        // Not while it does not bind.
        w.slots = 3;
        let before = w.allowed;
        w.succeeded();
        assert_eq!(w.allowed, before);
        // Never below one; the flight size is what is halved.
        w.sent = 1;
        for epoch in 1..10 {
            w.congested(epoch);
        }
        assert_eq!(w.allowed, 1.0);
        w.slots = 0;
        assert!(w.has_room());
        w.slots = 1;
        assert!(!w.has_room());
    }

    #[test]
    fn log_lines_are_throttled_and_count_what_they_left_out() {
        let mut l = Lines::default();
        let t0 = Instant::now();
        assert_eq!(l.admit(t0, Duration::from_millis(100)).as_deref(), Some(""));
        for i in 0..5 {
            assert_eq!(
                l.admit(t0 + Duration::from_millis(i * 100), Duration::from_millis(i * 300)),
                None
            );
        }
        let next = l
            .admit(t0 + LINE_EVERY, Duration::ZERO)
            .expect("a line after the interval");
        assert_eq!(next, " (and 5 more waits since the last line, up to 1.2 s)");
        assert_eq!(shown(Duration::from_micros(35_900)), "35 ms");
        assert_eq!(l.admit(t0 + LINE_EVERY * 3, Duration::ZERO).as_deref(), Some(""));
    }

    fn settings(rpm: Option<f64>, tpm: Option<f64>) -> Settings {
        Settings {
            requests_per_minute: rpm,
            tokens_per_minute: tpm,
            adaptive: true,
        }
    }

    #[test]
    fn models_of_one_endpoint_share_its_limiter_and_the_tighter_settings() {
        let key = endpoint_key("http://limits.test/v1/", "shared");
        assert_eq!(key, "http://limits.test/v1 shared");
        let a = endpoint(&key, settings(Some(600.0), None));
        let b = endpoint(&key, settings(Some(300.0), Some(1000.0)));
        assert!(Arc::ptr_eq(&a, &b));
        let s = a.lock().settings;
        assert_eq!(
            (s.requests_per_minute, s.tokens_per_minute),
            (Some(300.0), Some(1000.0))
        );
        let other = endpoint(&endpoint_key("http://limits.test/v1", "another"), settings(None, None));
        assert!(!Arc::ptr_eq(&a, &other));
        drop((a, b));
        assert_eq!(stats(&key), None, "the limiter lives as long as its clients");
        let fresh = endpoint(&key, settings(None, None));
        assert_eq!(fresh.lock().settings.requests_per_minute, None);
    }

    #[tokio::test]
    async fn requests_go_at_the_configured_rate_in_order() {
        let e = endpoint(&endpoint_key("http://pace.test/v1", "m"), settings(Some(1200.0), None));
        let t0 = Instant::now();
        let mut sent = Vec::new();
        for _ in 0..26 {
            let t = e.admit("m", "u", 10, Some(10)).await;
            sent.push(t0.elapsed().as_secs_f64());
            t.finish(Answer::Done {
                prompt_tokens: Some(3),
                completion_tokens: Some(10),
                signals: &Signals::default(),
            });
        }
        // 20 a second, a bucket of 20 less the margin of 100 ms: eighteen at once, then one
        // every 50 ms; never earlier.
        for (i, got) in sent.iter().enumerate() {
            let want = 0.05 * i.saturating_sub(17) as f64;
            assert!(*got >= want - 1e-3 && *got < want + 0.25, "{i}: {sent:?}");
        }
        let s = e.stats();
        assert_eq!((s.requests, s.request_rate_waits), (26, 8));
        assert_eq!(s.waits(), 8);
        assert_eq!((s.lines, s.suppressed), (1, 7), "one line, then the rest counted");
    }

    #[tokio::test]
    async fn tokens_are_reserved_and_corrected_by_the_usage() {
        let e = endpoint(
            &endpoint_key("http://tokens.test/v1", "m"),
            settings(None, Some(6000.0)),
        );
        // 100 tokens a second. 400 chars at 4 a token = 100 prompt tokens + 100 max_tokens.
        let t = e.admit("m", "u", 400, Some(100)).await;
        assert_eq!(t.reserved, (100.0, 100.0));
        {
            let st = e.lock();
            let b = st.tokens.as_ref().expect("bucket");
            assert!((b.until_full(Instant::now()).as_secs_f64() - 2.0).abs() < 0.05);
        }
        // The server counted 50 + 10: 140 tokens come back; the ratio moves towards 1/8.
        t.finish(Answer::Done {
            prompt_tokens: Some(50),
            completion_tokens: Some(10),
            signals: &Signals::default(),
        });
        let st = e.lock();
        let b = st.tokens.as_ref().expect("bucket");
        assert!((b.until_full(Instant::now()).as_secs_f64() - 0.6).abs() < 0.05);
        assert!((st.tokens_per_char - (0.8 * 0.25 + 0.2 * 0.125)).abs() < 1e-9);
    }

    #[tokio::test]
    async fn refusals_shrink_the_window_and_pause_the_endpoint() {
        let e = endpoint(&endpoint_key("http://refuse.test/v1", "m"), settings(None, None));
        let mut tickets = Vec::new();
        for _ in 0..8 {
            tickets.push(e.admit("m", "u", 10, None).await);
        }
        let refused = Signals {
            retry_after: Some(Duration::from_millis(300)),
            ..Signals::default()
        };
        for t in tickets.drain(..) {
            t.finish(Answer::Status {
                status: 429,
                signals: &refused,
            });
        }
        let s = e.stats();
        assert_eq!((s.refused, s.decreases, s.window), (8, 1, Some(4.0)));
        // The next request waits out the pause, then four may be in flight and a fifth waits.
        let t0 = Instant::now();
        for _ in 0..4 {
            tickets.push(e.admit("m", "u", 10, None).await);
        }
        assert!(t0.elapsed().as_secs_f64() >= 0.29, "{:?}", t0.elapsed());
        let fifth = {
            let e = e.clone();
            tokio::spawn(async move { e.admit("m", "u", 10, None).await })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!fifth.is_finished(), "the window of 4 is full");
        let done = tickets.pop().expect("ticket");
        done.finish(Answer::Done {
            prompt_tokens: None,
            completion_tokens: None,
            signals: &Signals::default(),
        });
        let fifth = tokio::time::timeout(Duration::from_secs(1), fifth)
            .await
            .expect("a slot came free")
            .expect("task");
        let s = e.stats();
        assert_eq!((s.provider_waits, s.window_waits), (1, 1));
        drop((fifth, tickets));
    }

    #[tokio::test]
    async fn spent_headers_pause_only_what_is_not_configured() {
        let spent = Signals {
            remaining_requests: Some(0),
            reset_requests: Some(Duration::from_millis(300)),
            ..Signals::default()
        };
        let none = Signals::default();
        let done = |signals| Answer::Done {
            prompt_tokens: None,
            completion_tokens: None,
            signals,
        };
        // No requests_per_minute: the provider's word pauses the endpoint.
        let e = endpoint(&endpoint_key("http://headers.test/v1", "m"), settings(None, None));
        e.admit("m", "u", 1, None).await.finish(done(&spent));
        let t0 = Instant::now();
        e.admit("m", "u", 1, None).await.finish(done(&none));
        assert!(t0.elapsed().as_secs_f64() >= 0.29, "{:?}", t0.elapsed());
        assert_eq!(e.stats().provider_waits, 1);
        // With requests_per_minute the bucket paces, and the provider's count near 0 is expected.
        let e = endpoint(
            &endpoint_key("http://headers.test/v1", "paced"),
            settings(Some(6000.0), None),
        );
        e.admit("m", "u", 1, None).await.finish(done(&spent));
        let t0 = Instant::now();
        e.admit("m", "u", 1, None).await.finish(done(&none));
        assert!(t0.elapsed().as_secs_f64() < 0.2, "{:?}", t0.elapsed());
        assert_eq!(e.stats().provider_waits, 0);
        // Without adaptation, neither the headers nor refusals pause anything.
        let e = endpoint(
            &endpoint_key("http://headers.test/v1", "naive"),
            Settings {
                adaptive: false,
                ..settings(None, None)
            },
        );
        e.admit("m", "u", 1, None).await.finish(done(&spent));
        e.admit("m", "u", 1, None).await.finish(Answer::Status {
            status: 429,
            signals: &Signals {
                retry_after: Some(Duration::from_secs(5)),
                ..spent
            },
        });
        let t0 = Instant::now();
        e.admit("m", "u", 1, None).await.finish(done(&none));
        assert!(t0.elapsed().as_secs_f64() < 0.2, "{:?}", t0.elapsed());
        let s = e.stats();
        assert_eq!((s.refused, s.decreases, s.window, s.waits()), (1, 0, None, 0));
    }
}
