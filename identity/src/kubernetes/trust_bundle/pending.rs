//! Writes the reconciler made that its ConfigMap watch has not delivered yet. Until it
//! does, the watched copy is older than the truth, and planning from it would repeat
//! the write (a second create, answered 409). An entry goes when the watch shows the
//! written version (or anything for that namespace after it), or after [`HORIZON`]
//! whatever happens, so a lost event cannot stall a namespace.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// How long a write may stay unseen before the watched copy is trusted again.
pub const HORIZON: Duration = Duration::from_secs(10);

/// Namespace → the resource version written, and when.
#[derive(Debug)]
pub struct PendingWrites {
    writes: Mutex<HashMap<String, (String, Instant)>>,
    horizon: Duration,
}

impl Default for PendingWrites {
    fn default() -> Self {
        Self::new(HORIZON)
    }
}

impl PendingWrites {
    /// Writes are awaited for at most `horizon`.
    pub fn new(horizon: Duration) -> Self {
        Self {
            writes: Mutex::default(),
            horizon,
        }
    }

    /// Records a write of `namespace`'s ConfigMap at `version`.
    pub fn wrote(&self, namespace: &str, version: String) {
        let mut map = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        // Bounded by the namespaces written in the last HORIZON.
        map.retain(|_, (_, at)| at.elapsed() < self.horizon);
        map.insert(namespace.to_string(), (version, Instant::now()));
    }

    /// The watch delivered `namespace`'s ConfigMap at `version`: the write is seen
    /// when that is the version written.
    pub fn seen(&self, namespace: &str, version: Option<&str>) {
        let mut map = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((written, _)) = map.get(namespace) {
            if Some(written.as_str()) == version {
                map.remove(namespace);
            }
        }
    }

    /// How long to wait for the watch to deliver a write to `namespace`; `None` when
    /// there is nothing to wait for.
    pub fn waiting(&self, namespace: &str) -> Option<Duration> {
        let mut map = self.writes.lock().unwrap_or_else(|p| p.into_inner());
        let (_, at) = map.get(namespace)?;
        match self.horizon.checked_sub(at.elapsed()) {
            Some(left) if !left.is_zero() => Some(left),
            _ => {
                map.remove(namespace);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_is_awaited_until_seen_or_for_the_horizon() {
        let horizon = Duration::from_millis(300);
        let p = PendingWrites::new(horizon);
        assert_eq!(p.waiting("shop"), None);
        p.wrote("shop", "7".into());
        assert!(p.waiting("shop").is_some_and(|left| left <= horizon));
        // An older version (an event from before the write) does not count.
        p.seen("shop", Some("6"));
        assert!(p.waiting("shop").is_some());
        p.seen("shop", Some("7"));
        assert_eq!(p.waiting("shop"), None);

        // Never seen: trusted again after the horizon.
        p.wrote("late", "9".into());
        assert!(p.waiting("late").is_some());
        std::thread::sleep(horizon);
        assert_eq!(p.waiting("late"), None);
    }
}
