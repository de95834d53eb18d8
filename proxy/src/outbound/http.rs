//! One application connection on the outbound side: finds each request's
//! target, picks an endpoint and forwards, recording metrics.

use super::{EndpointClient, Outbound};
use crate::{
    body::ProxyBody,
    discovery::Destination,
    errors::{is_grpc, ProxyError},
    metrics::{Direction, RequestLabels, Str},
    upgrade::{is_upgrade, strip_hop_headers},
};
use http::{header::HOST, uri::Authority, HeaderValue, Request, Response, Uri, Version};
use std::{
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Instant,
};

/// Header carrying an HTTP/1 request's original version across the HTTP/2
/// hop between proxies, so the server side can restore it.
pub const ORIG_PROTO: &str = "x-mesh-orig-proto";

/// The last target a connection used: its authority, metric name and watch.
type LastTarget = Option<(Authority, Str, Destination<EndpointClient>)>;

/// Per-connection state: the last target, so keep-alive connections to one
/// service skip the resolver cache.
#[derive(Clone)]
pub struct Connection {
    outbound: Arc<Outbound>,
    last: Arc<Mutex<LastTarget>>,
}

impl Connection {
    pub fn new(outbound: Arc<Outbound>) -> Self {
        Connection {
            outbound,
            last: Arc::new(Mutex::new(None)),
        }
    }

    fn destination(&self, authority: &Authority) -> (Str, Destination<EndpointClient>) {
        let mut last = match self.last.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        if let Some((a, name, d)) = last.as_ref() {
            if a == authority {
                return (name.clone(), d.clone());
            }
        }
        let target = target_of(authority);
        let dest = self.outbound.resolver.resolve(&target);
        let name = Str::from(target.as_str());
        *last = Some((authority.clone(), name.clone(), dest.clone()));
        (name, dest)
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
        let (name, dest) = self.destination(&authority);
        let labels = RequestLabels {
            direction: Direction::outbound,
            dst_service: name.clone(),
            src_identity: ob.identity.clone(),
            dst_identity: Str::default(),
            tls: false,
        };
        let start = Instant::now();
        let result = self.forward(req, &authority, &name, &dest, labels).await;
        let rsp = match result {
            Ok(rsp) => rsp,
            Err((error, labels)) => {
                tracing::info!(target = %&*name.0, %error, "outbound request failed");
                ob.metrics.error(Direction::outbound, error.reason());
                ob.metrics.requests.get_or_create(&labels).inc();
                let rsp = error.to_response(grpc);
                ob.metrics
                    .record(&labels, rsp.status().as_u16(), start.elapsed());
                return Ok(rsp);
            }
        };
        Ok(rsp)
    }

    async fn forward(
        &self,
        mut req: Request<hyper::body::Incoming>,
        authority: &Authority,
        name: &Str,
        dest: &Destination<EndpointClient>,
        mut labels: RequestLabels,
    ) -> Result<Response<ProxyBody>, (ProxyError, RequestLabels)> {
        let ob = &self.outbound;
        let start = Instant::now();
        let Some(set) = dest.endpoints(ob.discovery_timeout).await else {
            return Err((ProxyError::DiscoveryTimeout(name.0.to_string()), labels));
        };
        if !set.exists {
            // Not a mesh service: forward unchanged, in plaintext.
            ob.metrics.requests.get_or_create(&labels).inc();
            let req = to_absolute(req, authority, false);
            let rsp = ob.plain.request(req).await.map_err(|e| {
                (
                    ProxyError::Upstream {
                        addr: authority.to_string(),
                        reason: e.to_string(),
                    },
                    labels.clone(),
                )
            })?;
            ob.metrics
                .record(&labels, rsp.status().as_u16(), start.elapsed());
            return Ok(rsp.map(ProxyBody::from));
        }
        let Some(ep) = set.pick() else {
            return Err((ProxyError::NoEndpoints(name.0.to_string()), labels));
        };
        labels.dst_identity = ep.identity.clone();
        labels.tls = ep.is_meshed();
        ob.metrics.requests.get_or_create(&labels).inc();

        let result = if is_upgrade(&req) {
            let downstream = hyper::upgrade::on(&mut req);
            let req = req.map(ProxyBody::from);
            ep.upgrade(req, downstream, &name.0).await
        } else {
            let req = to_absolute(req, authority, ep.is_meshed());
            ep.send(req, &name.0, &ob.plain).await
        };
        match result {
            Ok(mut rsp) => {
                let upgraded = rsp.status() == http::StatusCode::SWITCHING_PROTOCOLS;
                strip_hop_headers(rsp.headers_mut(), upgraded);
                ob.metrics
                    .record(&labels, rsp.status().as_u16(), start.elapsed());
                Ok(rsp)
            }
            Err(e) => Err((e, labels)),
        }
    }
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

/// Rewrites a request for the next hop: absolute URI, no hop-by-hop
/// headers, and, when it goes to a peer proxy over HTTP/2, its original
/// HTTP/1 version recorded in `x-mesh-orig-proto`.
fn to_absolute(
    req: Request<hyper::body::Incoming>,
    authority: &Authority,
    to_h2: bool,
) -> Request<ProxyBody> {
    let (mut parts, body) = req.into_parts();
    strip_hop_headers(&mut parts.headers, false);
    let pq = parts
        .uri
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let mut uri = Uri::builder()
        .scheme(
            parts
                .uri
                .scheme()
                .cloned()
                .unwrap_or(http::uri::Scheme::HTTP),
        )
        .authority(authority.clone())
        .path_and_query(pq);
    if let Ok(u) = std::mem::take(&mut uri).build() {
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
    Request::from_parts(parts, ProxyBody::from(body))
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
}
