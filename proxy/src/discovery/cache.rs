//! The per-target cache of discovery watches. A watch lives while anyone (a
//! connection, a compiled policy) holds a handle to it; once only the cache
//! has held it for `idle`, it is evicted: its last receiver goes, its stream
//! to the controller closes and its state is freed. Targets seen once (say,
//! transparent connections to many outside addresses) do not accumulate.

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

/// A handle whose clones share one use count.
pub trait Handle: Clone {
    /// The marker every clone of the handle shares.
    fn users(&self) -> &Arc<()>;
}

struct Entry<V> {
    value: V,
    unused_since: Option<Instant>,
}

struct Inner<V> {
    entries: HashMap<String, Entry<V>>,
    last_sweep: Instant,
}

/// Watch handles by target.
pub struct WatchCache<V> {
    inner: Mutex<Inner<V>>,
    idle: Duration,
}

impl<V: Handle> WatchCache<V> {
    /// An empty cache evicting watches unused for `idle`.
    pub fn new(idle: Duration) -> Self {
        WatchCache {
            inner: Mutex::new(Inner {
                entries: HashMap::new(),
                last_sweep: Instant::now(),
            }),
            idle,
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
        if let Some(e) = inner.entries.get(target) {
            return e.value.clone();
        }
        let value = start();
        inner.entries.insert(
            target.to_string(),
            Entry {
                value: value.clone(),
                unused_since: None,
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
        let cache = WatchCache::new(Duration::from_secs(60));
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
}
