//! The balancer as a tower service for one backend: waits for the backend's
//! endpoints, picks one (P2C), sends, and feeds the result back into the
//! endpoint's latency estimate and outlier state. It is always ready: with
//! one stack shared by every connection, capacity is decided per request
//! in `call` (fail fast with 503, or wait in the bounded pending queue).

use super::{
    ejected_share, outlier::Transition, pick, BalancerConfig, Chosen, HasHealth, NoEndpoint,
    Pending,
};
use crate::{
    body::ProxyBody,
    discovery::{Destination, EndpointSet},
    errors::ProxyError,
    metrics::{Metrics, Str, TrafficLabels},
    outbound::{EndpointClient, PlainClient},
};
use futures::future::BoxFuture;
use http::{Request, Response};
use std::{
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// Endpoints one request may be handed to when it cannot be sent.
const MAX_FAILOVERS: usize = 4;

/// What every backend of a target shares.
pub struct Shared {
    /// Balancer and circuit-breaker settings.
    pub cfg: BalancerConfig,
    /// Requests waiting for an endpoint with spare capacity.
    pub pending: Pending,
    /// Client for targets the mesh does not know.
    pub plain: PlainClient,
    /// How long to wait for a backend's first endpoints.
    pub discovery_timeout: Duration,
    pub metrics: Arc<Metrics>,
    /// Told when a request with a limited endpoint finishes: a request in
    /// the pending queue may go.
    pub freed: Arc<tokio::sync::Notify>,
}

/// The endpoint that served a request's previous attempt; a retry carries
/// the same slot, so it can avoid that endpoint.
#[derive(Clone, Default)]
pub struct Tried(Arc<Mutex<(Option<Arc<EndpointClient>>, u32)>>);

impl Tried {
    fn get(&self) -> Option<Arc<EndpointClient>> {
        self.0.lock().ok().and_then(|g| g.0.clone())
    }

    fn set(&self, ep: Arc<EndpointClient>) {
        if let Ok(mut g) = self.0.lock() {
            g.0 = Some(ep);
            g.1 += 1;
        }
    }

    /// How many attempts reached an endpoint.
    pub fn attempts(&self) -> u32 {
        self.0.lock().map(|g| g.1).unwrap_or(0)
    }
}

/// Who answered a request, attached to its response.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The identity the endpoint proved (`""` if unmeshed).
    pub identity: Str,
    /// Whether the hop was mutual TLS.
    pub tls: bool,
    /// The endpoint's workload and namespace.
    pub workload: Str,
    pub namespace: Str,
    /// The endpoint's address.
    pub addr: std::net::SocketAddr,
}

/// One backend's balancer.
#[derive(Clone)]
pub struct Balance {
    target: Str,
    route: Str,
    dest: Destination<EndpointClient>,
    shared: Arc<Shared>,
}

impl Balance {
    /// A balancer over `dest`'s endpoints.
    pub fn new(
        target: Str,
        route: Str,
        dest: Destination<EndpointClient>,
        shared: Arc<Shared>,
    ) -> Self {
        Balance {
            target,
            route,
            dest,
            shared,
        }
    }

    async fn endpoints(&self) -> Result<Arc<EndpointSet<EndpointClient>>, ProxyError> {
        self.dest
            .endpoints(self.shared.discovery_timeout)
            .await
            .ok_or_else(|| ProxyError::DiscoveryTimeout(self.target.0.to_string()))
    }

    /// Picks an endpoint; when all are at their limit, waits for a free one
    /// if the pending queue has room (woken when a request to this backend
    /// finishes), else fails fast.
    async fn choose(
        &self,
        eps: &[Arc<EndpointClient>],
        avoid: &[Arc<EndpointClient>],
    ) -> Result<Chosen<EndpointClient>, ProxyError> {
        let cfg = &self.shared.cfg;
        let chosen = match pick(eps, avoid, cfg) {
            Ok(c) => c,
            Err(NoEndpoint::Empty) => {
                return Err(ProxyError::NoEndpoints(self.target.0.to_string()))
            }
            Err(NoEndpoint::AllEjected) => {
                return Err(ProxyError::AllEjected(self.target.0.to_string()))
            }
            Err(NoEndpoint::AllBusy) => {
                let Some(_slot) = self.shared.pending.try_acquire(cfg.max_pending) else {
                    return Err(ProxyError::BreakerOpen(self.target.0.to_string()));
                };
                // Bounded: the request timeout (if any) cuts this short too.
                let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                loop {
                    tokio::select! {
                        () = self.shared.freed.notified() => {}
                        () = tokio::time::sleep_until(deadline) => {
                            return Err(ProxyError::BreakerOpen(self.target.0.to_string()));
                        }
                    }
                    if let Ok(c) = pick(eps, avoid, cfg) {
                        break c;
                    }
                }
            }
        };
        let mut chosen = chosen;
        if cfg.max_requests > 0 {
            chosen.notify_when_done(self.shared.freed.clone());
        }
        Ok(chosen)
    }

    /// Records the result of a request to the chosen endpoint.
    fn finish(
        &self,
        chosen: Chosen<EndpointClient>,
        success: bool,
        set: &EndpointSet<EndpointClient>,
    ) {
        let ep = chosen.endpoint.clone();
        let transition = chosen.finish(success, &self.shared.cfg, || ejected_share(&set.endpoints));
        if let Transition::Ejected(penalty) = transition {
            tracing::warn!(target = %&*self.target.0, endpoint = %ep.addr, ?penalty, "endpoint ejected after consecutive failures");
            self.shared
                .metrics
                .ejections
                .get_or_create(&TrafficLabels {
                    dst_service: self.target.clone(),
                    route: self.route.clone(),
                    reason: "consecutive failures",
                })
                .inc();
        }
    }

    async fn send(self, req: Request<ProxyBody>) -> Result<Response<ProxyBody>, ProxyError> {
        let set = self.endpoints().await?;
        if !set.exists {
            // Not a mesh service: forward unchanged, in plaintext.
            let authority = req
                .uri()
                .authority()
                .map(|a| a.to_string())
                .unwrap_or_default();
            let rsp = self
                .shared
                .plain
                .request(req)
                .await
                .map_err(|e| ProxyError::exchange(authority, &e))?;
            return Ok(rsp.map(ProxyBody::from));
        }
        let tried = req.extensions().get::<Tried>().cloned();
        // A retry avoids its previous endpoint; a fail-over every endpoint
        // the request could not be sent to.
        let mut avoid: Vec<Arc<EndpointClient>> =
            tried.as_ref().and_then(Tried::get).into_iter().collect();
        let mut req = req;
        loop {
            let chosen = self.choose(&set.endpoints, &avoid).await?;
            let ep = chosen.endpoint.clone();
            if let Some(t) = &tried {
                t.set(ep.clone());
            }
            match ep
                .send(req, &self.target.0, self.shared.cfg.max_connections)
                .await
            {
                Ok(mut rsp) => {
                    ep.health().reached();
                    let success = rsp.status().as_u16() < 500;
                    self.finish(chosen, success, &set);
                    rsp.extensions_mut().insert(Peer {
                        identity: ep.identity.clone(),
                        tls: ep.is_meshed(),
                        workload: ep.workload.clone(),
                        namespace: ep.namespace.clone(),
                        addr: ep.addr,
                    });
                    return Ok(rsp);
                }
                Err(failed) => {
                    if failed.error.is_connect_failure() {
                        let backoff = ep.health().connect_failed(Instant::now());
                        tracing::debug!(endpoint = %ep.addr, ?backoff, error = %failed.error, "endpoint unreachable; avoided for a while");
                    }
                    self.finish(chosen, false, &set);
                    match failed.unsent {
                        // Never sent: another endpoint may take it, no retry
                        // policy or budget needed.
                        Some(unsent)
                            if avoid.len() + 1 < set.endpoints.len().min(MAX_FAILOVERS) =>
                        {
                            tracing::debug!(target = %&*self.target.0, endpoint = %ep.addr, error = %failed.error, "request not sent; failing over to another endpoint");
                            self.shared
                                .metrics
                                .retries
                                .get_or_create(&TrafficLabels {
                                    dst_service: self.target.clone(),
                                    route: self.route.clone(),
                                    reason: "failover",
                                })
                                .inc();
                            avoid.push(ep);
                            req = unsent;
                        }
                        _ => return Err(failed.error),
                    }
                }
            }
        }
    }

    /// Sends an upgrade request (one attempt, its own connection).
    pub async fn upgrade(
        &self,
        req: Request<ProxyBody>,
        downstream: hyper::upgrade::OnUpgrade,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let set = self.endpoints().await?;
        let chosen = self.choose(&set.endpoints, &[]).await?;
        let ep = chosen.endpoint.clone();
        let rsp = ep
            .upgrade(
                req,
                downstream,
                &self.target.0,
                self.shared.cfg.max_connections,
            )
            .await;
        self.finish(chosen, rsp.is_ok(), &set);
        rsp.map(|mut rsp| {
            rsp.extensions_mut().insert(Peer {
                identity: ep.identity.clone(),
                tls: ep.is_meshed(),
                workload: ep.workload.clone(),
                namespace: ep.namespace.clone(),
                addr: ep.addr,
            });
            rsp
        })
    }
}

impl tower::Service<Request<ProxyBody>> for Balance {
    type Response = Response<ProxyBody>;
    type Error = ProxyError;
    type Future = BoxFuture<'static, Result<Response<ProxyBody>, ProxyError>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), ProxyError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<ProxyBody>) -> Self::Future {
        Box::pin(self.clone().send(req))
    }
}
