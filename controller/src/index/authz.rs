//! Inbound authorization compiled from the index: which AuthorizationPolicies apply to a
//! workload port, and the `ServerPolicy` (`InboundPolicy.Watch`) they make. Pure functions
//! over the [`Index`]; [`Index::authorization_policies_for`] and [`Index::workload_ports`]
//! are also what `mesh authz` shows.

use std::collections::{BTreeMap, BTreeSet};

use mesh_proto::policy::{self as proto, Protocol, ServerPolicy, TlsMode};

use super::endpoints::resolve_target_port;
use super::Index;
use crate::resources::{
    AuthorizationPolicy, AuthzTarget, Service, ServicePort, ServicePortRef, WorkloadEntry,
};

/// An AuthorizationPolicy that applies to a workload, and on which of its ports.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AppliedAuthz<'a> {
    /// The policy, as validated.
    pub policy: &'a AuthorizationPolicy,
    /// The workload port it applies to (a `targetRef` naming a Service port), or `None`
    /// when it applies to every port of the workload.
    pub port: Option<u16>,
}

impl AppliedAuthz<'_> {
    /// Whether the policy applies to workload port `port`.
    pub fn covers(&self, port: u16) -> bool {
        self.port.is_none_or(|p| p == port)
    }
}

/// The policy of a port no resource selects: detect the protocol, and let the proxy's
/// default inbound policy decide the mTLS mode and who may call.
pub fn default_server_policy() -> ServerPolicy {
    ServerPolicy {
        protocol: Protocol::Detect.into(),
        tls_mode: TlsMode::Default.into(),
        policies: Vec::new(),
        labels: Default::default(),
        tls_mode_source: String::new(),
        authorities: Vec::new(),
    }
}

/// The `ServerPolicy` of workload port `port`, given the policies that apply to the
/// workload ordered by name (as [`Index::authorization_policies_for`] returns them).
///
/// The strictest mTLS mode wins (strict, then permissive, else default), and the first
/// policy by name that sets it is its source. Every policy with an action is sent, in name
/// order; mode-only policies are not (the proxy would have nothing to match).
pub fn compile_server_policy(applied: &[AppliedAuthz<'_>], port: u16) -> ServerPolicy {
    let on_port: Vec<&AuthorizationPolicy> = applied
        .iter()
        .filter(|a| a.covers(port))
        .map(|a| a.policy)
        .collect();
    let mut out = default_server_policy();
    for mode in [TlsMode::Strict, TlsMode::Permissive] {
        if let Some(p) = on_port.iter().find(|p| p.mtls == Some(mode)) {
            out.tls_mode = mode.into();
            out.tls_mode_source = format!("{}/{}", p.metadata.namespace, p.metadata.name);
            break;
        }
    }
    out.policies = on_port
        .iter()
        .filter_map(|p| {
            Some(proto::AuthorizationPolicy {
                // Bare: only policies of the workload's own namespace apply.
                name: p.metadata.name.clone(),
                action: p.action?.into(),
                rules: p.rules.clone(),
            })
        })
        .collect();
    out
}

// === impl Index ===

impl Index {
    /// The AuthorizationPolicy `namespace/name`.
    pub fn authorization_policy(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<&AuthorizationPolicy> {
        self.authz.get(&(namespace.to_string(), name.to_string()))
    }

    /// The AuthorizationPolicies of `namespace`, ordered by name.
    pub fn authorization_policies_in(
        &self,
        namespace: &str,
    ) -> impl Iterator<Item = &AuthorizationPolicy> + '_ {
        let namespace = namespace.to_string();
        self.authz
            .range((namespace.clone(), String::new())..)
            .take_while(move |((ns, _), _, _)| *ns == namespace)
            .map(|(_, _, p)| p)
    }

    /// Every AuthorizationPolicy that applies to workload `namespace/workload` (a
    /// WorkloadEntry, or a pod by name), ordered by name, each with the port it applies to.
    ///
    /// Only policies of the workload's namespace apply. A policy without `targetRef` and
    /// `selector` applies to every port; with a `selector`, when its labels are a subset of
    /// the workload's; with a `targetRef`, when the Service exists and its (non-empty)
    /// selector selects the workload, on every port, or, with a `targetRef.port`, on the
    /// workload port that Service port sends to. A workload the index does not know gets
    /// only the namespace-wide policies.
    pub fn authorization_policies_for(
        &self,
        namespace: &str,
        workload: &str,
    ) -> Vec<AppliedAuthz<'_>> {
        let w = self
            .workloads
            .get(&(namespace.to_string(), workload.to_string()));
        self.authorization_policies_in(namespace)
            .filter_map(|policy| {
                let port = self.applied_port(policy, w)?;
                Some(AppliedAuthz { policy, port })
            })
            .collect()
    }

    /// The ports of workload `namespace/workload` the index knows: its named ports and the
    /// ports the Services selecting it send to. `None` when the workload is unknown.
    pub fn workload_ports(&self, namespace: &str, workload: &str) -> Option<BTreeSet<u16>> {
        let w = self
            .workloads
            .get(&(namespace.to_string(), workload.to_string()))?;
        let labels = w.selection_labels();
        let mut ports: BTreeSet<u16> = w.spec.ports.values().copied().collect();
        for svc in self.services_in(namespace).filter(|s| selects(s, &labels)) {
            ports.extend(
                svc.spec
                    .ports
                    .iter()
                    .filter_map(|p| resolve_target_port(p, w)),
            );
        }
        Some(ports)
    }

    /// The inbound policy of `port` on workload `namespace/workload`.
    pub fn server_policy(&self, namespace: &str, workload: &str, port: u16) -> ServerPolicy {
        let mut policy =
            compile_server_policy(&self.authorization_policies_for(namespace, workload), port);
        policy.authorities = self.authorities_of(namespace, workload, port);
        policy
    }

    /// The names clients may call workload port `port` by: the Service ports that send
    /// to it and the workload's own address, sorted.
    fn authorities_of(&self, namespace: &str, workload: &str, port: u16) -> Vec<String> {
        let Some(w) = self
            .workloads
            .get(&(namespace.to_string(), workload.to_string()))
        else {
            return Vec::new();
        };
        let labels = w.selection_labels();
        let domain = &self.config.cluster_domain;
        let mut names: BTreeSet<String> = self
            .services_in(namespace)
            .filter(|s| selects(s, &labels))
            .flat_map(|svc| {
                svc.spec
                    .ports
                    .iter()
                    .filter(|p| resolve_target_port(p, w) == Some(port))
                    .map(|p| {
                        super::policy::service_target(namespace, &svc.metadata.name, p.port, domain)
                    })
            })
            .collect();
        names.insert(std::net::SocketAddr::new(w.spec.address, port).to_string());
        names.into_iter().collect()
    }

    /// Where `policy` applies on `w` (of the policy's namespace): `None` when it does not,
    /// `Some(None)` on every port, `Some(Some(p))` on workload port `p` only.
    fn applied_port(
        &self,
        policy: &AuthorizationPolicy,
        w: Option<&WorkloadEntry>,
    ) -> Option<Option<u16>> {
        match &policy.target {
            AuthzTarget::Namespace => Some(None),
            AuthzTarget::Selector(selector) => {
                is_subset(selector, &w?.selection_labels()).then_some(None)
            }
            AuthzTarget::Service { name, port } => {
                let w = w?;
                let svc = self.service(&policy.metadata.namespace, name)?;
                if !selects(svc, &w.selection_labels()) {
                    return None;
                }
                match port {
                    None => Some(None),
                    Some(port) => Some(Some(resolve_target_port(service_port(svc, port)?, w)?)),
                }
            }
        }
    }

    /// The Services of `namespace`, ordered by name.
    pub(super) fn services_in(&self, namespace: &str) -> impl Iterator<Item = &Service> + '_ {
        let namespace = namespace.to_string();
        self.services
            .range((namespace.clone(), String::new())..)
            .take_while(move |((ns, _), _, _)| *ns == namespace)
            .map(|(_, _, s)| s)
    }

    /// Logs the AuthorizationPolicies whose `targetRef` names a Service (port) that does
    /// not exist or a Service that selects nothing: they apply to no workload, which an
    /// operator would otherwise only notice as callers being let in.
    pub(super) fn warn_unresolved_authz_targets(&self) {
        for p in self.authz.values() {
            let AuthzTarget::Service { name, port } = &p.target else {
                continue;
            };
            let ns = &p.metadata.namespace;
            let problem = match self.service(ns, name) {
                None => format!("Service {ns}/{name} does not exist"),
                Some(svc) if svc.spec.selector.is_empty() => {
                    format!("Service {ns}/{name} has no selector")
                }
                Some(svc) => match port {
                    Some(port) if service_port(svc, port).is_none() => {
                        format!("Service {ns}/{name} has no port {port}")
                    }
                    _ => continue,
                },
            };
            tracing::warn!(
                "AuthorizationPolicy {ns}/{}: {problem}; the policy applies to no workload",
                p.metadata.name
            );
        }
    }
}

/// Whether every label of `selector` is in `labels` (an empty selector is a subset).
fn is_subset(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// Whether `svc` selects a workload with `labels`; a Service without selector selects none.
pub(super) fn selects(svc: &Service, labels: &BTreeMap<String, String>) -> bool {
    !svc.spec.selector.is_empty() && is_subset(&svc.spec.selector, labels)
}

/// The port of `svc` a `targetRef.port` names.
fn service_port<'a>(svc: &'a Service, port: &ServicePortRef) -> Option<&'a ServicePort> {
    svc.spec.ports.iter().find(|p| match port {
        ServicePortRef::Number(n) => p.port == *n,
        ServicePortRef::Name(name) => p.name.as_deref() == Some(name.as_str()),
    })
}

#[cfg(test)]
mod tests;
