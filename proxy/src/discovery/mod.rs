//! Service discovery: one `Destination.Get` watch per target, shared by all
//! connections, kept in a cache. A watch that loses the controller keeps its
//! last endpoint set and reconnects with backoff, so traffic never depends on
//! the control plane being up.

pub(crate) mod cache;

/// How many targets a proxy watches at once by default.
pub const DEFAULT_MAX_TARGETS: usize = cache::DEFAULT_MAX;
pub mod policy;
pub(crate) mod reconnect;
mod watch;

use crate::metrics::{ControlLabels, Metrics};
use mesh_proto::destination::destination_client::DestinationClient;
use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};
use tonic::transport::Channel;

/// What discovery says about one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EndpointMeta {
    /// The workload's address for the target port.
    pub addr: SocketAddr,
    /// Set when the endpoint is meshed: whom to expect and where to dial.
    pub tls: Option<TlsTarget>,
    /// The workload behind the endpoint, for metric labels.
    pub workload: crate::metrics::Str,
    /// The endpoint's namespace, for metric labels.
    pub namespace: crate::metrics::Str,
}

/// How to reach a meshed endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsTarget {
    /// The SPIFFE ID the peer must present.
    pub identity: String,
    /// The peer proxy's inbound listener.
    pub proxy_addr: SocketAddr,
}

/// Builds the per-endpoint state (e.g. a connection pool) the first time an
/// endpoint appears; it is kept while the endpoint's metadata is unchanged.
pub type NewEndpoint<T> = Arc<dyn Fn(&EndpointMeta) -> T + Send + Sync>;

/// The current endpoints of a target.
#[derive(Debug)]
pub struct EndpointSet<T> {
    /// False when the controller does not know the target.
    pub exists: bool,
    /// The endpoints; empty when there are none.
    pub endpoints: Vec<Arc<T>>,
    next: AtomicUsize,
}

impl<T> EndpointSet<T> {
    fn new(exists: bool, endpoints: Vec<Arc<T>>) -> Self {
        EndpointSet {
            exists,
            endpoints,
            next: AtomicUsize::new(0),
        }
    }

    /// Picks an endpoint round-robin.
    pub fn pick(&self) -> Option<&Arc<T>> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}

/// A watched target.
pub struct Destination<T> {
    rx: tokio::sync::watch::Receiver<Option<Arc<EndpointSet<T>>>>,
    users: Arc<()>,
}

impl<T> Clone for Destination<T> {
    fn clone(&self) -> Self {
        Destination {
            rx: self.rx.clone(),
            users: self.users.clone(),
        }
    }
}

impl<T> cache::Handle for Destination<T> {
    fn users(&self) -> &Arc<()> {
        &self.users
    }
}

impl<T> Destination<T> {
    /// The current endpoints, waiting up to `timeout` for the first answer.
    pub async fn endpoints(&self, timeout: Duration) -> Option<Arc<EndpointSet<T>>> {
        if let Some(set) = self.rx.borrow().as_ref() {
            return Some(set.clone());
        }
        let mut rx = self.rx.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|s| s.is_some())).await;
        match waited {
            Ok(Ok(set)) => set.clone(),
            _ => None,
        }
    }
}

/// A watched policy; `None` until the first snapshot arrives.
pub struct PolicyWatch<P> {
    rx: tokio::sync::watch::Receiver<Option<Arc<P>>>,
    users: Arc<()>,
}

impl<P> Clone for PolicyWatch<P> {
    fn clone(&self) -> Self {
        PolicyWatch {
            rx: self.rx.clone(),
            users: self.users.clone(),
        }
    }
}

impl<P> cache::Handle for PolicyWatch<P> {
    fn users(&self) -> &Arc<()> {
        &self.users
    }
}

impl<P> PolicyWatch<P> {
    /// The current policy, waiting up to `timeout` for the first snapshot.
    pub async fn current(&self, timeout: Duration) -> Option<Arc<P>> {
        if let Some(p) = self.rx.borrow().as_ref() {
            return Some(p.clone());
        }
        let mut rx = self.rx.clone();
        let waited = tokio::time::timeout(timeout, rx.wait_for(|p| p.is_some())).await;
        match waited {
            Ok(Ok(p)) => p.clone(),
            _ => None,
        }
    }
}

/// Resolves the policies of targets, one shared watch per target.
pub struct PolicyResolver<P> {
    client: DestinationClient<Channel>,
    context: String,
    compile: policy::Compile<P>,
    metrics: Arc<Metrics>,
    cache: cache::WatchCache<PolicyWatch<P>>,
}

impl<P: Send + Sync + 'static> PolicyResolver<P> {
    /// Creates a resolver sharing `resolver`'s controller channel.
    pub fn new<T>(resolver: &Resolver<T>, compile: policy::Compile<P>) -> Self {
        let _ = resolver
            .metrics
            .control_connected
            .get_or_create(&ControlLabels {
                component: "policy",
            });
        PolicyResolver {
            client: resolver.client.clone(),
            context: resolver.context.clone(),
            compile,
            metrics: resolver.metrics.clone(),
            cache: cache::WatchCache::new(cache::DEFAULT_IDLE, resolver.max_targets),
        }
    }

    /// Returns the policy watch for `target`, starting it on first use.
    pub fn resolve(&self, target: &str) -> PolicyWatch<P> {
        self.cache.get_or_start(target, || {
            let (tx, rx) = tokio::sync::watch::channel(None);
            tokio::spawn(policy::run(
                self.client.clone(),
                target.to_string(),
                self.context.clone(),
                self.compile.clone(),
                tx,
                self.metrics.clone(),
            ));
            PolicyWatch {
                rx,
                users: Arc::new(()),
            }
        })
    }
}

/// Resolves targets through the destination controller.
pub struct Resolver<T> {
    channel: Channel,
    client: DestinationClient<Channel>,
    context: String,
    new_endpoint: NewEndpoint<T>,
    metrics: Arc<Metrics>,
    max_targets: usize,
    cache: cache::WatchCache<Destination<T>>,
}

impl<T: Send + Sync + 'static> Resolver<T> {
    /// Creates a resolver over `channel` (`mesh_proto::workload::mtls_channel`)
    /// keeping at most `max_targets` watches (and as many policy watches).
    pub fn new(
        channel: Channel,
        context: String,
        new_endpoint: NewEndpoint<T>,
        metrics: Arc<Metrics>,
        max_targets: usize,
    ) -> anyhow::Result<Self> {
        // Registers the gauge so it reads 0 before the first stream.
        let _ = metrics.control_connected.get_or_create(&ControlLabels {
            component: "destination",
        });
        Ok(Resolver {
            client: DestinationClient::new(channel.clone()),
            channel,
            context,
            new_endpoint,
            metrics,
            max_targets,
            cache: cache::WatchCache::new(cache::DEFAULT_IDLE, max_targets),
        })
    }

    /// The controller channel, shared with the inbound policy watches.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// Calls `f` with each watched target and its current endpoints.
    pub fn for_each(&self, mut f: impl FnMut(&str, &EndpointSet<T>)) {
        self.cache.for_each(|target, d| {
            if let Some(set) = d.rx.borrow().as_ref() {
                f(target, set);
            }
        });
    }

    /// Returns the watch for `target`, starting it on first use.
    pub fn resolve(&self, target: &str) -> Destination<T> {
        self.cache.get_or_start(target, || {
            let (tx, rx) = tokio::sync::watch::channel(None);
            tokio::spawn(watch::run(
                self.client.clone(),
                target.to_string(),
                self.context.clone(),
                self.new_endpoint.clone(),
                tx,
                self.metrics.clone(),
            ));
            Destination {
                rx,
                users: Arc::new(()),
            }
        })
    }
}
