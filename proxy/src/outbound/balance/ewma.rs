//! Peak-EWMA latency estimate of one endpoint: a slower response raises the
//! estimate at once (the peak), faster ones pull it down smoothly, and with
//! no samples it decays towards zero so an idle endpoint gets probed again.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// The estimate before any sample: optimistic, so new endpoints get tried.
pub const DEFAULT_RTT: Duration = Duration::from_millis(1);

/// A shared peak-EWMA estimate.
#[derive(Debug)]
pub struct PeakEwma {
    /// (estimate in ns, time of the last update).
    state: Mutex<(f64, Instant)>,
}

/// The estimate `cost_ns` last set `elapsed` ago, decayed over `decay`.
pub fn decayed(cost_ns: f64, elapsed: Duration, decay: Duration) -> f64 {
    let decay_ns = decay.as_nanos().max(1) as f64;
    cost_ns * (-(elapsed.as_nanos() as f64) / decay_ns).exp()
}

/// The estimate after observing `rtt` `elapsed` after the last update.
pub fn updated(cost_ns: f64, elapsed: Duration, rtt: Duration, decay: Duration) -> f64 {
    let rtt_ns = rtt.as_nanos() as f64;
    if rtt_ns > cost_ns {
        return rtt_ns;
    }
    let decay_ns = decay.as_nanos().max(1) as f64;
    let w = (-(elapsed.as_nanos() as f64) / decay_ns).exp();
    cost_ns * w + rtt_ns * (1.0 - w)
}

impl PeakEwma {
    /// A fresh estimate at `DEFAULT_RTT`.
    pub fn new(now: Instant) -> Self {
        PeakEwma {
            state: Mutex::new((DEFAULT_RTT.as_nanos() as f64, now)),
        }
    }

    /// Folds in one observed round trip.
    pub fn observe(&self, rtt: Duration, now: Instant, decay: Duration) {
        let mut s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        let elapsed = now.saturating_duration_since(s.1);
        *s = (updated(s.0, elapsed, rtt, decay), now);
    }

    /// The current estimate in nanoseconds.
    pub fn cost(&self, now: Instant, decay: Duration) -> f64 {
        let s = match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        };
        decayed(s.0, now.saturating_duration_since(s.1), decay)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: Duration = Duration::from_secs(10);

    #[test]
    fn a_slow_sample_is_taken_at_once() {
        let c = updated(
            1e6,
            Duration::from_millis(1),
            Duration::from_millis(200),
            DECAY,
        );
        assert_eq!(c, 200e6);
    }

    #[test]
    fn fast_samples_pull_the_estimate_down_gradually() {
        let c = updated(
            200e6,
            Duration::from_secs(1),
            Duration::from_millis(1),
            DECAY,
        );
        assert!(c < 200e6 && c > 150e6, "{c}");
        let c = updated(
            200e6,
            Duration::from_secs(100),
            Duration::from_millis(1),
            DECAY,
        );
        assert!(c < 1.1e6, "{c}");
    }

    #[test]
    fn idle_estimates_decay() {
        assert_eq!(decayed(100.0, Duration::ZERO, DECAY), 100.0);
        let half = decayed(100.0, DECAY, DECAY);
        assert!((half - 36.79).abs() < 0.1, "{half}");
    }

    #[test]
    fn shared_estimate() {
        let t = Instant::now();
        let e = PeakEwma::new(t);
        assert_eq!(e.cost(t, DECAY), 1e6);
        e.observe(
            Duration::from_millis(50),
            t + Duration::from_millis(1),
            DECAY,
        );
        assert!(e.cost(t + Duration::from_millis(1), DECAY) > 49e6);
    }
}
