//! Distributed tracing (`MESH_PROXY_TRACE_COLLECTOR`): each request gets a span
//! on each side (outbound CLIENT, inbound SERVER) that continues the caller's
//! W3C or B3 context or starts a trace, and the request leaves with a
//! `traceparent` naming that span as parent.
//!
//! Off by default; when off, requests pay nothing for it (no [`Tracing`] exists,
//! so no header is parsed and no span is made). Spans are `tracing` spans with
//! target [`TARGET`], which only the OpenTelemetry layer (see [`export`]) sees.

pub mod context;
pub mod export;

use crate::errors::ProxyError;
use context::TraceContext;
use http::{HeaderMap, Method};
use std::net::SocketAddr;

/// The `tracing` target of request spans.
pub const TARGET: &str = "mesh_proxy::trace";

/// Tracing is on; carried by the inbound and outbound settings.
#[derive(Clone, Copy, Debug)]
pub struct Tracing {
    /// The share of new traces sampled, from 0.0 to 1.0 (also used when a
    /// B3 caller defers the decision).
    sampling: f64,
}

/// What a request span records when it starts.
#[derive(Debug)]
pub struct Start<'a> {
    pub method: &'a Method,
    pub path: &'a str,
    pub authority: &'a str,
    /// The route name (outbound; empty inbound).
    pub route: &'a str,
    /// The destination service (inbound: as the transport header names it).
    pub dst_service: &'a str,
    pub client_id: &'a str,
    /// The server's identity when known at the start (inbound).
    pub server_id: &'a str,
}

/// A request's span; dropping it (or [`RequestSpan::finish`]) ends it.
#[derive(Debug)]
pub struct RequestSpan(tracing::Span);

impl Tracing {
    /// `sampling` must be within 0.0..=1.0 (the configuration checks it).
    pub fn new(sampling: f64) -> Self {
        Tracing {
            sampling: sampling.clamp(0.0, 1.0),
        }
    }

    /// The outbound (CLIENT) span of a request, a child of the caller's
    /// context; `headers` are rewritten so the next hop is its child.
    pub fn client(&self, headers: &mut HeaderMap, s: &Start<'_>) -> RequestSpan {
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "outbound",
            otel.name = s.method.as_str(),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            http.request.method = s.method.as_str(),
            url.path = s.path,
            server.address = s.authority,
            http.route = s.route,
            mesh.direction = "outbound",
            mesh.dst_service = s.dst_service,
            mesh.client_id = s.client_id,
            mesh.server_id = tracing::field::Empty,
            network.peer.address = tracing::field::Empty,
            network.peer.port = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        self.link(&span, headers);
        RequestSpan(span)
    }

    /// The inbound (SERVER) span of a request, a child of the calling
    /// proxy's span; `headers` are rewritten so the app sees it as parent.
    pub fn server(&self, headers: &mut HeaderMap, s: &Start<'_>) -> RequestSpan {
        let span = tracing::info_span!(
            target: TARGET,
            parent: None,
            "inbound",
            otel.name = s.method.as_str(),
            otel.kind = "server",
            otel.status_code = tracing::field::Empty,
            http.request.method = s.method.as_str(),
            url.path = s.path,
            server.address = s.authority,
            mesh.direction = "inbound",
            mesh.dst_service = s.dst_service,
            mesh.client_id = s.client_id,
            mesh.server_id = s.server_id,
            network.peer.address = tracing::field::Empty,
            network.peer.port = tracing::field::Empty,
            http.response.status_code = tracing::field::Empty,
            error.type = tracing::field::Empty,
        );
        self.link(&span, headers);
        RequestSpan(span)
    }

    /// Makes `span` the child of the context in `headers` and writes its own
    /// context back into them.
    fn link(&self, span: &tracing::Span, headers: &mut HeaderMap) {
        use opentelemetry::trace::TraceContextExt;
        use tracing_opentelemetry::OpenTelemetrySpanExt;

        let incoming = TraceContext::from_headers(headers).map(|(mut cx, _)| {
            // A B3 caller may leave the decision to us.
            let sampled = cx
                .sampled
                .unwrap_or_else(|| rand::random::<f64>() < self.sampling);
            cx.sampled = Some(sampled);
            cx
        });
        if let Some(cx) = &incoming {
            let state = headers.get(context::TRACESTATE);
            let _ = span.set_parent(export::remote_context(cx, state));
        }
        let own = span.context();
        let own = own.span();
        let sc = own.span_context();
        if !sc.is_valid() {
            // The span is disabled (no exporter layer): leave the headers.
            return;
        }
        let child = TraceContext {
            trace_id: sc.trace_id().to_bytes(),
            span_id: sc.span_id().to_bytes(),
            sampled: Some(sc.is_sampled()),
        };
        child.inject(headers);
    }
}

impl RequestSpan {
    /// Records the response and ends the span: the status, the upstream
    /// endpoint and the server's identity when known, and an error status
    /// for 5xx responses and proxy errors.
    pub fn finish(
        self,
        status: u16,
        error: Option<&ProxyError>,
        peer: Option<SocketAddr>,
        server_id: Option<&str>,
    ) {
        let span = &self.0;
        span.record("http.response.status_code", i64::from(status));
        if let Some(addr) = peer {
            span.record("network.peer.address", tracing::field::display(addr.ip()));
            span.record("network.peer.port", i64::from(addr.port()));
        }
        if let Some(id) = server_id.filter(|id| !id.is_empty()) {
            span.record("mesh.server_id", id);
        }
        if let Some(e) = error {
            span.record("error.type", e.reason());
        }
        if error.is_some() || status >= 500 {
            span.record("otel.status_code", "error");
        }
    }
}
