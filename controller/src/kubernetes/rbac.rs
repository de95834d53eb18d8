//! The API calls the controller makes, as RBAC rules: `mesh install` renders its
//! ClusterRole from this list, and the mocked-API tests check that every request the code
//! makes is covered by it (and that nothing here goes unused).

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

/// Cluster-wide read access the destination controller and the injector need: the
/// watched kinds (list + watch), and `get` on a namespace the injector's cache has not
/// seen yet.
pub const CONTROLLER_RULES: &[ApiRule] = &[
    ApiRule {
        group: "",
        resources: &["namespaces"],
        verbs: &["get", "list", "watch"],
    },
    ApiRule {
        group: "",
        resources: &["pods", "services"],
        verbs: &["list", "watch"],
    },
    ApiRule {
        group: "discovery.k8s.io",
        resources: &["endpointslices"],
        verbs: &["list", "watch"],
    },
    ApiRule {
        group: "gateway.networking.k8s.io",
        resources: &["grpcroutes", "httproutes"],
        verbs: &["list", "watch"],
    },
    ApiRule {
        group: "policy.mesh.dev",
        resources: &[
            "authorizationpolicies",
            "httpfaults",
            "trafficpolicies",
            "workloadentries",
        ],
        verbs: &["list", "watch"],
    },
];
