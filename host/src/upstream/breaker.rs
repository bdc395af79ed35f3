//! One endpoint's circuit breaker, a registry's rate-limit reading, and `Retry-After`: what
//! decides whether a request may go to an endpoint now. It sends nothing itself (the
//! [`super::Upstream`] does) and knows nothing of HTTP types beyond header text.
//!
//! States: **closed** (requests go), **open** (skipped until the cool-down ends: connect
//! refused, timeout, 5xx or 429; the cool-down starts at `breaker.coolDown` and doubles while
//! the endpoint keeps failing, up to `breaker.maxCoolDown`; a 429's `Retry-After` is never
//! cut short), **half-open** (the cool-down is over: one probe request at a time; its
//! success closes the breaker, its failure opens it again for a longer cool-down).

use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::config::BreakerSettings;

/// Longest `Retry-After` honoured (a longer one is read as this).
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// What the breaker allows now.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Closed: go.
    Go,
    /// Half-open: this request is the probe (report its outcome).
    Probe,
    /// Open, or a probe is already out: skip it; it may be tried again in this long.
    Skip {
        /// Time left of the cool-down (zero while another request probes).
        wait: Duration,
        /// The last failure was a 429.
        rate_limited: bool,
    },
}

/// A breaker's state, as `/readyz` and the metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Requests go.
    Closed,
    /// Skipped until the cool-down ends.
    Open,
    /// One probe at a time.
    HalfOpen,
}

impl State {
    /// `closed`, `open`, `half_open`.
    pub fn as_str(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
        }
    }

    /// The gauge value: 0 closed, 1 open, 2 half-open.
    pub fn gauge(self) -> i64 {
        match self {
            State::Closed => 0,
            State::Open => 1,
            State::HalfOpen => 2,
        }
    }
}

/// A snapshot for `/readyz`.
#[derive(Debug, Clone)]
pub struct Status {
    /// The state.
    pub state: State,
    /// Failures since it last answered well.
    pub consecutive_failures: u32,
    /// Seconds until the next try, while open.
    pub retry_in: Option<u64>,
    /// The last failure, when it is failing (never a secret: status or transport cause).
    pub last_error: Option<String>,
}

#[derive(Debug)]
struct Inner {
    failures: u32,
    open_until: Option<Instant>,
    probing: bool,
    rate_limited: bool,
    last_error: Option<String>,
}

/// One endpoint's breaker.
#[derive(Debug)]
pub struct Breaker {
    settings: BreakerSettings,
    inner: Mutex<Inner>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(settings: BreakerSettings) -> Breaker {
        Breaker {
            settings,
            inner: Mutex::new(Inner {
                failures: 0,
                open_until: None,
                probing: false,
                rate_limited: false,
                last_error: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// May a request go now?
    pub fn admit(&self) -> Admit {
        let mut g = self.lock();
        let Some(until) = g.open_until else {
            return Admit::Go;
        };
        let now = Instant::now();
        if now < until {
            return Admit::Skip {
                wait: until - now,
                rate_limited: g.rate_limited,
            };
        }
        if g.probing {
            return Admit::Skip {
                wait: Duration::ZERO,
                rate_limited: g.rate_limited,
            };
        }
        g.probing = true;
        Admit::Probe
    }

    /// The endpoint answered (anything but a failure).
    pub fn success(&self) {
        let mut g = self.lock();
        g.failures = 0;
        g.open_until = None;
        g.probing = false;
        g.rate_limited = false;
        g.last_error = None;
    }

    /// A probe went away without an outcome (its client left): let another probe.
    pub fn abandon_probe(&self) {
        self.lock().probing = false;
    }

    /// The endpoint failed; `retry_after` is a 429's (or 503's) wait, if it sent one. Returns
    /// the cool-down now in force.
    pub fn failure(
        &self,
        reason: String,
        rate_limited: bool,
        retry_after: Option<Duration>,
    ) -> Duration {
        let mut g = self.lock();
        g.failures = g.failures.saturating_add(1);
        g.probing = false;
        g.rate_limited = rate_limited;
        g.last_error = Some(reason);
        let doublings = g.failures.saturating_sub(1).min(20);
        let grown = self
            .settings
            .cool_down
            .saturating_mul(1u32 << doublings)
            .min(self.settings.max_cool_down);
        let wait = match retry_after {
            Some(r) => {
                r.min(MAX_RETRY_AFTER)
                    .max(if rate_limited { Duration::ZERO } else { grown })
            }
            None => grown,
        };
        let until = Instant::now() + wait;
        // Never shorten a wait already promised (a Retry-After from a request before).
        g.open_until = Some(g.open_until.map_or(until, |u| u.max(until)));
        wait
    }

    /// Where it stands.
    pub fn status(&self) -> Status {
        let g = self.lock();
        let now = Instant::now();
        let (state, retry_in) = match g.open_until {
            None => (State::Closed, None),
            Some(u) if now < u => (State::Open, Some((u - now).as_secs_f64().ceil() as u64)),
            Some(_) => (State::HalfOpen, None),
        };
        Status {
            state,
            consecutive_failures: g.failures,
            retry_in,
            last_error: g.last_error.clone(),
        }
    }
}

/// `Retry-After` as seconds or an HTTP date, capped at [`MAX_RETRY_AFTER`]; `None` when
/// unreadable.
pub fn parse_retry_after(v: &str) -> Option<Duration> {
    let v = v.trim();
    let d = if let Ok(secs) = v.parse::<u64>() {
        Duration::from_secs(secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_RETRY_AFTER))
}

/// A `ratelimit-limit` / `ratelimit-remaining` value (`76;w=21600`): the number and the
/// window, if given.
pub fn parse_ratelimit(v: &str) -> Option<(u64, Option<Duration>)> {
    let mut parts = v.split(';');
    let n = parts.next()?.trim().parse().ok()?;
    let w = parts.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        (k.trim() == "w")
            .then(|| v.trim().parse().ok())
            .flatten()
            .map(Duration::from_secs)
    });
    Some((n, w))
}

/// How long a `ratelimit-remaining` reading is trusted when it names no window.
const DEFAULT_WINDOW: Duration = Duration::from_secs(3600);
/// Longest time a reading is trusted whatever its window.
const MAX_WINDOW: Duration = Duration::from_secs(6 * 3600);

/// The last rate-limit reading of a registry.
#[derive(Debug, Default)]
pub struct RateLimit {
    inner: Mutex<Option<Reading>>,
}

#[derive(Debug, Clone, Copy)]
struct Reading {
    remaining: u64,
    at: Instant,
    window: Duration,
}

impl RateLimit {
    /// Notes a `ratelimit-remaining` value.
    pub fn observe(&self, remaining: u64, window: Option<Duration>) {
        let window = window.unwrap_or(DEFAULT_WINDOW).min(MAX_WINDOW);
        *self.inner.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reading {
            remaining,
            at: Instant::now(),
            window,
        });
    }

    /// The remaining budget, while the reading is within its window.
    pub fn remaining(&self) -> Option<u64> {
        let r = (*self.inner.lock().unwrap_or_else(|p| p.into_inner()))?;
        (r.at.elapsed() < r.window).then_some(r.remaining)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> BreakerSettings {
        BreakerSettings {
            cool_down: Duration::from_millis(40),
            max_cool_down: Duration::from_millis(100),
        }
    }

    #[test]
    fn opens_grows_probes_once_and_closes() {
        let b = Breaker::new(settings());
        assert_eq!(b.admit(), Admit::Go);
        assert_eq!(
            b.failure("refused".into(), false, None),
            Duration::from_millis(40)
        );
        assert!(matches!(b.admit(), Admit::Skip { .. }));
        assert_eq!(b.status().state, State::Open);
        std::thread::sleep(Duration::from_millis(45));
        assert_eq!(b.status().state, State::HalfOpen);
        assert_eq!(b.admit(), Admit::Probe);
        assert!(
            matches!(b.admit(), Admit::Skip { wait, .. } if wait.is_zero()),
            "one probe"
        );
        assert_eq!(
            b.failure("refused".into(), false, None),
            Duration::from_millis(80)
        );
        assert_eq!(
            b.failure("refused".into(), false, None),
            Duration::from_millis(100),
            "capped"
        );
        b.success();
        assert_eq!(b.admit(), Admit::Go);
        assert_eq!(b.status().consecutive_failures, 0);
    }

    #[test]
    fn retry_after_is_never_cut_short() {
        let b = Breaker::new(settings());
        let wait = b.failure("429".into(), true, Some(Duration::from_secs(5)));
        assert_eq!(wait, Duration::from_secs(5));
        // A later failure with a shorter cool-down keeps the promised wait.
        b.failure("503".into(), false, None);
        assert!(matches!(b.admit(), Admit::Skip { wait, .. } if wait > Duration::from_secs(4)));
    }

    #[test]
    fn header_values() {
        assert_eq!(parse_retry_after("5"), Some(Duration::from_secs(5)));
        assert_eq!(parse_retry_after("999999"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(
            parse_ratelimit("76;w=21600"),
            Some((76, Some(Duration::from_secs(21600))))
        );
        assert_eq!(parse_ratelimit("100"), Some((100, None)));
        assert_eq!(parse_ratelimit("x;w=1"), None);
    }

    #[test]
    fn a_reading_expires_with_its_window() {
        let r = RateLimit::default();
        assert_eq!(r.remaining(), None);
        r.observe(3, Some(Duration::from_secs(60)));
        assert_eq!(r.remaining(), Some(3));
        r.observe(3, Some(Duration::ZERO));
        assert_eq!(r.remaining(), None);
    }
}
