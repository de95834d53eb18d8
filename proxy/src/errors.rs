//! Errors the proxy answers itself, and the one place that maps each to a
//! status, a gRPC status, an `x-mesh-proxy-error` header and a metric reason.

use crate::body::ProxyBody;
use http::{header::HeaderValue, Response, StatusCode};

/// The header naming the reason of a proxy-generated response.
pub const PROXY_ERROR_HEADER: http::HeaderName =
    http::HeaderName::from_static("x-mesh-proxy-error");

/// A failure the proxy answers for the application.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request has no authority (Host header or absolute URI)")]
    NoAuthority,
    #[error("no endpoints for {0}")]
    NoEndpoints(String),
    #[error("discovery of {0} timed out")]
    DiscoveryTimeout(String),
    #[error("connect to {addr} failed: {reason}")]
    Connect { addr: String, reason: String },
    #[error("connect to {0} timed out")]
    ConnectTimeout(String),
    #[error("tls handshake with {addr} failed: {reason}")]
    Tls { addr: String, reason: String },
    #[error("upstream {addr} failed: {reason}")]
    Upstream { addr: String, reason: String },
    #[error("application on port {port} failed: {reason}")]
    App { port: u16, reason: String },
    #[error("upstream {addr} refused the request before processing it: {reason}")]
    Refused { addr: String, reason: String },
    #[error("request timed out after {0:?}")]
    RequestTimeout(std::time::Duration),
    #[error("backend request timed out after {0:?}")]
    BackendTimeout(std::time::Duration),
    #[error("every endpoint of {0} is at its request limit")]
    BreakerOpen(String),
    #[error("every endpoint of {0} is ejected")]
    AllEjected(String),
    #[error("route {0} has no usable backend")]
    NoBackends(String),
    #[error("fault injected: {0}")]
    Fault(StatusCode),
    #[error("denied by authorization policy {0}")]
    Unauthorized(String),
    #[error("bad request path: {0}")]
    BadPath(crate::inbound::authz::path::BadPath),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("request body failed: {0}")]
    BadRequestBody(String),
    #[error("request headers of {0} bytes exceed the proxy's limit of {limit}", limit = crate::serve::MAX_HEADER_BYTES)]
    HeadersTooLarge(usize),
    #[error("method {0} is not supported by the proxy")]
    MethodNotAllowed(http::Method),
    #[error("the proxy has {0} requests in flight; shedding load")]
    Overloaded(usize),
}

impl ProxyError {
    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::NoAuthority => StatusCode::BAD_REQUEST,
            ProxyError::NoEndpoints(_)
            | ProxyError::DiscoveryTimeout(_)
            | ProxyError::BreakerOpen(_)
            | ProxyError::AllEjected(_)
            | ProxyError::Overloaded(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectTimeout(_)
            | ProxyError::RequestTimeout(_)
            | ProxyError::BackendTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::NoBackends(_) => StatusCode::INTERNAL_SERVER_ERROR,
            ProxyError::Fault(s) => *s,
            ProxyError::Unauthorized(_) => StatusCode::FORBIDDEN,
            ProxyError::BadPath(_) | ProxyError::BadRequest(_) | ProxyError::BadRequestBody(_) => {
                StatusCode::BAD_REQUEST
            }
            ProxyError::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::Connect { .. }
            | ProxyError::Tls { .. }
            | ProxyError::Upstream { .. }
            | ProxyError::Refused { .. }
            | ProxyError::App { .. } => StatusCode::BAD_GATEWAY,
        }
    }

    /// The short reason used in the header and the metric label.
    pub fn reason(&self) -> &'static str {
        match self {
            ProxyError::NoAuthority => "no authority",
            ProxyError::NoEndpoints(_) => "no endpoints",
            ProxyError::DiscoveryTimeout(_) => "discovery timeout",
            ProxyError::Connect { .. } => "connect failed",
            ProxyError::ConnectTimeout(_) => "connect timeout",
            ProxyError::Tls { .. } => "tls failed",
            ProxyError::Upstream { .. } => "upstream failed",
            ProxyError::App { .. } => "app failed",
            ProxyError::Refused { .. } => "refused",
            ProxyError::RequestTimeout(_) => "request timeout",
            ProxyError::BackendTimeout(_) => "backend request timeout",
            ProxyError::BreakerOpen(_) => "breaker open",
            ProxyError::AllEjected(_) => "all endpoints ejected",
            ProxyError::NoBackends(_) => "no backends",
            ProxyError::Fault(_) => "fault injected",
            ProxyError::Unauthorized(_) => "unauthorized",
            ProxyError::BadPath(_) => "bad path",
            ProxyError::BadRequest(_) => "bad request",
            ProxyError::BadRequestBody(_) => "bad request body",
            ProxyError::HeadersTooLarge(_) => "headers too large",
            ProxyError::MethodNotAllowed(_) => "method not allowed",
            ProxyError::Overloaded(_) => "overloaded",
        }
    }

    /// True when nothing reached the application, so a retry is safe.
    pub fn is_connect_failure(&self) -> bool {
        matches!(
            self,
            ProxyError::Connect { .. }
                | ProxyError::ConnectTimeout(_)
                | ProxyError::Tls { .. }
                | ProxyError::Refused { .. }
        )
    }

    /// The gRPC status code for gRPC callers.
    fn grpc_status(&self) -> &'static str {
        match self.status() {
            StatusCode::GATEWAY_TIMEOUT => "4",
            StatusCode::FORBIDDEN => "7",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "8",
            StatusCode::METHOD_NOT_ALLOWED => "12",
            StatusCode::BAD_REQUEST | StatusCode::INTERNAL_SERVER_ERROR => "13",
            _ => "14",
        }
    }

    /// An exchange with `addr` failed: the request body's fault when that
    /// is what failed, else upstream's.
    pub fn exchange(addr: String, e: &(dyn std::error::Error + 'static)) -> Self {
        if request_body_failed(e) {
            ProxyError::BadRequestBody(e.to_string())
        } else {
            ProxyError::Upstream {
                addr,
                reason: e.to_string(),
            }
        }
    }

    /// True when the client, not the proxy or anything upstream, is at fault.
    pub fn is_client_error(&self) -> bool {
        self.status().is_client_error()
    }

    /// Renders the error for a caller; gRPC callers get a trailers-only
    /// response with `grpc-status`.
    pub fn to_response(&self, grpc: bool) -> Response<ProxyBody> {
        let mut rsp = Response::new(ProxyBody::Empty);
        rsp.headers_mut()
            .insert(PROXY_ERROR_HEADER, HeaderValue::from_static(self.reason()));
        if grpc {
            let h = rsp.headers_mut();
            h.insert("content-type", HeaderValue::from_static("application/grpc"));
            h.insert("grpc-status", HeaderValue::from_static(self.grpc_status()));
            if let Ok(msg) = HeaderValue::from_str(&self.to_string()) {
                h.insert("grpc-message", msg);
            }
        } else {
            *rsp.status_mut() = self.status();
            *rsp.body_mut() = ProxyBody::full(format!("{self}\n"));
        }
        rsp
    }
}

/// True when a failed exchange failed because the request body did (a
/// malformed chunk, a client gone mid-body): hyper reports it as a user
/// error over HTTP/1 and by resetting the stream itself over HTTP/2.
pub fn request_body_failed(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(e);
    while let Some(c) = cause {
        if let Some(h) = c.downcast_ref::<hyper::Error>() {
            if h.is_user() {
                return true;
            }
        }
        if let Some(h2) = c.downcast_ref::<h2::Error>() {
            // Only the sending side resets a stream with INTERNAL_ERROR when
            // its body fails; the peer's resets are remote.
            if h2.is_reset() && !h2.is_remote() && h2.reason() == Some(h2::Reason::INTERNAL_ERROR) {
                return true;
            }
        }
        cause = c.source();
    }
    false
}

/// True when the request is gRPC (by content type).
pub fn is_grpc<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_errors_to_statuses() {
        let e = ProxyError::NoEndpoints("svc:80".into());
        let rsp = e.to_response(false);
        assert_eq!(rsp.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "no endpoints");
        let rsp = e.to_response(true);
        assert_eq!(rsp.status(), StatusCode::OK);
        assert_eq!(rsp.headers()["grpc-status"], "14");
        let e = ProxyError::ConnectTimeout("x".into());
        assert_eq!(e.to_response(false).status(), StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(e.to_response(true).headers()["grpc-status"], "4");
        let e = ProxyError::Unauthorized("ledger-callers".into());
        let rsp = e.to_response(false);
        assert_eq!(rsp.status(), StatusCode::FORBIDDEN);
        assert_eq!(rsp.headers()[PROXY_ERROR_HEADER], "unauthorized");
        assert_eq!(e.to_response(true).headers()["grpc-status"], "7");
    }
}
