//! The permissions the identity service needs in Kubernetes mode, as the RBAC rules
//! `mesh install` renders: exactly the API calls this module's code makes (the
//! `kube_mode` test checks both ways: every call granted, every grant used).

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

/// Cluster-wide (a ClusterRole): checking workloads' service-account tokens, and
/// publishing the trust bundle ConfigMap into every namespace.
pub const CLUSTER_RULES: &[ApiRule] = &[
    ApiRule {
        group: "authentication.k8s.io",
        resources: &["tokenreviews"],
        verbs: &["create"],
    },
    ApiRule {
        group: "",
        resources: &["namespaces"],
        verbs: &["list", "watch"],
    },
    ApiRule {
        group: "",
        resources: &["configmaps"],
        verbs: &["list", "watch", "create", "patch"],
    },
];

/// In the control-plane namespace only (a Role): the issuer Secret (watched), Events
/// about issuer reloads, and the leader-election Lease (read, created, renewed with a
/// conditional PUT).
pub const NAMESPACE_RULES: &[ApiRule] = &[
    ApiRule {
        group: "",
        resources: &["secrets"],
        verbs: &["list", "watch"],
    },
    ApiRule {
        group: "events.k8s.io",
        resources: &["events"],
        verbs: &["create", "patch"],
    },
    ApiRule {
        group: "coordination.k8s.io",
        resources: &["leases"],
        verbs: &["get", "create", "update"],
    },
];
