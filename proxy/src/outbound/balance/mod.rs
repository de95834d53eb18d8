//! Endpoint choice: power of two choices over peak-EWMA latency × in-flight
//! requests, skipping ejected endpoints and endpoints at their in-flight
//! limit, and avoiding the endpoint a retry just failed on.

pub mod ewma;
pub mod outlier;
mod service;

pub use service::{Balance, Peer, Shared, Tried};

use ewma::PeakEwma;
use outlier::{Availability, Outlier, OutlierConfig, Transition};
use rand::Rng;
use std::{
    sync::{
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// Balancer and circuit-breaker settings of a target.
#[derive(Clone, Debug, PartialEq)]
pub struct BalancerConfig {
    /// Peak-EWMA decay.
    pub decay: Duration,
    /// In-flight requests per endpoint; 0 = unlimited.
    pub max_requests: usize,
    /// Open connections per endpoint; 0 = unlimited.
    pub max_connections: usize,
    /// Requests that may wait for a free endpoint; 0 = fail fast.
    pub max_pending: usize,
    /// Outlier detection, if enabled.
    pub outlier: Option<OutlierConfig>,
}

impl Default for BalancerConfig {
    fn default() -> Self {
        BalancerConfig {
            decay: Duration::from_secs(10),
            max_requests: 0,
            max_connections: 0,
            max_pending: 0,
            outlier: None,
        }
    }
}

/// The health and load of one endpoint, shared by every request to it.
#[derive(Debug)]
pub struct Health {
    ewma: PeakEwma,
    in_flight: AtomicUsize,
    outlier: Outlier,
    /// Connections to it failing: avoided until then (fail fast).
    unreachable: Unreachable,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            ewma: PeakEwma::new(Instant::now()),
            in_flight: AtomicUsize::new(0),
            outlier: Outlier::default(),
            unreachable: Unreachable::default(),
        }
    }
}

/// How long an endpoint whose connection just failed is avoided: 100 ms,
/// doubling with each failure in a row, at most 5 s. A request that finds
/// every endpoint avoided tries one anyway (that is the probe).
#[derive(Debug, Default)]
struct Unreachable {
    /// Milliseconds since [`epoch`] until which the endpoint is avoided.
    until_ms: AtomicU64,
    failures: AtomicU32,
}

/// The zero of the millisecond clocks above.
fn epoch() -> Instant {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

fn millis(now: Instant) -> u64 {
    now.saturating_duration_since(epoch()).as_millis() as u64
}

impl Unreachable {
    fn failed(&self, now: Instant) -> Duration {
        let n = self.failures.fetch_add(1, Ordering::Relaxed).min(6);
        let backoff = Duration::from_millis(100 << n).min(Duration::from_secs(5));
        self.until_ms
            .store(millis(now) + backoff.as_millis() as u64, Ordering::Relaxed);
        backoff
    }

    fn reached(&self) {
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
            self.until_ms.store(0, Ordering::Relaxed);
        }
    }

    fn avoided(&self, now: Instant) -> bool {
        let until = self.until_ms.load(Ordering::Relaxed);
        until != 0 && millis(now) < until
    }
}

impl Health {
    /// Requests in flight now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// True when outlier detection has the endpoint out.
    pub fn is_ejected(&self, now: Instant) -> bool {
        self.outlier.is_ejected(now)
    }

    /// A connection to the endpoint failed: avoid it for a while (doubling
    /// while it keeps failing). Returns for how long.
    pub fn connect_failed(&self, now: Instant) -> Duration {
        self.unreachable.failed(now)
    }

    /// The endpoint answered: it is reachable again.
    pub fn reached(&self) {
        self.unreachable.reached();
    }

    /// True while connections to it are failing.
    pub fn is_unreachable(&self, now: Instant) -> bool {
        self.unreachable.avoided(now)
    }

    fn load(&self, now: Instant, decay: Duration) -> f64 {
        self.ewma.cost(now, decay) * (self.in_flight() + 1) as f64
    }

    fn usable(&self, now: Instant, cfg: &BalancerConfig) -> bool {
        (cfg.max_requests == 0 || self.in_flight() < cfg.max_requests)
            && (cfg.outlier.is_none() || self.outlier.availability(now) != Availability::Ejected)
    }
}

/// Anything the balancer can choose among.
pub trait HasHealth {
    /// The endpoint's shared health.
    fn health(&self) -> &Health;
}

/// Why no endpoint was chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NoEndpoint {
    /// The set is empty.
    Empty,
    /// Every endpoint is ejected.
    AllEjected,
    /// Every usable endpoint is at its in-flight limit.
    AllBusy,
}

/// A chosen endpoint; counts as in flight until dropped or finished.
pub struct Chosen<T: HasHealth> {
    pub endpoint: Arc<T>,
    start: Instant,
    done: bool,
    /// Told when the request is done (a request may be waiting for room).
    freed: Option<Arc<tokio::sync::Notify>>,
}

impl<T: HasHealth> Chosen<T> {
    fn new(endpoint: Arc<T>, now: Instant) -> Self {
        endpoint.health().in_flight.fetch_add(1, Ordering::Relaxed);
        Chosen {
            endpoint,
            start: now,
            done: false,
            freed: None,
        }
    }

    /// Wakes one waiting request when this one is done.
    pub fn notify_when_done(&mut self, freed: Arc<tokio::sync::Notify>) {
        self.freed = Some(freed);
    }

    /// Records the result: latency into the estimate, success or failure
    /// into outlier detection. `share` tells how many of the set's endpoints
    /// are ejected and how many there are.
    pub fn finish(
        mut self,
        success: bool,
        cfg: &BalancerConfig,
        share: impl FnOnce() -> (usize, usize),
    ) -> Transition {
        self.done = true;
        let now = Instant::now();
        let h = self.endpoint.health();
        h.in_flight.fetch_sub(1, Ordering::Relaxed);
        if let Some(f) = &self.freed {
            f.notify_one();
        }
        h.ewma
            .observe(now.saturating_duration_since(self.start), now, cfg.decay);
        match &cfg.outlier {
            None => Transition::None,
            Some(o) => {
                let may = !success && {
                    let (ejected, total) = share();
                    outlier::may_eject(ejected, total, o.max_ejection_percent)
                };
                h.outlier.record(success, now, o, may)
            }
        }
    }
}

impl<T: HasHealth> Drop for Chosen<T> {
    fn drop(&mut self) {
        if !self.done {
            self.endpoint
                .health()
                .in_flight
                .fetch_sub(1, Ordering::Relaxed);
            if let Some(f) = &self.freed {
                f.notify_one();
            }
        }
    }
}

/// Picks an endpoint of `eps`: power of two choices among the usable ones
/// (not ejected, under their request limit), preferring those not in
/// `avoid` (a retry's or fail-over's previous endpoints) and not
/// unreachable (connections failing); when only those are left, one of them.
pub fn pick<T: HasHealth>(
    eps: &[Arc<T>],
    avoid: &[Arc<T>],
    cfg: &BalancerConfig,
) -> Result<Chosen<T>, NoEndpoint> {
    let now = Instant::now();
    if eps.is_empty() {
        return Err(NoEndpoint::Empty);
    }
    let is_avoided = |e: &Arc<T>| avoid.iter().any(|a| Arc::ptr_eq(a, e));
    let usable = |e: &Arc<T>| e.health().usable(now, cfg);
    let preferred = |e: &Arc<T>| usable(e) && !is_avoided(e) && !e.health().is_unreachable(now);
    let mut rng = rand::rng();

    // Fast path: two random distinct endpoints, both preferred.
    if eps.len() >= 2 {
        let i = rng.random_range(0..eps.len());
        let mut j = rng.random_range(0..eps.len() - 1);
        if j >= i {
            j += 1;
        }
        let (a, b) = (&eps[i], &eps[j]);
        if preferred(a) && preferred(b) {
            let best = if a.health().load(now, cfg.decay) <= b.health().load(now, cfg.decay) {
                a
            } else {
                b
            };
            return claim(best, now, cfg).ok_or(NoEndpoint::AllBusy);
        }
    }

    // Slow path: look at every endpoint, relaxing the preferences in turn
    // (no allocation: candidates are counted, then found by rank).
    let tiers: [&Accept<'_, T>; 3] = [&preferred, &|e| usable(e) && !is_avoided(e), &|e| usable(e)];
    let Some((accept, n)) = tiers
        .into_iter()
        .map(|f| (f, eps.iter().filter(|e| f(e)).count()))
        .find(|&(_, n)| n > 0)
    else {
        let all_ejected = cfg.outlier.is_some() && eps.iter().all(|e| e.health().is_ejected(now));
        return Err(if all_ejected {
            NoEndpoint::AllEjected
        } else {
            NoEndpoint::AllBusy
        });
    };
    let nth = |k: usize| eps.iter().filter(|e| accept(e)).nth(k);
    let best = if n == 1 {
        nth(0)
    } else {
        let i = rng.random_range(0..n);
        let mut j = rng.random_range(0..n - 1);
        if j >= i {
            j += 1;
        }
        match (nth(i), nth(j)) {
            (Some(a), Some(b))
                if b.health().load(now, cfg.decay) < a.health().load(now, cfg.decay) =>
            {
                Some(b)
            }
            (a, _) => a,
        }
    };
    // Counted just above, so always found.
    let best = best.ok_or(NoEndpoint::AllBusy)?;
    claim(best, now, cfg).ok_or(NoEndpoint::AllBusy)
}

/// Which endpoints a pass of [`pick`] accepts.
type Accept<'a, T> = dyn Fn(&Arc<T>) -> bool + 'a;

/// Takes the endpoint, claiming its probe slot when it is on probation.
fn claim<T: HasHealth>(e: &Arc<T>, now: Instant, cfg: &BalancerConfig) -> Option<Chosen<T>> {
    if cfg.outlier.is_some() && e.health().outlier.availability(now) == Availability::Probe {
        if !e.health().outlier.claim_probe(now) {
            return None;
        }
        tracing::debug!("sending a probe request to an ejected endpoint");
    }
    Some(Chosen::new(e.clone(), now))
}

/// The requests of a target waiting for an endpoint with spare capacity.
#[derive(Debug, Default)]
pub struct Pending(AtomicUsize);

/// A place in the pending queue, released when dropped.
pub struct PendingSlot<'a>(&'a AtomicUsize);

impl Pending {
    /// Takes a place if fewer than `max` requests wait.
    pub fn try_acquire(&self, max: usize) -> Option<PendingSlot<'_>> {
        self.0
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| PendingSlot(&self.0))
    }
}

impl Drop for PendingSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// How many of `eps` are ejected now, and how many there are.
pub fn ejected_share<T: HasHealth>(eps: &[Arc<T>]) -> (usize, usize) {
    let now = Instant::now();
    let ejected = eps.iter().filter(|e| e.health().is_ejected(now)).count();
    (ejected, eps.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Ep(Health);
    impl HasHealth for Ep {
        fn health(&self) -> &Health {
            &self.0
        }
    }

    fn eps(n: usize) -> Vec<Arc<Ep>> {
        (0..n).map(|_| Arc::new(Ep::default())).collect()
    }

    fn index(eps: &[Arc<Ep>], c: &Chosen<Ep>) -> usize {
        eps.iter()
            .position(|e| Arc::ptr_eq(e, &c.endpoint))
            .unwrap()
    }

    #[test]
    fn prefers_the_faster_endpoint() {
        let set = eps(3);
        let cfg = BalancerConfig::default();
        let now = Instant::now();
        set[0]
            .0
            .ewma
            .observe(Duration::from_millis(200), now, cfg.decay);
        let mut hits = [0; 3];
        for _ in 0..3000 {
            let c = pick(&set, &[], &cfg).unwrap();
            hits[index(&set, &c)] += 1;
        }
        assert!(hits[0] < 300, "{hits:?}");
        // The two fast endpoints share the rest (ties go to the one whose
        // default estimate has decayed a little longer).
        assert!(hits[1] + hits[2] > 2700, "{hits:?}");
    }

    #[test]
    fn in_flight_counts_until_finished_or_dropped() {
        let set = eps(1);
        let cfg = BalancerConfig {
            max_requests: 2,
            ..Default::default()
        };
        let a = pick(&set, &[], &cfg).unwrap();
        let b = pick(&set, &[], &cfg).unwrap();
        assert_eq!(pick(&set, &[], &cfg).err(), Some(NoEndpoint::AllBusy));
        drop(a);
        let c = pick(&set, &[], &cfg).unwrap();
        c.finish(true, &cfg, || (0, 1));
        b.finish(true, &cfg, || (0, 1));
        assert_eq!(set[0].0.in_flight(), 0);
    }

    #[test]
    fn unreachable_endpoints_are_avoided_until_their_backoff_ends() {
        let set = eps(3);
        let cfg = BalancerConfig::default();
        let now = Instant::now();
        assert_eq!(set[0].0.connect_failed(now), Duration::from_millis(100));
        assert_eq!(set[0].0.connect_failed(now), Duration::from_millis(200));
        for _ in 0..200 {
            let c = pick(&set, &[], &cfg).unwrap();
            assert_ne!(index(&set, &c), 0, "a failing endpoint was chosen");
        }
        // Every endpoint failing: one is tried anyway (it may be back).
        set[1].0.connect_failed(now);
        set[2].0.connect_failed(now);
        assert!(pick(&set, &[], &cfg).is_ok());
        // It answered: chosen again.
        set[0].0.reached();
        assert!(!set[0].0.is_unreachable(Instant::now()));
        assert_eq!(index(&set, &pick(&set, &[], &cfg).unwrap()), 0);
        // The backoff is capped.
        for _ in 0..20 {
            set[1].0.connect_failed(now);
        }
        assert_eq!(set[1].0.connect_failed(now), Duration::from_secs(5));
        // Fail-over avoids the endpoints a request already failed on.
        for _ in 0..50 {
            let c = pick(&set, &set[..1], &cfg).unwrap();
            assert_ne!(index(&set, &c), 0);
        }
    }

    #[test]
    fn avoids_the_previous_endpoint_when_it_can() {
        let set = eps(2);
        let cfg = BalancerConfig::default();
        for _ in 0..100 {
            let c = pick(&set, &set[..1], &cfg).unwrap();
            assert_eq!(index(&set, &c), 1);
        }
        let one = eps(1);
        assert!(
            pick(&one, &one[..1], &cfg).is_ok(),
            "sole endpoint is still used"
        );
    }

    #[test]
    fn ejected_endpoints_get_no_traffic() {
        let set = eps(3);
        let cfg = BalancerConfig {
            outlier: Some(OutlierConfig {
                consecutive_failures: 2,
                base_ejection: Duration::from_secs(60),
                max_ejection: Duration::from_secs(60),
                max_ejection_percent: 50,
            }),
            ..Default::default()
        };
        for _ in 0..2 {
            let c = Chosen::new(set[0].clone(), Instant::now());
            c.finish(false, &cfg, || ejected_share(&set));
        }
        assert_eq!(ejected_share(&set), (1, 3));
        for _ in 0..200 {
            let c = pick(&set, &[], &cfg).unwrap();
            assert_ne!(index(&set, &c), 0);
        }
        // A second endpoint may not be ejected: 2 of 3 is over 50 %.
        for _ in 0..5 {
            let c = Chosen::new(set[1].clone(), Instant::now());
            c.finish(false, &cfg, || ejected_share(&set));
        }
        assert_eq!(ejected_share(&set), (1, 3));
    }

    #[test]
    fn pending_queue_is_bounded() {
        let p = Pending::default();
        assert!(p.try_acquire(0).is_none(), "no queue: fail fast");
        let a = p.try_acquire(2).unwrap();
        let _b = p.try_acquire(2).unwrap();
        assert!(p.try_acquire(2).is_none());
        drop(a);
        assert!(p.try_acquire(2).is_some());
    }

    #[test]
    fn empty_and_all_ejected() {
        let cfg = BalancerConfig {
            outlier: Some(OutlierConfig {
                consecutive_failures: 1,
                base_ejection: Duration::from_secs(60),
                max_ejection: Duration::from_secs(60),
                max_ejection_percent: 100,
            }),
            ..Default::default()
        };
        assert_eq!(pick::<Ep>(&[], &[], &cfg).err(), Some(NoEndpoint::Empty));
        let set = eps(1);
        Chosen::new(set[0].clone(), Instant::now()).finish(false, &cfg, || ejected_share(&set));
        assert_eq!(pick(&set, &[], &cfg).err(), Some(NoEndpoint::AllEjected));
    }
}
