//! The circuit breaker of one upstream, and the restart backoff. Both take
//! the current instant as an argument so their state machines are tested
//! without clocks.

use std::time::{Duration, Instant};

use cellgate_config::{RestartConfig, RetryConfig};
use serde::Serialize;

/// Where a breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls go through; failures are counted.
    Closed,
    /// Calls fail at once until the open period ends.
    Open,
    /// The open period ended: one trial call goes through, the rest fail at once.
    HalfOpen,
}

/// Whether a call may go to the upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    Allowed,
    /// Allowed as the single trial call of the half-open state; its outcome
    /// must be reported ([`Breaker::on_success`], [`Breaker::on_failure`] or
    /// [`Breaker::on_abandoned`]).
    Probe,
    /// Refused: the circuit is open (or half-open with its trial in flight).
    Rejected {
        /// Until the next trial call is allowed (zero when one is in flight).
        retry_in: Duration,
        failures: u32,
        last_failure: String,
    },
}

/// Counts consecutive failures; opens at `threshold`, stays open for
/// `open_for`, then lets one trial call decide.
#[derive(Debug, Clone)]
pub struct Breaker {
    threshold: u32,
    open_for: Duration,
    failures: u32,
    opened_at: Option<Instant>,
    probe_in_flight: bool,
    last_failure: String,
}

impl Breaker {
    /// `threshold` 0 turns the breaker off (it never opens).
    pub fn new(threshold: u32, open_for: Duration) -> Self {
        Self {
            threshold,
            open_for,
            failures: 0,
            opened_at: None,
            probe_in_flight: false,
            last_failure: String::new(),
        }
    }

    pub fn state(&self, now: Instant) -> BreakerState {
        match self.opened_at {
            None => BreakerState::Closed,
            Some(at) if now.saturating_duration_since(at) < self.open_for => BreakerState::Open,
            Some(_) => BreakerState::HalfOpen,
        }
    }

    pub fn consecutive_failures(&self) -> u32 {
        self.failures
    }

    pub fn admit(&mut self, now: Instant) -> Admission {
        match self.state(now) {
            BreakerState::Closed => Admission::Allowed,
            BreakerState::HalfOpen if !self.probe_in_flight => {
                self.probe_in_flight = true;
                Admission::Probe
            }
            state => {
                let retry_in = match (state, self.opened_at) {
                    (BreakerState::Open, Some(at)) => self
                        .open_for
                        .saturating_sub(now.saturating_duration_since(at)),
                    _ => Duration::ZERO,
                };
                Admission::Rejected {
                    retry_in,
                    failures: self.failures,
                    last_failure: self.last_failure.clone(),
                }
            }
        }
    }

    /// A call succeeded (the upstream answered, even with an error). Returns
    /// true when this closed an open circuit.
    pub fn on_success(&mut self) -> bool {
        let was_open = self.opened_at.is_some();
        self.failures = 0;
        self.opened_at = None;
        self.probe_in_flight = false;
        was_open
    }

    /// A call failed (timeout, lost connection, crash). Returns true when
    /// this opened the circuit (from closed; a failed trial re-opens it
    /// without returning true again).
    pub fn on_failure(&mut self, now: Instant, why: &str) -> bool {
        self.failures = self.failures.saturating_add(1);
        self.last_failure = why.to_owned();
        let was_probe = std::mem::take(&mut self.probe_in_flight);
        if self.threshold == 0 {
            return false;
        }
        if was_probe || self.opened_at.is_some() {
            self.opened_at = Some(now);
            return false;
        }
        if self.failures >= self.threshold {
            self.opened_at = Some(now);
            return true;
        }
        false
    }

    /// The trial call ended without an outcome (the caller went away): the
    /// next call may try again.
    pub fn on_abandoned(&mut self) {
        self.probe_in_flight = false;
    }
}

/// The wait before restart attempt `attempt` (1 for the first): the
/// initial backoff, doubled for each further attempt, at most the maximum.
pub fn backoff_delay(cfg: &RestartConfig, attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(32);
    let ms = cfg
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.max_backoff_ms.max(cfg.initial_backoff_ms));
    Duration::from_millis(ms)
}

/// The wait before retry `retry` (1 for the first) of a call on another
/// replica: the initial backoff doubled for each further retry, at most the
/// maximum, then scaled to 50–100 % by `jitter` (in `0.0..=1.0`, random in
/// use) so that callers failing over together do not retry in lockstep.
pub fn retry_delay(cfg: &RetryConfig, retry: u32, jitter: f64) -> Duration {
    let exp = retry.saturating_sub(1).min(32);
    let ms = cfg
        .initial_backoff_ms
        .saturating_mul(1u64 << exp)
        .min(cfg.max_backoff_ms.max(cfg.initial_backoff_ms));
    Duration::from_millis(ms).mul_f64(0.5 + 0.5 * jitter.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_open_half_open_closed() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut b = Breaker::new(3, Duration::from_secs(10));
        assert_eq!(b.admit(t0), Admission::Allowed);
        assert!(!b.on_failure(t0, "timeout"));
        assert!(!b.on_failure(t0, "timeout"));
        assert_eq!(b.state(t0), BreakerState::Closed);
        assert!(b.on_failure(t0 + s, "exited"), "third failure opens");
        assert_eq!(b.state(t0 + s), BreakerState::Open);
        match b.admit(t0 + 3 * s) {
            Admission::Rejected {
                retry_in,
                failures,
                last_failure,
            } => {
                assert_eq!(retry_in, 8 * s);
                assert_eq!(failures, 3);
                assert_eq!(last_failure, "exited");
            }
            other => panic!("{other:?}"),
        }
        // After the open period: one probe, the others still refused.
        let t1 = t0 + 11 * s;
        assert_eq!(b.state(t1), BreakerState::HalfOpen);
        assert_eq!(b.admit(t1), Admission::Probe);
        assert!(matches!(
            b.admit(t1),
            Admission::Rejected { retry_in, .. } if retry_in == Duration::ZERO
        ));
        // The probe fails: open again for a full period.
        assert!(!b.on_failure(t1, "timeout"));
        assert_eq!(b.state(t1 + 9 * s), BreakerState::Open);
        let t2 = t1 + 10 * s;
        assert_eq!(b.admit(t2), Admission::Probe);
        assert!(b.on_success(), "a successful probe closes the circuit");
        assert_eq!(b.state(t2), BreakerState::Closed);
        assert_eq!(b.consecutive_failures(), 0);
        assert_eq!(b.admit(t2), Admission::Allowed);
    }

    #[test]
    fn success_resets_the_count_and_abandoned_probe_frees_the_slot() {
        let t0 = Instant::now();
        let mut b = Breaker::new(2, Duration::from_secs(1));
        b.on_failure(t0, "x");
        assert!(!b.on_success(), "was not open");
        assert!(!b.on_failure(t0, "x"), "count restarted");
        assert!(b.on_failure(t0, "x"));
        let t1 = t0 + Duration::from_secs(2);
        assert_eq!(b.admit(t1), Admission::Probe);
        b.on_abandoned();
        assert_eq!(b.admit(t1), Admission::Probe);
    }

    #[test]
    fn threshold_zero_never_opens() {
        let t0 = Instant::now();
        let mut b = Breaker::new(0, Duration::from_secs(1));
        for _ in 0..100 {
            assert!(!b.on_failure(t0, "x"));
        }
        assert_eq!(b.admit(t0), Admission::Allowed);
    }

    #[test]
    fn retry_delay_doubles_and_is_jittered_within_half_to_full() {
        let cfg = RetryConfig {
            max_attempts: 5,
            initial_backoff_ms: 100,
            max_backoff_ms: 300,
        };
        let at = |r, j| retry_delay(&cfg, r, j).as_millis();
        assert_eq!(
            [at(1, 1.0), at(2, 1.0), at(3, 1.0), at(9, 1.0)],
            [100, 200, 300, 300]
        );
        assert_eq!([at(1, 0.0), at(2, 0.0), at(3, 0.0)], [50, 100, 150]);
        assert_eq!(at(2, 0.5), 150);
        assert_eq!(at(1, 7.0), 100, "jitter is clamped");
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let cfg = RestartConfig {
            initial_backoff_ms: 500,
            max_backoff_ms: 30_000,
            ..Default::default()
        };
        let ms: Vec<u128> = (1..=9)
            .map(|a| backoff_delay(&cfg, a).as_millis())
            .collect();
        assert_eq!(
            ms,
            [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000, 30000]
        );
        assert!(backoff_delay(&cfg, 1) < Duration::from_secs(1));
        assert_eq!(backoff_delay(&cfg, u32::MAX).as_millis(), 30_000);
        assert_eq!(backoff_delay(&cfg, 0).as_millis(), 500);
    }
}
