//! The `policy.mesh.dev/v1alpha1` CustomResourceDefinitions, generated from these types
//! (`make manifests` writes them to `manifests/crds/`; a test keeps the files in step).
//! The types describe the YAML shape and its schema only: objects are validated and
//! converted by the same parser the local source uses (`resources::parse_documents`), so
//! both sources accept exactly the same objects.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A reference to the Service a policy applies to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetRef {
    /// API group of the target; empty (core) for a Service.
    #[serde(default)]
    pub group: String,
    /// Kind of the target: `Service`.
    pub kind: String,
    /// Name of the target, in the policy's namespace.
    pub name: String,
}

/// Per-Service load balancing, limits, outlier detection and retry budget.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "TrafficPolicy",
    plural = "trafficpolicies",
    namespaced,
    doc = "Load balancer, connection/request limits, outlier detection and retry budget for the clients of one Service."
)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    /// The Service the policy applies to.
    pub target_ref: TargetRef,
    /// Load balancer settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Circuit-breaker limits; 0 means unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<Limits>,
    /// Passive health checking of endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
    /// Retries allowed on top of the original requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_budget: Option<RetryBudget>,
}

/// Load balancer settings.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancer {
    /// Algorithm: `PeakEWMA` (the only one).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// Peak-EWMA decay time, a duration such as `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decay: Option<String>,
}

/// Circuit-breaker limits.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Limits {
    /// Concurrent connections per endpoint.
    #[serde(default)]
    pub max_connections: u32,
    /// Requests waiting for an endpoint with capacity.
    #[serde(default)]
    pub max_pending_requests: u32,
    /// In-flight requests per endpoint.
    #[serde(default)]
    pub max_requests_per_endpoint: u32,
}

/// Outlier detection.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// First ejection time (doubles per ejection), e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Largest share of endpoints ejected at once, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// Longest ejection, e.g. `5m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_time: Option<String>,
}

/// A retry budget.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RetryBudget {
    /// Retries as a fraction of requests, 0.0–1.0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ratio: Option<f64>,
    /// Retries per second always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_retries_per_second: Option<u32>,
    /// Window over which requests are counted, e.g. `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl: Option<String>,
}

/// Fault injection, referenced from a route rule's `ExtensionRef` filter.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "HTTPFault",
    plural = "httpfaults",
    namespaced,
    doc = "Aborts or delays a share of the requests of the route rules that reference it."
)]
#[serde(rename_all = "camelCase")]
pub struct HttpFaultSpec {
    /// Answer a share of requests with a status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<Abort>,
    /// Delay a share of requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Delay>,
}

/// An injected abort.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Abort {
    /// The HTTP status to answer with.
    pub http_status: i64,
    /// Percentage of requests, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// An injected delay.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Delay {
    /// The delay, e.g. `100ms`.
    pub fixed_delay: String,
    /// Percentage of requests, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
}

/// A workload that is not a pod (a VM, a process on a host) selected by Services.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "WorkloadEntry",
    plural = "workloadentries",
    namespaced,
    doc = "A workload outside Kubernetes pods: its address, named ports, labels, identity and proxy."
)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// The workload's IP address.
    pub address: String,
    /// Named ports.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Labels merged over `metadata.labels` for Service selection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// Service account of the workload's identity (default `default`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Whether the workload runs a proxy (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meshed: Option<bool>,
    /// The proxy's inbound listener, `ip:port` (default `<address>:4143`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proxy_inbound_address: Option<String>,
}

/// Every CRD of the mesh, ordered by name.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![HTTPFault::crd(), TrafficPolicy::crd(), WorkloadEntry::crd()];
    crds.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
    crds
}

/// A CRD as the YAML `make manifests` writes.
pub fn to_yaml(crd: &CustomResourceDefinition) -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(crd)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crds_are_namespaced_v1alpha1_in_our_group() {
        let crds = all();
        let names: Vec<_> = crds
            .iter()
            .map(|c| c.metadata.name.clone().unwrap_or_default())
            .collect();
        assert_eq!(
            names,
            [
                "httpfaults.policy.mesh.dev",
                "trafficpolicies.policy.mesh.dev",
                "workloadentries.policy.mesh.dev"
            ]
        );
        for crd in &crds {
            assert_eq!(crd.spec.group, "policy.mesh.dev");
            assert_eq!(crd.spec.scope, "Namespaced");
            assert_eq!(crd.spec.versions[0].name, "v1alpha1");
            assert!(crd.spec.versions[0].schema.is_some());
        }
    }
}
