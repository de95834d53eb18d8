//! The `policy.mesh.dev/v1alpha1` CustomResourceDefinitions, generated from these types
//! (`make manifests` writes them to `manifests/crds/`; a test keeps the files in step).
//! The types describe the YAML shape and its schema only: objects are validated and
//! converted by the same parser the local source uses (`resources::parse_documents`), so
//! both sources accept exactly the same objects.

use std::collections::BTreeMap;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, CustomResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

// === schemas the API server understands ===
//
// schemars describes `u16`/`u32` with formats the API server does not know (it warns on
// every apply) and without bounds; closed sets of strings need an `enum` so that a typo
// is refused at `kubectl apply` rather than at the controller.

/// A list of port numbers.
fn ports(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535}
    })
}

/// Named ports.
fn named_ports(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "additionalProperties": {"type": "integer", "format": "int32", "minimum": 1, "maximum": 65535}
    })
}

/// An optional DNS label (a workload name).
fn optional_dns_label(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string", "minLength": 1, "maxLength": 63,
        "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "nullable": true
    })
}

/// A count: 0 to 2³²−1.
fn count(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64})
}

/// An optional count.
fn optional_count(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "integer", "format": "int64", "minimum": 0, "maximum": 4294967295u64,
        "nullable": true
    })
}

/// An optional percentage, 0–100.
fn optional_percent(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int32", "minimum": 0, "maximum": 100, "nullable": true})
}

/// An optional share of requests in percent, 0–100 (fractions allowed).
fn optional_percent_f64(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "number", "format": "double", "minimum": 0, "maximum": 100, "nullable": true})
}

/// An optional ratio, 0.0–1.0.
fn optional_ratio(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "number", "format": "double", "minimum": 0, "maximum": 1, "nullable": true})
}

/// An HTTP status code, 100–599.
fn http_status(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "integer", "format": "int32", "minimum": 100, "maximum": 599})
}

/// An authorization policy's action (any case, as the parser accepts).
fn authz_action(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string", "nullable": true,
        "enum": ["allow", "deny", "audit", "Allow", "Deny", "Audit", "ALLOW", "DENY", "AUDIT"]
    })
}

/// An mTLS mode (any case).
fn mtls_mode(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "string", "nullable": true,
        "enum": ["strict", "permissive", "Strict", "Permissive", "STRICT", "PERMISSIVE"]
    })
}

/// The load balancer algorithm.
fn balancer_kind(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({"type": "string", "nullable": true, "enum": ["PeakEWMA"]})
}

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
    #[schemars(schema_with = "balancer_kind")]
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
    #[schemars(schema_with = "count")]
    pub max_connections: u32,
    /// Requests waiting for an endpoint with capacity.
    #[serde(default)]
    #[schemars(schema_with = "count")]
    pub max_pending_requests: u32,
    /// In-flight requests per endpoint.
    #[serde(default)]
    #[schemars(schema_with = "count")]
    pub max_requests_per_endpoint: u32,
}

/// Outlier detection.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutlierDetection {
    /// Consecutive failures that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_count")]
    pub consecutive_failures: Option<u32>,
    /// First ejection time (doubles per ejection), e.g. `30s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// Largest share of endpoints ejected at once, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_percent")]
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
    #[schemars(schema_with = "optional_ratio")]
    pub ratio: Option<f64>,
    /// Retries per second always allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_count")]
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
    #[schemars(schema_with = "http_status")]
    pub http_status: i64,
    /// Percentage of requests, 0–100 (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_percent_f64")]
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
    #[schemars(schema_with = "optional_percent_f64")]
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
    #[schemars(schema_with = "named_ports")]
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
    /// The workload the entry is a replica of (default: the entry's name): its metrics'
    /// `workload` label and its row in `mesh stat deploy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "optional_dns_label")]
    pub workload: Option<String>,
}

// Like the other kinds, objects are validated by the manifest parser (`resources::authz`),
// which also rejects unknown fields; the schema only describes the shape.
/// Who may call the workloads of a namespace, a Service (port) or a label selector, and
/// the mTLS mode they require.
#[derive(CustomResource, Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[kube(
    group = "policy.mesh.dev",
    version = "v1alpha1",
    kind = "AuthorizationPolicy",
    plural = "authorizationpolicies",
    namespaced,
    doc = "Allows, denies or audits the callers of the workloads a Service, a label selector or the whole namespace selects, and sets their mTLS mode."
)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationPolicySpec {
    /// The Service whose workloads the policy applies to (optionally one Service port);
    /// exclusive with `selector`. Neither: every workload of the namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<AuthzTargetRef>,
    /// The workloads the policy applies to, by label; exclusive with `targetRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `allow`, `deny` or `audit` (any case); may be left out only by a policy that sets
    /// `mtls` and has no rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "authz_action")]
    pub action: Option<String>,
    /// The mTLS mode the workloads require: `strict` or `permissive`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "mtls_mode")]
    pub mtls: Option<String>,
    /// The policy matches a caller when any rule does; an allow policy without rules
    /// allows nothing.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRule>,
}

/// The Service an AuthorizationPolicy applies to.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct AuthzTargetRef {
    /// API group of the target; empty (core) for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Kind of the target: `Service`.
    pub kind: String,
    /// Name of the Service, in the policy's namespace.
    pub name: String,
    /// A Service port (number or name): the policy then applies only to the workload port
    /// it sends to. Absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<IntOrString>,
}

/// A label selector over the workloads of the policy's namespace.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels a workload must all have; empty selects every workload.
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// One rule: matches when one of `from` and one of `to` match (empty: any).
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct AuthzRule {
    /// Who calls; absent or empty matches any caller.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzSource>,
    /// What is called; absent or empty matches any operation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzOperation>,
}

/// Callers; every field set must match.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthzSource {
    /// SPIFFE ID patterns (`spiffe://...`, `*` matches any run of characters; `*` alone
    /// is any identity).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub identities: Vec<String>,
    /// Namespaces of the caller's identity, or `*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Service accounts of the caller's identity: `name` (in the policy's namespace) or
    /// `namespace/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub service_accounts: Vec<String>,
    /// Client networks: CIDRs, or IP addresses (single hosts).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<String>,
    /// Also match callers without a mesh identity (plaintext); not with identities,
    /// namespaces or serviceAccounts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unauthenticated: Option<bool>,
}

/// Operations; every field set must match.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct AuthzOperation {
    /// Request paths.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<AuthzPath>,
    /// HTTP methods (any case).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Workload (container) ports.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "ports")]
    pub ports: Vec<u16>,
}

/// A request path match: exactly one of `exact` and `prefix`, starting with `/`.
#[derive(Clone, Debug, Deserialize, Serialize, JsonSchema)]
pub struct AuthzPath {
    /// The whole path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// A path prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// Every CRD of the mesh, ordered by name.
pub fn all() -> Vec<CustomResourceDefinition> {
    let mut crds = vec![
        AuthorizationPolicy::crd(),
        HTTPFault::crd(),
        TrafficPolicy::crd(),
        WorkloadEntry::crd(),
    ];
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

    /// The CRD types carry every field the parser reads: an object read through them (what
    /// the API server keeps after pruning to the schema) parses to the same policy.
    #[test]
    fn authorization_policy_fields_survive_the_crd_shape() {
        let yaml = r#"
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: p, namespace: shop}
spec:
  targetRef: {group: "", kind: Service, name: ledger, port: http}
  action: allow
  mtls: strict
  rules:
    - from:
        - identities: ["spiffe://cluster.local/ns/shop/sa/a"]
          namespaces: [shop]
          serviceAccounts: [payments]
          networks: [10.0.0.0/8]
        - unauthenticated: true
      to:
        - paths: [{exact: /a}, {prefix: /b/}]
          methods: [GET]
          ports: [8080]
"#;
        let through_crd = |yaml: &str| {
            let typed: AuthorizationPolicy = serde_yaml::from_str(yaml).unwrap();
            let json = serde_json::to_value(&typed).unwrap();
            let api_version = "policy.mesh.dev/v1alpha1";
            crate::kubernetes::convert::object(api_version, "AuthorizationPolicy", json).unwrap()
        };
        let direct = |yaml: &str| crate::resources::parse_documents(yaml).unwrap().resources;
        assert_eq!(through_crd(yaml), direct(yaml));
        // A selector too (exclusive with targetRef, so another object).
        let target = "targetRef: {group: \"\", kind: Service, name: ledger, port: http}";
        assert!(yaml.contains(target));
        let yaml = yaml.replace(target, "selector: {matchLabels: {app: ledger}}");
        assert_eq!(through_crd(&yaml), direct(&yaml));
    }

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
                "authorizationpolicies.policy.mesh.dev",
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
