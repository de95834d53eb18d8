//! Endpoint resolution: which workloads a target reaches, and the metadata (identity,
//! protocol hint, metric labels) each endpoint carries to the proxies. Pure functions over
//! the [`Index`].

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, SocketAddr};

use mesh_proto::destination::{ProtocolHint, TlsTarget, WeightedAddr};

use super::{Index, Target};
use crate::resources::{EndpointSlice, Service, ServicePort, TargetPort, WorkloadEntry};

/// The default endpoint weight (the proto treats 0 the same way).
pub const DEFAULT_WEIGHT: u32 = 10_000;

/// What a target currently resolves to.
#[derive(Clone, Debug, PartialEq)]
pub enum Resolution {
    /// No Service port or workload address matches the target.
    Unknown,
    /// The target exists but has no endpoints.
    Empty,
    /// The target's endpoints (never empty).
    Endpoints(EndpointSet),
}

/// A non-empty set of endpoints with the labels shared by all of them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EndpointSet {
    /// Labels of the whole set (`service`, `namespace`).
    pub metric_labels: HashMap<String, String>,
    /// Endpoints keyed by their `addr`.
    pub endpoints: BTreeMap<String, WeightedAddr>,
}

/// The protocol hint for a Service port's `appProtocol`.
pub fn protocol_hint(app_protocol: Option<&str>) -> ProtocolHint {
    match app_protocol.map(str::to_ascii_lowercase).as_deref() {
        Some("http" | "http2" | "grpc" | "h2c" | "kubernetes.io/h2c") => ProtocolHint::Http,
        Some("tcp" | "opaque") => ProtocolHint::Opaque,
        _ => ProtocolHint::Unknown,
    }
}

/// True when the object's `config.mesh.dev/opaque-ports` annotation lists `port`
/// (single ports and `lo-hi` ranges; malformed items are ignored here, the injector
/// reports them).
pub fn annotated_opaque(annotations: &BTreeMap<String, String>, port: u16) -> bool {
    let Some(list) = annotations.get(crate::inject::OPAQUE_PORTS) else {
        return false;
    };
    list.split(',').map(str::trim).any(|item| {
        let (lo, hi) = item.split_once('-').unwrap_or((item, item));
        match (lo.trim().parse::<u16>(), hi.trim().parse::<u16>()) {
            (Ok(lo), Ok(hi)) => (lo..=hi).contains(&port),
            _ => false,
        }
    })
}

/// The protocol hint of a Service port: opaque when its `appProtocol` says so or the
/// Service's opaque-ports annotation lists it.
pub fn service_port_hint(svc: &Service, port: &ServicePort) -> ProtocolHint {
    if annotated_opaque(&svc.metadata.annotations, port.port) {
        return ProtocolHint::Opaque;
    }
    protocol_hint(port.app_protocol.as_deref())
}

/// The protocol hint of a workload port: opaque when the workload's opaque-ports
/// annotation lists it, else what the Service said.
fn workload_port_hint(w: &WorkloadEntry, port: u16, service: ProtocolHint) -> ProtocolHint {
    if annotated_opaque(&w.metadata.annotations, port) {
        ProtocolHint::Opaque
    } else {
        service
    }
}

// === impl Index ===

impl Index {
    /// The workload at `addr`: a WorkloadEntry with that address and port, or a pod with
    /// that IP (any port: pods need not declare the ports they listen on).
    pub fn workload_at(&self, addr: SocketAddr) -> Option<&WorkloadEntry> {
        self.lookups
            .workload_ips
            .get(&addr.ip())?
            .iter()
            .filter_map(|k| self.workloads.get(k))
            .find(|w| w.spec.pod.is_some() || w.spec.ports.values().any(|p| *p == addr.port()))
    }

    /// The pod-derived entry of pod `namespace/pod` with an address of `ip`'s family.
    fn pod_entry<'a>(
        &'a self,
        namespace: &'a str,
        pod: &str,
        ip: IpAddr,
    ) -> Option<&'a WorkloadEntry> {
        self.lookups
            .pods
            .get(&(namespace.to_string(), pod.to_string()))?
            .iter()
            .filter_map(|k| self.workloads.get(k))
            .find(|w| w.spec.address.is_ipv4() == ip.is_ipv4())
    }

    /// Resolves `target` to its endpoints: a Service port (by name or cluster IP) gives the
    /// workloads it selects; otherwise an `ip:port` matching a WorkloadEntry's address and
    /// one of its ports gives that workload alone.
    pub fn resolve(&self, target: &Target) -> Resolution {
        if let Some((svc, port)) = self.service_port(target) {
            return self.resolve_service(svc, port);
        }
        if let Target::Addr(addr) = target {
            if let Some(w) = self.workload_at(*addr) {
                let labels = HashMap::from([("namespace".into(), w.metadata.namespace.clone())]);
                let hint = workload_port_hint(w, addr.port(), ProtocolHint::Unknown);
                let ep = self.endpoint(w, *addr, hint);
                return Resolution::Endpoints(EndpointSet {
                    metric_labels: labels,
                    endpoints: BTreeMap::from([(ep.addr.clone(), ep)]),
                });
            }
        }
        Resolution::Unknown
    }

    fn resolve_service(&self, svc: &Service, port: &ServicePort) -> Resolution {
        let ns = &svc.metadata.namespace;
        let selector = &svc.spec.selector;
        let hint = service_port_hint(svc, port);
        let mut endpoints = BTreeMap::new();
        let slices = self
            .lookups
            .service_slices
            .get(&(ns.clone(), svc.metadata.name.clone()));
        if let Some(slices) = slices {
            // Kubernetes: the EndpointSlice controller already chose the endpoints.
            for name in slices {
                if let Some(slice) = self.slices.get(&(ns.clone(), name.clone())) {
                    self.slice_endpoints(slice, port, hint, &mut endpoints);
                }
            }
        } else if !selector.is_empty() {
            for w in self.selected_entries(ns, selector) {
                let labels = w.selection_labels();
                if !selector.iter().all(|(k, v)| labels.get(k) == Some(v)) {
                    continue;
                }
                let Some(target_port) = resolve_target_port(port, w) else {
                    continue;
                };
                let hint = workload_port_hint(w, target_port, hint);
                let ep = self.endpoint(w, SocketAddr::new(w.spec.address, target_port), hint);
                endpoints.insert(ep.addr.clone(), ep);
            }
        }
        if endpoints.is_empty() {
            return Resolution::Empty;
        }
        let metric_labels = HashMap::from([
            ("service".to_string(), svc.metadata.name.clone()),
            ("namespace".to_string(), ns.clone()),
        ]);
        Resolution::Endpoints(EndpointSet {
            metric_labels,
            endpoints,
        })
    }

    /// The WorkloadEntries (not pods) of `ns` that have the rarest label of `selector`
    /// (a superset of those it selects; the caller checks the rest).
    fn selected_entries<'a>(
        &'a self,
        ns: &'a str,
        selector: &BTreeMap<String, String>,
    ) -> impl Iterator<Item = &'a WorkloadEntry> + 'a {
        let rarest = selector
            .iter()
            .map(|(k, v)| {
                self.lookups
                    .labels
                    .get(&(ns.to_string(), k.clone(), v.clone()))
            })
            .min_by_key(|names| names.map_or(0, |n| n.len()))
            .flatten();
        rarest
            .into_iter()
            .flatten()
            .filter_map(move |name| self.workloads.get(&(ns.to_string(), name.clone())))
            .filter(|w| w.spec.pod.is_none())
    }

    /// Adds the ready endpoints of `slice` for Service port `port` to `out`. The slice
    /// port is the one named like the Service port; its number is already resolved (named
    /// target ports included). Not-ready and terminating endpoints are left out.
    fn slice_endpoints(
        &self,
        slice: &EndpointSlice,
        port: &ServicePort,
        hint: ProtocolHint,
        out: &mut BTreeMap<String, WeightedAddr>,
    ) {
        let name = port.name.as_deref().unwrap_or_default();
        let Some(&(_, number)) = slice.ports.iter().find(|(n, _)| n == name) else {
            return;
        };
        let ns = &slice.metadata.namespace;
        for ep in slice.endpoints.iter().filter(|e| e.ready && !e.terminating) {
            for ip in &ep.addresses {
                let addr = SocketAddr::new(*ip, number);
                let pod = ep.pod.as_deref().and_then(|p| self.pod_entry(ns, p, *ip));
                let weighted = match pod {
                    Some(w) => self.endpoint(w, addr, workload_port_hint(w, number, hint)),
                    None => unmeshed(ns, addr, hint),
                };
                out.insert(weighted.addr.clone(), weighted);
            }
        }
    }

    /// The endpoint of workload `w` at `addr`.
    fn endpoint(&self, w: &WorkloadEntry, addr: SocketAddr, hint: ProtocolHint) -> WeightedAddr {
        let ns = &w.metadata.namespace;
        let sa = w.service_account();
        let (pod, workload) = match &w.spec.pod {
            Some(p) => (
                p.name.clone(),
                p.owner_name.clone().unwrap_or(p.name.clone()),
            ),
            None => (w.metadata.name.clone(), w.workload_name().to_string()),
        };
        let mut metric_labels = HashMap::from([
            ("namespace".to_string(), ns.clone()),
            ("pod".to_string(), pod),
            ("workload".to_string(), workload),
            ("serviceaccount".to_string(), sa.to_string()),
        ]);
        if let Some(info) = &w.spec.pod {
            if let (Some(kind), Some(name)) = (&info.owner_kind, &info.owner_name) {
                metric_labels.insert(kind.clone(), name.clone());
            }
        }
        let tls = w.spec.meshed.then(|| TlsTarget {
            identity: format!("spiffe://{}/ns/{ns}/sa/{sa}", self.config.trust_domain),
            proxy_addr: w.proxy_inbound_address().to_string(),
        });
        WeightedAddr {
            addr: addr.to_string(),
            weight: DEFAULT_WEIGHT,
            metric_labels,
            tls,
            protocol_hint: hint.into(),
        }
    }
}

/// An endpoint with no pod behind it that the index knows: plaintext, no identity.
fn unmeshed(ns: &str, addr: SocketAddr, hint: ProtocolHint) -> WeightedAddr {
    WeightedAddr {
        addr: addr.to_string(),
        weight: DEFAULT_WEIGHT,
        metric_labels: HashMap::from([("namespace".to_string(), ns.to_string())]),
        tls: None,
        protocol_hint: hint.into(),
    }
}

/// The workload port a Service port sends to on `w`, or `None` when `w` lacks the named
/// port.
pub(super) fn resolve_target_port(port: &ServicePort, w: &WorkloadEntry) -> Option<u16> {
    match &port.target_port {
        None => Some(port.port),
        Some(TargetPort::Number(n)) => Some(*n),
        Some(TargetPort::Name(name)) => w.spec.ports.get(name).copied(),
    }
}
