//! Fault injection on a route, for testing how clients cope: answer some
//! requests with an error status, or delay some.

use crate::{body::ProxyBody, errors::ProxyError};
use futures::future::{BoxFuture, Either};
use http::{Request, Response};
use rand::Rng;
use std::{
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

/// Fault injection as a tower service, outermost on a route.
#[derive(Clone)]
pub struct FaultService<S> {
    inner: S,
    fault: Option<Arc<Fault>>,
}

impl<S> FaultService<S> {
    /// Wraps `inner`; with no fault configured it passes requests through.
    pub fn new(fault: Option<Fault>, inner: S) -> Self {
        FaultService {
            inner,
            fault: fault.map(Arc::new),
        }
    }
}

impl<S> tower::Service<Request<ProxyBody>> for FaultService<S>
where
    S: tower::Service<Request<ProxyBody>, Response = Response<ProxyBody>, Error = ProxyError>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = Either<S::Future, BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        let Some(fault) = &self.fault else {
            return Either::Left(self.inner.call(req));
        };
        let d = fault.decide();
        if d.abort.is_none() && d.delay.is_none() {
            return Either::Left(self.inner.call(req));
        }
        // The inner stack is always ready (it fails fast per request), so a
        // clone may be called after the delay.
        let mut inner = self.inner.clone();
        Either::Right(Box::pin(async move {
            if let Some(delay) = d.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = d.abort {
                return Err(ProxyError::Fault(status));
            }
            inner.call(req).await
        }))
    }
}

/// A route's fault settings.
#[derive(Clone, Debug, PartialEq)]
pub struct Fault {
    /// Status to answer with, and the share of requests (0–100).
    pub abort: Option<(http::StatusCode, f32)>,
    /// Delay, and the share of requests (0–100).
    pub delay: Option<(Duration, f32)>,
}

/// What to do with one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Decision {
    pub abort: Option<http::StatusCode>,
    pub delay: Option<Duration>,
}

fn hit(percent: f32) -> bool {
    percent > 0.0 && (percent >= 100.0 || rand::rng().random_range(0.0..100.0) < percent)
}

impl Fault {
    /// Rolls the dice for one request.
    pub fn decide(&self) -> Decision {
        Decision {
            abort: self.abort.and_then(|(s, p)| hit(p).then_some(s)),
            delay: self.delay.and_then(|(d, p)| hit(p).then_some(d)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_are_respected() {
        let f = Fault {
            abort: Some((http::StatusCode::SERVICE_UNAVAILABLE, 25.0)),
            delay: Some((Duration::from_millis(5), 100.0)),
        };
        let aborted = (0..10_000).filter(|_| f.decide().abort.is_some()).count();
        assert!((2_200..2_800).contains(&aborted), "{aborted}");
        assert!((0..100).all(|_| f.decide().delay == Some(Duration::from_millis(5))));
        let none = Fault {
            abort: Some((http::StatusCode::OK, 0.0)),
            delay: None,
        };
        assert!((0..100).all(|_| none.decide().abort.is_none()));
    }

    #[tokio::test(start_paused = true)]
    async fn the_service_aborts_or_delays_before_the_backend() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tower::ServiceExt;
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let backend = tower::service_fn(move |_req: Request<ProxyBody>| {
            c.fetch_add(1, Ordering::SeqCst);
            async { Ok::<_, ProxyError>(Response::new(ProxyBody::Empty)) }
        });
        let abort = Fault {
            abort: Some((http::StatusCode::IM_A_TEAPOT, 100.0)),
            delay: None,
        };
        let r = FaultService::new(Some(abort), backend.clone())
            .oneshot(Request::new(ProxyBody::Empty))
            .await;
        assert!(matches!(r, Err(ProxyError::Fault(s)) if s == http::StatusCode::IM_A_TEAPOT));
        assert_eq!(
            calls.load(Ordering::SeqCst),
            0,
            "an aborted request never reaches the backend"
        );

        let delay = Fault {
            abort: None,
            delay: Some((Duration::from_millis(200), 100.0)),
        };
        let start = tokio::time::Instant::now();
        let r = FaultService::new(Some(delay), backend.clone())
            .oneshot(Request::new(ProxyBody::Empty))
            .await;
        assert!(r.is_ok());
        assert_eq!(start.elapsed(), Duration::from_millis(200));
        assert_eq!(calls.load(Ordering::SeqCst), 1);

        let r = FaultService::new(None, backend)
            .oneshot(Request::new(ProxyBody::Empty))
            .await;
        assert!(r.is_ok());
    }
}
