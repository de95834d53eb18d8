//! Inbound requests: authorize, restore the caller's HTTP version, set
//! `x-mesh-client-id`, forward to the application, record metrics.

use super::app::AppClient;
use super::authz::{path, Call, Caller};
use super::policy::PortPolicy;
use crate::{
    access_log::{self, AccessLog},
    body::ProxyBody,
    errors::{is_grpc, ProxyError},
    metrics::{Direction, Metrics, Recorder},
    tap,
    trace::{self, Tracing},
    upgrade::{is_upgrade, splice, strip_hop_headers},
};
use http::{header::HOST, uri::Authority, HeaderValue, Request, Response, Uri, Version};
use std::{convert::Infallible, sync::Arc, time::Instant};

/// The header that tells the application who called.
pub const CLIENT_ID: http::HeaderName = http::HeaderName::from_static("x-mesh-client-id");
const ORIG_PROTO: http::HeaderName = http::HeaderName::from_static("x-mesh-orig-proto");

/// Per-connection state.
#[derive(Clone)]
pub struct Connection {
    pub app: AppClient,
    pub metrics: Arc<Metrics>,
    /// `x-mesh-client-id` (`None` for plaintext callers: the header is removed).
    pub client_id: Option<HeaderValue>,
    /// The caller's verified identity, for authorization.
    pub identity: Option<crate::metrics::Str>,
    /// Plaintext callers: the port's probe paths (always allowed).
    pub probes: Option<Arc<[String]>>,
    /// The caller's address, for network rules.
    pub peer: std::net::SocketAddr,
    /// The application port.
    pub port: u16,
    /// The port's authorization policy (read per request, so changes apply
    /// to the next request).
    pub policy: PortPolicy,
    pub recorder: Arc<Recorder>,
    pub access_log: Option<Arc<AccessLog>>,
    /// The proxy's taps.
    pub tap: &'static crate::tap::Tap,
    /// Request spans, when tracing is on.
    pub trace: Option<Tracing>,
    /// Requests in flight to the app, bounded.
    pub in_flight: Arc<crate::serve::InFlight>,
}

impl Connection {
    /// Serves one request; failures become responses.
    pub async fn handle(
        self: Arc<Self>,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let grpc = is_grpc(&req);
        // Only built when the access log is on.
        let logged = self.access_log.as_ref().map(|_| {
            let authority = authority_of(&req).unwrap_or_default();
            (
                req.method().clone(),
                req.uri().path().to_string(),
                authority,
            )
        });
        // Only made when tracing is on.
        let span = self.trace.map(|t| {
            let labels = self.recorder.labels();
            // Taken out (no allocation) so the method and path stay borrowed.
            let mut headers = std::mem::take(req.headers_mut());
            let authority = match req.uri().authority() {
                Some(a) => std::borrow::Cow::Borrowed(a.as_str()),
                None => headers
                    .get(HOST)
                    .and_then(|h| h.to_str().ok())
                    .map_or(std::borrow::Cow::Borrowed(""), |h| h.to_string().into()),
            };
            let start = trace::Start {
                method: req.method(),
                path: req.uri().path(),
                authority: &authority,
                route: "",
                dst_service: &labels.dst_service.0,
                client_id: &labels.src_identity.0,
                server_id: &labels.dst_identity.0,
            };
            let span = t.server(&mut headers, &start);
            *req.headers_mut() = headers;
            span
        });
        // Nobody tapping: one atomic load.
        let tapped = if self.tap.is_active() {
            let authority = authority_of(&req).unwrap_or_default();
            self.tap.start(&tap::Head {
                direction: "inbound",
                method: req.method(),
                authority: &authority,
                path: req.uri().path(),
            })
        } else {
            None
        };
        let authz = self.policy.current();
        // Path rules see (and the app gets) the normalized path.
        if let Err(error) = crate::request_check::check(&req) {
            self.metrics.error(Direction::inbound, error.reason());
            return Ok(self.tap_refusal(tapped, &error, grpc));
        }

        let _in_flight = match self.in_flight.try_acquire() {
            Ok(g) => g,
            Err(n) => {
                self.metrics.error(Direction::inbound, "overloaded");
                return Ok(self.tap_refusal(tapped, &ProxyError::Overloaded(n), grpc));
            }
        };
        let bad_path = if authz.uses_paths() {
            normalize_path(&mut req).err()
        } else {
            None
        };
        let decision = if self.is_probe(&req) {
            authz.allow_probe()
        } else {
            authz.decide(
                &Caller {
                    identity: self.identity.as_ref().map(|s| &*s.0),
                    addr: self.peer.ip(),
                },
                &Call {
                    port: self.port,
                    http: Some((req.method(), req.uri().path())),
                },
            )
        };
        let (allowed, policy) = (decision.allowed, decision.policy);
        let result = if let Some(bad) = bad_path {
            Err(ProxyError::BadPath(bad))
        } else if allowed {
            self.forward(req).await
        } else {
            tracing::info!(
                policy = %policy.0,
                client = self.identity.as_ref().map_or("-", |s| &*s.0),
                addr = %self.peer.ip(),
                port = self.port,
                "request denied"
            );
            Err(ProxyError::Unauthorized(policy.0.to_string()))
        };
        let mut failure = None;
        let rsp = match result {
            Ok(rsp) => rsp,
            Err(error) => {
                tracing::info!(%error, "inbound request failed");
                self.metrics.error(Direction::inbound, error.reason());
                let rsp = error.to_response(grpc);
                failure = Some(error);
                rsp
            }
        };
        let status = rsp.status().as_u16();
        let elapsed = start.elapsed();
        if let Some(span) = span {
            span.finish(status, failure.as_ref(), Some(self.app.addr), None);
        }
        if let (Some(log), Some((method, path, authority))) = (&self.access_log, &logged) {
            let labels = self.recorder.labels();
            log.write(&access_log::Entry {
                direction: "inbound",
                method: method.as_str(),
                authority,
                path,
                route: "",
                status,
                duration: elapsed,
                attempts: 1,
                upstream: Some(self.app.addr),
                client_id: &labels.src_identity.0,
                server_id: &labels.dst_identity.0,
                flags: access_log::flags(failure.as_ref(), status, 1),
                policy: &policy.0,
            });
        }
        let rsp = if grpc {
            self.recorder.record_request(elapsed);
            crate::grpc_status::track(rsp, self.recorder.clone(), self.metrics.clone())
        } else {
            self.recorder.record(&self.metrics, status, elapsed);
            rsp
        };
        Ok(match tapped {
            None => rsp,
            Some(t) => t.respond(&self.tap_outcome(status, failure.as_ref(), grpc), rsp),
        })
    }

    /// What a tap hears of a request answered with `status`.
    fn tap_outcome(
        &self,
        status: u16,
        failure: Option<&ProxyError>,
        grpc: bool,
    ) -> tap::Outcome<'_> {
        let labels = self.recorder.labels();
        tap::Outcome {
            status,
            src_identity: &labels.src_identity.0,
            dst_identity: &labels.dst_identity.0,
            src_addr: Some(self.peer),
            dst_addr: Some(self.app.addr),
            src_namespace: &labels.src_namespace.0,
            src_workload: &labels.src_workload.0,
            dst_namespace: &labels.dst_namespace.0,
            dst_workload: &labels.dst_workload.0,
            dst_service: &labels.dst_service.0,
            tls: labels.tls,
            route: &labels.route.0,
            proxy_error: failure.map(ProxyError::reason),
            grpc,
        }
    }

    /// A request the proxy refused before forwarding it; its taps hear of it.
    fn tap_refusal(
        &self,
        tapped: Option<Box<tap::Tapped>>,
        error: &ProxyError,
        grpc: bool,
    ) -> Response<ProxyBody> {
        tap::refusal(tapped, error.to_response(grpc), |status| {
            self.tap_outcome(status, Some(error), grpc)
        })
    }

    /// A plaintext `GET`/`HEAD` of one of the application's probe endpoints.
    fn is_probe<B>(&self, req: &Request<B>) -> bool {
        let Some(probes) = &self.probes else {
            return false;
        };
        (req.method() == http::Method::GET || req.method() == http::Method::HEAD)
            && req
                .uri()
                .path_and_query()
                .is_some_and(|pq| probes.iter().any(|p| p == pq.as_str() || p == pq.path()))
    }

    async fn forward(
        &self,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let app_err = |e: hyper_util::client::legacy::Error| {
            if crate::errors::request_body_failed(&e) {
                ProxyError::BadRequestBody(e.to_string())
            } else {
                ProxyError::App {
                    port: self.app.addr.port(),
                    reason: e.to_string(),
                }
            }
        };
        // A caller cannot choose its own identity.
        req.headers_mut().remove(CLIENT_ID);
        if let Some(id) = &self.client_id {
            req.headers_mut().insert(CLIENT_ID, id.clone());
        }

        // An h2c upgrade would turn the connection into HTTP/2 the proxy
        // no longer sees, escaping per-request authorization: it is dropped
        // and the request served as HTTP/1.1.
        if is_upgrade(&req) && is_h2c(&req) {
            req.headers_mut().remove(http::header::UPGRADE);
            req.headers_mut().remove("http2-settings");
        }
        if is_upgrade(&req) {
            let downstream = hyper::upgrade::on(&mut req);
            let req = absolute(req.map(ProxyBody::from));
            let mut rsp = self.app.h1.request(req).await.map_err(app_err)?;
            if rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                splice(downstream, hyper::upgrade::on(&mut rsp), ());
            }
            return Ok(rsp.map(ProxyBody::from));
        }

        let orig_h1 = req.headers_mut().remove(ORIG_PROTO);
        let (mut parts, body) = req.into_parts();
        strip_hop_headers(&mut parts.headers, false);
        let client = if orig_h1.is_some() || parts.version < Version::HTTP_2 {
            parts.version = if orig_h1.as_ref().is_some_and(|v| v == "HTTP/1.0") {
                Version::HTTP_10
            } else {
                Version::HTTP_11
            };
            if !parts.headers.contains_key(HOST) {
                if let Some(a) = parts.uri.authority() {
                    if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                        parts.headers.insert(HOST, v);
                    }
                }
            }
            &self.app.h1
        } else {
            &self.app.h2
        };
        let req = absolute(Request::from_parts(parts, ProxyBody::from(body)));
        let mut rsp = client.request(req).await.map_err(app_err)?;
        strip_hop_headers(rsp.headers_mut(), false);
        Ok(rsp.map(ProxyBody::from))
    }
}

/// True for `Upgrade: h2c`.
fn is_h2c<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(http::header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case("h2c"))
}

/// Rewrites the request's path to its normal form (the query is kept).
fn normalize_path<B>(req: &mut Request<B>) -> Result<(), path::BadPath> {
    let normal = match path::normalize(req.uri().path())? {
        std::borrow::Cow::Borrowed(_) => return Ok(()),
        std::borrow::Cow::Owned(p) => p,
    };
    let pq = match req.uri().query() {
        Some(q) => format!("{normal}?{q}"),
        None => normal,
    };
    let mut parts = req.uri().clone().into_parts();
    parts.path_and_query = pq.parse().ok();
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    Ok(())
}

/// The request's authority, from its URI or `Host`.
fn authority_of<B>(req: &Request<B>) -> Option<String> {
    req.uri()
        .authority()
        .map(|a| a.to_string())
        .or_else(|| Some(req.headers().get(HOST)?.to_str().ok()?.to_string()))
}

/// The pooled client needs an absolute URI; the connector ignores it and
/// dials the application, so the logical authority is kept.
fn absolute(mut req: Request<ProxyBody>) -> Request<ProxyBody> {
    if req.uri().authority().is_some() {
        return req;
    }
    // The path is moved, not copied.
    let authority = match req.headers().get(HOST) {
        None => Authority::from_static("localhost"),
        Some(h) => match Authority::try_from(h.as_bytes()) {
            Ok(a) => a,
            // Left relative: the app client refuses it (a clear 502).
            Err(_) => return req,
        },
    };
    let mut parts = std::mem::take(req.uri_mut()).into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTP);
    parts.authority = Some(authority);
    parts
        .path_and_query
        .get_or_insert_with(|| http::uri::PathAndQuery::from_static("/"));
    // Scheme, authority and path are all set: this cannot fail.
    if let Ok(uri) = Uri::from_parts(parts) {
        *req.uri_mut() = uri;
    }
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h2c_upgrades_are_recognized() {
        let req = |v: &str| Request::get("/").header("upgrade", v).body(()).unwrap();
        assert!(is_h2c(&req("h2c")));
        assert!(is_h2c(&req("websocket, H2C")));
        assert!(!is_h2c(&req("websocket")));
    }

    #[test]
    fn normalized_paths_keep_the_query() {
        let mut req = Request::get("http://ledger/a/../b//c?x=1&y=/../z")
            .body(())
            .unwrap();
        normalize_path(&mut req).unwrap();
        assert_eq!(req.uri().to_string(), "http://ledger/b/c?x=1&y=/../z");
        let mut req = Request::get("/a%2Fb").body(()).unwrap();
        assert!(normalize_path(&mut req).is_err());
    }

    #[test]
    fn requests_for_the_app_client_get_an_absolute_uri() {
        let abs = |uri: &str, host: Option<&str>| {
            let mut b = Request::get(uri);
            if let Some(h) = host {
                b = b.header(HOST, h);
            }
            absolute(b.body(ProxyBody::Empty).unwrap())
                .uri()
                .to_string()
        };
        assert_eq!(abs("/p?q=1", Some("app:8080")), "http://app:8080/p?q=1");
        assert_eq!(abs("/", None), "http://localhost/");
        assert_eq!(abs("http://a.b/c", Some("other")), "http://a.b/c");
        // A Host that is no authority leaves the URI relative (the client
        // refuses it) rather than sending the request somewhere else.
        assert_eq!(abs("/p", Some("bad host")), "/p");
    }
}
