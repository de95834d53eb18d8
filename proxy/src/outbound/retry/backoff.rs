//! Exponential backoff with full jitter: the n-th retry waits a uniformly
//! random time in `[0, min(cap, base × 2ⁿ)]`, so retries of many clients
//! spread out instead of arriving together.

use rand::Rng;
use std::time::Duration;

/// The upper bound of the wait before retry number `retry` (0-based).
pub fn ceiling(retry: u32, base: Duration, cap: Duration) -> Duration {
    base.saturating_mul(1u32 << retry.min(20)).min(cap)
}

/// A random wait before retry number `retry`.
pub fn backoff(retry: u32, base: Duration, cap: Duration) -> Duration {
    let max = ceiling(retry, base, cap);
    if max.is_zero() {
        return max;
    }
    Duration::from_nanos(rand::rng().random_range(0..=max.as_nanos() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(25);
    const CAP: Duration = Duration::from_millis(250);

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(ceiling(0, BASE, CAP), Duration::from_millis(25));
        assert_eq!(ceiling(1, BASE, CAP), Duration::from_millis(50));
        assert_eq!(ceiling(3, BASE, CAP), Duration::from_millis(200));
        assert_eq!(ceiling(4, BASE, CAP), CAP);
        assert_eq!(ceiling(u32::MAX, BASE, CAP), CAP);
    }

    #[test]
    fn waits_stay_within_bounds_and_spread() {
        let waits: Vec<_> = (0..1000).map(|_| backoff(2, BASE, CAP)).collect();
        assert!(waits.iter().all(|w| *w <= Duration::from_millis(100)));
        let below_half = waits
            .iter()
            .filter(|w| **w < Duration::from_millis(50))
            .count();
        assert!(
            (350..650).contains(&below_half),
            "not uniform: {below_half}"
        );
        assert_eq!(backoff(0, Duration::ZERO, CAP), Duration::ZERO);
    }
}
