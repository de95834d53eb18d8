//! The outbound side: the application's connections arrive on 4140, either
//! redirected by iptables (transparent mode: the original destination is
//! the target) or made to the proxy itself (explicit `HTTP_PROXY` mode: the
//! request's authority is the target); requests are resolved through
//! discovery, balanced over the target's endpoints and sent over mTLS to
//! the peer proxies.

pub mod balance;
mod endpoint;
pub mod fault;
mod http;
pub mod logical;
mod opaque;
pub mod retry;
pub mod route;
pub mod split;
pub mod timeout;
mod transparent;

pub use endpoint::{EndpointClient, EndpointSettings};

/// Timeouts and port lists of the outbound side.
#[derive(Clone, Debug)]
pub struct OutboundSettings {
    /// How long a new target waits for its first discovery answer.
    pub discovery_timeout: Duration,
    /// How long a redirected connection may take to show its protocol.
    pub detect_timeout: Duration,
    /// Connect timeout for destinations outside the mesh.
    pub connect_timeout: Duration,
    /// Ports carried as opaque TCP without detection.
    pub opaque_ports: Vec<crate::init::rules::PortRange>,
    /// This proxy's workload (the source labels of its requests).
    pub local: crate::metrics::Local,
    /// Where access log lines go, when enabled.
    pub access_log: Option<Arc<crate::access_log::AccessLog>>,
    /// The proxy's taps.
    pub tap: &'static crate::tap::Tap,
    /// Request spans, when tracing is on.
    pub trace: Option<crate::trace::Tracing>,
    /// How long app connections may stay silent.
    pub timeouts: crate::serve::ConnTimeouts,
    /// Shutting down: stop accepting, close connections gracefully.
    pub drain: crate::serve::Drain,
    /// Requests in flight from the app, at most.
    pub max_in_flight: usize,
}

use crate::{
    body::ProxyBody,
    discovery::{PolicyResolver, Resolver},
    metrics::Metrics,
};
use crate::{
    metered::Metered,
    metrics::{Direction, TcpLabels},
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tokio::net::TcpStream;

/// An application connection, counted into the TCP metrics.
type AppConn = Metered<TcpStream>;

/// Plaintext HTTP clients for targets the mesh does not know: a request keeps
/// its protocol (HTTP/1.1, or HTTP/2 with prior knowledge for one that is
/// HTTP/2 at the origin, gRPC included).
#[derive(Clone)]
pub struct PlainClient {
    h1: Client<HttpConnector, ProxyBody>,
    h2: Client<HttpConnector, ProxyBody>,
}

impl PlainClient {
    fn new(connector: HttpConnector) -> Self {
        PlainClient {
            h1: Client::builder(TokioExecutor::new()).build(connector.clone()),
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(connector),
        }
    }

    /// Sends `req` in its own protocol.
    pub fn request(
        &self,
        req: ::http::Request<ProxyBody>,
    ) -> hyper_util::client::legacy::ResponseFuture {
        if req.version() == ::http::Version::HTTP_2 {
            self.h2.request(req)
        } else {
            self.h1.request(req)
        }
    }
}

/// Everything the outbound side shares across connections.
pub struct Outbound {
    pub(crate) resolver: Arc<Resolver<EndpointClient>>,
    pub(crate) env: logical::Env,
    pub(crate) policies: PolicyResolver<logical::Policy>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) identity: crate::metrics::Str,
    pub(crate) discovery_timeout: Duration,
    pub(crate) detect_timeout: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) opaque_ports: Vec<crate::init::rules::PortRange>,
    pub(crate) local: crate::metrics::Local,
    pub(crate) access_log: Option<Arc<crate::access_log::AccessLog>>,
    pub(crate) tap: &'static crate::tap::Tap,
    pub(crate) trace: Option<crate::trace::Tracing>,
    pub(crate) timeouts: crate::serve::ConnTimeouts,
    pub(crate) drain: crate::serve::Drain,
    pub(crate) in_flight: crate::serve::InFlight,
}

impl Outbound {
    /// Builds the outbound side.
    pub fn new(
        resolver: Resolver<EndpointClient>,
        metrics: Arc<Metrics>,
        identity: &str,
        settings: OutboundSettings,
    ) -> Self {
        let discovery_timeout = settings.discovery_timeout;
        let resolver = Arc::new(resolver);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let plain = PlainClient::new(connector);
        let env = logical::Env {
            resolver: resolver.clone(),
            plain,
            discovery_timeout,
            metrics: metrics.clone(),
        };
        let e = env.clone();
        let policies = PolicyResolver::new(
            &resolver,
            Arc::new(move |target: &str, p| logical::compile(target, p, &e)),
        );
        Outbound {
            resolver,
            env,
            policies,
            metrics,
            identity: identity.into(),
            discovery_timeout,
            detect_timeout: settings.detect_timeout,
            connect_timeout: settings.connect_timeout,
            opaque_ports: settings.opaque_ports,
            local: settings.local,
            access_log: settings.access_log,
            tap: settings.tap,
            trace: settings.trace,
            timeouts: settings.timeouts,
            drain: settings.drain,
            in_flight: crate::serve::InFlight::new(settings.max_in_flight),
        }
    }

    /// Sets `mesh_balancer_endpoints` from the current endpoint sets.
    pub fn export_balancer_gauges(&self, metrics: &Metrics) {
        let now = std::time::Instant::now();
        // Only the targets watched now, and only those the mesh knows: the
        // family never outgrows the discovery cache.
        metrics.balancer_endpoints.clear();
        self.resolver.for_each(|target, set| {
            if !set.exists {
                return;
            }
            let ejected = set
                .endpoints
                .iter()
                .filter(|e| balance::HasHealth::health(e.as_ref()).is_ejected(now))
                .count();
            let target = crate::metrics::Str::from(target);
            for (state, n) in [
                ("ready", set.endpoints.len() - ejected),
                ("ejected", ejected),
            ] {
                metrics
                    .balancer_endpoints
                    .get_or_create(&crate::metrics::BalancerLabels {
                        dst_service: target.clone(),
                        state,
                    })
                    .set(n as i64);
            }
        });
    }

    /// Accepts application connections until the drain starts.
    pub async fn serve(self: Arc<Self>, listener: crate::serve::Limited) {
        loop {
            let (tcp, peer, mut slot) = tokio::select! {
                c = listener.accept() => c,
                () = self.drain.signaled() => return,
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let dst = crate::orig_dst::original_dst(&tcp);
                // In explicit mode a client that says nothing costs no
                // buffers and is shed first when the listener is full. A
                // redirected client may be waiting for its server to speak
                // (a database banner): its destination decides.
                if dst.is_none()
                    && !crate::serve::first_bytes(&tcp, &mut slot, this.timeouts.header).await
                {
                    return;
                }
                slot.activate();
                // Only now the connection's full state is allocated.
                Box::pin(this.serve_conn(tcp, peer, dst)).await;
                drop(slot);
            });
        }
    }
}

impl Outbound {
    /// Serves one application connection that has started talking.
    async fn serve_conn(
        self: Arc<Self>,
        tcp: TcpStream,
        peer: SocketAddr,
        dst: Option<SocketAddr>,
    ) {
        let labels = TcpLabels {
            direction: Direction::outbound,
            ..TcpLabels::default()
        };
        let mut io = Metered::new(tcp, self.metrics.clone(), labels.clone());
        match dst {
            Some(dst) => transparent::serve(self, io, dst).await,
            None => {
                io.open(labels);
                let (timeouts, drain) = (self.timeouts, self.drain.clone());
                serve_http(http::Connection::new(self), io, peer, timeouts, drain).await
            }
        }
    }
}

/// Serves HTTP/1 or HTTP/2 (with upgrades) on an application connection,
/// closing it when it asks nothing for too long.
async fn serve_http(
    conn: http::Connection,
    io: AppConn,
    peer: SocketAddr,
    timeouts: crate::serve::ConnTimeouts,
    drain: crate::serve::Drain,
) {
    let activity = crate::serve::Activity::default();
    let counted = activity.clone();
    let metrics = conn.metrics().clone();
    let svc = hyper::service::service_fn(move |req| {
        counted.request();
        conn.clone().handle(req)
    });
    let builder = crate::serve::auto(timeouts.header);
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), svc);
    let draining = async move { drain.signaled().await };
    match crate::serve::idle::watch_until(
        conn,
        &activity,
        timeouts.requests(),
        |c| c.graceful_shutdown(),
        draining,
    )
    .await
    {
        crate::serve::Ended::Closed(Err(error)) | crate::serve::Ended::Idle(Err(error)) => {
            // hyper answered a head it could not parse itself (400, 431).
            let malformed = error
                .downcast_ref::<hyper::Error>()
                .filter(|e| e.is_parse())
                .map(|e| {
                    if e.is_parse_too_large() {
                        "headers too large"
                    } else {
                        "bad request"
                    }
                });
            if let Some(reason) = malformed {
                metrics.error(Direction::outbound, reason);
            }
            tracing::debug!(%peer, %error, "outbound connection closed with an error");
        }
        crate::serve::Ended::NoRequest => {
            tracing::debug!(%peer, "outbound connection sent no request in time; closed");
        }
        _ => {}
    }
}
