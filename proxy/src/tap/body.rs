//! The response body of a tapped request: counts its bytes, reads the gRPC
//! status from its trailers, and sends the event when it ends (or is dropped,
//! when the client goes away first).

use super::Subscriber;
use crate::body::ProxyBody;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use mesh_proto::tap::TapEvent;
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Instant, SystemTime, UNIX_EPOCH},
};

/// A tapped response body.
#[derive(Debug)]
pub struct TapBody {
    inner: ProxyBody,
    /// `None` once the event is sent.
    pending: Option<Pending>,
}

#[derive(Debug)]
struct Pending {
    event: TapEvent,
    subs: Vec<Arc<Subscriber>>,
    start: Instant,
    grpc: bool,
}

impl TapBody {
    pub(super) fn new(
        inner: ProxyBody,
        event: TapEvent,
        subs: Vec<Arc<Subscriber>>,
        start: Instant,
        grpc: bool,
    ) -> Self {
        TapBody {
            inner,
            pending: Some(Pending {
                event,
                subs,
                start,
                grpc,
            }),
        }
    }

    fn finish(&mut self, error: Option<&'static str>) {
        let Some(mut p) = self.pending.take() else {
            return;
        };
        p.event.latency_us = micros(p.start.elapsed().as_micros());
        p.event.timestamp_us = now_us();
        if let Some(e) = error {
            if p.event.proxy_error.is_empty() {
                p.event.proxy_error = e.to_string();
            }
        }
        if p.grpc && p.event.grpc_status < 0 && p.event.status == 200 {
            // A gRPC body that ended without a status is UNKNOWN, CANCELLED
            // when the client went away.
            p.event.grpc_status = if error == Some(super::CLIENT_GONE) {
                1
            } else {
                2
            };
        }
        let last = p.subs.len().saturating_sub(1);
        for (i, s) in p.subs.iter().enumerate() {
            if i == last {
                s.offer(std::mem::take(&mut p.event));
                break;
            }
            s.offer(p.event.clone());
        }
    }
}

pub(super) fn micros(n: u128) -> u64 {
    u64::try_from(n).unwrap_or(u64::MAX)
}

/// Unix time in microseconds.
pub(super) fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| micros(d.as_micros()))
}

impl Body for TapBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(p) = this.pending.as_mut() {
                    if let Some(data) = frame.data_ref() {
                        p.event.response_bytes += data.len() as u64;
                    } else if let Some(trailers) = frame.trailers_ref() {
                        if let Some(code) = crate::grpc_status::code(trailers) {
                            p.event.grpc_status = i32::from(code);
                        }
                    }
                }
                if this.inner.is_end_stream() {
                    this.finish(None);
                }
            }
            Poll::Ready(Some(Err(_))) => this.finish(Some("response body failed")),
            Poll::Ready(None) => this.finish(None),
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

impl Drop for TapBody {
    fn drop(&mut self) {
        // Dropped before its end: the client went away (an empty body ends
        // at once and never gets here with its event pending).
        if self.inner.is_end_stream() {
            self.finish(None);
        } else {
            self.finish(Some(super::CLIENT_GONE));
        }
    }
}
