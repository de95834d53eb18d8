//! The index: every resource the sources have delivered, keyed by source file, kind,
//! namespace and name, plus the pure lookups the gRPC servers answer from. No I/O: sources
//! write through an [`IndexWriter`]; servers read snapshots through an [`IndexReader`].

mod authz;
mod endpoints;
mod policy;
mod rebuild;
mod target;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::watch;

use mesh_proto::destination::Fault;

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
    /// Services by key, derived from `files`.
    services: BTreeMap<Key, Service>,
    /// WorkloadEntries by key, derived from `files`.
    workloads: BTreeMap<Key, WorkloadEntry>,
    /// HTTPRoutes and GRPCRoutes by kind and key, derived from `files`.
    routes: BTreeMap<(RouteKind, String, String), IndexedRoute>,
    /// The TrafficPolicy in force for each Service, by the Service's key.
    traffic_policies: BTreeMap<Key, TrafficPolicy>,
    /// HTTPFaults by key, derived from `files`.
    faults: BTreeMap<Key, Fault>,
    /// EndpointSlices by their Service's key, derived from `files`.
    slices: BTreeMap<Key, Vec<EndpointSlice>>,
    /// AuthorizationPolicies by key, derived from `files`.
    authz: BTreeMap<Key, AuthorizationPolicy>,
}

// === impl Index ===

impl Index {
    /// An empty index.
    pub fn new(config: IndexConfig) -> Self {
        Self {
            config,
            files: BTreeMap::new(),
            services: BTreeMap::new(),
            workloads: BTreeMap::new(),
            routes: BTreeMap::new(),
            traffic_policies: BTreeMap::new(),
            faults: BTreeMap::new(),
            slices: BTreeMap::new(),
            authz: BTreeMap::new(),
        }
    }

    /// The naming parameters.
    pub fn config(&self) -> &IndexConfig {
        &self.config
    }

    /// Replaces every object that came from `file` with `resources`. Returns whether
    /// anything changed.
    pub fn apply_file(&mut self, file: impl Into<PathBuf>, resources: Vec<Resource>) -> bool {
        let file = file.into();
        if self.files.get(&file) == Some(&resources) {
            return false;
        }
        self.files.insert(file, resources);
        self.rebuild();
        true
    }

    /// Replaces the objects of several files and removes others, with one rebuild (a
    /// source's initial list, or a relist after its watch expired). Returns whether
    /// anything changed.
    pub fn apply_batch(
        &mut self,
        files: impl IntoIterator<Item = (PathBuf, Vec<Resource>)>,
        removed: impl IntoIterator<Item = PathBuf>,
    ) -> bool {
        let mut changed = false;
        for file in removed {
            changed |= self.files.remove(&file).is_some();
        }
        for (file, resources) in files {
            if self.files.get(&file) != Some(&resources) {
                self.files.insert(file, resources);
                changed = true;
            }
        }
        if changed {
            self.rebuild();
        }
        changed
    }

    /// Removes every object that came from `file`. Returns whether anything changed.
    pub fn remove_file(&mut self, file: &Path) -> bool {
        if self.files.remove(file).is_none() {
            return false;
        }
        self.rebuild();
        true
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
            endpoint_slices: self.slices.values().map(Vec::len).sum(),
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
            .take_while(move |((ns, _), _)| ns == namespace)
            .map(|(_, w)| w)
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
                .services
                .values()
                .filter(|s| s.spec.cluster_ip == Some(addr.ip()))
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

// === impl IndexWriter ===

/// A snapshot view of the index that is notified of every change (`changed().await`).
pub type IndexReader = watch::Receiver<Index>;

/// The single writer of the index, owned by the running source. When it is dropped,
/// every reader's `changed()` fails, which ends the gRPC streams. It records every change
/// in its [`Metrics`] (count, rebuild time, and the stamp streams measure push latency
/// from), keeping the index itself free of timing.
#[derive(Debug)]
pub struct IndexWriter {
    tx: watch::Sender<Index>,
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
        Self { tx, metrics }
    }

    /// The metrics this writer (and the source owning it) counts into.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// A new reader of the index.
    pub fn subscribe(&self) -> IndexReader {
        self.tx.subscribe()
    }

    /// How many readers are alive (the servers' own plus one per open stream).
    pub fn reader_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Applies `f`, which returns whether it changed the index; readers are notified once
    /// if it did, and the change is recorded in the metrics (while the index is still
    /// held, so a reader's snapshot and the change stamp it reads agree).
    pub fn update(&self, f: impl FnOnce(&mut Index) -> bool) -> bool {
        let start = Instant::now();
        self.tx.send_if_modified(|index| {
            let changed = f(index);
            if changed {
                self.metrics.index_changed(start.elapsed());
            }
            changed
        })
    }
}

#[cfg(test)]
mod tests;
