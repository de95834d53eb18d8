//! Serving the control plane's gRPC APIs to a hostile network (feature
//! `server`): TLS (mutual when the configuration asks for client
//! certificates), a cap on connections that sheds those still in their
//! handshake first, a handshake timeout, HTTP/2 keep-alive pings, a stream
//! cap per connection and per client identity, and connections without
//! streams closed after a while. Each request carries the caller's verified
//! identity ([`Peer`]) in its extensions.

use crate::net::{accept::Limited, idle};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::{
    collections::HashMap,
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::Duration,
};
use tokio::{net::TcpListener, sync::watch, task::JoinSet};
use tokio_rustls::TlsAcceptor;
use tower::{Service, ServiceExt};

/// How much one server, connection and client may hold.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Open connections; past it, connections still in their handshake are
    /// shed, then new ones refused.
    pub max_connections: usize,
    /// How long a client may take for its TLS handshake and first stream.
    pub handshake_timeout: Duration,
    /// How long a connection may stay without an open stream.
    pub idle_timeout: Duration,
    /// Concurrent streams on one connection (HTTP/2 `MAX_CONCURRENT_STREAMS`).
    pub max_streams_per_connection: u32,
    /// Concurrent streams of one client identity over all its connections;
    /// more are refused with `RESOURCE_EXHAUSTED`.
    pub max_streams_per_identity: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            max_streams_per_connection: 2_048,
            max_streams_per_identity: 16_384,
        }
    }
}

/// Who is calling, in every request's extensions.
#[derive(Clone, Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The SPIFFE ID of its verified certificate; `None` without one.
    pub identity: Option<Arc<str>>,
}

/// Open streams by client identity.
#[derive(Default)]
struct Streams(Mutex<HashMap<Arc<str>, usize>>);

/// One open stream of an identity; gives its place back when dropped.
struct IdentityStream(Arc<Streams>, Arc<str>);

impl Streams {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, usize>> {
        match self.0.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    fn open(self: &Arc<Self>, id: &Arc<str>, max: usize) -> Option<IdentityStream> {
        let mut m = self.lock();
        let n = m.entry(id.clone()).or_insert(0);
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(IdentityStream(self.clone(), id.clone()))
    }
}

impl Drop for IdentityStream {
    fn drop(&mut self) {
        let mut m = self.0.lock();
        if let Some(n) = m.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.1);
            }
        }
    }
}

/// A response body that holds its stream's places until it is done.
pub struct Guarded<B> {
    inner: Option<B>,
    _stream: Option<idle::StreamGuard>,
    _identity: Option<IdentityStream>,
}

impl<B> Body for Guarded<B>
where
    B: Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.get_mut().inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(Body::is_end_stream)
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), Body::size_hint)
    }
}

/// A trailers-only gRPC `RESOURCE_EXHAUSTED` answer.
fn exhausted<B>(what: &str) -> Response<Guarded<B>> {
    let mut rsp = Response::new(Guarded {
        inner: None,
        _stream: None,
        _identity: None,
    });
    let h = rsp.headers_mut();
    h.insert("content-type", HeaderValue::from_static("application/grpc"));
    h.insert("grpc-status", HeaderValue::from_static("8"));
    if let Ok(v) = HeaderValue::from_str(what) {
        h.insert("grpc-message", v);
    }
    rsp
}

/// Serves `service` on `listener` over TLS with `limits` until `shutdown`
/// completes, then lets open streams finish (the caller bounds how long).
/// With `trust_domain`, a client must present a certificate with a SPIFFE ID
/// of that trust domain, or its connection is closed after the handshake.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    service: S,
    limits: Limits,
    trust_domain: Option<String>,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = Limited::new(listener, limits.max_connections, b"");
    let acceptor = TlsAcceptor::from(tls);
    let streams = Arc::new(Streams::default());
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let required: Option<Arc<str>> = trust_domain.map(|td| format!("spiffe://{td}/").into());
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            (tcp, addr, mut slot) = listener.accept() => {
                let (acceptor, service, streams) = (acceptor.clone(), service.clone(), streams.clone());
                let required = required.clone();
                let mut stop = stop_rx.clone();
                conns.spawn(async move {
                    let _ = tcp.set_nodelay(true);
                    let handshake = tokio::time::timeout(limits.handshake_timeout, acceptor.accept(tcp));
                    let tls = tokio::select! {
                        r = handshake => match r {
                            Ok(Ok(tls)) => tls,
                            _ => return,
                        },
                        () = slot.shed() => return,
                    };
                    slot.activate();
                    let identity = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| crate::workload::spiffe::spiffe_id(c).ok())
                        .map(Arc::<str>::from);
                    if let Some(prefix) = &required {
                        if !identity.as_deref().is_some_and(|id| id.starts_with(&**prefix)) {
                            tracing::info!(%addr, identity = identity.as_deref().unwrap_or("-"), "refused a client outside the trust domain");
                            return;
                        }
                    }
                    let peer = Peer { addr, identity };
                    let activity = idle::Activity::default();
                    let counted = activity.clone();
                    let svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
                        let identity = match &peer.identity {
                            Some(id) => match streams.open(id, limits.max_streams_per_identity) {
                                Some(g) => Some(g),
                                None => {
                                    let rsp = exhausted(&format!("too many streams for {id}"));
                                    return ready_response(rsp);
                                }
                            },
                            None => None,
                        };
                        let stream = counted.stream();
                        req.extensions_mut().insert(peer.clone());
                        let mut service = service.clone();
                        Box::pin(async move {
                            let rsp = service.ready().await?.call(req).await?;
                            Ok::<_, Infallible>(rsp.map(|b| Guarded {
                                inner: Some(b),
                                _stream: Some(stream),
                                _identity: identity,
                            }))
                        }) as BoxFuture<B>
                    });
                    let mut h2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
                    h2.timer(TokioTimer::new())
                        .keep_alive_interval(Duration::from_secs(20))
                        .keep_alive_timeout(Duration::from_secs(20))
                        .max_concurrent_streams(limits.max_streams_per_connection)
                        .max_header_list_size(64 * 1024);
                    let conn = h2.serve_connection(TokioIo::new(tls), svc);
                    let timeouts = idle::Timeouts {
                        first: limits.handshake_timeout,
                        idle: limits.idle_timeout,
                        grace: Duration::from_secs(1),
                    };
                    let stopping = async move {
                        let _ = stop.wait_for(|s| *s).await;
                    };
                    let _ = idle::watch_until(conn, &activity, timeouts, |c| c.graceful_shutdown(), stopping).await;
                    drop(slot);
                });
            }
            Some(_) = conns.join_next() => {}
            () = shutdown.as_mut() => break,
        }
    }
    // Stop accepting; open connections get GOAWAY and finish their streams.
    drop(listener);
    let _ = stop_tx.send(true);
    while conns.join_next().await.is_some() {}
}

type BoxFuture<B> = Pin<Box<dyn Future<Output = Result<Response<Guarded<B>>, Infallible>> + Send>>;

fn ready_response<B: Send + 'static>(rsp: Response<Guarded<B>>) -> BoxFuture<B> {
    Box::pin(std::future::ready(Ok(rsp)))
}
