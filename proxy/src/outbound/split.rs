//! Weighted backend choice: each request goes to one backend with a
//! probability proportional to its weight.

use super::balance::Balance;
use crate::{body::ProxyBody, errors::ProxyError, metrics::Str};
use futures::future::{self, BoxFuture, Either, Ready};
use http::{Request, Response};
use rand::Rng;
use std::{
    sync::Arc,
    task::{Context, Poll},
};

/// The weighted split as a tower service: each request goes to one
/// backend's balancer.
#[derive(Clone)]
pub struct Split {
    route: Str,
    backends: Arc<[(u32, Balance)]>,
}

impl Split {
    /// Splits `route`'s traffic over weighted balancers.
    pub fn new(route: Str, backends: Vec<(u32, Balance)>) -> Self {
        Split {
            route,
            backends: backends.into(),
        }
    }

    /// The backend for one request, by weight.
    pub fn pick(&self) -> Result<&Balance, ProxyError> {
        pick(self.backends.iter().map(|(w, _)| *w))
            .and_then(|i| self.backends.get(i))
            .map(|(_, b)| b)
            .ok_or_else(|| ProxyError::NoBackends(self.route.0.to_string()))
    }
}

type SplitFuture = Either<
    Ready<Result<Response<ProxyBody>, ProxyError>>,
    BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>,
>;

impl tower::Service<Request<ProxyBody>> for Split {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = SplitFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        // Balancers are always ready (they fail fast per request).
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> SplitFuture {
        match self.pick() {
            Ok(b) => Either::Right(tower::Service::call(&mut b.clone(), req)),
            Err(e) => Either::Left(future::ready(Err(e))),
        }
    }
}

/// Picks an index of `weights` in proportion to the weights; `None` when
/// they are all zero (or the list is empty).
pub fn pick(weights: impl Iterator<Item = u32> + Clone) -> Option<usize> {
    let total: u64 = weights.clone().map(u64::from).sum();
    if total == 0 {
        return None;
    }
    let mut x = rand::rng().random_range(0..total);
    for (i, w) in weights.enumerate() {
        let w = u64::from(w);
        if x < w {
            return Some(i);
        }
        x -= w;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn follows_the_weights() {
        let w = [90u32, 10];
        let mut hits = [0usize; 2];
        for _ in 0..10_000 {
            hits[pick(w.iter().copied()).unwrap()] += 1;
        }
        assert!((8_800..9_200).contains(&hits[0]), "{hits:?}");
    }

    #[test]
    fn zero_weights() {
        assert_eq!(pick([0u32, 0].iter().copied()), None);
        assert_eq!(pick(std::iter::empty()), None);
        for _ in 0..100 {
            assert_eq!(pick([0u32, 5].iter().copied()), Some(1));
        }
    }
}
