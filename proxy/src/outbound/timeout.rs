//! Deadlines on the request path: the whole request (route timeout or a
//! shorter `grpc-timeout`) and each attempt (the route's backend request
//! timeout). Expiry becomes a typed error, answered 504.

use crate::errors::ProxyError;
use std::{future::Future, time::Duration};

/// Runs `fut` with an optional deadline; `expired` builds the error.
pub async fn within<T, F>(
    limit: Option<Duration>,
    expired: fn(Duration) -> ProxyError,
    fut: F,
) -> Result<T, ProxyError>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    match limit {
        None => fut.await,
        Some(t) => tokio::time::timeout(t, fut)
            .await
            .unwrap_or_else(|_| Err(expired(t))),
    }
}

/// The tighter of two optional limits.
pub fn tighter(a: Option<Duration>, b: Option<Duration>) -> Option<Duration> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::{sleep, Instant};

    #[tokio::test(start_paused = true)]
    async fn expires_at_the_limit() {
        let start = Instant::now();
        let r: Result<(), _> = within(
            Some(Duration::from_millis(100)),
            ProxyError::RequestTimeout,
            async {
                sleep(Duration::from_millis(300)).await;
                Ok(())
            },
        )
        .await;
        assert!(matches!(r, Err(ProxyError::RequestTimeout(d)) if d == Duration::from_millis(100)));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        assert_eq!(r.unwrap_err().status(), http::StatusCode::GATEWAY_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn fast_work_and_no_limit_pass_through() {
        let r = within(
            Some(Duration::from_secs(1)),
            ProxyError::BackendTimeout,
            async {
                sleep(Duration::from_millis(10)).await;
                Ok(7)
            },
        )
        .await;
        assert_eq!(r.unwrap(), 7);
        let r = within(None, ProxyError::BackendTimeout, async {
            sleep(Duration::from_secs(3600)).await;
            Ok(8)
        })
        .await;
        assert_eq!(r.unwrap(), 8);
    }

    #[test]
    fn tighter_limit_wins() {
        let ms = Duration::from_millis;
        assert_eq!(tighter(Some(ms(100)), Some(ms(50))), Some(ms(50)));
        assert_eq!(tighter(None, Some(ms(50))), Some(ms(50)));
        assert_eq!(tighter(Some(ms(100)), None), Some(ms(100)));
        assert_eq!(tighter(None, None), None);
    }
}
