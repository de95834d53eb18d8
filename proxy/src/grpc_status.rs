//! gRPC responses are counted when their status is known: from the headers of a
//! trailers-only response, else from the trailers at the end of the body (a body that
//! ends or is dropped without them counts as UNKNOWN). Only gRPC responses pay for the
//! wrapper; others are counted at their headers.

use crate::{
    body::ProxyBody,
    metrics::{Metrics, Recorder},
};
use bytes::Bytes;
use http::{HeaderMap, Response};
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
};

/// The `grpc-status` of a header map, if any.
pub fn code(headers: &HeaderMap) -> Option<u16> {
    headers
        .get("grpc-status")?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Counts `rsp` in `recorder`: now for a trailers-only response, else when its body
/// delivers the trailers.
pub fn track(
    rsp: Response<ProxyBody>,
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
) -> Response<ProxyBody> {
    let status = rsp.status().as_u16();
    if let Some(c) = code(rsp.headers()) {
        recorder.record_grpc(&metrics, status, Some(c));
        return rsp;
    }
    rsp.map(|inner| {
        ProxyBody::Grpc(Box::new(GrpcBody {
            inner,
            pending: Some(Pending {
                recorder,
                metrics,
                status,
            }),
        }))
    })
}

struct Pending {
    recorder: Arc<Recorder>,
    metrics: Arc<Metrics>,
    status: u16,
}

impl Pending {
    fn done(self, code: Option<u16>) {
        self.recorder.record_grpc(&self.metrics, self.status, code);
    }
}

/// A gRPC response body that counts the response when its trailers pass.
pub struct GrpcBody {
    inner: ProxyBody,
    pending: Option<Pending>,
}

impl std::fmt::Debug for GrpcBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GrpcBody")
            .field("inner", &self.inner)
            .finish()
    }
}

impl Drop for GrpcBody {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            p.done(None);
        }
    }
}

impl Body for GrpcBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(p) = self.pending.take() {
                        p.done(code(trailers));
                    }
                }
            }
            Poll::Ready(None) | Poll::Ready(Some(Err(_))) => {
                if let Some(p) = self.pending.take() {
                    p.done(None);
                }
            }
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::{Direction, RequestLabels};
    use http_body_util::BodyExt;

    fn recorder(m: &Metrics) -> Arc<Recorder> {
        Arc::new(m.recorder(RequestLabels {
            direction: Direction::inbound,
            dst_service: "g.demo:8080".into(),
            src_identity: Default::default(),
            src_namespace: Default::default(),
            src_workload: Default::default(),
            dst_identity: Default::default(),
            dst_namespace: Default::default(),
            dst_workload: Default::default(),
            tls: true,
            route: Default::default(),
        }))
    }

    #[tokio::test]
    async fn counts_the_trailers_status_and_trailers_only_responses() {
        let m = Arc::new(Metrics::new());
        let r = recorder(&m);
        // Trailers-only: counted at once, from the headers.
        let rsp = Response::builder()
            .header("grpc-status", "14")
            .body(ProxyBody::Empty)
            .unwrap();
        let _ = track(rsp, r.clone(), m.clone());
        let text = m.encode();
        assert!(
            text.contains("status_code=\"200\",grpc_status=\"14\",classification=\"failure\"} 1"),
            "{text}"
        );
        // A body that ends without trailers: counted when it ends, as UNKNOWN.
        let rsp = Response::new(ProxyBody::full("partial"));
        let rsp = track(rsp, r.clone(), m.clone());
        assert!(!m.encode().contains("grpc_status=\"2\""));
        let body = rsp.into_body().collect().await.unwrap();
        assert_eq!(body.to_bytes(), "partial");
        let text = m.encode();
        assert!(
            text.contains("grpc_status=\"2\",classification=\"failure\"} 1"),
            "{text}"
        );
        // Dropped unread: still counted once.
        drop(track(Response::new(ProxyBody::Empty), r, m.clone()));
        assert!(m
            .encode()
            .contains("grpc_status=\"2\",classification=\"failure\"} 2"));
    }

    #[test]
    fn parses_codes() {
        let mut h = HeaderMap::new();
        assert_eq!(code(&h), None);
        h.insert("grpc-status", "0".parse().unwrap());
        assert_eq!(code(&h), Some(0));
        h.insert("grpc-status", "x".parse().unwrap());
        assert_eq!(code(&h), None);
    }
}
