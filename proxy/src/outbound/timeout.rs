//! Deadlines on the request path: the whole request (route timeout or a
//! shorter `grpc-timeout`) and each attempt (the route's backend request
//! timeout). Expiry becomes a typed error, answered 504.

use crate::{body::ProxyBody, errors::ProxyError};
use http::{Request, Response};
use std::{
    future::Future,
    task::{Context, Poll},
    time::Duration,
};

/// A deadline layer: the route's request timeout (tightened by a client's
/// `grpc-timeout`) outside the retries, or the per-try timeout inside them.
#[derive(Clone)]
pub struct Timeout<S> {
    inner: S,
    limit: Option<Duration>,
    expired: fn(Duration) -> ProxyError,
    honour_grpc: bool,
}

impl<S> Timeout<S> {
    /// The whole-request deadline (504 `request timeout`).
    pub fn request(limit: Option<Duration>, inner: S) -> Self {
        Timeout {
            inner,
            limit,
            expired: ProxyError::RequestTimeout,
            honour_grpc: true,
        }
    }

    /// The per-attempt deadline (504 `backend request timeout`).
    pub fn per_try(limit: Option<Duration>, inner: S) -> Self {
        Timeout {
            inner,
            limit,
            expired: ProxyError::BackendTimeout,
            honour_grpc: false,
        }
    }
}

impl<S> tower::Service<Request<ProxyBody>> for Timeout<S>
where
    S: tower::Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let limit = if self.honour_grpc {
            tighter(self.limit, grpc_timeout(&req))
        } else {
            self.limit
        };
        ResponseFuture {
            inner: self.inner.call(req),
            // No timer at all (no allocation, no clock read) without a limit.
            sleep: limit.map(tokio::time::sleep),
            limit: limit.unwrap_or_default(),
            expired: self.expired,
        }
    }
}

pin_project_lite::pin_project! {
    /// The inner response, or the limit's error if it comes first.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        #[pin]
        sleep: Option<tokio::time::Sleep>,
        limit: Duration,
        expired: fn(Duration) -> ProxyError,
    }
}

impl<F, T> Future for ResponseFuture<F>
where
    F: Future<Output = Result<T, ProxyError>>,
{
    type Output = Result<T, ProxyError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(r) = this.inner.poll(cx) {
            return Poll::Ready(r);
        }
        match this.sleep.as_pin_mut().map(|sleep| sleep.poll(cx)) {
            Some(Poll::Ready(())) => Poll::Ready(Err((this.expired)(*this.limit))),
            _ => Poll::Pending,
        }
    }
}

pub fn grpc_timeout<B>(req: &Request<B>) -> Option<Duration> {
    let v = req.headers().get("grpc-timeout")?.to_str().ok()?;
    if v.len() < 2 || v.len() > 9 {
        return None;
    }
    let (digits, unit) = v.split_at(v.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

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
    fn grpc_timeouts() {
        let r = |v: &str| {
            Request::get("/")
                .header("grpc-timeout", v)
                .body(())
                .unwrap()
        };
        assert_eq!(grpc_timeout(&r("100m")), Some(Duration::from_millis(100)));
        assert_eq!(grpc_timeout(&r("2S")), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout(&r("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(grpc_timeout(&r("5x")), None);
        assert_eq!(grpc_timeout(&r("m")), None);
        assert_eq!(grpc_timeout(&r("123456789S")), None);
        assert_eq!(grpc_timeout(&Request::get("/").body(()).unwrap()), None);
    }

    #[tokio::test(start_paused = true)]
    async fn request_layer_honours_a_shorter_grpc_timeout() {
        use tower::ServiceExt;
        let slow = tower::service_fn(|_req: Request<ProxyBody>| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<_, ProxyError>(Response::new(ProxyBody::Empty))
        });
        let req = Request::get("/")
            .header("grpc-timeout", "100m")
            .body(ProxyBody::Empty)
            .unwrap();
        let start = Instant::now();
        let r = Timeout::request(Some(Duration::from_secs(1)), slow)
            .oneshot(req)
            .await;
        assert!(matches!(r, Err(ProxyError::RequestTimeout(_))));
        assert_eq!(start.elapsed(), Duration::from_millis(100));
        // The per-try layer ignores grpc-timeout.
        let req = Request::get("/")
            .header("grpc-timeout", "100m")
            .body(ProxyBody::Empty)
            .unwrap();
        let start = Instant::now();
        let r = Timeout::per_try(Some(Duration::from_secs(1)), slow)
            .oneshot(req)
            .await;
        assert!(matches!(r, Err(ProxyError::BackendTimeout(_))));
        assert_eq!(start.elapsed(), Duration::from_secs(1));
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
