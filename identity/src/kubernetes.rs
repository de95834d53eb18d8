//! Running against the Kubernetes API: the permissions the identity service needs in
//! Kubernetes mode, as RBAC rules `mesh install` renders.

/// One RBAC rule: verbs on resources of an API group (`""` is the core group).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ApiRule {
    /// API group.
    pub group: &'static str,
    /// Resources (plural, lower case).
    pub resources: &'static [&'static str],
    /// Verbs.
    pub verbs: &'static [&'static str],
}

/// Cluster-wide: checking workloads' service-account tokens.
pub const CLUSTER_RULES: &[ApiRule] = &[ApiRule {
    group: "authentication.k8s.io",
    resources: &["tokenreviews"],
    verbs: &["create"],
}];

/// In the control-plane namespace only: the issuer Secret (watched), the trust bundle
/// ConfigMap it publishes, and Events about a rejected issuer.
pub const NAMESPACE_RULES: &[ApiRule] = &[
    ApiRule {
        group: "",
        resources: &["secrets"],
        verbs: &["list", "watch"],
    },
    ApiRule {
        group: "",
        resources: &["configmaps"],
        verbs: &["get", "create", "patch"],
    },
    ApiRule {
        group: "",
        resources: &["events"],
        verbs: &["create"],
    },
];
