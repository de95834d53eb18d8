//! The one body type the proxy passes around: a peer's streaming body, a
//! small fixed body (for errors the proxy answers itself), or nothing.
//! An enum rather than a boxed trait object: no allocation per request.

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::{
    pin::Pin,
    task::{Context, Poll},
};

/// A request or response body.
#[derive(Debug, Default)]
pub enum ProxyBody {
    /// No body.
    #[default]
    Empty,
    /// A complete body held in memory; `None` once sent.
    Full(Option<Bytes>),
    /// A body streamed from a connection.
    Incoming(hyper::body::Incoming),
    /// A body that can be sent again by a retry.
    Replay(Box<crate::outbound::retry::replay::ReplayBody>),
    /// A gRPC response body whose trailers complete its metrics.
    Grpc(Box<crate::grpc_status::GrpcBody>),
    /// A tapped response: counted and reported to the taps when it ends.
    Tapped(Box<crate::tap::TapBody>),
}

impl ProxyBody {
    /// A fixed body.
    pub fn full(b: impl Into<Bytes>) -> Self {
        ProxyBody::Full(Some(b.into()))
    }
}

impl From<hyper::body::Incoming> for ProxyBody {
    fn from(b: hyper::body::Incoming) -> Self {
        ProxyBody::Incoming(b)
    }
}

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        match self.get_mut() {
            ProxyBody::Empty => Poll::Ready(None),
            ProxyBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ProxyBody::Incoming(b) => Pin::new(b).poll_frame(cx),
            ProxyBody::Replay(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ProxyBody::Grpc(b) => Pin::new(b.as_mut()).poll_frame(cx),
            ProxyBody::Tapped(b) => Pin::new(b.as_mut()).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ProxyBody::Empty => true,
            ProxyBody::Full(b) => b.is_none(),
            ProxyBody::Incoming(b) => b.is_end_stream(),
            ProxyBody::Replay(b) => b.is_end_stream(),
            ProxyBody::Grpc(b) => b.is_end_stream(),
            ProxyBody::Tapped(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ProxyBody::Empty => SizeHint::with_exact(0),
            ProxyBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ProxyBody::Incoming(b) => b.size_hint(),
            ProxyBody::Replay(b) => b.size_hint(),
            ProxyBody::Grpc(b) => b.size_hint(),
            ProxyBody::Tapped(b) => b.size_hint(),
        }
    }
}
