//! The index: every resource the sources have delivered, keyed by source file, kind,
//! namespace and name, plus the pure lookups the gRPC servers answer from. No I/O: sources
//! write through an [`IndexWriter`]; servers read snapshots through an [`IndexReader`].

mod apply;
mod authz;
mod defs;
mod endpoints;
mod policy;
mod target;
mod topics;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use mesh_proto::destination::Fault;

use self::apply::Lookups;
use self::defs::Defs;

use crate::metrics::Metrics;
use crate::resources::{
    AuthorizationPolicy, EndpointSlice, Resource, Route, RouteKind, Service, ServicePort,
    TrafficPolicy, WorkloadEntry,
};

pub use self::authz::{compile_server_policy, default_server_policy, AppliedAuthz};
pub use self::endpoints::{
    annotated_opaque, protocol_hint, service_port_hint, EndpointSet, Resolution,
};
pub use self::policy::{compile_routes, route_precedence, Precedence};
pub use self::target::{Target, TargetError};
pub use self::topics::{Changes, Interest, Topics};
pub use crate::resources::traffic::{
    default_balancer, default_retry_budget, DEFAULT_EWMA_DECAY_MS,
};

/// Cluster-wide naming parameters of the index.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexConfig {
    /// DNS suffix of Service names, e.g. `cluster.local`.
    pub cluster_domain: String,
    /// SPIFFE trust domain of workload identities, e.g. `cluster.local`.
    pub trust_domain: String,
}

impl Default for IndexConfig {
    fn default() -> Self {
        Self {
            cluster_domain: "cluster.local".to_string(),
            trust_domain: "cluster.local".to_string(),
        }
    }
}

/// `(namespace, name)` of an object.
type Key = (String, String);

/// Where an object was read: its file and its position among the file's objects. Orders
/// objects "oldest first" where a stable tiebreak is needed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Origin {
    /// The source file.
    pub file: PathBuf,
    /// 0-based position of the object in the file.
    pub position: usize,
}

/// A route with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct IndexedRoute {
    /// File and position, the precedence tiebreak between routes.
    pub origin: Origin,
    /// The route.
    pub route: Route,
}

/// How many objects of each kind the index holds (what the servers answer from: later
/// duplicates replace earlier ones, and only the TrafficPolicy in force for a Service
/// counts).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ObjectCounts {
    /// Services.
    pub services: usize,
    /// WorkloadEntries (from manifests, or from Pods).
    pub workloads: usize,
    /// HTTPRoutes.
    pub http_routes: usize,
    /// GRPCRoutes.
    pub grpc_routes: usize,
    /// TrafficPolicies in force (at most one per Service).
    pub traffic_policies: usize,
    /// HTTPFaults.
    pub faults: usize,
    /// EndpointSlices.
    pub endpoint_slices: usize,
    /// AuthorizationPolicies.
    pub authorization_policies: usize,
}

impl ObjectCounts {
    /// The counts by Kubernetes kind, in a fixed order.
    pub fn by_kind(&self) -> [(&'static str, usize); 8] {
        [
            ("Service", self.services),
            ("WorkloadEntry", self.workloads),
            (RouteKind::Http.kind(), self.http_routes),
            (RouteKind::Grpc.kind(), self.grpc_routes),
            ("TrafficPolicy", self.traffic_policies),
            ("HTTPFault", self.faults),
            ("EndpointSlice", self.endpoint_slices),
            ("AuthorizationPolicy", self.authorization_policies),
        ]
    }
}

/// All indexed resources.
#[derive(Clone, Debug)]
pub struct Index {
    config: IndexConfig,
    /// The objects of each source file (the unit sources replace).
    files: BTreeMap<PathBuf, Vec<Resource>>,
    /// Services by key.
    services: Defs<Key, Service>,
    /// WorkloadEntries (from manifests, or from Pods) by key.
    workloads: Defs<Key, WorkloadEntry>,
    /// HTTPRoutes and GRPCRoutes by kind and key.
    routes: Defs<(RouteKind, String, String), IndexedRoute>,
    /// TrafficPolicies by their own key, with where each was read (the oldest targeting
    /// a Service is in force, so a move between files matters).
    policies: Defs<Key, (Origin, TrafficPolicy)>,
    /// The TrafficPolicy in force for each Service, by the Service's key.
    traffic_policies: BTreeMap<Key, TrafficPolicy>,
    /// HTTPFaults by key.
    faults: Defs<Key, Fault>,
    /// EndpointSlices by `(namespace, slice name)`.
    slices: Defs<Key, EndpointSlice>,
    /// AuthorizationPolicies by key.
    authz: Defs<Key, AuthorizationPolicy>,
    /// Lookups by address, pod, label and Service.
    lookups: Lookups,
    /// What changed since the writer last took the changes.
    changes: Changes,
}

// === impl Index ===

impl Index {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            files: BTreeMap::new(),
            services: Defs::default(),
            workloads: Defs::default(),
            routes: Defs::default(),
            policies: Defs::default(),
            traffic_policies: BTreeMap::new(),
            faults: Defs::default(),
            slices: Defs::default(),
            authz: Defs::default(),
            lookups: Lookups::default(),
            changes: Changes::default(),
        }
    }

    /// The naming parameters.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Replaces every object that came from `file` with `resources`. Returns whether
    /// anything changed.
    pub fn apply_file(&mut self, file: impl Into<PathBuf>, resources: Vec<Resource>) -> bool {
        self.replace_file(file.into(), resources)
    }

    /// Replaces the objects of several files and removes others (a source's initial
    /// list, or a relist after its watch expired). Returns whether anything changed.
    pub fn apply_batch(
        &mut self,
        files: impl IntoIterator<Item = (PathBuf, Vec<Resource>)>,
        removed: impl IntoIterator<Item = PathBuf>,
    ) -> bool {
        let mut changed = false;
        for file in removed {
            changed |= self.replace_file(file, Vec::new());
        }
        for (file, resources) in files {
            changed |= self.replace_file(file, resources);
        }
        changed
    }

    /// Removes every object that came from `file`. Returns whether anything changed.
    pub fn remove_file(&mut self, file: &Path) -> bool {
        self.replace_file(file.to_path_buf(), Vec::new())
    }

    /// Takes what changed since the last call: the streams to wake. A Service that
    /// changed also changes what its cluster IP resolves to.
    pub fn take_changes(&mut self) -> Changes {
        let mut changes = std::mem::take(&mut self.changes);
        let ips: Vec<std::net::IpAddr> = changes
            .services
            .iter()
            .filter_map(|k| self.services.get(k)?.spec.cluster_ip)
            .collect();
        changes.addrs.extend(ips);
        changes
    }

    /// How many objects of each kind are indexed.
    pub fn object_counts(&self) -> ObjectCounts {
        let routes = |kind| self.routes.keys().filter(|(k, _, _)| *k == kind).count();
        ObjectCounts {
            services: self.services.len(),
            workloads: self.workloads.len(),
            http_routes: routes(RouteKind::Http),
            grpc_routes: routes(RouteKind::Grpc),
            traffic_policies: self.traffic_policies.len(),
            faults: self.faults.len(),
            endpoint_slices: self.slices.len(),
            authorization_policies: self.authz.len(),
        }
    }

    /// The source files currently contributing objects.
    pub fn files(&self) -> impl Iterator<Item = &Path> {
        self.files.keys().map(PathBuf::as_path)
    }

    /// The Service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// Every Service, ordered by namespace and name.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        self.services.values()
    }

    /// Every WorkloadEntry, ordered by namespace and name.
    pub fn workloads(&self) -> impl Iterator<Item = &WorkloadEntry> {
        self.workloads.values()
    }

    /// Every route, ordered by kind, namespace and name.
    pub fn routes(&self) -> impl Iterator<Item = &IndexedRoute> {
        self.routes.values()
    }

    /// The TrafficPolicy in force for Service `namespace/name`.
    pub fn traffic_policy(&self, namespace: &str, name: &str) -> Option<&TrafficPolicy> {
        self.traffic_policies
            .get(&(namespace.to_string(), name.to_string()))
    }

    /// The fault of HTTPFault `namespace/name`.
    pub fn fault(&self, namespace: &str, name: &str) -> Option<&Fault> {
        self.faults.get(&(namespace.to_string(), name.to_string()))
    }

    /// The WorkloadEntries of `namespace`, ordered by name.
    pub fn workloads_in<'a>(
        &'a self,
        namespace: &'a str,
    ) -> impl Iterator<Item = &'a WorkloadEntry> + 'a {
        self.workloads
            .range((namespace.to_string(), String::new())..)
            .take_while(move |((ns, _), _, _)| ns == namespace)
            .map(|(_, _, w)| w)
    }

    /// Parses a target string with this index's cluster domain.
    pub fn parse_target(&self, target: &str) -> Result<Target, TargetError> {
        Target::parse(target, &self.config.cluster_domain)
    }

    /// The Service and Service port a target names: by name, or by cluster IP.
    pub fn service_port(&self, target: &Target) -> Option<(&Service, &ServicePort)> {
        match target {
            Target::Service {
                name,
                namespace,
                port,
            } => with_port(self.service(namespace, name)?, *port),
            Target::Addr(addr) => self
                .lookups
                .service_ips
                .get(&addr.ip())?
                .iter()
                .filter_map(|k| self.services.get(k))
                .find_map(|s| with_port(s, addr.port())),
            Target::Other { .. } => None,
        }
    }
}

/// The port `port` of `svc`, if it declares it.
fn with_port(svc: &Service, port: u16) -> Option<(&Service, &ServicePort)> {
    svc.spec
        .ports
        .iter()
        .find(|p| p.port == port)
        .map(|p| (svc, p))
}

// === impl IndexReader ===

/// A snapshot view of the index that is notified of every change (`changed().await`, as
/// a `watch::Receiver`), and the per-target topics streams wait on instead
/// ([`IndexReader::topic`]), so that a change wakes only the streams it concerns.
#[derive(Clone, Debug)]
pub struct IndexReader {
    rx: watch::Receiver<Index>,
    topics: Arc<Topics>,
}

impl IndexReader {
    /// A receiver told of every change concerning `interest`; it fails when the index
    /// writer is gone. Take it before reading the index, so no change falls in between.
    pub fn topic(&self, interest: Interest) -> watch::Receiver<()> {
        self.topics.watch(interest)
    }
}

impl std::ops::Deref for IndexReader {
    type Target = watch::Receiver<Index>;

    fn deref(&self) -> &Self::Target {
        &self.rx
    }
}

impl std::ops::DerefMut for IndexReader {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.rx
    }
}

// === impl IndexWriter ===

/// The single writer of the index, owned by the running source. When it is dropped,
/// every reader's `changed()` and every topic fail, which ends the gRPC streams. It
/// records every change in its [`Metrics`] (count, update time, and the stamp streams
/// measure push latency from), keeping the index itself free of timing.
#[derive(Debug)]
pub struct IndexWriter {
    tx: watch::Sender<Index>,
    topics: Arc<Topics>,
    metrics: Arc<Metrics>,
}

impl IndexWriter {
    /// A writer over an empty index, counting into metrics of its own (tests, tools).
    pub fn new(config: IndexConfig) -> Self {
        Self::with_metrics(config, Arc::new(Metrics::new()))
    }

    /// A writer over an empty index, counting into `metrics` (the controller's one handle,
    /// which the sources reach through [`IndexWriter::metrics`]).
    pub fn with_metrics(config: IndexConfig, metrics: Arc<Metrics>) -> Self {
        let (tx, _) = watch::channel(Index::new(config));
        Self {
            tx,
            topics: Arc::new(Topics::default()),
            metrics,
        }
    }

    /// The metrics this writer (and the source owning it) counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A new reader of the index.
    pub fn subscribe(&self) -> IndexReader {
        IndexReader {
            rx: self.tx.subscribe(),
            topics: Arc::clone(&self.topics),
        }
    }

    /// How many readers are alive (the servers' own plus one per open stream).
    pub fn reader_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Applies `f`, which returns whether it changed the index; if it did, readers are
    /// notified once, the topics the change concerns are woken, and the change is
    /// recorded in the metrics (while the index is still held, so a reader's snapshot and
    /// the change stamp it reads agree).
    pub fn update(&self, f: impl FnOnce(&mut Index) -> bool) -> bool {
        let start = Instant::now();
        let mut changes = None;
        let changed = self.tx.send_if_modified(|index| {
            let changed = f(index);
            changes = Some(index.take_changes());
            if changed {
                self.metrics.index_changed(start.elapsed());
            }
            changed
        });
        if let Some(changes) = changes {
            self.topics.notify(&changes);
        }
        changed
    }
}

impl Drop for IndexWriter {
    fn drop(&mut self) {
        self.topics.close();
    }
}

#[cfg(test)]
mod tests;
