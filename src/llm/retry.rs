//! The one retry policy of every HTTP backend: which outcomes are worth another attempt, what a
//! call that gives up reports, and how long to wait before the next attempt.
//!
//! [`classify`] is the only place that decides "transient or fatal"; [`Backoff`] is the only place
//! that decides the wait. Backends report what happened as an [`Outcome`] and obey the [`Verdict`].

use super::ErrorKind;
use rand::Rng;
use std::time::{Duration, SystemTime};

/// What one HTTP attempt produced, as far as retrying is concerned.
#[derive(Debug, Clone, Copy)]
pub enum Outcome<'a> {
    /// The server answered with a status that is not a usable success.
    Status {
        status: u16,
        /// The body as text (may be empty or HTML); read for context-length errors.
        body: &'a str,
        /// The raw `Retry-After` header, when the server sent one.
        retry_after: Option<&'a str>,
        /// The raw `retry-after-ms` header (OpenAI, Azure): milliseconds, more precise than
        /// `Retry-After`, which it overrides.
        retry_after_ms: Option<&'a str>,
    },
    /// A 2xx whose body is not the JSON of a completion (HTML, truncated, malformed).
    BadBody,
    /// No complete response within the request timeout.
    Timeout,
    /// No connection could be opened. `connected_before`: an earlier attempt of the same call did
    /// reach the server, so this is a server restarting rather than a wrong address.
    Connect { connected_before: bool },
    /// The connection broke mid-exchange: reset, closed before the response, truncated body.
    Broken,
}

/// What to do about an [`Outcome`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again (if attempts remain); `give_up_as` is the error kind reported when none remain.
    Retry {
        retry_after: Option<Duration>,
        give_up_as: ErrorKind,
    },
    /// Retrying cannot help.
    Fatal(ErrorKind),
}

/// Transient (worth retrying) or fatal, and the kind of error either ends as.
///
/// 429, 408, 425 and 5xx are transient (overload, restarts, proxies); timeouts and broken
/// connections too. A bad body is retried because a truncated response is usually a proxy or a
/// restart, but ends as `BadResponse`. Other 4xx are the request's fault and never change on
/// retry: a 400/413/422 that mentions the context window is `ContextOverflow`, which the engine
/// turns into an ending rather than a failure.
pub fn classify(outcome: &Outcome<'_>) -> Verdict {
    let retry = |give_up_as, retry_after| Verdict::Retry {
        retry_after,
        give_up_as,
    };
    match *outcome {
        Outcome::Status {
            status,
            body,
            retry_after,
            retry_after_ms,
        } => match status {
            408 | 425 | 429 | 500..=599 => retry(
                ErrorKind::RetriesExhausted,
                retry_after_ms
                    .and_then(parse_retry_after_ms)
                    .or_else(|| retry_after.and_then(|v| parse_retry_after(v, SystemTime::now()))),
            ),
            400 | 413 | 422 if mentions_context_length(body) => Verdict::Fatal(ErrorKind::ContextOverflow),
            401 | 403 => Verdict::Fatal(ErrorKind::Auth),
            404 => Verdict::Fatal(ErrorKind::NotFound),
            400..=499 => Verdict::Fatal(ErrorKind::BadRequest),
            // 1xx/3xx that survived redirect handling, or a 2xx the caller could not use: the
            // server speaks something other than the OpenAI API.
            _ => Verdict::Fatal(ErrorKind::BadResponse),
        },
        Outcome::BadBody => retry(ErrorKind::BadResponse, None),
        Outcome::Timeout | Outcome::Broken => retry(ErrorKind::RetriesExhausted, None),
        Outcome::Connect { connected_before } => retry(
            if connected_before {
                ErrorKind::RetriesExhausted
            } else {
                ErrorKind::Unreachable
            },
            None,
        ),
    }
}

/// Phrases servers use when a prompt does not fit: OpenAI/Azure/vLLM ("maximum context length",
/// `context_length_exceeded`), llama.cpp ("exceeds the available context size"), TGI ("`inputs`
/// tokens + `max_new_tokens` must be <= ...").
fn mentions_context_length(body: &str) -> bool {
    let b = body.to_ascii_lowercase();
    [
        "context length",
        "context_length",
        "context size",
        "context window",
        "maximum context",
        "exceed_context",
        "tokens + `max_new_tokens`",
        "input is too long",
    ]
    .iter()
    .any(|p| b.contains(p))
}

/// `retry-after-ms` as a wait: non-negative milliseconds, decimals tolerated.
pub fn parse_retry_after_ms(value: &str) -> Option<Duration> {
    let ms = value.trim().parse::<f64>().ok()?;
    (ms.is_finite() && ms >= 0.0).then(|| Duration::from_secs_f64((ms / 1000.0).min(1e9)))
}

/// `Retry-After` as a wait: delay-seconds (decimals tolerated) or an HTTP date (IMF-fixdate, the
/// form RFC 9110 requires senders to use). A date in the past means "now". Anything else is
/// ignored, and the normal backoff applies.
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<f64>() {
        return (secs.is_finite() && secs >= 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)));
    }
    // An HTTP-date (RFC 9110: IMF-fixdate, and the obsolete RFC 850 and asctime forms).
    let at = httpdate::parse_http_date(v).ok()?;
    Some(at.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Exponential backoff with full jitter: the wait before retry `n` (0-based) is uniform in
/// `[0, min(cap, base * 2^n)]`, so many workers hitting one overloaded server spread out instead
/// of retrying in lockstep. A server's `Retry-After` is a floor (up to `max_retry_after`, so a
/// server asking for an hour cannot park a worker for an hour).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
    pub max_retry_after: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// The largest jittered wait before retry `n` (0-based).
    pub fn ceiling(&self, n: u32) -> Duration {
        let factor = 2f64.powi(n.min(62) as i32);
        Duration::from_secs_f64((self.base.as_secs_f64() * factor).min(self.cap.as_secs_f64()))
    }

    /// The wait before retry `n` (0-based), honouring the server's `Retry-After`.
    pub fn wait(&self, n: u32, retry_after: Option<Duration>, rng: &mut impl Rng) -> Duration {
        let ceiling = self.ceiling(n).as_secs_f64();
        let jittered = Duration::from_secs_f64(ceiling * rng.random::<f64>());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_retry_after)),
            None => jittered,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn status(status: u16, body: &str) -> Verdict {
        classify(&Outcome::Status {
            status,
            body,
            retry_after: None,
            retry_after_ms: None,
        })
    }

    fn retrying(give_up_as: ErrorKind) -> Verdict {
        Verdict::Retry {
            retry_after: None,
            give_up_as,
        }
    }

    #[test]
    fn overload_and_server_errors_are_transient() {
        for s in [408, 425, 429, 500, 502, 503, 504, 599] {
            assert_eq!(status(s, ""), retrying(ErrorKind::RetriesExhausted), "HTTP {s}");
        }
        assert_eq!(classify(&Outcome::Timeout), retrying(ErrorKind::RetriesExhausted));
        assert_eq!(classify(&Outcome::Broken), retrying(ErrorKind::RetriesExhausted));
    }

    #[test]
    fn client_errors_are_fatal_with_their_kind() {
        assert_eq!(status(401, ""), Verdict::Fatal(ErrorKind::Auth));
        assert_eq!(status(403, "forbidden"), Verdict::Fatal(ErrorKind::Auth));
        assert_eq!(status(404, "no such model"), Verdict::Fatal(ErrorKind::NotFound));
        assert_eq!(status(400, "bad temperature"), Verdict::Fatal(ErrorKind::BadRequest));
        assert_eq!(status(422, "unprocessable"), Verdict::Fatal(ErrorKind::BadRequest));
        assert_eq!(status(302, ""), Verdict::Fatal(ErrorKind::BadResponse));
    }

    #[test]
    fn context_length_errors_of_known_servers_are_overflow() {
        let bodies = [
            r#"{"error":{"message":"This model's maximum context length is 4096 tokens. However, you requested 5000 tokens","code":"context_length_exceeded"}}"#,
            r#"{"error":{"code":400,"message":"the request exceeds the available context size, try increasing it","type":"exceed_context_size_error"}}"#,
            r#"{"error":"Input validation error: `inputs` tokens + `max_new_tokens` must be <= 4096. Given: 4000 `inputs` tokens and 1000 `max_new_tokens`","error_type":"validation"}"#,
        ];
        for b in bodies {
            assert_eq!(status(400, b), Verdict::Fatal(ErrorKind::ContextOverflow), "{b}");
        }
        assert_eq!(status(422, bodies[2]), Verdict::Fatal(ErrorKind::ContextOverflow));
        // The same words in a 5xx are still a server fault.
        assert_eq!(status(500, bodies[0]), retrying(ErrorKind::RetriesExhausted));
    }

    #[test]
    fn bad_bodies_and_refused_connections_give_up_as_their_own_kind() {
        assert_eq!(classify(&Outcome::BadBody), retrying(ErrorKind::BadResponse));
        assert_eq!(
            classify(&Outcome::Connect {
                connected_before: false
            }),
            retrying(ErrorKind::Unreachable)
        );
        assert_eq!(
            classify(&Outcome::Connect { connected_before: true }),
            retrying(ErrorKind::RetriesExhausted)
        );
    }

    #[test]
    fn retry_after_is_read_from_429_and_503() {
        for s in [429, 503] {
            let v = classify(&Outcome::Status {
                status: s,
                body: "",
                retry_after: Some("7"),
                retry_after_ms: None,
            });
            assert_eq!(
                v,
                Verdict::Retry {
                    retry_after: Some(Duration::from_secs(7)),
                    give_up_as: ErrorKind::RetriesExhausted
                }
            );
        }
        // `retry-after-ms` is the precise one, and wins; a bad one leaves `Retry-After`.
        let with_ms = |ms| {
            classify(&Outcome::Status {
                status: 429,
                body: "",
                retry_after: Some("1"),
                retry_after_ms: Some(ms),
            })
        };
        let waits = |ra| Verdict::Retry {
            retry_after: Some(ra),
            give_up_as: ErrorKind::RetriesExhausted,
        };
        assert_eq!(with_ms("20"), waits(Duration::from_millis(20)));
        assert_eq!(with_ms(" 2.5 "), waits(Duration::from_micros(2500)));
        assert_eq!(with_ms("-5"), waits(Duration::from_secs(1)));
        assert_eq!(with_ms("soon"), waits(Duration::from_secs(1)));
    }

    #[test]
    fn retry_after_parses_seconds_and_http_dates() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777); // Sun, 06 Nov 1994 08:49:37 GMT
        assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
        assert_eq!(parse_retry_after(" 1.5 ", now), Some(Duration::from_millis(1500)));
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:50:07 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT", SystemTime::UNIX_EPOCH),
            Some(Duration::ZERO)
        );
        assert_eq!(
            parse_retry_after(
                "Tue, 29 Feb 2000 00:00:01 GMT",
                SystemTime::UNIX_EPOCH + Duration::from_secs(951_782_400)
            ),
            Some(Duration::from_secs(1))
        );
        for bad in [
            "",
            "-3",
            "NaN",
            "inf",
            "soon",
            "Sun, 06 Foo 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 25:00:00 GMT",
        ] {
            assert_eq!(parse_retry_after(bad, now), None, "{bad:?}");
        }
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_cap() {
        let b = Backoff::default();
        assert_eq!(b.ceiling(0), Duration::from_millis(500));
        assert_eq!(b.ceiling(1), Duration::from_secs(1));
        assert_eq!(b.ceiling(3), Duration::from_secs(4));
        assert_eq!(b.ceiling(6), Duration::from_secs(30));
        assert_eq!(b.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn backoff_jitter_is_full_and_within_the_ceiling() {
        let b = Backoff {
            base: Duration::from_millis(100),
            cap: Duration::from_secs(1),
            max_retry_after: Duration::from_secs(5),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for n in 0..8 {
            let waits: Vec<Duration> = (0..500).map(|_| b.wait(n, None, &mut rng)).collect();
            let ceiling = b.ceiling(n);
            assert!(waits.iter().all(|w| *w <= ceiling));
            // Full jitter: waits spread over the whole range, not clustered at the top.
            assert!(waits.iter().any(|w| *w < ceiling / 4), "retry {n}");
            assert!(waits.iter().any(|w| *w > ceiling * 3 / 4), "retry {n}");
        }
    }

    #[test]
    fn backoff_honours_retry_after_up_to_its_bound() {
        let b = Backoff {
            base: Duration::from_millis(10),
            cap: Duration::from_millis(20),
            max_retry_after: Duration::from_secs(5),
        };
        let mut rng = ChaCha8Rng::seed_from_u64(2);
        for _ in 0..100 {
            assert!(b.wait(0, Some(Duration::from_secs(2)), &mut rng) >= Duration::from_secs(2));
            assert_eq!(
                b.wait(0, Some(Duration::from_secs(3600)), &mut rng),
                Duration::from_secs(5)
            );
        }
        // A Retry-After shorter than the jittered wait leaves the backoff as it is.
        let (mut r1, mut r2) = (ChaCha8Rng::seed_from_u64(3), ChaCha8Rng::seed_from_u64(3));
        for n in 0..5 {
            assert_eq!(b.wait(n, Some(Duration::ZERO), &mut r1), b.wait(n, None, &mut r2));
        }
    }
}
