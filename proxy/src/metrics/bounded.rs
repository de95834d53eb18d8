//! A bounded set of metric series keyed by label set. Label values may come
//! from traffic (a service a request named, a peer's identity), so neither
//! their number nor their lifetime is trusted: at most `cap` series exist,
//! a label set beyond that shares one overflow series (and is counted), and
//! series nobody holds that have not moved for `retain` are evicted when the
//! metrics are read. A series handle (`Arc<S>`) is held by whoever records
//! into it (a connection), so a series in use is never evicted and no
//! recorded value is lost.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

/// The handles of one series.
pub trait Series: Default + Send + Sync + 'static {
    /// A number that changes whenever the series records something.
    fn activity(&self) -> u64;
}

struct Entry<S> {
    series: Arc<S>,
    /// `activity()` when last swept, and since when it has not changed.
    seen: u64,
    still_since: Instant,
}

/// Series by label set, bounded in number and evicted when unused.
pub struct Bounded<L, S> {
    map: Mutex<HashMap<L, Entry<S>>>,
    cap: usize,
    retain: Duration,
    /// The label set an overflowing one is recorded under (it may keep the
    /// bounded labels, e.g. the direction).
    overflow: fn(&L) -> L,
    /// Label sets that got the overflow series.
    overflowed: AtomicU64,
    /// The last sweep forced by a full map (they are rate limited).
    last_full_sweep: Mutex<Option<Instant>>,
}

impl<L, S> Bounded<L, S>
where
    L: Clone + Eq + Hash,
    S: Series,
{
    /// At most `cap` series (at least 1); idle ones go after `retain`; past
    /// the cap, a label set is recorded under `overflow(labels)`.
    pub fn new(cap: usize, retain: Duration, overflow: fn(&L) -> L) -> Self {
        Bounded {
            map: Mutex::new(HashMap::new()),
            cap: cap.max(1),
            retain,
            overflow,
            overflowed: AtomicU64::new(0),
            last_full_sweep: Mutex::new(None),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<L, Entry<S>>> {
        match self.map.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        }
    }

    /// The series of `labels`, made if needed; past the cap, the overflow
    /// series and its labels.
    pub fn get(&self, labels: &L) -> (L, Arc<S>) {
        let now = Instant::now();
        let mut map = self.lock();
        if let Some(e) = map.get(labels) {
            return (labels.clone(), e.series.clone());
        }
        if map.len() >= self.cap && self.may_sweep_now(now) {
            Self::evict(&mut map, self.retain, now);
        }
        // Overflow series never count against the cap.
        let key = if map.len() >= self.cap {
            let overflow = (self.overflow)(labels);
            if overflow != *labels {
                self.overflowed.fetch_add(1, Ordering::Relaxed);
            }
            overflow
        } else {
            labels.clone()
        };
        let e = map.entry(key.clone()).or_insert_with(|| Entry {
            series: Arc::new(S::default()),
            seen: 0,
            still_since: now,
        });
        (key, e.series.clone())
    }

    /// Forced sweeps at most once a second: a flood of new label sets must
    /// not turn every lookup into a scan.
    fn may_sweep_now(&self, now: Instant) -> bool {
        let mut last = match self.last_full_sweep.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        if last.is_some_and(|t| now.duration_since(t) < Duration::from_secs(1)) {
            return false;
        }
        *last = Some(now);
        true
    }

    fn evict(map: &mut HashMap<L, Entry<S>>, retain: Duration, now: Instant) {
        map.retain(|_, e| {
            let activity = e.series.activity();
            if activity != e.seen || Arc::strong_count(&e.series) > 1 {
                e.seen = activity;
                e.still_since = now;
                return true;
            }
            now.duration_since(e.still_since) < retain
        });
    }

    /// Evicts the series nobody holds that have not moved for `retain`.
    pub fn sweep(&self) {
        Self::evict(&mut self.lock(), self.retain, Instant::now());
    }

    /// Calls `f` with every series (sorted by nothing: encoding order).
    pub fn for_each(&self, mut f: impl FnMut(&L, &S)) {
        for (l, e) in self.lock().iter() {
            f(l, &e.series);
        }
    }

    /// Series now.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// True when there is no series.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Label sets that got the overflow series so far.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    #[derive(Default)]
    struct Count(AtomicU64);

    impl Series for Count {
        fn activity(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    #[test]
    fn past_the_cap_label_sets_share_the_overflow_series() {
        let b: Bounded<String, Count> =
            Bounded::new(3, Duration::from_secs(600), |_| "overflow".into());
        let held: Vec<_> = (0..5).map(|i| b.get(&format!("svc-{i}"))).collect();
        assert_eq!(held[2].0, "svc-2");
        assert_eq!(held[3].0, "overflow");
        assert_eq!(held[4].0, "overflow");
        assert!(Arc::ptr_eq(&held[3].1, &held[4].1));
        assert_eq!(b.len(), 4, "three series and the overflow one");
        assert_eq!(b.overflowed(), 2);
        // A known label set still gets its own series.
        assert_eq!(b.get(&"svc-1".to_string()).0, "svc-1");
    }

    #[test]
    fn held_or_moving_series_stay_and_idle_ones_go() {
        let b: Bounded<String, Count> = Bounded::new(10, Duration::ZERO, |_| "overflow".into());
        let (_, held) = b.get(&"held".to_string());
        let (_, moving) = b.get(&"moving".to_string());
        let _ = b.get(&"idle".to_string());
        moving.0.fetch_add(1, Ordering::Relaxed);
        let moving_weak = Arc::downgrade(&moving);
        drop(moving);
        b.sweep();
        let mut left = Vec::new();
        b.for_each(|l, _| left.push(l.clone()));
        left.sort();
        assert_eq!(left, ["held", "moving"], "moved since the last sweep");
        b.sweep();
        let mut left = Vec::new();
        b.for_each(|l, _| left.push(l.clone()));
        assert_eq!(left, ["held"]);
        assert!(moving_weak.upgrade().is_none(), "its memory is freed");
        held.0.fetch_add(1, Ordering::Relaxed);
    }

    #[test]
    fn a_full_map_makes_room_from_idle_series() {
        let b: Bounded<String, Count> = Bounded::new(2, Duration::ZERO, |_| "overflow".into());
        let _ = b.get(&"a".to_string());
        let _ = b.get(&"b".to_string());
        // Both unheld and still since they were made: a full map sweeps.
        assert_eq!(b.get(&"c".to_string()).0, "c");
        assert_eq!(b.overflowed(), 0);
    }
}
