//! The configuration resources the controller understands (DESIGN §5), as serde types in
//! their Kubernetes YAML shape, and the parser that turns a multi-document YAML file into
//! them. Traffic and policy kinds (Gateway API routes, `TrafficPolicy`, `HTTPFault`,
//! `AuthorizationPolicy`) are validated while parsing, so a file with an invalid object is rejected whole and its last good
//! version stays in force. Errors name the document, the object and the field path.

pub mod authz;
mod parse;
pub mod retry;
pub mod route;
pub mod traffic;
pub mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

pub use self::authz::{AuthorizationPolicy, AuthzTarget, ServicePortRef};
pub use self::parse::{parse_documents, parse_object, IgnoredObject, ParseError, ParsedFile};
pub use self::route::{BackendRef, ParentRef, Route, RouteKind, RouteRule};
pub use self::traffic::{HttpFault, TrafficPolicy};

/// `apiVersion` of the core Kubernetes kinds (`Service`).
pub const CORE_V1: &str = "v1";
/// `apiVersion` of the mesh's own kinds (`WorkloadEntry`).
pub const POLICY_V1ALPHA1: &str = "policy.mesh.dev/v1alpha1";

/// One object the controller indexes.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A Kubernetes `Service`.
    Service(Service),
    /// A `policy.mesh.dev/v1alpha1` `WorkloadEntry`.
    WorkloadEntry(WorkloadEntry),
    /// A Gateway API `HTTPRoute` or `GRPCRoute`.
    Route(Route),
    /// A `policy.mesh.dev/v1alpha1` `TrafficPolicy`.
    TrafficPolicy(TrafficPolicy),
    /// A `policy.mesh.dev/v1alpha1` `HTTPFault`.
    HttpFault(HttpFault),
    /// A `policy.mesh.dev/v1alpha1` `AuthorizationPolicy`.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A `discovery.k8s.io/v1` `EndpointSlice` (Kubernetes source only).
    EndpointSlice(EndpointSlice),
}

impl Resource {
    /// The object's metadata.
    pub fn metadata(&self) -> &ObjectMeta {
        match self {
            Resource::Service(r) => &r.metadata,
            Resource::WorkloadEntry(r) => &r.metadata,
            Resource::Route(r) => &r.metadata,
            Resource::TrafficPolicy(r) => &r.metadata,
            Resource::HttpFault(r) => &r.metadata,
            Resource::AuthorizationPolicy(r) => &r.metadata,
            Resource::EndpointSlice(r) => &r.metadata,
        }
    }

    /// The object's kind, e.g. `HTTPRoute`.
    pub fn kind(&self) -> &'static str {
        match self {
            Resource::Service(_) => "Service",
            Resource::WorkloadEntry(_) => "WorkloadEntry",
            Resource::Route(r) => r.kind.kind(),
            Resource::TrafficPolicy(_) => "TrafficPolicy",
            Resource::HttpFault(_) => "HTTPFault",
            Resource::AuthorizationPolicy(_) => "AuthorizationPolicy",
            Resource::EndpointSlice(_) => "EndpointSlice",
        }
    }
}

/// Kubernetes object metadata (the fields the controller reads; others are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ObjectMeta {
    /// Object name, required.
    pub name: String,
    /// Namespace; `default` when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels, used by selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (routes read `retry.mesh.dev/*` and `timeout.mesh.dev/*`).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

// === Service ===

/// A Kubernetes `Service` (`apiVersion: v1`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Service {
    /// Name, namespace and labels.
    pub metadata: ObjectMeta,
    /// The selector and ports.
    pub spec: ServiceSpec,
}

/// The `spec` of a [`Service`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Label selector over workloads in the Service's namespace; empty selects nothing.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The virtual IP; `None`/absent for headless Services.
    #[serde(default, rename = "clusterIP", deserialize_with = "de_cluster_ip")]
    pub cluster_ip: Option<IpAddr>,
    /// The Service's ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

/// One port of a [`Service`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Optional port name.
    #[serde(default)]
    pub name: Option<String>,
    /// The Service port, 1–65535.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// The workload port traffic goes to; absent means the same as `port`.
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    /// Transport protocol, `TCP` by default.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Application protocol (`http`, `http2`, `grpc`, `tcp`, ...), drives the protocol hint.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

fn default_protocol() -> String {
    "TCP".to_string()
}

/// A Service `targetPort`: a port number or the name of a workload port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number, 1–65535.
    Number(u16),
    /// A port name, resolved through each workload's named ports.
    Name(String),
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or a port name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TargetPort, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(TargetPort::Number(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TargetPort, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetPort, E> {
                if v.is_empty() {
                    return Err(E::invalid_value(de::Unexpected::Str(v), &self));
                }
                Ok(TargetPort::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// === WorkloadEntry ===

/// A workload that is not a pod (`policy.mesh.dev/v1alpha1`, `kind: WorkloadEntry`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WorkloadEntry {
    /// Name, namespace and labels.
    pub metadata: ObjectMeta,
    /// Address, ports and identity.
    pub spec: WorkloadEntrySpec,
}

/// The `spec` of a [`WorkloadEntry`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// The workload's IP address (required).
    pub address: IpAddr,
    /// Named ports, used to resolve named `targetPort`s and `ip:port` targets.
    #[serde(default, deserialize_with = "de_port_map")]
    pub ports: BTreeMap<String, u16>,
    /// Labels merged over `metadata.labels` for selection.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Service account of the workload's identity; `default` when absent.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Whether the workload runs a proxy (gets mTLS); `true` by default.
    #[serde(default = "default_true")]
    pub meshed: bool,
    /// The proxy's inbound listener; `<address>:4143` when absent.
    #[serde(default)]
    pub proxy_inbound_address: Option<SocketAddr>,
    /// The workload the entry is a replica of (metrics' `workload` label, one row of
    /// `mesh stat deploy`); the entry's own name when absent.
    #[serde(default, deserialize_with = "de_workload")]
    pub workload: Option<String>,
    /// Set when the entry stands for a Kubernetes pod (Kubernetes source): such entries
    /// are reached through EndpointSlices or by pod IP, never by Service selectors.
    #[serde(skip)]
    pub pod: Option<PodInfo>,
}

/// What a pod-derived [`WorkloadEntry`] adds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PodInfo {
    /// The pod's name (entries of a dual-stack pod share it).
    pub name: String,
    /// The owning workload's kind for metrics, lower case (`deployment`, `statefulset`,
    /// `daemonset`, `job`, `replicaset`), when the pod has an owner.
    pub owner_kind: Option<String>,
    /// The owning workload's name.
    pub owner_name: Option<String>,
}

// === EndpointSlice ===

/// The parts of a Kubernetes `EndpointSlice` the index needs.
#[derive(Clone, Debug, PartialEq)]
pub struct EndpointSlice {
    /// The slice's name and namespace.
    pub metadata: ObjectMeta,
    /// The Service the slice belongs to (label `kubernetes.io/service-name`).
    pub service: String,
    /// The slice's ports: (name, port); the name matches the Service port's name.
    pub ports: Vec<(String, u16)>,
    /// The endpoints.
    pub endpoints: Vec<SliceEndpoint>,
}

/// One endpoint of an [`EndpointSlice`].
#[derive(Clone, Debug, PartialEq)]
pub struct SliceEndpoint {
    /// Its addresses (one per family).
    pub addresses: Vec<IpAddr>,
    /// `conditions.ready` (absent counts as ready).
    pub ready: bool,
    /// `conditions.terminating`.
    pub terminating: bool,
    /// The pod behind the endpoint (`targetRef` of kind Pod).
    pub pod: Option<String>,
}

fn default_true() -> bool {
    true
}

/// `spec.workload`: a DNS label (it becomes a metric label value and a `stat` row).
fn de_workload<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let value = Option::<String>::deserialize(d)?;
    if let Some(v) = &value {
        let ok = !v.is_empty()
            && v.len() <= 63
            && v.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !v.starts_with('-')
            && !v.ends_with('-');
        if !ok {
            return Err(serde::de::Error::custom(format!(
                "{v:?} is not a DNS label (lower-case letters, digits and '-', at most 63)"
            )));
        }
    }
    Ok(value)
}

impl WorkloadEntry {
    /// The labels used for selection: `metadata.labels` overlaid with `spec.labels`.
    pub fn selection_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.metadata.labels.clone();
        if let Some(extra) = &self.spec.labels {
            labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        labels
    }

    /// The workload the entry is a replica of: `spec.workload`, else its own name.
    pub fn workload_name(&self) -> &str {
        self.spec.workload.as_deref().unwrap_or(&self.metadata.name)
    }

    /// The service account, `default` when unset.
    pub fn service_account(&self) -> &str {
        self.spec.service_account.as_deref().unwrap_or("default")
    }

    /// The proxy's inbound address, `<address>:4143` when unset.
    pub fn proxy_inbound_address(&self) -> SocketAddr {
        self.spec
            .proxy_inbound_address
            .unwrap_or_else(|| SocketAddr::new(self.spec.address, 4143))
    }
}

// === field helpers ===

fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let p = u16::deserialize(d)?;
    if p == 0 {
        return Err(de::Error::invalid_value(
            de::Unexpected::Unsigned(0),
            &"a port number (1-65535)",
        ));
    }
    Ok(p)
}

fn de_port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u16>, D::Error> {
    #[derive(Deserialize)]
    struct Port(#[serde(deserialize_with = "de_port")] u16);
    let map = BTreeMap::<String, Port>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, Port(p))| (k, p)).collect())
}

fn de_cluster_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s.as_deref() {
        None | Some("") | Some("None") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Str(s), &"an IP address or \"None\"")
        }),
    }
}

#[cfg(test)]
mod tests;
