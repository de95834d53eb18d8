//! Pure conversions from Kubernetes API objects to the index's resources. Services,
//! routes and the mesh's CRDs go through the same parser as manifest files (so both
//! sources validate identically); pods become pod-backed workload entries and
//! EndpointSlices keep only what endpoint resolution needs.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice as KubeSlice;

use crate::inject::PROXY_CONTAINER;
use crate::resources::{
    parse_object, EndpointSlice, ObjectMeta, ParseError, PodInfo, Resource, SliceEndpoint,
    WorkloadEntry, WorkloadEntrySpec,
};

/// The label naming an EndpointSlice's Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// Parses an object of a kind the manifest parser knows. Objects from list responses
/// carry no `apiVersion`/`kind`, so the caller says which they are.
pub fn object(
    api_version: &str,
    kind: &str,
    mut json: serde_json::Value,
) -> Result<Vec<Resource>, ParseError> {
    if let Some(map) = json.as_object_mut() {
        map.insert("apiVersion".into(), api_version.into());
        map.insert("kind".into(), kind.into());
    }
    let value = serde_yaml::to_value(&json).unwrap_or(serde_yaml::Value::Null);
    Ok(parse_object(value)?.resources)
}

fn meta(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> ObjectMeta {
    ObjectMeta {
        name: m.name.clone().unwrap_or_default(),
        namespace: m.namespace.clone().unwrap_or_else(|| "default".into()),
        labels: m.labels.clone().unwrap_or_default(),
        annotations: m.annotations.clone().unwrap_or_default(),
    }
}

/// True when the pod runs the mesh proxy (as a container or a native sidecar).
pub fn is_meshed(pod: &Pod) -> bool {
    let Some(spec) = &pod.spec else { return false };
    let named = |c: &k8s_openapi::api::core::v1::Container| c.name == PROXY_CONTAINER;
    spec.containers.iter().any(named) || spec.init_containers.iter().flatten().any(named)
}

/// The workload that owns a pod, for metric labels: a ReplicaSet's pods are labelled with
/// their Deployment (the ReplicaSet name minus the `pod-template-hash` suffix).
pub fn owner(pod: &Pod) -> Option<(String, String)> {
    // The injector's annotation names the workload the proxy reports itself as.
    let annotated = crate::inject::workload_name(&pod.metadata);
    let owner = pod
        .metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true))?;
    let hash = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get("pod-template-hash"));
    let (kind, name) = match (owner.kind.as_str(), hash) {
        ("ReplicaSet", Some(hash)) => match owner.name.strip_suffix(&format!("-{hash}")) {
            Some(deploy) => ("deployment".to_string(), deploy.to_string()),
            None => ("replicaset".to_string(), owner.name.clone()),
        },
        (kind, _) => (kind.to_ascii_lowercase(), owner.name.clone()),
    };
    Some((kind, annotated.unwrap_or(name)))
}

/// The workload entries of a pod: one per pod IP (two for a dual-stack pod), none for a
/// pod without an IP or one that has finished.
pub fn pod_entries(pod: &Pod) -> Vec<WorkloadEntry> {
    let status = pod.status.as_ref();
    let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        return Vec::new();
    }
    let mut ips: Vec<IpAddr> = status
        .and_then(|s| s.pod_ips.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|p| p.ip.parse().ok())
        .collect();
    if ips.is_empty() {
        ips.extend(status.and_then(|s| s.pod_ip.as_ref()?.parse::<IpAddr>().ok()));
    }
    let spec = pod.spec.as_ref();
    let ports: BTreeMap<String, u16> = spec
        .into_iter()
        .flat_map(|s| s.containers.iter())
        .flat_map(|c| c.ports.iter().flatten())
        .filter_map(|p| Some((p.name.clone()?, u16::try_from(p.container_port).ok()?)))
        .collect();
    let base = meta(&pod.metadata);
    let sa = spec.and_then(|s| s.service_account_name.clone());
    let (owner_kind, owner_name) = owner(pod).unzip();
    let meshed = is_meshed(pod);
    ips.into_iter()
        .enumerate()
        .map(|(i, address)| {
            let mut metadata = base.clone();
            if i > 0 {
                // Index keys must be unique; the pod name lives on in `PodInfo`.
                metadata.name = format!("{}@{address}", base.name);
            }
            WorkloadEntry {
                metadata,
                spec: WorkloadEntrySpec {
                    address,
                    ports: ports.clone(),
                    labels: None,
                    service_account: sa.clone(),
                    meshed,
                    proxy_inbound_address: None,
                    workload: None,
                    pod: Some(PodInfo {
                        name: base.name.clone(),
                        owner_kind: owner_kind.clone(),
                        owner_name: owner_name.clone(),
                    }),
                },
            }
        })
        .collect()
}

/// The index's view of an EndpointSlice; `None` for slices of no Service or of FQDN
/// addresses.
pub fn endpoint_slice(slice: &KubeSlice) -> Option<EndpointSlice> {
    if slice.address_type == "FQDN" {
        return None;
    }
    let metadata = meta(&slice.metadata);
    let service = metadata.labels.get(SERVICE_NAME_LABEL)?.clone();
    let ports = slice
        .ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .filter_map(|p| {
            let port = u16::try_from(p.port?).ok().filter(|p| *p != 0)?;
            Some((p.name.clone().unwrap_or_default(), port))
        })
        .collect();
    let endpoints = slice
        .endpoints
        .iter()
        .flatten()
        .map(|e| {
            let c = e.conditions.as_ref();
            SliceEndpoint {
                addresses: e.addresses.iter().filter_map(|a| a.parse().ok()).collect(),
                ready: c.and_then(|c| c.ready).unwrap_or(true),
                terminating: c.and_then(|c| c.terminating).unwrap_or(false),
                pod: e
                    .target_ref
                    .as_ref()
                    .filter(|r| r.kind.as_deref() == Some("Pod"))
                    .and_then(|r| r.name.clone()),
            }
        })
        .collect();
    Some(EndpointSlice {
        metadata,
        service,
        ports,
        endpoints,
    })
}

#[cfg(test)]
mod tests;
