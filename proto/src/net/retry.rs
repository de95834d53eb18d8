//! Retrying a watch stream after its errors: 200 ms, doubling to at most 3 s,
//! reset by any success; errors the caller marks as routine (a watch whose
//! resource version expired, `410 Gone`) are followed at once. A controller
//! back from an API outage is current within a few seconds, not after a
//! backoff that grew during the outage.

use futures::{Stream, StreamExt};
use std::time::Duration;

/// The first and the longest wait after an error.
const FIRST: Duration = Duration::from_millis(200);
const LONGEST: Duration = Duration::from_secs(3);

/// A capped exponential backoff.
#[derive(Clone, Copy, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: FIRST }
    }
}

impl Backoff {
    /// The wait before the next attempt (and doubles the one after).
    pub fn next_wait(&mut self) -> Duration {
        let wait = self.next;
        self.next = (self.next * 2).min(LONGEST);
        wait
    }

    /// Back to the first wait.
    pub fn reset(&mut self) {
        self.next = FIRST;
    }
}

/// `inner`, polled again only after a [`Backoff`] wait when it yields an error
/// `immediate` does not accept; every item is passed on.
pub fn with_backoff<S, T, E>(
    inner: S,
    immediate: fn(&E) -> bool,
) -> impl Stream<Item = Result<T, E>>
where
    S: Stream<Item = Result<T, E>> + Unpin,
{
    futures::stream::unfold(
        (inner, Backoff::default(), None),
        move |(mut inner, mut backoff, wait): (S, Backoff, Option<Duration>)| async move {
            if let Some(wait) = wait {
                tokio::time::sleep(wait).await;
            }
            let item = inner.next().await?;
            let wait = match &item {
                Ok(_) => {
                    backoff.reset();
                    None
                }
                Err(e) if immediate(e) => None,
                Err(_) => Some(backoff.next_wait()),
            };
            Some((item, (inner, backoff, wait)))
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_double_to_a_cap_and_reset() {
        let mut b = Backoff::default();
        let waits: Vec<u64> = (0..6).map(|_| b.next_wait().as_millis() as u64).collect();
        assert_eq!(waits, [200, 400, 800, 1600, 3000, 3000]);
        b.reset();
        assert_eq!(b.next_wait(), FIRST);
    }

    #[tokio::test(start_paused = true)]
    async fn routine_errors_are_followed_at_once_others_after_a_wait() {
        let items: Vec<Result<u32, &str>> =
            vec![Err("gone"), Ok(1), Err("down"), Err("down"), Ok(2)];
        let s = with_backoff(futures::stream::iter(items), |e| *e == "gone");
        futures::pin_mut!(s);
        let start = tokio::time::Instant::now();
        let mut at = Vec::new();
        while let Some(item) = s.next().await {
            at.push((item, start.elapsed().as_millis() as u64));
        }
        assert_eq!(
            at,
            [
                (Err("gone"), 0),
                (Ok(1), 0),
                (Err("down"), 0),
                (Err("down"), 200),
                (Ok(2), 600),
            ]
        );
    }
}
