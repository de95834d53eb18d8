//! The outbound side: the application's requests arrive on 4140 (explicit
//! `HTTP_PROXY` mode for now), are resolved through discovery, balanced over
//! the target's endpoints and sent over mTLS to the peer proxies.

pub mod balance;
mod endpoint;
pub mod fault;
mod http;
pub mod logical;
pub mod retry;
pub mod route;
pub mod split;
pub mod timeout;

pub use endpoint::{EndpointClient, EndpointSettings};

use crate::{
    body::ProxyBody,
    discovery::{PolicyResolver, Resolver},
    metrics::Metrics,
};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{sync::Arc, time::Duration};
use tokio::net::TcpListener;

/// A plaintext HTTP client for unmeshed endpoints and unknown targets.
pub type PlainClient = Client<HttpConnector, ProxyBody>;

/// Everything the outbound side shares across connections.
pub struct Outbound {
    pub(crate) resolver: Arc<Resolver<EndpointClient>>,
    pub(crate) env: logical::Env,
    pub(crate) policies: PolicyResolver<logical::Policy>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) identity: crate::metrics::Str,
    pub(crate) discovery_timeout: Duration,
}

impl Outbound {
    /// Builds the outbound side.
    pub fn new(
        resolver: Resolver<EndpointClient>,
        metrics: Arc<Metrics>,
        identity: &str,
        discovery_timeout: Duration,
    ) -> Self {
        let resolver = Arc::new(resolver);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(1)));
        let plain: PlainClient = Client::builder(TokioExecutor::new()).build(connector);
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
        }
    }

    /// Sets `mesh_balancer_endpoints` from the current endpoint sets.
    pub fn export_balancer_gauges(&self, metrics: &Metrics) {
        let now = std::time::Instant::now();
        self.resolver.for_each(|target, set| {
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

    /// Accepts application connections forever.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(c) => c,
                Err(error) => {
                    tracing::warn!(%error, "outbound accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let this = self.clone();
            tokio::spawn(async move {
                let conn = http::Connection::new(this);
                let svc = hyper::service::service_fn(move |req| conn.clone().handle(req));
                let builder = auto::Builder::new(TokioExecutor::new());
                if let Err(error) = builder
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await
                {
                    tracing::debug!(%peer, %error, "outbound connection closed with an error");
                }
            });
        }
    }
}
