//! Least-privilege RBAC: exactly the rules the components declare for the API calls they
//! make (`mesh_controller::kubernetes::rbac::CONTROLLER_RULES`,
//! `mesh_identity::kubernetes::{CLUSTER_RULES, NAMESPACE_RULES}`), bound to their
//! ServiceAccounts. Nothing is added here.

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use mesh_controller::kubernetes::rbac::CONTROLLER_RULES;
use mesh_identity::kubernetes::{CLUSTER_RULES, NAMESPACE_RULES};

use super::meta::{self, CONTROLLER, IDENTITY};
use super::{doc, NAMESPACE};

/// The RBAC documents, in apply order: each role before its binding.
pub fn documents() -> anyhow::Result<Vec<serde_yaml::Value>> {
    let controller_rules = CONTROLLER_RULES
        .iter()
        .map(|r| rule(r.group, r.resources, r.verbs));
    let identity_cluster_rules = CLUSTER_RULES
        .iter()
        .map(|r| rule(r.group, r.resources, r.verbs));
    let identity_namespace_rules = NAMESPACE_RULES
        .iter()
        .map(|r| rule(r.group, r.resources, r.verbs));
    Ok(vec![
        doc(&cluster_role(CONTROLLER, controller_rules.collect()))?,
        doc(&cluster_role_binding(CONTROLLER))?,
        doc(&cluster_role(IDENTITY, identity_cluster_rules.collect()))?,
        doc(&cluster_role_binding(IDENTITY))?,
        doc(&role(IDENTITY, identity_namespace_rules.collect()))?,
        doc(&role_binding(IDENTITY))?,
    ])
}

/// One rule: `verbs` on `resources` of the API `group` (`""`: core).
fn rule(group: &str, resources: &[&str], verbs: &[&str]) -> PolicyRule {
    let strings = |items: &[&str]| items.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(vec![group.to_string()]),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..PolicyRule::default()
    }
}

/// A ClusterRole named after its component.
fn cluster_role(component: &str, rules: Vec<PolicyRule>) -> ClusterRole {
    ClusterRole {
        metadata: meta::cluster(component, Some(component)),
        rules: Some(rules),
        ..ClusterRole::default()
    }
}

/// Binds the component's ClusterRole to its ServiceAccount.
fn cluster_role_binding(component: &str) -> ClusterRoleBinding {
    ClusterRoleBinding {
        metadata: meta::cluster(component, Some(component)),
        role_ref: role_ref("ClusterRole", component),
        subjects: Some(vec![service_account(component)]),
    }
}

/// A Role in the control-plane namespace, named after its component.
fn role(component: &str, rules: Vec<PolicyRule>) -> Role {
    Role {
        metadata: meta::namespaced(component, Some(component)),
        rules: Some(rules),
    }
}

/// Binds the component's Role to its ServiceAccount.
fn role_binding(component: &str) -> RoleBinding {
    RoleBinding {
        metadata: meta::namespaced(component, Some(component)),
        role_ref: role_ref("Role", component),
        subjects: Some(vec![service_account(component)]),
    }
}

fn role_ref(kind: &str, name: &str) -> RoleRef {
    RoleRef {
        api_group: Some("rbac.authorization.k8s.io".to_string()),
        kind: kind.to_string(),
        name: name.to_string(),
    }
}

fn service_account(name: &str) -> Subject {
    Subject {
        api_group: None,
        kind: "ServiceAccount".to_string(),
        name: name.to_string(),
        namespace: Some(NAMESPACE.to_string()),
    }
}
