//! Derivation of the per-kind maps from the index's files, after every file change:
//! duplicates are resolved (the later file wins), each Service gets at most one
//! TrafficPolicy (the oldest, by file path and position), and references that cannot be
//! resolved (a route's missing HTTPFault, an AuthorizationPolicy's missing Service or
//! Service port) are logged here, once per change, rather than on every policy
//! computation.

use std::collections::btree_map::Entry;
use std::collections::BTreeMap;

use super::{Index, IndexedRoute, Origin};
use crate::resources::{Resource, TrafficPolicy};

impl Index {
    /// Recomputes the per-kind maps from the files. Later files win on duplicates.
    pub(super) fn rebuild(&mut self) {
        self.services.clear();
        self.workloads.clear();
        self.routes.clear();
        self.traffic_policies.clear();
        self.faults.clear();
        self.slices.clear();
        self.authz.clear();
        // TrafficPolicies by their own key first (duplicates by name), then by Service.
        let mut policies: BTreeMap<(String, String), (Origin, TrafficPolicy)> = BTreeMap::new();
        for (file, resources) in &self.files {
            for (position, r) in resources.iter().enumerate() {
                let meta = r.metadata();
                let (ns, name) = (meta.namespace.clone(), meta.name.clone());
                let origin = Origin {
                    file: file.clone(),
                    position,
                };
                let dup = match r {
                    Resource::Service(s) => self.services.insert((ns, name), s.clone()).is_some(),
                    Resource::WorkloadEntry(w) => {
                        self.workloads.insert((ns, name), w.clone()).is_some()
                    }
                    Resource::Route(route) => {
                        let indexed = IndexedRoute {
                            origin,
                            route: route.clone(),
                        };
                        self.routes
                            .insert((route.kind, ns, name), indexed)
                            .is_some()
                    }
                    Resource::TrafficPolicy(tp) => {
                        policies.insert((ns, name), (origin, tp.clone())).is_some()
                    }
                    Resource::HttpFault(f) => self.faults.insert((ns, name), f.fault).is_some(),
                    Resource::AuthorizationPolicy(p) => {
                        self.authz.insert((ns, name), p.clone()).is_some()
                    }
                    Resource::EndpointSlice(slice) => {
                        self.slices
                            .entry((ns, slice.service.clone()))
                            .or_default()
                            .push(slice.clone());
                        false
                    }
                };
                if dup {
                    tracing::warn!(
                        file = %file.display(),
                        "duplicate {} {}/{}; this definition replaces an earlier one",
                        r.kind(),
                        meta.namespace,
                        meta.name
                    );
                }
            }
        }
        let mut policies: Vec<_> = policies.into_values().collect();
        policies.sort_by(|a, b| a.0.cmp(&b.0));
        for (origin, tp) in policies {
            let key = (tp.metadata.namespace.clone(), tp.target.clone());
            match self.traffic_policies.entry(key) {
                Entry::Vacant(e) => {
                    e.insert(tp);
                }
                Entry::Occupied(e) => tracing::warn!(
                    file = %origin.file.display(),
                    "TrafficPolicy {}/{} is ignored: Service {} already has TrafficPolicy {} \
                     (from an earlier file)",
                    tp.metadata.namespace,
                    tp.metadata.name,
                    tp.target,
                    e.get().metadata.name
                ),
            }
        }
        self.warn_unresolved_authz_targets();
        for IndexedRoute { route, .. } in self.routes.values() {
            let ns = &route.metadata.namespace;
            for (i, rule) in route.rules.iter().enumerate() {
                let Some(fault) = &rule.fault else { continue };
                if !self.faults.contains_key(&(ns.clone(), fault.clone())) {
                    tracing::warn!(
                        "{} {ns}/{} rule {i}: HTTPFault {ns}/{fault} does not exist; \
                         requests matching the rule are answered 500",
                        route.kind.kind(),
                        route.metadata.name
                    );
                }
            }
        }
    }
}
