//! When to try again, and whether: exponential backoff with full jitter kept per destination
//! (one `Backoff` per pipeline, never per request: vector #4724), and what an HTTP answer means
//! for a batch (the remote-write spec: 2xx sent, 5xx and 429 retried — honouring
//! `Retry-After` — other 4xx dropped and counted). The downloads of lists and bundles use the
//! same delays.

use std::time::Duration;

/// A random number in [0, 1): the per-process random keys of std's hasher, drawn anew each
/// call (enough to spread a fleet's requests; nothing secret depends on it).
pub fn unit_random() -> f64 {
    use std::hash::{BuildHasher as _, Hasher as _};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64),
    );
    (h.finish() >> 11) as f64 / (1u64 << 53) as f64
}

/// `every`, give or take a tenth, so that gateways started together drift apart.
pub fn jittered(every: Duration) -> Duration {
    every.mul_f64(0.9 + 0.2 * unit_random())
}

/// The delay after `failures` failures in a row: `base` doubling each time, capped at `cap`,
/// the actual delay drawn uniformly below that ("full jitter"), at least a second (or `cap`
/// if that is shorter).
pub fn full_jitter(failures: u64, base: Duration, cap: Duration) -> Duration {
    let exp = failures.saturating_sub(1).min(16) as u32;
    let ceiling = base.saturating_mul(1 << exp).min(cap);
    ceiling
        .mul_f64(unit_random())
        .max(Duration::from_secs(1).min(cap))
}

/// The backoff of one destination.
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    failures: u64,
}

impl Backoff {
    pub const fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            failures: 0,
        }
    }

    /// One more failure: how long to wait before the next attempt (at least `at_least`, a
    /// server's `Retry-After`, within the cap's order: never more than ten times it).
    pub fn failed(&mut self, at_least: Option<Duration>) -> Duration {
        self.failures += 1;
        let d = full_jitter(self.failures, self.base, self.cap);
        match at_least {
            Some(a) => d.max(a.min(self.cap.saturating_mul(10))),
            None => d,
        }
    }

    pub fn succeeded(&mut self) {
        self.failures = 0;
    }

    /// Failures in a row.
    pub fn failures(&self) -> u64 {
        self.failures
    }
}

/// What an HTTP answer to a push means for the batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Taken: the next batch.
    Sent,
    /// Try the same batch again later (after the server's `Retry-After` if it gave one).
    Retry(Option<Duration>),
    /// The server will never take it (a 4xx other than 429): dropped and counted.
    Drop,
}

/// The verdict on HTTP status `status` with the `Retry-After` header `retry_after`.
pub fn classify(status: u16, retry_after: Option<&str>) -> Verdict {
    match status {
        200..=299 => Verdict::Sent,
        429 | 500..=599 => Verdict::Retry(retry_after.and_then(parse_retry_after)),
        // 1xx and 3xx (redirects are followed by the client) never end a push: try again.
        100..=199 | 300..=399 => Verdict::Retry(None),
        _ => Verdict::Drop,
    }
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3).
fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    if let Ok(s) = v.parse::<u64>() {
        return Some(Duration::from_secs(s));
    }
    let at = jiff::fmt::rfc2822::parse(v).ok()?.timestamp();
    let wait = at.duration_since(jiff::Timestamp::now());
    Duration::try_from(wait).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_jittered_and_bounded() {
        let day = Duration::from_secs(86_400);
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..200 {
            let d = jittered(day);
            assert!(d >= day.mul_f64(0.9) && d <= day.mul_f64(1.1), "{d:?}");
            seen.insert(d.as_secs());
        }
        assert!(
            seen.len() > 100,
            "not random: {} distinct delays",
            seen.len()
        );
        let base = Duration::from_secs(30);
        for failures in 1..40 {
            let d = full_jitter(failures, base, Duration::from_secs(3600));
            let ceiling = Duration::from_secs(30 << failures.saturating_sub(1).min(7));
            assert!(d >= Duration::from_secs(1), "{d:?}");
            assert!(
                d <= ceiling.min(Duration::from_secs(3600)),
                "{failures}: {d:?}"
            );
        }
        // A short cap caps the backoff, even below the one-second floor.
        assert!(full_jitter(10, base, Duration::from_secs(2)) <= Duration::from_secs(2));
        assert!(full_jitter(3, base, Duration::from_millis(300)) <= Duration::from_millis(300));
    }

    #[test]
    fn one_backoff_grows_until_a_success_resets_it() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(8));
        for _ in 0..10 {
            assert!(b.failed(None) <= Duration::from_secs(8));
        }
        assert_eq!(b.failures(), 10);
        // A server's Retry-After is honoured, up to ten caps.
        assert!(b.failed(Some(Duration::from_secs(20))) >= Duration::from_secs(20));
        assert_eq!(
            b.failed(Some(Duration::from_secs(3600))),
            Duration::from_secs(80)
        );
        b.succeeded();
        assert_eq!(b.failures(), 0);
        assert!(b.failed(None) <= Duration::from_secs(1));
    }

    #[test]
    fn answers_are_classified_as_the_remote_write_spec_says() {
        assert_eq!(classify(204, None), Verdict::Sent);
        assert_eq!(classify(200, None), Verdict::Sent);
        assert_eq!(classify(503, None), Verdict::Retry(None));
        assert_eq!(
            classify(429, Some("7")),
            Verdict::Retry(Some(Duration::from_secs(7)))
        );
        assert_eq!(classify(500, Some("soon")), Verdict::Retry(None));
        assert_eq!(classify(400, None), Verdict::Drop);
        assert_eq!(classify(401, None), Verdict::Drop);
        assert_eq!(classify(404, None), Verdict::Drop);
        let date = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(120);
        let text =
            jiff::fmt::rfc2822::to_string(&date.to_zoned(jiff::tz::TimeZone::UTC)).expect("date");
        match classify(503, Some(&text)) {
            Verdict::Retry(Some(d)) => assert!(d > Duration::from_secs(100), "{d:?}"),
            other => panic!("{other:?}"),
        }
    }
}
