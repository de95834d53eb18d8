//! Closing connections that ask nothing. A server counts the requests (and,
//! if it can, the open streams) of each connection in an [`Activity`];
//! [`watch`] drives the connection and closes it when no request came within
//! `first` of its start (dropped after a short grace: an HTTP/2 client that
//! never sends its preface cannot be shut down gracefully), or when no
//! request started and no stream was open for `idle` (graceful: requests in
//! flight finish). One timer per connection; a request costs one relaxed
//! atomic add.

use std::{
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tokio::time::Instant;

/// The requests of one connection.
#[derive(Clone, Debug, Default)]
pub struct Activity(Arc<Counts>);

#[derive(Debug, Default)]
struct Counts {
    started: AtomicU64,
    open: AtomicUsize,
}

/// An open stream; the connection is not idle while it lives.
#[derive(Debug)]
pub struct StreamGuard(Arc<Counts>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Activity {
    /// A request started.
    pub fn request(&self) {
        self.0.started.fetch_add(1, Ordering::Relaxed);
    }

    /// A stream started; it counts as open until the guard is dropped.
    pub fn stream(&self) -> StreamGuard {
        self.request();
        self.0.open.fetch_add(1, Ordering::Relaxed);
        StreamGuard(self.0.clone())
    }

    fn started(&self) -> u64 {
        self.0.started.load(Ordering::Relaxed)
    }

    fn open(&self) -> usize {
        self.0.open.load(Ordering::Relaxed)
    }
}

/// How long a connection may stay without requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    /// From the start until the first request.
    pub first: Duration,
    /// Without a new request (and without open streams) after that.
    pub idle: Duration,
    /// How long a connection shut down for sending nothing may take to
    /// close before it is dropped.
    pub grace: Duration,
}

/// How a watched connection ended.
#[derive(Debug)]
pub enum Ended<E> {
    /// It closed by itself (or after an idle shutdown): its result.
    Closed(Result<(), E>),
    /// No request within `first`: it was closed.
    NoRequest,
    /// No request for `idle`: it was shut down gracefully, with this result.
    Idle(Result<(), E>),
}

/// Drives `conn` until it ends, enforcing `timeouts`; `shutdown` starts a
/// graceful shutdown (hyper's `graceful_shutdown`).
pub async fn watch<C, E>(
    conn: C,
    activity: &Activity,
    timeouts: Timeouts,
    shutdown: impl FnMut(Pin<&mut C>),
) -> Ended<E>
where
    C: Future<Output = Result<(), E>>,
{
    watch_until(conn, activity, timeouts, shutdown, std::future::pending()).await
}

/// [`watch`], and a graceful shutdown as soon as `stop` completes (the
/// server is stopping): requests in flight finish.
pub async fn watch_until<C, E>(
    conn: C,
    activity: &Activity,
    timeouts: Timeouts,
    mut shutdown: impl FnMut(Pin<&mut C>),
    stop: impl Future<Output = ()>,
) -> Ended<E>
where
    C: Future<Output = Result<(), E>>,
{
    let mut conn = std::pin::pin!(conn);
    let mut stop = std::pin::pin!(stop);
    let mut seen = 0u64;
    let mut deadline = Instant::now() + timeouts.first;
    loop {
        tokio::select! {
            r = conn.as_mut() => return Ended::Closed(r),
            () = tokio::time::sleep_until(deadline) => {}
            () = stop.as_mut() => {
                shutdown(conn.as_mut());
                return Ended::Closed(conn.await);
            }
        }
        let started = activity.started();
        if started == 0 {
            shutdown(conn.as_mut());
            let _ = tokio::time::timeout(timeouts.grace, conn.as_mut()).await;
            return Ended::NoRequest;
        }
        if started == seen && activity.open() == 0 {
            shutdown(conn.as_mut());
            return Ended::Idle(conn.await);
        }
        seen = started;
        deadline = Instant::now() + timeouts.idle;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;

    /// A connection that ends once shut down (if `obeys`), or never.
    async fn conn(shut: Arc<AtomicBool>, obeys: bool) -> Result<(), ()> {
        loop {
            if obeys && shut.load(Ordering::Relaxed) {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    const T: Timeouts = Timeouts {
        first: Duration::from_secs(10),
        idle: Duration::from_secs(60),
        grace: Duration::from_secs(1),
    };

    #[tokio::test(start_paused = true)]
    async fn a_silent_connection_is_dropped_after_the_first_timeout() {
        let shut = Arc::new(AtomicBool::new(false));
        let start = Instant::now();
        let s = shut.clone();
        let ended = watch(
            conn(shut.clone(), false),
            &Activity::default(),
            T,
            move |_| s.store(true, Ordering::Relaxed),
        )
        .await;
        assert!(matches!(ended, Ended::NoRequest));
        assert!(shut.load(Ordering::Relaxed), "asked to shut down first");
        let took = start.elapsed();
        assert!(took >= T.first && took <= T.first + T.grace + Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn busy_connections_live_and_idle_ones_are_shut_down() {
        let shut = Arc::new(AtomicBool::new(false));
        let activity = Activity::default();
        let a = activity.clone();
        // A request every 30 s for 5 minutes, then nothing.
        tokio::spawn(async move {
            for _ in 0..10 {
                a.request();
                tokio::time::sleep(Duration::from_secs(30)).await;
            }
        });
        let start = Instant::now();
        let s = shut.clone();
        let ended = watch(conn(shut.clone(), true), &activity, T, move |_| {
            s.store(true, Ordering::Relaxed)
        })
        .await;
        assert!(matches!(ended, Ended::Idle(Ok(()))));
        let took = start.elapsed();
        assert!(
            took >= Duration::from_secs(300) && took <= Duration::from_secs(300 + 130),
            "{took:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_open_stream_keeps_the_connection() {
        let shut = Arc::new(AtomicBool::new(false));
        let activity = Activity::default();
        let guard = activity.stream();
        let s = shut.clone();
        let watching = tokio::spawn({
            let activity = activity.clone();
            let shut = shut.clone();
            async move {
                watch(conn(shut, true), &activity, T, move |_| {
                    s.store(true, Ordering::Relaxed)
                })
                .await
            }
        });
        tokio::time::sleep(Duration::from_secs(3600)).await;
        assert!(!shut.load(Ordering::Relaxed), "a watch stream is not idle");
        drop(guard);
        tokio::time::sleep(Duration::from_secs(121)).await;
        assert!(shut.load(Ordering::Relaxed));
        assert!(matches!(watching.await.unwrap(), Ended::Idle(Ok(()))));
    }
}
