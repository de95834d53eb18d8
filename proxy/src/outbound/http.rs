//! One application connection on the outbound side. Each request walks the
//! route path: target → policy → route → fault → request timeout →
//! attempts (split → balance → per-try timeout → endpoint), with retries
//! under the route's policy and the target's budget.

use super::{
    balance::{self, NoEndpoint},
    logical::{Policy, Route},
    retry::{backoff::backoff, replay::ReplayBody},
    split, timeout, EndpointClient, Outbound,
};
use crate::{
    body::ProxyBody,
    discovery::PolicyWatch,
    errors::{is_grpc, ProxyError},
    metrics::{Direction, Recorder, RequestLabels, Str, TrafficLabels},
    upgrade::{is_upgrade, strip_hop_headers},
};
use http::{header::HOST, uri::Authority, HeaderValue, Request, Response, Uri, Version};
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Header carrying an HTTP/1 request's original version across the HTTP/2
/// hop between proxies, so the server side can restore it.
pub const ORIG_PROTO: &str = "x-mesh-orig-proto";

/// The largest request body kept for retries.
const REPLAY_LIMIT: usize = super::retry::replay::DEFAULT_LIMIT;

/// The last target a connection used: its authority, name and policy.
type LastTarget = Option<(Authority, Str, PolicyWatch<Policy>)>;

/// What a connection remembers between requests.
#[derive(Default)]
struct ConnState {
    /// The last target, so keep-alive connections to one service skip the
    /// resolver cache.
    last: LastTarget,
    /// The metric handles of the last label set.
    recorder: Option<Arc<Recorder>>,
}

/// Per-connection state shared by the connection's requests.
#[derive(Clone)]
pub struct Connection {
    outbound: Arc<Outbound>,
    state: Arc<Mutex<ConnState>>,
}

impl Connection {
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Connection {
            outbound,
            state: Arc::new(Mutex::new(ConnState::default())),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The metric handles for `labels`, reusing the last ones when equal.
    fn recorder(&self, labels: RequestLabels) -> Arc<Recorder> {
        let mut state = self.lock();
        if let Some(r) = &state.recorder {
            if *r.labels() == labels {
                return r.clone();
            }
        }
        let r = Arc::new(self.outbound.metrics.recorder(labels));
        state.recorder = Some(r.clone());
        r
    }

    fn target(&self, authority: &Authority) -> (Str, PolicyWatch<Policy>) {
        let mut state = self.lock();
        let last = &mut state.last;
        if let Some((a, name, w)) = last.as_ref() {
            if a == authority {
                return (name.clone(), w.clone());
            }
        }
        let target = target_of(authority);
        let watch = self.outbound.policies.resolve(&target);
        let name = Str::from(target.as_str());
        *last = Some((authority.clone(), name.clone(), watch.clone()));
        (name, watch)
    }

    /// Serves one request; errors become responses, never panics.
    pub async fn handle(
        self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let grpc = is_grpc(&req);
        let ob = &self.outbound;
        let Some(authority) = authority_of(&req) else {
            ob.metrics.error(Direction::outbound, "no authority");
            return Ok(ProxyError::NoAuthority.to_response(grpc));
        };
        let (name, watch) = self.target(&authority);
        let policy = match watch.current(ob.discovery_timeout).await {
            Some(p) => p,
            None => Arc::new(Policy::fallback(&name.0, &ob.resolver)),
        };
        let route = policy.route_for(&req);
        let mut labels = RequestLabels {
            direction: Direction::outbound,
            dst_service: name.clone(),
            src_identity: ob.identity.clone(),
            dst_identity: Str::default(),
            tls: false,
            route: route.name.clone(),
        };
        let start = Instant::now();
        let rsp = match self
            .route_request(req, &authority, &policy, route, &mut labels)
            .await
        {
            Ok(rsp) => rsp,
            Err(error) => {
                tracing::info!(target = %&*name.0, route = %&*route.name.0, %error, "outbound request failed");
                ob.metrics.error(Direction::outbound, error.reason());
                error.to_response(grpc)
            }
        };
        self.recorder(labels)
            .record(&ob.metrics, rsp.status().as_u16(), start.elapsed());
        Ok(rsp)
    }

    /// Fault injection, then the attempts under the request timeout.
    async fn route_request(
        &self,
        req: Request<hyper::body::Incoming>,
        authority: &Authority,
        policy: &Policy,
        route: &Route,
        labels: &mut RequestLabels,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        if let Some(fault) = &route.fault {
            let d = fault.decide();
            if let Some(delay) = d.delay {
                tokio::time::sleep(delay).await;
            }
            if let Some(status) = d.abort {
                return Err(ProxyError::Fault(status));
            }
        }
        let limit = timeout::tighter(route.timeout, grpc_timeout(&req));
        let attempts = self.attempts(req, authority, policy, route, labels);
        timeout::within(limit, ProxyError::RequestTimeout, attempts).await
    }

    /// Sends the request, retrying under the route's policy.
    async fn attempts(
        &self,
        req: Request<hyper::body::Incoming>,
        authority: &Authority,
        policy: &Policy,
        route: &Route,
        labels: &mut RequestLabels,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let ob = &self.outbound;
        if route.retry.is_some() {
            policy.budget.deposit();
        }
        if is_upgrade(&req) {
            return self.upgrade(req, policy, route, labels).await;
        }
        let retry = route.retry.as_ref();
        let (parts, body) = req.into_parts();
        // With a retry policy the body is kept (up to a limit) for replays;
        // without one it streams straight through and `parts` is moved.
        let (mut replay, mut plain) = match retry {
            Some(_) => (Some(ReplayBody::new(body.into(), REPLAY_LIMIT)), None),
            None => (None, Some(ProxyBody::from(body))),
        };
        // Without retries there is one attempt, which takes the head; with
        // retries each attempt sends a copy.
        let mut head = Some(parts);
        let max = retry.map_or(1, |r| r.attempts.max(1));
        let mut avoid: Option<Arc<EndpointClient>> = None;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let backend = pick_backend(route)?;
            let Some(set) = backend.dest.endpoints(ob.discovery_timeout).await else {
                return Err(ProxyError::DiscoveryTimeout(backend.target.0.to_string()));
            };
            if !set.exists {
                // Not a mesh service: forward unchanged, in plaintext.
                let body = match replay.take() {
                    Some(b) => ProxyBody::Replay(Box::new(b)),
                    None => plain.take().unwrap_or_default(),
                };
                let Some(parts) = head.take() else {
                    return Err(ProxyError::NoBackends(route.name.0.to_string()));
                };
                let req = build_owned(parts, body, authority, false);
                let rsp = ob
                    .plain
                    .request(req)
                    .await
                    .map_err(|e| ProxyError::Upstream {
                        addr: authority.to_string(),
                        reason: e.to_string(),
                    })?;
                return Ok(rsp.map(ProxyBody::from));
            }
            let chosen = self
                .choose(&set.endpoints, avoid.as_ref(), policy, &backend.target)
                .await?;
            let ep = chosen.endpoint.clone();
            labels.dst_identity = ep.identity.clone();
            labels.tls = ep.is_meshed();

            let (this_body, spare) = match replay.take() {
                Some(b) => {
                    let spare = b.try_clone();
                    (ProxyBody::Replay(Box::new(b)), spare)
                }
                None => (plain.take().unwrap_or_default(), None),
            };
            let req = match (retry, head.take()) {
                (None, Some(p)) => build_owned(p, this_body, authority, ep.is_meshed()),
                (Some(_), Some(p)) => {
                    let r = build(&p, this_body, authority, ep.is_meshed());
                    head = Some(p);
                    r
                }
                // Only a request with retries comes round again.
                (_, None) => return Err(ProxyError::NoBackends(route.name.0.to_string())),
            };
            let send = ep.send(
                req,
                &backend.target.0,
                &ob.plain,
                policy.balancer.max_connections,
            );
            let sent =
                timeout::within(route.per_try_timeout, ProxyError::BackendTimeout, send).await;
            let (success, reason) = match &sent {
                Ok(rsp) => (
                    rsp.status().as_u16() < 500,
                    retry.and_then(|r| r.retryable_response(rsp.status().as_u16(), rsp.headers())),
                ),
                Err(e) => (
                    false,
                    retry.and_then(|r| {
                        if r.connect_failures && e.is_connect_failure() {
                            Some("connect")
                        } else if matches!(e, ProxyError::BackendTimeout(_))
                            && r.retryable_response(504, &http::HeaderMap::new()).is_some()
                        {
                            Some("timeout")
                        } else {
                            None
                        }
                    }),
                ),
            };
            let transition = chosen.finish(success, &policy.balancer, || {
                balance::ejected_share(&set.endpoints)
            });
            if let balance::outlier::Transition::Ejected(penalty) = transition {
                tracing::warn!(target = %&*backend.target.0, endpoint = %ep.addr, ?penalty, "endpoint ejected after consecutive failures");
                ob.metrics
                    .ejections
                    .get_or_create(&TrafficLabels {
                        dst_service: backend.target.clone(),
                        route: route.name.clone(),
                        reason: "consecutive failures",
                    })
                    .inc();
            }
            let Some(reason) = reason else {
                return sent;
            };
            let skip = if attempt >= max {
                Some("attempts")
            } else if spare.is_none() {
                Some("body")
            } else if !policy.budget.withdraw() {
                Some("budget")
            } else {
                None
            };
            let traffic = TrafficLabels {
                dst_service: labels.dst_service.clone(),
                route: route.name.clone(),
                reason,
            };
            if let Some(why) = skip {
                ob.metrics
                    .retries_skipped
                    .get_or_create(&TrafficLabels {
                        reason: why,
                        ..traffic
                    })
                    .inc();
                return sent;
            }
            ob.metrics.retries.get_or_create(&traffic).inc();
            let wait = match retry {
                Some(r) => backoff(attempt - 1, r.backoff_base, r.backoff_max),
                None => Duration::ZERO,
            };
            tracing::info!(target = %&*labels.dst_service.0, endpoint = %ep.addr, reason, attempt, ?wait, "retrying");
            drop(sent);
            replay = spare;
            avoid = Some(ep);
            tokio::time::sleep(wait).await;
        }
    }

    /// Picks an endpoint; when all are at their limit, waits for a free one
    /// if the pending queue has room, else fails fast.
    async fn choose(
        &self,
        eps: &[Arc<EndpointClient>],
        avoid: Option<&Arc<EndpointClient>>,
        policy: &Policy,
        target: &Str,
    ) -> Result<balance::Chosen<EndpointClient>, ProxyError> {
        match balance::pick(eps, avoid, &policy.balancer) {
            Ok(c) => Ok(c),
            Err(NoEndpoint::Empty) => Err(ProxyError::NoEndpoints(target.0.to_string())),
            Err(NoEndpoint::AllEjected) => Err(ProxyError::AllEjected(target.0.to_string())),
            Err(NoEndpoint::AllBusy) => {
                let Some(_slot) = policy.pending.try_acquire(policy.balancer.max_pending) else {
                    return Err(ProxyError::BreakerOpen(target.0.to_string()));
                };
                // Bounded: the request timeout (if any) cuts this short too.
                let deadline = Instant::now() + Duration::from_secs(5);
                while Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(2)).await;
                    if let Ok(c) = balance::pick(eps, avoid, &policy.balancer) {
                        return Ok(c);
                    }
                }
                Err(ProxyError::BreakerOpen(target.0.to_string()))
            }
        }
    }

    /// An upgrade request: one attempt, on its own connection.
    async fn upgrade(
        &self,
        mut req: Request<hyper::body::Incoming>,
        policy: &Policy,
        route: &Route,
        labels: &mut RequestLabels,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let ob = &self.outbound;
        let backend = pick_backend(route)?;
        let set = backend
            .dest
            .endpoints(ob.discovery_timeout)
            .await
            .ok_or_else(|| ProxyError::DiscoveryTimeout(backend.target.0.to_string()))?;
        let chosen = self
            .choose(&set.endpoints, None, policy, &backend.target)
            .await?;
        let ep = chosen.endpoint.clone();
        labels.dst_identity = ep.identity.clone();
        labels.tls = ep.is_meshed();
        let downstream = hyper::upgrade::on(&mut req);
        let rsp = ep
            .upgrade(
                req.map(ProxyBody::from),
                downstream,
                &backend.target.0,
                policy.balancer.max_connections,
            )
            .await;
        chosen.finish(rsp.is_ok(), &policy.balancer, || {
            balance::ejected_share(&set.endpoints)
        });
        let mut rsp = rsp?;
        let upgraded = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        strip_hop_headers(rsp.headers_mut(), upgraded);
        Ok(rsp)
    }
}

/// Chooses a route backend by weight.
fn pick_backend(route: &Route) -> Result<&super::logical::Backend, ProxyError> {
    split::pick(route.backends.iter().map(|b| b.weight))
        .and_then(|i| route.backends.get(i))
        .ok_or_else(|| ProxyError::NoBackends(route.name.0.to_string()))
}

/// The `grpc-timeout` a gRPC client asked for (e.g. `100m` = 100 ms).
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

/// The request's authority: the absolute-form URI's, else the Host header.
fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    let host = req.headers().get(HOST)?.to_str().ok()?;
    host.parse().ok()
}

/// The discovery target for an authority (port 80 when none is given).
fn target_of(authority: &Authority) -> String {
    let host = authority.host().trim_end_matches('.');
    let port = authority.port_u16().unwrap_or(80);
    format!("{host}:{port}")
}

/// The head of a request, copied for one attempt.
trait CloneHead {
    fn clone_head(&self) -> http::request::Parts;
}

impl CloneHead for http::request::Parts {
    fn clone_head(&self) -> http::request::Parts {
        let mut req = Request::new(());
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.version_mut() = self.version;
        *req.headers_mut() = self.headers.clone();
        req.into_parts().0
    }
}

/// Builds one attempt's request from a copy of the head.
fn build(
    parts: &http::request::Parts,
    body: ProxyBody,
    authority: &Authority,
    to_h2: bool,
) -> Request<ProxyBody> {
    build_owned(parts.clone_head(), body, authority, to_h2)
}

/// Rewrites a request for the next hop: absolute URI, no hop-by-hop
/// headers, and, when it goes to a peer proxy over HTTP/2, its original
/// HTTP/1 version recorded in `x-mesh-orig-proto`.
fn build_owned(
    mut parts: http::request::Parts,
    body: ProxyBody,
    authority: &Authority,
    to_h2: bool,
) -> Request<ProxyBody> {
    strip_hop_headers(&mut parts.headers, false);
    let pq = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let uri = Uri::builder()
        .scheme(
            parts
                .uri
                .scheme()
                .cloned()
                .unwrap_or(http::uri::Scheme::HTTP),
        )
        .authority(authority.clone())
        .path_and_query(pq)
        .build();
    if let Ok(u) = uri {
        parts.uri = u;
    }
    if to_h2 && parts.version < Version::HTTP_2 {
        let orig = if parts.version == Version::HTTP_10 {
            "HTTP/1.0"
        } else {
            "HTTP/1.1"
        };
        parts
            .headers
            .insert(ORIG_PROTO, HeaderValue::from_static(orig));
        parts.headers.remove(HOST);
        parts.version = Version::HTTP_2;
    }
    Request::from_parts(parts, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_default_to_port_80() {
        let a: Authority = "web.demo.svc.cluster.local".parse().unwrap();
        assert_eq!(target_of(&a), "web.demo.svc.cluster.local:80");
        let a: Authority = "web.demo.svc.cluster.local.:8080".parse().unwrap();
        assert_eq!(target_of(&a), "web.demo.svc.cluster.local:8080");
    }

    #[test]
    fn authority_from_uri_or_host() {
        let r = Request::get("http://a.b:81/x").body(()).unwrap();
        assert_eq!(authority_of(&r).unwrap().as_str(), "a.b:81");
        let r = Request::get("/x").header(HOST, "c.d:82").body(()).unwrap();
        assert_eq!(authority_of(&r).unwrap().as_str(), "c.d:82");
        let r = Request::get("/x").body(()).unwrap();
        assert!(authority_of(&r).is_none());
        let r = Request::get("/x")
            .header(HOST, "bad host")
            .body(())
            .unwrap();
        assert!(authority_of(&r).is_none());
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

    #[test]
    fn h1_requests_are_rewritten_for_the_h2_hop() {
        let req = Request::get("/p?q=1")
            .header(HOST, "svc:80")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let a: Authority = "svc:80".parse().unwrap();
        let out = build(&parts, ProxyBody::Empty, &a, true);
        assert_eq!(out.uri(), "http://svc:80/p?q=1");
        assert_eq!(out.version(), Version::HTTP_2);
        assert_eq!(out.headers()[ORIG_PROTO], "HTTP/1.1");
        assert!(out.headers().get(HOST).is_none());
        assert!(out.headers().get("connection").is_none());
        let plain = build(&parts, ProxyBody::Empty, &a, false);
        assert_eq!(plain.version(), Version::HTTP_11);
        assert_eq!(plain.headers()[HOST], "svc:80");
    }
}
