//! The retry decision as a `tower::retry::Policy`: a copy of the request is
//! made before each attempt (head clone + replayable body); after a
//! retryable failure, a retry happens if attempts remain and the budget
//! allows, after a full-jitter backoff.

use super::{backoff::backoff, classify::RetryPolicy, Budget};
use crate::{
    body::ProxyBody,
    errors::ProxyError,
    metrics::{Metrics, Str, TrafficLabels},
    outbound::balance::Tried,
};
use http::{Request, Response};
use std::sync::Arc;

/// Per-request retry state; cloned from the route's template per request.
#[derive(Clone)]
pub struct Retries {
    cfg: Option<Arc<RetryPolicy>>,
    budget: Arc<Budget>,
    metrics: Arc<Metrics>,
    dst_service: Str,
    route: Str,
    /// Attempts made so far by this request.
    attempts: u32,
}

impl Retries {
    /// The retry template of a route; `cfg: None` never retries.
    pub fn new(
        cfg: Option<RetryPolicy>,
        budget: Arc<Budget>,
        metrics: Arc<Metrics>,
        dst_service: Str,
        route: Str,
    ) -> Self {
        Retries {
            cfg: cfg.map(Arc::new),
            budget,
            metrics,
            dst_service,
            route,
            attempts: 0,
        }
    }

    fn labels(&self, reason: &'static str) -> TrafficLabels {
        TrafficLabels {
            dst_service: self.dst_service.clone(),
            route: self.route.clone(),
            reason,
        }
    }
}

/// Why a result may be retried under `cfg`.
fn retryable(
    cfg: &RetryPolicy,
    result: &Result<Response<ProxyBody>, ProxyError>,
) -> Option<&'static str> {
    match result {
        Ok(rsp) => cfg.retryable_response(rsp.status().as_u16(), rsp.headers()),
        Err(e) if cfg.connect_failures && e.is_connect_failure() => Some("connect"),
        Err(ProxyError::BackendTimeout(_))
            if cfg
                .retryable_response(504, &http::HeaderMap::new())
                .is_some() =>
        {
            Some("timeout")
        }
        Err(_) => None,
    }
}

impl tower::retry::Policy<Request<ProxyBody>, Response<ProxyBody>, ProxyError> for Retries {
    type Future = tokio::time::Sleep;

    fn retry(
        &mut self,
        _req: &mut Request<ProxyBody>,
        result: &mut Result<Response<ProxyBody>, ProxyError>,
    ) -> Option<Self::Future> {
        let cfg = self.cfg.clone()?;
        self.attempts += 1;
        let reason = retryable(&cfg, result)?;
        let skip = if self.attempts >= cfg.attempts {
            Some("attempts")
        } else if !self.budget.withdraw() {
            Some("budget")
        } else {
            None
        };
        if let Some(why) = skip {
            self.metrics
                .retries_skipped
                .get_or_create(&self.labels(why))
                .inc();
            return None;
        }
        self.metrics
            .retries
            .get_or_create(&self.labels(reason))
            .inc();
        let wait = backoff(self.attempts - 1, cfg.backoff_base, cfg.backoff_max);
        tracing::info!(target = %&*self.dst_service.0, route = %&*self.route.0, reason, attempt = self.attempts, ?wait, "retrying");
        Some(tokio::time::sleep(wait))
    }

    fn clone_request(&mut self, req: &Request<ProxyBody>) -> Option<Request<ProxyBody>> {
        self.cfg.as_ref()?;
        // Only a replayable body (kept up to the limit) can be sent again.
        let ProxyBody::Replay(body) = req.body() else {
            return None;
        };
        let body = body.try_clone()?;
        let mut copy = Request::new(ProxyBody::Replay(Box::new(body)));
        *copy.method_mut() = req.method().clone();
        *copy.uri_mut() = req.uri().clone();
        *copy.version_mut() = req.version();
        *copy.headers_mut() = req.headers().clone();
        if let Some(t) = req.extensions().get::<Tried>() {
            copy.extensions_mut().insert(t.clone());
        }
        Some(copy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbound::retry::{replay::ReplayBody, BudgetConfig};
    use tower::retry::Policy;

    fn retries(attempts: u32) -> Retries {
        Retries::new(
            Some(RetryPolicy {
                attempts,
                statuses: vec![],
                ranges: vec![(500, 599)],
                grpc: vec![],
                connect_failures: true,
                backoff_base: std::time::Duration::from_millis(1),
                backoff_max: std::time::Duration::from_millis(2),
            }),
            Arc::new(Budget::new(BudgetConfig::default())),
            Arc::new(Metrics::new()),
            "svc:80".into(),
            "r".into(),
        )
    }

    fn status(s: u16) -> Result<Response<ProxyBody>, ProxyError> {
        let mut r = Response::new(ProxyBody::Empty);
        *r.status_mut() = http::StatusCode::from_u16(s).unwrap();
        Ok(r)
    }

    #[tokio::test]
    async fn retries_failures_up_to_the_attempts() {
        let mut p = retries(3);
        let mut req = Request::new(ProxyBody::Empty);
        assert!(p.retry(&mut req, &mut status(503)).is_some());
        assert!(p.retry(&mut req, &mut status(503)).is_some());
        assert!(
            p.retry(&mut req, &mut status(503)).is_none(),
            "third attempt was the last"
        );
        let mut p = retries(3);
        assert!(p.retry(&mut req, &mut status(404)).is_none());
        assert!(p
            .retry(&mut req, &mut Err(ProxyError::ConnectTimeout("x".into())))
            .is_some());
        assert!(p
            .retry(
                &mut req,
                &mut Err(ProxyError::RequestTimeout(std::time::Duration::ZERO))
            )
            .is_none());
    }

    #[test]
    fn only_replayable_bodies_are_copied() {
        let mut p = retries(3);
        let plain = Request::new(ProxyBody::full("x"));
        assert!(p.clone_request(&plain).is_none());
        let replay = Request::builder()
            .header("a", "b")
            .body(ProxyBody::Replay(Box::new(ReplayBody::new(
                ProxyBody::full("x"),
                64,
            ))))
            .unwrap();
        let copy = p.clone_request(&replay).unwrap();
        assert_eq!(copy.headers()["a"], "b");
        let mut none = Retries::new(
            None,
            Arc::new(Budget::new(BudgetConfig::default())),
            Arc::new(Metrics::new()),
            "svc:80".into(),
            "r".into(),
        );
        assert!(
            none.clone_request(&replay).is_none(),
            "no policy, no copies"
        );
    }
}
