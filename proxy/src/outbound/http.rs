//! One application connection on the outbound side. Each request finds its
//! target's policy and route, then runs through the route's tower stack
//! (`logical::RouteStack`: fault → request timeout → retries → per-try
//! timeout → split → balance → endpoint); this file only prepares the
//! request and records what happened.

use super::{
    balance::{Peer, Tried},
    logical::{Policy, Route},
    retry::replay::ReplayBody,
    Outbound,
};
use crate::{
    access_log,
    body::ProxyBody,
    discovery::PolicyWatch,
    errors::{is_grpc, ProxyError},
    metrics::{Direction, Recorder, RequestLabels, Str},
    tap, trace,
    upgrade::{is_upgrade, strip_hop_headers},
};
use http::{header::HOST, uri::Authority, HeaderValue, Request, Response, Uri, Version};
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Instant,
};
use tower::ServiceExt;

/// Header carrying an HTTP/1 request's original version across the HTTP/2
/// hop between proxies, so the server side can restore it.
pub const ORIG_PROTO: http::HeaderName = http::HeaderName::from_static("x-mesh-orig-proto");

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
    /// The metric handles of the last few label sets.
    recorders: Recorders,
}

/// How many label sets a connection keeps handles for: a connection to a
/// split Service alternates between its backends' workloads, and one
/// connection may call a few Services.
const RECORDERS: usize = 4;

/// The metric handles of a connection's last label sets, so recording a
/// request is a few comparisons and atomic adds, not a map lookup.
#[derive(Default)]
struct Recorders {
    slots: [Option<Arc<Recorder>>; RECORDERS],
    /// The slot the next new label set replaces (oldest first).
    next: usize,
}

impl Recorders {
    fn get(
        &mut self,
        labels: RequestLabels,
        make: impl FnOnce(RequestLabels) -> Recorder,
    ) -> Arc<Recorder> {
        if let Some(r) = self.slots.iter().flatten().find(|r| *r.labels() == labels) {
            return r.clone();
        }
        let r = Arc::new(make(labels));
        self.slots[self.next] = Some(r.clone());
        self.next = (self.next + 1) % RECORDERS;
        r
    }
}

/// The target of a redirected connection: its original destination,
/// whatever the requests' `Host` says.
struct FixedTarget {
    name: Str,
    watch: PolicyWatch<Policy>,
    /// Used when a request carries no authority of its own.
    authority: Option<Authority>,
}

/// Per-connection state shared by the connection's requests.
#[derive(Clone)]
pub struct Connection {
    outbound: Arc<Outbound>,
    state: Arc<Mutex<ConnState>>,
    fixed: Option<Arc<FixedTarget>>,
}

impl Connection {
    /// A connection in explicit mode: each request's authority is its target.
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Connection {
            outbound,
            state: Arc::new(Mutex::new(ConnState::default())),
            fixed: None,
        }
    }

    /// A redirected connection: every request goes to `name` (metrics
    /// label) with the policy in `watch`.
    pub fn fixed(
        outbound: Arc<Outbound>,
        name: Str,
        watch: PolicyWatch<Policy>,
        authority: Option<Authority>,
    ) -> Self {
        Connection {
            outbound,
            state: Arc::new(Mutex::new(ConnState::default())),
            fixed: Some(Arc::new(FixedTarget {
                name,
                watch,
                authority,
            })),
        }
    }

    /// The proxy's metrics.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.outbound.metrics
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ConnState> {
        match self.state.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// The metric handles for `labels`, reusing the connection's when it has them.
    fn recorder(&self, labels: RequestLabels) -> Arc<Recorder> {
        let metrics = &self.outbound.metrics;
        self.lock().recorders.get(labels, |l| metrics.recorder(l))
    }

    /// The request's authority and target, under one lock: the connection's
    /// last ones when the Host header repeats them byte for byte (no parse,
    /// no copy), else parsed and resolved, and remembered.
    fn resolve<B>(&self, req: &Request<B>) -> Option<(Authority, Str, PolicyWatch<Policy>)> {
        let mut state = self.lock();
        let last = &mut state.last;
        if let (None, Some((a, name, w))) = (req.uri().authority(), last.as_ref()) {
            if req.headers().get(HOST)?.as_bytes() == a.as_str().as_bytes() {
                return Some((a.clone(), name.clone(), w.clone()));
            }
        }
        let authority = authority_of(req)?;
        if let Some((a, name, w)) = last.as_ref() {
            if *a == authority {
                return Some((authority, name.clone(), w.clone()));
            }
        }
        let target = target_of(&authority);
        let watch = self.outbound.policies.resolve(&target);
        let name = Str::from(target.as_str());
        *last = Some((authority.clone(), name.clone(), watch.clone()));
        Some((authority, name, watch))
    }

    /// Serves one request; errors become responses, never panics.
    pub async fn handle(
        self,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let grpc = is_grpc(&req);
        let ob = &self.outbound;
        // Nobody tapping: one atomic load.
        let tapped = if ob.tap.is_active() {
            let authority = raw_authority(&req);
            ob.tap.start(&tap::Head {
                direction: "outbound",
                method: req.method(),
                authority: &authority,
                path: req.uri().path(),
            })
        } else {
            None
        };
        if let Err(error) = crate::request_check::check(&req) {
            tracing::info!(%error, "outbound request refused");
            ob.metrics.error(Direction::outbound, error.reason());
            return Ok(self.tap_refusal(tapped, &error, grpc));
        }
        let _in_flight = match ob.in_flight.try_acquire() {
            Ok(g) => g,
            Err(n) => {
                ob.metrics.error(Direction::outbound, "overloaded");
                return Ok(self.tap_refusal(tapped, &ProxyError::Overloaded(n), grpc));
            }
        };
        let resolved = match self.fixed.as_deref() {
            Some(f) => authority_of(&req)
                .or_else(|| f.authority.clone())
                .map(|a| (a, f.name.clone(), f.watch.clone())),
            None => self.resolve(&req),
        };
        let Some((authority, name, watch)) = resolved else {
            ob.metrics.error(Direction::outbound, "no authority");
            return Ok(self.tap_refusal(tapped, &ProxyError::NoAuthority, grpc));
        };
        let policy = match watch.current(ob.discovery_timeout).await {
            Some(p) => p,
            None => Arc::new(Policy::fallback(&name.0, &ob.env)),
        };
        let route = policy.route_for(&req);
        let mut labels = RequestLabels {
            direction: Direction::outbound,
            dst_service: policy.label.clone(),
            src_identity: ob.identity.clone(),
            src_namespace: ob.local.namespace.clone(),
            src_workload: ob.local.workload.clone(),
            dst_identity: Str::default(),
            dst_namespace: Str::default(),
            dst_workload: Str::default(),
            tls: false,
            route: route.name.clone(),
        };
        let start = Instant::now();
        // Only built when the access log is on.
        let logged = ob
            .access_log
            .as_ref()
            .map(|_| (req.method().clone(), req.uri().path().to_string()));
        // Only made when tracing is on.
        let span = ob.trace.map(|t| {
            // Taken out (no allocation) so the method and path stay borrowed.
            let mut headers = std::mem::take(req.headers_mut());
            let start = trace::Start {
                method: req.method(),
                path: req.uri().path(),
                authority: authority.as_str(),
                route: &route.name.0,
                dst_service: &name.0,
                client_id: &ob.identity.0,
                server_id: "",
            };
            let span = t.client(&mut headers, &start);
            *req.headers_mut() = headers;
            span
        });
        let tried = route.retries.then(Tried::default);
        let result = if is_upgrade(&req) {
            // Boxed: a rare path with a large future.
            Box::pin(upgrade(req, route)).await
        } else {
            send(req, &authority, &policy, route, tried.clone()).await
        };
        let mut upstream = None;
        let mut failure = None;
        let rsp = match result {
            Ok(mut rsp) => {
                if let Some(peer) = rsp.extensions_mut().remove::<Peer>() {
                    labels.dst_identity = peer.identity;
                    labels.dst_namespace = peer.namespace;
                    labels.dst_workload = peer.workload;
                    labels.tls = peer.tls;
                    upstream = Some(peer.addr);
                }
                rsp
            }
            Err(error) => {
                tracing::info!(target = %&*name.0, route = %&*route.name.0, %error, "outbound request failed");
                ob.metrics.error(Direction::outbound, error.reason());
                let rsp = error.to_response(grpc);
                failure = Some(error);
                rsp
            }
        };
        let status = rsp.status().as_u16();
        let elapsed = start.elapsed();
        if let Some(span) = span {
            span.finish(
                status,
                failure.as_ref(),
                upstream,
                Some(&labels.dst_identity.0),
            );
        }
        if let (Some(log), Some((method, path))) = (&ob.access_log, &logged) {
            let attempts = tried.as_ref().map_or(
                u32::from(upstream.is_some() || failure.is_none()),
                Tried::attempts,
            );
            log.write(&access_log::Entry {
                direction: "outbound",
                method: method.as_str(),
                authority: authority.as_str(),
                path,
                route: &route.name.0,
                status,
                duration: elapsed,
                attempts,
                upstream,
                client_id: &ob.identity.0,
                server_id: &labels.dst_identity.0,
                flags: access_log::flags(failure.as_ref(), status, attempts),
                policy: "",
            });
        }
        let rsp = match tapped {
            None => rsp,
            Some(t) => t.respond(
                &tap::Outcome {
                    status,
                    src_identity: &labels.src_identity.0,
                    dst_identity: &labels.dst_identity.0,
                    src_addr: None,
                    dst_addr: upstream,
                    src_namespace: &labels.src_namespace.0,
                    src_workload: &labels.src_workload.0,
                    dst_namespace: &labels.dst_namespace.0,
                    dst_workload: &labels.dst_workload.0,
                    dst_service: &labels.dst_service.0,
                    tls: labels.tls,
                    route: &labels.route.0,
                    proxy_error: failure.as_ref().map(ProxyError::reason),
                    grpc,
                },
                rsp,
            ),
        };
        let recorder = self.recorder(labels);
        if grpc {
            recorder.record_request(elapsed);
            return Ok(crate::grpc_status::track(rsp, recorder, ob.metrics.clone()));
        }
        recorder.record(&ob.metrics, status, elapsed);
        Ok(rsp)
    }
}

impl Connection {
    /// A request the proxy refused before routing it; its taps hear of it.
    fn tap_refusal(
        &self,
        tapped: Option<Box<tap::Tapped>>,
        error: &ProxyError,
        grpc: bool,
    ) -> Response<ProxyBody> {
        let ob = &self.outbound;
        tap::refusal(tapped, error.to_response(grpc), |status| tap::Outcome {
            status,
            src_identity: &ob.identity.0,
            src_namespace: &ob.local.namespace.0,
            src_workload: &ob.local.workload.0,
            proxy_error: Some(error.reason()),
            grpc,
            ..tap::Outcome::default()
        })
    }
}

/// The authority a request names, as sent (for tap, before it is checked).
fn raw_authority<B>(req: &Request<B>) -> std::borrow::Cow<'_, str> {
    match req.uri().authority() {
        Some(a) => a.as_str().into(),
        None => req
            .headers()
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or_default()
            .into(),
    }
}

/// Prepares the request for the route's stack and runs it.
async fn send(
    req: Request<hyper::body::Incoming>,
    authority: &Authority,
    policy: &Policy,
    route: &Route,
    tried: Option<Tried>,
) -> Result<Response<ProxyBody>, ProxyError> {
    let (parts, body) = req.into_parts();
    let req = match tried {
        // Retries need the body kept for replay, a shared record of the
        // endpoints tried, and a deposit in the budget.
        Some(tried) => {
            policy.budget.deposit();
            let body = ReplayBody::new(body.into(), REPLAY_LIMIT);
            let mut req = build_owned(parts, ProxyBody::Replay(Box::new(body)), authority);
            req.extensions_mut().insert(tried);
            req
        }
        None => build_owned(parts, ProxyBody::from(body), authority),
    };
    route.stack.clone().oneshot(req).await
}

/// An upgrade request: one attempt on its own connection, outside the
/// stack (a switched connection cannot be retried or timed out).
async fn upgrade(
    mut req: Request<hyper::body::Incoming>,
    route: &Route,
) -> Result<Response<ProxyBody>, ProxyError> {
    let downstream = hyper::upgrade::on(&mut req);
    let backend = route.split.pick()?.clone();
    let mut rsp = backend
        .upgrade(req.map(ProxyBody::from), downstream)
        .await?;
    let upgraded = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
    strip_hop_headers(rsp.headers_mut(), upgraded);
    Ok(rsp)
}

/// The request's authority: the absolute-form URI's, else the Host header.
fn authority_of<B>(req: &Request<B>) -> Option<Authority> {
    if let Some(a) = req.uri().authority() {
        return Some(a.clone());
    }
    Authority::try_from(req.headers().get(HOST)?.as_bytes()).ok()
}

/// The discovery target for an authority (port 80 when none is given).
fn target_of(authority: &Authority) -> String {
    let host = authority.host().trim_end_matches('.');
    let port = authority.port_u16().unwrap_or(80);
    format!("{host}:{port}")
}

/// Rewrites a request for the next hop: absolute URI (the authority the
/// app meant) and no hop-by-hop headers. A meshed endpoint then turns it
/// into the HTTP/2 form proxies speak (`for_h2_hop`).
fn build_owned(
    mut parts: http::request::Parts,
    body: ProxyBody,
    authority: &Authority,
) -> Request<ProxyBody> {
    strip_hop_headers(&mut parts.headers, false);
    // Moves the scheme and path out of the old URI rather than copying them.
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    uri.scheme.get_or_insert(http::uri::Scheme::HTTP);
    uri.authority = Some(authority.clone());
    uri.path_and_query
        .get_or_insert_with(|| http::uri::PathAndQuery::from_static("/"));
    // Scheme, authority and path are all set: this cannot fail.
    if let Ok(u) = Uri::from_parts(uri) {
        parts.uri = u;
    }
    Request::from_parts(parts, body)
}

/// Turns an HTTP/1 request into the HTTP/2 form used between proxies,
/// recording its version in `x-mesh-orig-proto`.
pub fn for_h2_hop(req: &mut Request<ProxyBody>) {
    if req.version() >= Version::HTTP_2 {
        return;
    }
    let orig = if req.version() == Version::HTTP_10 {
        "HTTP/1.0"
    } else {
        "HTTP/1.1"
    };
    req.headers_mut()
        .insert(ORIG_PROTO, HeaderValue::from_static(orig));
    req.headers_mut().remove(HOST);
    *req.version_mut() = Version::HTTP_2;
}

/// Undoes [`for_h2_hop`] on a request that was never sent (another endpoint,
/// maybe an unmeshed one, takes it).
pub fn from_h2_hop(req: &mut Request<ProxyBody>) {
    let Some(orig) = req.headers_mut().remove(ORIG_PROTO) else {
        return;
    };
    *req.version_mut() = if orig == "HTTP/1.0" {
        Version::HTTP_10
    } else {
        Version::HTTP_11
    };
    if let Some(a) = req.uri().authority() {
        if let Ok(v) = HeaderValue::from_str(a.as_str()) {
            req.headers_mut().insert(HOST, v);
        }
    }
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
    fn h1_requests_are_rewritten_for_the_h2_hop() {
        let req = Request::get("/p?q=1")
            .header(HOST, "svc:80")
            .header("connection", "keep-alive")
            .body(())
            .unwrap();
        let (parts, ()) = req.into_parts();
        let a: Authority = "svc:80".parse().unwrap();
        let mut out = build_owned(parts, ProxyBody::Empty, &a);
        assert_eq!(out.uri(), "http://svc:80/p?q=1");
        assert_eq!(out.version(), Version::HTTP_11);
        assert_eq!(out.headers()[HOST], "svc:80");
        assert!(out.headers().get("connection").is_none());
        for_h2_hop(&mut out);
        assert_eq!(out.version(), Version::HTTP_2);
        assert_eq!(out.headers()[ORIG_PROTO], "HTTP/1.1");
        assert!(out.headers().get(HOST).is_none());
        // Never sent: back to what it was.
        from_h2_hop(&mut out);
        assert_eq!(out.version(), Version::HTTP_11);
        assert!(out.headers().get(ORIG_PROTO).is_none());
        assert_eq!(out.headers()[HOST], "svc:80");
    }

    #[test]
    fn a_connection_keeps_handles_for_its_last_label_sets() {
        let metrics = crate::metrics::Metrics::new();
        let labels = |workload: &str| RequestLabels {
            direction: Direction::outbound,
            dst_service: Str::from("web.demo.svc.cluster.local:80"),
            src_identity: Str::default(),
            src_namespace: Str::from("demo"),
            src_workload: Str::from("client"),
            dst_identity: Str::default(),
            dst_namespace: Str::from("demo"),
            dst_workload: Str::from(workload),
            tls: true,
            route: Str::default(),
        };
        let mut cache = Recorders::default();
        let mut made = 0;
        let mut get = |cache: &mut Recorders, w: &str| {
            cache.get(labels(w), |l| {
                made += 1;
                metrics.recorder(l)
            })
        };
        // A 50/50 split: two workloads, alternating; each is looked up once.
        let v1 = get(&mut cache, "web-v1");
        let v2 = get(&mut cache, "web-v2");
        for _ in 0..10 {
            assert!(Arc::ptr_eq(&get(&mut cache, "web-v1"), &v1));
            assert!(Arc::ptr_eq(&get(&mut cache, "web-v2"), &v2));
        }
        // More label sets than slots: the oldest goes first, and comes back
        // through the metrics (same series, new handle).
        for w in ["a", "b", "c"] {
            get(&mut cache, w);
        }
        assert!(!Arc::ptr_eq(&get(&mut cache, "web-v1"), &v1));
        assert_eq!(made, 6);
    }

    #[test]
    fn the_next_hop_uri_keeps_scheme_path_and_query() {
        let a: Authority = "svc:80".parse().unwrap();
        let build = |uri: &str| {
            let (parts, ()) = Request::get(uri).body(()).unwrap().into_parts();
            build_owned(parts, ProxyBody::Empty, &a).uri().to_string()
        };
        assert_eq!(build("/"), "http://svc:80/");
        assert_eq!(build("/a/b?c=d&e"), "http://svc:80/a/b?c=d&e");
        // The authority is the one routed on, whatever the URI said.
        assert_eq!(build("http://other:81/x?y"), "http://svc:80/x?y");
        assert_eq!(build("https://other/x"), "https://svc:80/x");
        // Authority-form (CONNECT) has no path: "/" is supplied.
        assert_eq!(build("other:443"), "http://svc:80/");
    }
}
