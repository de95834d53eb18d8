//! Outlier detection for one endpoint: after N consecutive failures it is
//! ejected for a penalty that doubles with each ejection (capped); when the
//! penalty ends, exactly one probe request is let through, and its result
//! decides between recovery and a longer ejection.

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

/// Outlier detection settings (from `TrafficPolicy.outlierDetection`).
#[derive(Clone, Debug, PartialEq)]
pub struct OutlierConfig {
    /// Consecutive failures that eject (≥ 1).
    pub consecutive_failures: u32,
    /// First ejection's length.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Largest share of a backend's endpoints ejected at once, 0–100.
    pub max_ejection_percent: u32,
}

/// Whether the endpoint may take a request now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Availability {
    /// Healthy.
    Available,
    /// Its ejection ended; the next request is its probe.
    Probe,
    /// Ejected, or a probe is in flight.
    Ejected,
}

#[derive(Debug, Default)]
struct State {
    failures: u32,
    ejected_until: Option<Instant>,
    ejections: u32,
    probing: bool,
}

/// The outlier state of one endpoint.
#[derive(Debug, Default)]
pub struct Outlier {
    state: Mutex<State>,
}

/// What a recorded result did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Nothing changed in availability.
    None,
    /// The endpoint was ejected for this long.
    Ejected(Duration),
    /// A probe succeeded: the endpoint is back.
    Recovered,
}

impl Outlier {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(p) => p.into_inner(),
        }
    }

    /// Availability at `now`, without claiming a probe.
    pub fn availability(&self, now: Instant) -> Availability {
        let s = self.lock();
        match s.ejected_until {
            None => Availability::Available,
            Some(_) if s.probing => Availability::Ejected,
            Some(until) if now < until => Availability::Ejected,
            Some(_) => Availability::Probe,
        }
    }

    /// True when ejected (a probe in flight counts as ejected).
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.availability(now) != Availability::Available
    }

    /// Claims the probe slot; false if another request took it first.
    pub fn claim_probe(&self, now: Instant) -> bool {
        let mut s = self.lock();
        match s.ejected_until {
            Some(until) if !s.probing && now >= until => {
                s.probing = true;
                true
            }
            _ => false,
        }
    }

    /// Records a request's result. `may_eject` says whether the maximum
    /// ejected share allows one more ejection (computed by the caller, before
    /// this endpoint's lock is taken, since it looks at every endpoint).
    pub fn record(
        &self,
        success: bool,
        now: Instant,
        cfg: &OutlierConfig,
        may_eject: bool,
    ) -> Transition {
        let mut s = self.lock();
        if success {
            s.failures = 0;
            if s.probing || s.ejected_until.is_some_and(|u| now >= u) {
                s.probing = false;
                s.ejected_until = None;
                return Transition::Recovered;
            }
            return Transition::None;
        }
        s.failures = s.failures.saturating_add(1);
        let failed_probe = s.probing;
        let threshold = s.failures >= cfg.consecutive_failures.max(1);
        if failed_probe || (threshold && s.ejected_until.is_none() && may_eject) {
            let factor = 1u32 << s.ejections.min(16);
            let penalty = cfg
                .base_ejection
                .saturating_mul(factor)
                .min(cfg.max_ejection);
            s.ejections = s.ejections.saturating_add(1);
            s.ejected_until = Some(now + penalty);
            s.probing = false;
            s.failures = 0;
            return Transition::Ejected(penalty);
        }
        Transition::None
    }
}

/// Whether one more of `total` endpoints may be ejected when `ejected`
/// already are.
pub fn may_eject(ejected: usize, total: usize, max_percent: u32) -> bool {
    total > 0 && (ejected + 1) * 100 <= total * max_percent.min(100) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            base_ejection: Duration::from_secs(1),
            max_ejection: Duration::from_secs(5),
            max_ejection_percent: 50,
        }
    }

    #[test]
    fn ejects_after_consecutive_failures_only() {
        let o = Outlier::default();
        let t = Instant::now();
        assert_eq!(o.record(false, t, &cfg(), true), Transition::None);
        assert_eq!(o.record(false, t, &cfg(), true), Transition::None);
        // A success resets the streak.
        assert_eq!(o.record(true, t, &cfg(), true), Transition::None);
        o.record(false, t, &cfg(), true);
        o.record(false, t, &cfg(), true);
        assert_eq!(
            o.record(false, t, &cfg(), true),
            Transition::Ejected(Duration::from_secs(1))
        );
        assert_eq!(o.availability(t), Availability::Ejected);
    }

    #[test]
    fn probe_then_recover_or_longer_penalty() {
        let o = Outlier::default();
        let t = Instant::now();
        for _ in 0..3 {
            o.record(false, t, &cfg(), true);
        }
        let after = t + Duration::from_millis(1001);
        assert_eq!(o.availability(after), Availability::Probe);
        assert!(o.claim_probe(after));
        assert!(!o.claim_probe(after), "only one probe");
        assert_eq!(o.availability(after), Availability::Ejected);
        // Failed probe: twice as long.
        assert_eq!(
            o.record(false, after, &cfg(), false),
            Transition::Ejected(Duration::from_secs(2))
        );
        let later = after + Duration::from_millis(2001);
        assert!(o.claim_probe(later));
        assert_eq!(o.record(true, later, &cfg(), true), Transition::Recovered);
        assert_eq!(o.availability(later), Availability::Available);
    }

    #[test]
    fn penalty_is_capped() {
        let o = Outlier::default();
        let mut t = Instant::now();
        let mut last = Duration::ZERO;
        for _ in 0..6 {
            for _ in 0..3 {
                if let Transition::Ejected(d) = o.record(false, t, &cfg(), true) {
                    last = d;
                }
            }
            t += Duration::from_secs(10);
            o.claim_probe(t);
        }
        assert_eq!(last, Duration::from_secs(5));
    }

    #[test]
    fn the_ejected_share_is_bounded() {
        let o = Outlier::default();
        let t = Instant::now();
        for _ in 0..5 {
            assert_eq!(o.record(false, t, &cfg(), false), Transition::None);
        }
        assert_eq!(o.availability(t), Availability::Available);
        assert!(may_eject(0, 3, 50));
        assert!(!may_eject(1, 3, 50));
        assert!(!may_eject(0, 1, 50));
        assert!(may_eject(0, 1, 100));
        assert!(!may_eject(0, 4, 0));
    }
}
