//! The Tap gRPC service, on the admin port: a client that opens with a TLS
//! handshake (first byte 0x16) gets mutual TLS with the workload's
//! certificate and HTTP/2; only the identities allowed to tap may observe
//! (others get `PERMISSION_DENIED`), and only so many taps at once
//! (`RESOURCE_EXHAUSTED`).

use super::{Filter, Tap};
use futures::Stream;
use hyper_util::rt::TokioIo;
use mesh_proto::tap::{
    tap_server::{Tap as TapApi, TapServer},
    ObserveRequest, TapEvent,
};
use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpStream, sync::mpsc};
use tokio_rustls::TlsAcceptor;
use tonic::{Request, Response, Status};
use tower::Service;

/// The first byte of a TLS handshake record.
pub const TLS_HANDSHAKE: u8 = 0x16;

/// Whether the connection's first byte starts a TLS handshake (a tap
/// client) rather than a plaintext admin request.
pub async fn is_tls(tcp: &TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(tcp.peek(&mut b).await, Ok(1) if b[0] == TLS_HANDSHAKE)
}

/// Serves one tap connection: the handshake within `handshake`, then the
/// Tap API until the client closes, or has no open tap for `idle`.
pub async fn serve_connection(
    tcp: TcpStream,
    acceptor: TlsAcceptor,
    tap: &'static Tap,
    handshake: Duration,
    idle: Duration,
) {
    let tls = match tokio::time::timeout(handshake, acceptor.accept(tcp)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "tap handshake failed");
            return;
        }
        Err(_) => return,
    };
    let caller: Option<Arc<str>> = tls
        .get_ref()
        .1
        .peer_certificates()
        .and_then(|c| c.first())
        .and_then(|c| mesh_proto::workload::spiffe::spiffe_id(c).ok())
        .map(Arc::from);
    // A caller who may not tap gets its answer, then little time.
    let idle = if tap.allows(caller.as_deref()) {
        idle
    } else {
        handshake
    };
    let activity = crate::serve::Activity::default();
    let api = TapServer::new(TapService {
        tap,
        caller,
        activity: activity.clone(),
    });
    let counted = activity.clone();
    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
        counted.request();
        let mut api = api.clone();
        async move { api.call(req).await }
    });
    let conn = crate::serve::http2().serve_connection(TokioIo::new(tls), svc);
    let timeouts = crate::serve::ConnTimeouts {
        header: handshake,
        idle,
    };
    let _ = Box::pin(crate::serve::idle::watch(
        conn,
        &activity,
        timeouts.requests(),
        |c| c.graceful_shutdown(),
    ))
    .await;
}

/// The Tap API of one connection, knowing its caller.
#[derive(Clone)]
struct TapService {
    tap: &'static Tap,
    caller: Option<Arc<str>>,
    activity: crate::serve::Activity,
}

#[tonic::async_trait]
impl TapApi for TapService {
    type ObserveStream = Events;

    async fn observe(&self, req: Request<ObserveRequest>) -> Result<Response<Events>, Status> {
        let caller = self.caller.as_deref();
        if !self.tap.allows(caller) {
            tracing::info!(caller = caller.unwrap_or("-"), "tap refused");
            return Err(Status::permission_denied(format!(
                "{} may not tap this proxy",
                caller.unwrap_or("a client without a certificate")
            )));
        }
        let req = req.into_inner();
        let filter = Filter::parse(&req.r#match.unwrap_or_default())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (subscription, rx) = self
            .tap
            .subscribe(filter, req.max_rps)
            .map_err(|e| Status::resource_exhausted(e.to_string()))?;
        tracing::info!(caller = caller.unwrap_or("-"), "tap opened");
        Ok(Response::new(Events {
            rx,
            remaining: match req.limit {
                0 => u64::MAX,
                n => u64::from(n),
            },
            _subscription: subscription,
            _stream: self.activity.stream(),
        }))
    }
}

/// The events of one tap; the tap closes when this is dropped.
pub struct Events {
    rx: mpsc::Receiver<TapEvent>,
    remaining: u64,
    _subscription: super::Subscription,
    _stream: crate::serve::idle::StreamGuard,
}

impl Stream for Events {
    type Item = Result<TapEvent, Status>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.remaining == 0 {
            return Poll::Ready(None);
        }
        match this.rx.poll_recv(cx) {
            Poll::Ready(Some(e)) => {
                this.remaining -= 1;
                Poll::Ready(Some(Ok(e)))
            }
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }
}
