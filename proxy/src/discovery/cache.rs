//! The per-target cache of discovery watches. A watch lives while anyone (a
//! connection, a compiled policy) holds a handle to it; once only the cache
//! has held it for `idle`, it is evicted: its last receiver goes, its stream
//! to the controller closes and its state is freed. Targets seen once (say,
//! transparent connections to many outside addresses) do not accumulate.
//! The cache also holds at most `max` watches: when full, the least
//! recently used watch nobody holds makes room (only watches in use by open
//! connections can push it past `max`), so neither this proxy nor the
//! controller keeps a stream per name an app or a peer made up.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::Instant;

/// How often a lookup may trigger a sweep.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

/// How long a watch nobody uses is kept (a client reconnecting soon
/// finds it warm).
pub const DEFAULT_IDLE: Duration = Duration::from_secs(60);

/// How many watches a cache keeps by default.
pub const DEFAULT_MAX: usize = 500;

/// A handle whose clones share one use count.
pub trait Handle: Clone {
    /// The marker every clone of the handle shares.
    fn users(&self) -> &Arc<()>;
}

struct Entry<V> {
    value: V,
    unused_since: Option<Instant>,
    /// The last lookup, to pick what makes room when the cache is full.
    last_used: Instant,
}

struct Inner<V> {
    entries: HashMap<String, Entry<V>>,
    last_sweep: Instant,
}

/// Watch handles by target.
pub struct WatchCache<V> {
    inner: Mutex<Inner<V>>,
    idle: Duration,
    max: usize,
}

impl<V: Handle> WatchCache<V> {
    /// An empty cache evicting watches unused for `idle`, keeping at most
    /// `max` (see the module doc).
    pub fn new(idle: Duration, max: usize) -> Self {
        WatchCache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            idle,
            max: max.max(1),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<V>> {
        match self.inner.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The handle for `target`, made by `start` when there is none.
    pub fn get_or_start(&self, target: &str, start: impl FnOnce() -> V) -> V {
        let mut inner = self.lock();
        let now = Instant::now();
        if now.duration_since(inner.last_sweep) >= SWEEP_EVERY {
            inner.last_sweep = now;
            let idle = self.idle;
            inner.entries.retain(|_, e| {
                if Arc::strong_count(e.value.users()) > 1 {
                    e.unused_since = None;
                    return true;
                }
                now.duration_since(*e.unused_since.get_or_insert(now)) < idle
            });
        }
        if let Some(e) = inner.entries.get_mut(target) {
            e.last_used = now;
            return e.value.clone();
        }
        // Watches freed by others' eviction (a policy holds its backends'
        // endpoint watches) count too, so the cache comes back under `max`.
        while inner.entries.len() >= self.max {
            let lru = inner
                .entries
                .iter()
                .filter(|(_, e)| Arc::strong_count(e.value.users()) == 1)
                .min_by_key(|(_, e)| e.last_used)
                .map(|(k, _)| k.clone());
            match lru {
                Some(k) => inner.entries.remove(&k),
                None => break,
            };
        }
        let value = start();
        inner.entries.insert(
            target.to_string(),
            Entry {
                value: value.clone(),
                unused_since: None,
                last_used: now,
            },
        );
        value
    }

    /// Calls `f` with every cached target and handle.
    pub fn for_each(&self, mut f: impl FnMut(&str, &V)) {
        for (target, e) in self.lock().entries.iter() {
            f(target, &e.value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A handle holding a receiver, like the real ones (dropping the last
    /// one is what ends a watch task).
    #[derive(Clone)]
    struct H(
        Arc<()>,
        #[allow(dead_code)] tokio::sync::watch::Receiver<()>,
    );

    impl Handle for H {
        fn users(&self) -> &Arc<()> {
            &self.0
        }
    }

    #[tokio::test(start_paused = true)]
    async fn unused_watches_are_evicted_and_their_senders_see_it() {
        let cache = WatchCache::new(Duration::from_secs(60), 100);
        let (tx, rx) = tokio::sync::watch::channel(());
        let held = cache.get_or_start("a:80", || H(Arc::new(()), rx));
        let (_tx_b, rx_b) = tokio::sync::watch::channel(());
        let _ = cache.get_or_start("b:80", || H(Arc::new(()), rx_b));

        // "a" is in use: sweeps keep it however long it lives.
        tokio::time::advance(Duration::from_secs(120)).await;
        let again = cache.get_or_start("a:80", || unreachable!("cached"));
        drop(again);
        let mut n = 0;
        cache.for_each(|_, _| n += 1);
        assert_eq!(n, 2);

        // Unused from now on: kept for the idle time, then evicted.
        drop(held);
        tokio::time::advance(Duration::from_secs(11)).await;
        let _ = cache.get_or_start("c:80", || {
            H(Arc::new(()), tokio::sync::watch::channel(()).1)
        });
        assert!(!tx.is_closed(), "still cached while idle < 60 s");
        tokio::time::advance(Duration::from_secs(61)).await;
        let _ = cache.get_or_start("c:80", || unreachable!("cached"));
        assert!(tx.is_closed(), "evicted: the watch task would end now");
        let mut left = Vec::new();
        cache.for_each(|t, _| left.push(t.to_string()));
        left.sort();
        assert_eq!(left, ["c:80"], "b was unused all along, a since 72 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_cache_drops_the_least_recently_used_unheld_watch() {
        let cache = WatchCache::new(Duration::from_secs(60), 3);
        let h = |c: &WatchCache<H>, t: &str| {
            c.get_or_start(t, || H(Arc::new(()), tokio::sync::watch::channel(()).1))
        };
        let held = h(&cache, "held:80");
        tokio::time::advance(Duration::from_millis(1)).await;
        drop(h(&cache, "old:80"));
        tokio::time::advance(Duration::from_millis(1)).await;
        drop(h(&cache, "recent:80"));
        tokio::time::advance(Duration::from_millis(1)).await;
        // Made up names, one after the other: the cache never grows past 3.
        for i in 0..50 {
            drop(h(&cache, &format!("made-up-{i}:80")));
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        let mut left = Vec::new();
        cache.for_each(|t, _| left.push(t.to_string()));
        left.sort();
        assert_eq!(left, ["held:80", "made-up-48:80", "made-up-49:80"]);
        drop(held);
    }
}
