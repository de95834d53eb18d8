//! Inbound requests: restore the caller's HTTP version, set
//! `x-mesh-client-id`, forward to the application, record metrics.

use super::app::AppClient;
use crate::{
    body::ProxyBody,
    errors::{is_grpc, ProxyError},
    metrics::{Direction, Metrics, Recorder},
    upgrade::{is_upgrade, splice, strip_hop_headers},
};
use http::{header::HOST, HeaderValue, Request, Response, Uri, Version};
use std::{convert::Infallible, sync::Arc, time::Instant};

/// The header that tells the application who called.
pub const CLIENT_ID: &str = "x-mesh-client-id";
const ORIG_PROTO: &str = "x-mesh-orig-proto";

/// Per-connection state.
#[derive(Clone)]
pub struct Connection {
    pub app: AppClient,
    pub metrics: Arc<Metrics>,
    pub client_id: HeaderValue,
    pub recorder: Arc<Recorder>,
}

impl Connection {
    /// Serves one request; failures become responses.
    pub async fn handle(
        self,
        req: Request<hyper::body::Incoming>,
    ) -> Result<Response<ProxyBody>, Infallible> {
        let start = Instant::now();
        let grpc = is_grpc(&req);
        let rsp = match self.forward(req).await {
            Ok(rsp) => rsp,
            Err(error) => {
                tracing::info!(%error, "inbound request failed");
                self.metrics.error(Direction::inbound, error.reason());
                error.to_response(grpc)
            }
        };
        self.recorder
            .record(&self.metrics, rsp.status().as_u16(), start.elapsed());
        Ok(rsp)
    }

    async fn forward(
        &self,
        mut req: Request<hyper::body::Incoming>,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        let app_err = |e: hyper_util::client::legacy::Error| ProxyError::App {
            port: self.app.addr.port(),
            reason: e.to_string(),
        };
        // A caller cannot choose its own identity.
        req.headers_mut().remove(CLIENT_ID);
        req.headers_mut().insert(CLIENT_ID, self.client_id.clone());

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

/// The pooled client needs an absolute URI; the connector ignores it and
/// dials the application, so the logical authority is kept.
fn absolute(mut req: Request<ProxyBody>) -> Request<ProxyBody> {
    if req.uri().authority().is_some() {
        return req;
    }
    let host = req
        .headers()
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("localhost")
        .to_string();
    let pq = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .to_string();
    if let Ok(uri) = Uri::builder()
        .scheme("http")
        .authority(host)
        .path_and_query(pq)
        .build()
    {
        *req.uri_mut() = uri;
    }
    req
}
