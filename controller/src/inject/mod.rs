//! Proxy injection (DESIGN §6): the one pure function that turns a pod (or a pod template)
//! into a meshed one, its inverse, and the JSON patch the admission webhook answers with.
//! The webhook and `mesh inject` share it; [`workloads`] finds the pod templates inside
//! Deployments, Jobs, Lists and the like.

mod annotations;
mod patch;
mod probes;
mod sidecar;
pub mod workloads;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

pub use self::annotations::{
    CONFIG_PREFIX, DEFAULT_INBOUND_POLICIES, DEFAULT_INBOUND_POLICY, INJECTED_ANNOTATION,
    INJECT_ANNOTATION, OPAQUE_PORTS, PROXY_CPU_LIMIT, PROXY_CPU_REQUEST, PROXY_LOG_LEVEL,
    PROXY_MEMORY_LIMIT, PROXY_MEMORY_REQUEST, SKIP_INBOUND_PORTS, SKIP_OUTBOUND_PORTS,
    WORKLOAD_ANNOTATION,
};
pub use self::patch::patch_for;
pub use self::sidecar::{identity_token_volume, TOKEN_AUDIENCE};

/// Name of the proxy container (a native sidecar init container, or the first container).
pub const PROXY_CONTAINER: &str = "mesh-proxy";
/// Name of the init container that installs the iptables capture rules.
pub const INIT_CONTAINER: &str = "mesh-init";
/// Name of the projected ServiceAccount-token volume.
pub const TOKEN_VOLUME: &str = "mesh-identity-token";
/// Name of the trust-roots volume (and of the ConfigMap it mounts).
pub const TRUST_ROOTS_VOLUME: &str = "mesh-trust-roots";
/// The proxy's inbound port (DESIGN §2).
pub const INBOUND_PORT: u16 = 4143;
/// The proxy's outbound port (DESIGN §2).
pub const OUTBOUND_PORT: u16 = 4140;
/// The proxy's admin port: `/live`, `/ready`, `/metrics` (DESIGN §2).
pub const ADMIN_PORT: u16 = 4191;
/// The user id the proxy runs as; its own traffic is never captured (DESIGN §2).
pub const PROXY_UID: i64 = 2102;

/// What the injector puts into pods. Every field has a usable default.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InjectConfig {
    /// Image of the `mesh-proxy` container.
    pub proxy_image: String,
    /// Image of the `mesh-init` container (the same binary: `mesh-proxy init`).
    pub init_image: String,
    /// Trust domain of the workload SPIFFE IDs (`MESH_PROXY_TRUST_DOMAIN`).
    pub trust_domain: String,
    /// `host:port` of the destination controller (`MESH_PROXY_DESTINATION_ADDR`).
    pub destination_addr: String,
    /// `host:port` of the identity service (`MESH_PROXY_IDENTITY_ADDR`).
    pub identity_addr: String,
    /// Put the proxy in `initContainers` with `restartPolicy: Always` (Kubernetes ≥ 1.29
    /// native sidecars) rather than first among the regular containers.
    pub native_sidecar: bool,
    /// The proxy's log filter (`MESH_PROXY_LOG`) unless the pod overrides it.
    pub log_level: String,
}

impl Default for InjectConfig {
    fn default() -> Self {
        let image = format!("ghcr.io/mesh-dev/mesh-proxy:v{}", env!("CARGO_PKG_VERSION"));
        Self {
            proxy_image: image.clone(),
            init_image: image,
            trust_domain: "cluster.local".to_string(),
            destination_addr: "mesh-controller.mesh-system.svc.cluster.local:8086".to_string(),
            identity_addr: "mesh-identity.mesh-system.svc.cluster.local:8080".to_string(),
            native_sidecar: true,
            log_level: "info".to_string(),
        }
    }
}

/// The result of [`inject_pod`].
// Made once per pod and taken apart at once: boxing would only cost an allocation.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The pod, meshed.
    Injected {
        /// The metadata with the `mesh.dev/injected` annotation added.
        meta: ObjectMeta,
        /// The spec with the proxy, the init container and the volumes added.
        spec: PodSpec,
    },
    /// The pod is to be left as it is, for this reason.
    Skipped(SkipReason),
}

/// Why a pod was not injected.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SkipReason {
    /// The pod says `mesh.dev/inject: disabled` (this beats the namespace).
    Disabled,
    /// Neither the pod nor its namespace says `mesh.dev/inject: enabled`.
    NotEnabled,
    /// The pod already has a `mesh-proxy` container.
    AlreadyInjected,
    /// The pod uses the host's network namespace, where capture would hijack the node.
    HostNetwork,
    /// A `config.mesh.dev/*` annotation has a value the injector cannot use.
    InvalidAnnotation {
        /// The annotation's name.
        name: String,
        /// Its value.
        value: String,
    },
}

impl fmt::Display for SkipReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Disabled => write!(f, "{INJECT_ANNOTATION} is disabled"),
            Self::NotEnabled => write!(
                f,
                "{INJECT_ANNOTATION} is not enabled on the pod or its namespace"
            ),
            Self::AlreadyInjected => write!(f, "already injected"),
            Self::HostNetwork => write!(f, "hostNetwork pods cannot be meshed"),
            Self::InvalidAnnotation { name, value } => {
                write!(f, "invalid annotation {name}: {value:?}")
            }
        }
    }
}

/// Meshes a pod. `meta` and `spec` are a Pod's or a pod template's; the namespace's
/// annotations decide when the pod says nothing; `force` injects without any `enabled`
/// annotation (offline injection: the user asked for it), but never against `disabled`.
/// `config.mesh.dev/*` annotations of the pod (else of the namespace) override defaults.
pub fn inject_pod(
    meta: &ObjectMeta,
    spec: &PodSpec,
    namespace_annotations: &BTreeMap<String, String>,
    force: bool,
    cfg: &InjectConfig,
) -> Outcome {
    let empty = BTreeMap::new();
    let pod_annotations = meta.annotations.as_ref().unwrap_or(&empty);
    let pod_mode = pod_annotations.get(INJECT_ANNOTATION).map(String::as_str);
    let ns_mode = namespace_annotations
        .get(INJECT_ANNOTATION)
        .map(String::as_str);
    if pod_mode == Some("disabled") {
        return Outcome::Skipped(SkipReason::Disabled);
    }
    let enabled = pod_mode == Some("enabled") || (pod_mode.is_none() && ns_mode == Some("enabled"));
    if !enabled && !force {
        return Outcome::Skipped(SkipReason::NotEnabled);
    }
    if is_injected(spec) {
        return Outcome::Skipped(SkipReason::AlreadyInjected);
    }
    if spec.host_network == Some(true) {
        return Outcome::Skipped(SkipReason::HostNetwork);
    }
    let mut merged = namespace_annotations.clone();
    merged.extend(pod_annotations.iter().map(|(k, v)| (k.clone(), v.clone())));
    let mut overrides = match annotations::Overrides::from_annotations(&merged, cfg) {
        Ok(overrides) => overrides,
        Err(reason) => return Outcome::Skipped(reason),
    };
    let workload = workload_name(meta);
    overrides.workload_annotation = workload.is_some();
    overrides.probes = probes::probe_endpoints(&spec.containers);
    overrides.ports = probes::container_ports(&spec.containers);
    overrides.shutdown_grace_seconds = spec.termination_grace_period_seconds;

    let mut spec = spec.clone();
    let init = sidecar::init_container(cfg, &overrides);
    let mut proxy = sidecar::proxy_container(cfg, &overrides);
    let mut inits = spec.init_containers.take().unwrap_or_default();
    if cfg.native_sidecar {
        proxy.restart_policy = Some("Always".to_string());
        // First, so that the app's other init containers already run meshed.
        inits.splice(0..0, [init, proxy]);
    } else {
        // Last, so that no earlier init container is captured before any proxy runs.
        inits.push(init);
        spec.containers.insert(0, proxy);
    }
    spec.init_containers = Some(inits);
    let mut volumes = spec.volumes.take().unwrap_or_default();
    volumes.extend(sidecar::volumes());
    spec.volumes = Some(volumes);

    let mut meta = meta.clone();
    let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
    annotations.insert(INJECTED_ANNOTATION.to_string(), cfg.proxy_image.clone());
    if let Some(w) = workload {
        annotations.insert(WORKLOAD_ANNOTATION.to_string(), w);
    }
    Outcome::Injected { meta, spec }
}

/// The workload a pod belongs to: its `mesh.dev/workload` annotation if set (e.g. by
/// `mesh inject` on a Deployment), else its controller owner — a ReplicaSet's pods belong
/// to its Deployment (the ReplicaSet name minus the `pod-template-hash`). `None` for a
/// pod without an owner (its name is its workload).
pub fn workload_name(meta: &ObjectMeta) -> Option<String> {
    if let Some(w) = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(WORKLOAD_ANNOTATION))
        .filter(|w| !w.is_empty())
    {
        return Some(w.clone());
    }
    let owner = meta
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let hash = meta
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => Some(
            owner
                .name
                .strip_suffix(&format!("-{hash}"))
                .unwrap_or(&owner.name)
                .to_string(),
        ),
        _ => Some(owner.name.clone()),
    }
}

/// Removes exactly what [`inject_pod`] added; `None` if the pod has no `mesh-proxy`.
/// Lists and annotation maps that become empty are removed, as they were before injection.
pub fn uninject_pod(meta: &ObjectMeta, spec: &PodSpec) -> Option<(ObjectMeta, PodSpec)> {
    if !is_injected(spec) {
        return None;
    }
    let mut spec = spec.clone();
    let ours = |c: &Container| c.name == PROXY_CONTAINER || c.name == INIT_CONTAINER;
    spec.containers.retain(|c| !ours(c));
    spec.init_containers = non_empty(spec.init_containers.take(), |c| !ours(c));
    spec.volumes = non_empty(spec.volumes.take(), |v: &Volume| {
        v.name != TOKEN_VOLUME && v.name != TRUST_ROOTS_VOLUME
    });
    let mut meta = meta.clone();
    if let Some(annotations) = meta.annotations.as_mut() {
        annotations.remove(INJECTED_ANNOTATION);
        annotations.remove(WORKLOAD_ANNOTATION);
        if annotations.is_empty() {
            meta.annotations = None;
        }
    }
    Some((meta, spec))
}

/// Whether a container or init container is named `mesh-proxy`.
pub fn is_injected(spec: &PodSpec) -> bool {
    let named = |c: &Container| c.name == PROXY_CONTAINER;
    spec.containers.iter().any(named) || spec.init_containers.iter().flatten().any(named)
}

/// Keeps the items `keep` accepts; `None` when none are left.
fn non_empty<T>(items: Option<Vec<T>>, keep: impl FnMut(&T) -> bool) -> Option<Vec<T>> {
    let mut items = items?;
    items.retain(keep);
    (!items.is_empty()).then_some(items)
}
