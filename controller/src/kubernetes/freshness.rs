//! Whether a watched cache can be trusted right now. It cannot before its first list,
//! during a relist, or after a watch error until the watch is seen working again (an
//! event), or until the next retry must have happened. The watches retry at most
//! [`RETRY_CAP`] apart, and a resumed watch replays what it missed first, so a cache
//! with no error for longer than that is current.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::runtime::watcher::Event;

/// The longest wait between a watch's retries (`mesh_proto::net::retry`), with margin.
pub const RETRY_CAP: Duration = Duration::from_secs(5);

/// The state of one watched cache.
#[derive(Debug)]
pub struct Freshness {
    state: Mutex<State>,
    stale_for: Duration,
}

#[derive(Debug, Default)]
struct State {
    listed: bool,
    relisting: bool,
    /// Not trusted before this moment (a recent error).
    stale_until: Option<Instant>,
}

impl Default for Freshness {
    fn default() -> Self {
        Self::new(RETRY_CAP)
    }
}

impl Freshness {
    /// A cache that is stale for `stale_for` after an error with no event since.
    pub fn new(stale_for: Duration) -> Self {
        Self {
            state: Mutex::default(),
            stale_for,
        }
    }

    /// Notes one item of the watch stream.
    pub fn observe<K>(&self, item: &Result<Event<K>, kube::runtime::watcher::Error>) {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match item {
            Err(_) => s.stale_until = Some(Instant::now() + self.stale_for),
            Ok(Event::Init | Event::InitApply(_)) => s.relisting = true,
            Ok(Event::InitDone) => {
                *s = State {
                    listed: true,
                    ..State::default()
                }
            }
            Ok(Event::Apply(_) | Event::Delete(_)) => s.stale_until = None,
        }
    }

    /// Whether the cache is current.
    pub fn is_current(&self) -> bool {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.listed && !s.relisting && s.stale_until.is_none_or(|t| Instant::now() >= t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::runtime::watcher;

    type Item = Result<Event<()>, watcher::Error>;

    fn error() -> Item {
        Err(watcher::Error::WatchError(
            Status::failure("gone", "Expired").with_code(410).boxed(),
        ))
    }

    #[test]
    fn current_only_after_a_list_and_not_right_after_an_error() {
        let f = Freshness::new(Duration::from_millis(200));
        assert!(!f.is_current(), "before the first list");
        f.observe(&Ok(Event::<()>::Init));
        f.observe(&Ok(Event::InitApply(())));
        assert!(!f.is_current(), "during the list");
        f.observe(&Ok(Event::<()>::InitDone));
        assert!(f.is_current());

        // An error: stale until an event shows the watch working...
        f.observe(&error());
        assert!(!f.is_current());
        f.observe(&Ok(Event::Apply(())));
        assert!(f.is_current());
        // ...or a relist completes...
        f.observe(&error());
        f.observe(&Ok(Event::<()>::Init));
        assert!(!f.is_current());
        f.observe(&Ok(Event::<()>::InitDone));
        assert!(f.is_current());
        // ...or long enough passed for a retry to have worked (or failed again).
        f.observe(&error());
        assert!(!f.is_current());
        std::thread::sleep(Duration::from_millis(250));
        assert!(f.is_current());
    }
}
