//! Time as authentication sees it: the system clock, or a manual clock that
//! tests move forward (token expiry, JWKS refetch limits, device-code
//! lifetimes) without sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch. Cheap to clone; clones of a manual
/// clock move together.
#[derive(Clone, Default)]
pub struct Clock {
    offset_ms: Option<Arc<AtomicI64>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.offset_ms {
            None => f.write_str("Clock::system"),
            Some(o) => write!(f, "Clock::manual(+{}ms)", o.load(Ordering::Relaxed)),
        }
    }
}

impl Clock {
    /// The system clock.
    pub fn system() -> Clock {
        Clock { offset_ms: None }
    }

    /// A clock that starts at the system time and then runs with it, plus
    /// whatever [`Clock::advance`] adds.
    pub fn manual() -> Clock {
        Clock {
            offset_ms: Some(Arc::new(AtomicI64::new(0))),
        }
    }

    pub fn now_ms(&self) -> i64 {
        let system = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        match &self.offset_ms {
            None => system,
            Some(offset) => system.saturating_add(offset.load(Ordering::Relaxed)),
        }
    }

    /// Whole seconds since the Unix epoch (JWT `NumericDate`).
    pub fn now_secs(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }

    /// Moves a manual clock forward; returns `false` (and does nothing) on
    /// the system clock.
    pub fn advance(&self, by: Duration) -> bool {
        match &self.offset_ms {
            None => false,
            Some(offset) => {
                let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
                offset.fetch_add(ms, Ordering::Relaxed);
                true
            }
        }
    }
}

/// A duration in whole milliseconds, saturating.
pub(crate) fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clocks_move_together_and_system_clocks_do_not_move() {
        let clock = Clock::manual();
        let twin = clock.clone();
        let before = twin.now_ms();
        assert!(clock.advance(Duration::from_secs(3600)));
        assert!(twin.now_ms() >= before + 3_600_000);
        let system = Clock::system();
        assert!(!system.advance(Duration::from_secs(3600)));
        assert!(system.now_ms() < twin.now_ms());
    }
}
