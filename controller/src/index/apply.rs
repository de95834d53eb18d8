//! Incremental updates: replacing one source file touches only the keys it defines. For
//! each key whose definition in force changed, the lookups (addresses, pods, labels,
//! slices by Service) are updated and the change is recorded for the streams
//! ([`Changes`]). Duplicates are resolved as before (the later file wins), each Service
//! gets at most one TrafficPolicy (the oldest, by file path and position), and references
//! that cannot be resolved (a route's missing HTTPFault, an AuthorizationPolicy's missing
//! Service or port) are logged when the kinds involved change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::Hash;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::defs::Defs;
use super::{Index, IndexedRoute, Key, Origin};
use crate::resources::{EndpointSlice, Resource, RouteKind, Service, TrafficPolicy, WorkloadEntry};

/// Secondary lookups (hash maps: constant time), kept in step with the definitions in
/// force, so that resolving a target costs the size of its answer rather than the size
/// of the index.
#[derive(Clone, Debug, Default)]
pub(super) struct Lookups {
    /// Services by cluster IP.
    pub service_ips: HashMap<IpAddr, BTreeSet<Key>>,
    /// Workloads by address.
    pub workload_ips: HashMap<IpAddr, BTreeSet<Key>>,
    /// Pod-derived workloads by `(namespace, pod name)` (a dual-stack pod has two).
    pub pods: HashMap<Key, BTreeSet<Key>>,
    /// Names of the WorkloadEntries (not pods) by `(namespace, label, value)` of their
    /// selection labels.
    pub labels: HashMap<(String, String, String), BTreeSet<String>>,
    /// EndpointSlice names by their Service's key.
    pub service_slices: HashMap<Key, BTreeSet<String>>,
    /// For each `(namespace, pod)` that slices name: their Services and how many slice
    /// endpoints of each name the pod.
    pub pod_services: HashMap<Key, BTreeMap<String, usize>>,
}

/// The keys one file change touches, by kind.
#[derive(Default)]
struct Touched {
    services: BTreeSet<Key>,
    workloads: BTreeSet<Key>,
    routes: BTreeSet<(RouteKind, String, String)>,
    policies: BTreeSet<Key>,
    faults: BTreeSet<Key>,
    slices: BTreeSet<Key>,
    authz: BTreeSet<Key>,
}

impl Touched {
    fn add(&mut self, r: &Resource) {
        let m = r.metadata();
        let key = (m.namespace.clone(), m.name.clone());
        match r {
            Resource::Service(_) => self.services.insert(key),
            Resource::WorkloadEntry(_) => self.workloads.insert(key),
            Resource::Route(route) => self.routes.insert((route.kind, key.0, key.1)),
            Resource::TrafficPolicy(_) => self.policies.insert(key),
            Resource::HttpFault(_) => self.faults.insert(key),
            Resource::EndpointSlice(_) => self.slices.insert(key),
            Resource::AuthorizationPolicy(_) => self.authz.insert(key),
        };
    }
}

/// The definitions in force of `keys` (cloned: they are compared after the change).
fn snapshot<K: Ord + Clone, T: Clone>(
    defs: &Defs<K, T>,
    keys: &BTreeSet<K>,
) -> Vec<(K, Option<T>)> {
    keys.iter()
        .map(|k| (k.clone(), defs.get(k).cloned()))
        .collect()
}

/// The keys of `before` whose definition in force is now different, with old and new.
fn changed<K: Ord + Clone, T: Clone + PartialEq>(
    defs: &Defs<K, T>,
    before: Vec<(K, Option<T>)>,
) -> Vec<(K, Option<T>, Option<T>)> {
    before
        .into_iter()
        .filter_map(|(k, old)| {
            let new = defs.get(&k);
            (old.as_ref() != new).then(|| {
                let new = new.cloned();
                (k, old, new)
            })
        })
        .collect()
}

/// The definitions in force of one file change, before it.
struct Before {
    services: Vec<(Key, Option<Service>)>,
    workloads: Vec<(Key, Option<WorkloadEntry>)>,
    routes: Vec<((RouteKind, String, String), Option<IndexedRoute>)>,
    policies: Vec<(Key, Option<(Origin, TrafficPolicy)>)>,
    faults: Vec<(Key, Option<mesh_proto::destination::Fault>)>,
    slices: Vec<(Key, Option<EndpointSlice>)>,
    authz: Vec<(Key, Option<crate::resources::AuthorizationPolicy>)>,
}

impl Index {
    /// Replaces the objects of `file` with `new` (none: the file is gone), updating only
    /// what they touch. Returns whether anything changed.
    pub(super) fn replace_file(&mut self, file: PathBuf, new: Vec<Resource>) -> bool {
        if self.files.get(&file) == Some(&new) {
            return false;
        }
        let old = match self.files.remove(&file) {
            None if new.is_empty() => return false,
            old => old.unwrap_or_default(),
        };
        let mut touched = Touched::default();
        old.iter().chain(&new).for_each(|r| touched.add(r));
        let before = Before {
            services: snapshot(&self.services, &touched.services),
            workloads: snapshot(&self.workloads, &touched.workloads),
            routes: snapshot(&self.routes, &touched.routes),
            policies: snapshot(&self.policies, &touched.policies),
            faults: snapshot(&self.faults, &touched.faults),
            slices: snapshot(&self.slices, &touched.slices),
            authz: snapshot(&self.authz, &touched.authz),
        };
        for r in &old {
            self.unindex(&file, r);
        }
        for (position, r) in new.iter().enumerate() {
            let origin = Origin {
                file: file.clone(),
                position,
            };
            if self.index_one(origin, r) {
                tracing::warn!(
                    file = %file.display(),
                    "duplicate {} {}/{}; the definition read last is in force",
                    r.kind(),
                    r.metadata().namespace,
                    r.metadata().name
                );
            }
        }
        if !new.is_empty() {
            self.files.insert(file, new);
        }
        self.reconcile(before);
        true
    }

    /// Forgets `file`'s definition of `r`.
    fn unindex(&mut self, file: &Path, r: &Resource) {
        let m = r.metadata();
        let key = (m.namespace.clone(), m.name.clone());
        match r {
            Resource::Service(_) => self.services.remove(&key, file),
            Resource::WorkloadEntry(_) => self.workloads.remove(&key, file),
            Resource::Route(route) => self.routes.remove(&(route.kind, key.0, key.1), file),
            Resource::TrafficPolicy(_) => self.policies.remove(&key, file),
            Resource::HttpFault(_) => self.faults.remove(&key, file),
            Resource::EndpointSlice(_) => self.slices.remove(&key, file),
            Resource::AuthorizationPolicy(_) => self.authz.remove(&key, file),
        }
    }

    /// Adds the definition of `r` read at `origin`; true when it duplicates another.
    fn index_one(&mut self, origin: Origin, r: &Resource) -> bool {
        let m = r.metadata();
        let key = (m.namespace.clone(), m.name.clone());
        match r {
            Resource::Service(s) => self.services.insert(key, origin, s.clone()),
            Resource::WorkloadEntry(w) => self.workloads.insert(key, origin, w.clone()),
            Resource::Route(route) => {
                let indexed = IndexedRoute {
                    origin: origin.clone(),
                    route: route.clone(),
                };
                self.routes
                    .insert((route.kind, key.0, key.1), origin, indexed)
            }
            Resource::TrafficPolicy(tp) => {
                self.policies
                    .insert(key, origin.clone(), (origin, tp.clone()))
            }
            Resource::HttpFault(f) => self.faults.insert(key, origin, f.fault),
            Resource::EndpointSlice(s) => self.slices.insert(key, origin, s.clone()),
            Resource::AuthorizationPolicy(p) => self.authz.insert(key, origin, p.clone()),
        }
    }

    /// Updates the lookups and records the changes of every key whose definition in force
    /// differs from `before`.
    fn reconcile(&mut self, before: Before) {
        let services = changed(&self.services, before.services);
        let workloads = changed(&self.workloads, before.workloads);
        let slices = changed(&self.slices, before.slices);
        let policies = changed(&self.policies, before.policies);
        let routes_changed = !changed(&self.routes, before.routes).is_empty();
        let faults_changed = !changed(&self.faults, before.faults).is_empty();
        let authz = changed(&self.authz, before.authz);
        for (k, old, new) in &services {
            self.service_changed(k, old.as_ref(), new.as_ref());
        }
        for (k, old, new) in &workloads {
            self.workload_changed(k, old.as_ref(), new.as_ref());
        }
        for (k, old, new) in &slices {
            self.slice_changed(k, old.as_ref(), new.as_ref());
        }
        let mut targets = BTreeSet::new();
        for (k, old, new) in &policies {
            targets.extend(
                [old, new]
                    .into_iter()
                    .flatten()
                    .map(|(_, tp)| (k.0.clone(), tp.target.clone())),
            );
        }
        for service in targets {
            self.choose_traffic_policy(service);
        }
        for (k, _, _) in &authz {
            self.changes.workload_namespaces.insert(k.0.clone());
        }
        if routes_changed || faults_changed {
            self.changes.all_policies = true;
            self.warn_missing_faults();
        }
        if !authz.is_empty() || !services.is_empty() {
            self.warn_unresolved_authz_targets();
        }
    }

    fn service_changed(&mut self, k: &Key, old: Option<&Service>, new: Option<&Service>) {
        if let Some(ip) = old.and_then(|s| s.spec.cluster_ip) {
            remove_from(&mut self.lookups.service_ips, &ip, k);
            self.changes.addrs.insert(ip);
        }
        if let Some(ip) = new.and_then(|s| s.spec.cluster_ip) {
            self.lookups
                .service_ips
                .entry(ip)
                .or_default()
                .insert(k.clone());
            self.changes.addrs.insert(ip);
        }
        self.changes.services.insert(k.clone());
        // The ports and names of the workloads it selects change with it.
        self.changes.workload_namespaces.insert(k.0.clone());
    }

    fn workload_changed(
        &mut self,
        k: &Key,
        old: Option<&WorkloadEntry>,
        new: Option<&WorkloadEntry>,
    ) {
        let ns = &k.0;
        for (w, add) in [(old, false), (new, true)] {
            let Some(w) = w else { continue };
            let ip = w.spec.address;
            self.changes.addrs.insert(ip);
            match &w.spec.pod {
                Some(pod) => {
                    let pod_key = (ns.clone(), pod.name.clone());
                    if add {
                        self.lookups
                            .pods
                            .entry(pod_key.clone())
                            .or_default()
                            .insert(k.clone());
                    } else {
                        remove_from(&mut self.lookups.pods, &pod_key, k);
                    }
                    // The Services whose slices name the pod carry its identity.
                    if let Some(svcs) = self.lookups.pod_services.get(&pod_key) {
                        self.changes
                            .services
                            .extend(svcs.keys().map(|s| (ns.clone(), s.clone())));
                    }
                }
                None => {
                    for (label, value) in w.selection_labels() {
                        let lk = (ns.clone(), label, value);
                        if add {
                            self.lookups
                                .labels
                                .entry(lk)
                                .or_default()
                                .insert(k.1.clone());
                        } else {
                            remove_from(&mut self.lookups.labels, &lk, &k.1);
                        }
                    }
                    let labels = w.selection_labels();
                    let selecting: Vec<Key> = self
                        .services_in(ns)
                        .filter(|s| super::authz::selects(s, &labels))
                        .map(|s| (ns.clone(), s.metadata.name.clone()))
                        .collect();
                    self.changes.services.extend(selecting);
                }
            }
            if add {
                self.lookups
                    .workload_ips
                    .entry(ip)
                    .or_default()
                    .insert(k.clone());
            } else {
                remove_from(&mut self.lookups.workload_ips, &ip, k);
            }
        }
        self.changes.workloads.insert(k.clone());
    }

    fn slice_changed(&mut self, k: &Key, old: Option<&EndpointSlice>, new: Option<&EndpointSlice>) {
        let ns = &k.0;
        for (slice, add) in [(old, false), (new, true)] {
            let Some(slice) = slice else { continue };
            let svc = (ns.clone(), slice.service.clone());
            if add {
                self.lookups
                    .service_slices
                    .entry(svc.clone())
                    .or_default()
                    .insert(k.1.clone());
            } else {
                remove_from(&mut self.lookups.service_slices, &svc, &k.1);
            }
            for pod in slice.endpoints.iter().filter_map(|e| e.pod.as_ref()) {
                let pod_key = (ns.clone(), pod.clone());
                let counts = self
                    .lookups
                    .pod_services
                    .entry(pod_key.clone())
                    .or_default();
                let n = counts.entry(slice.service.clone()).or_default();
                if add {
                    *n += 1;
                } else {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        counts.remove(&slice.service);
                        if counts.is_empty() {
                            self.lookups.pod_services.remove(&pod_key);
                        }
                    }
                }
            }
            self.changes.services.insert(svc);
        }
    }

    /// Puts in force, for Service `service`, the oldest TrafficPolicy that targets it.
    fn choose_traffic_policy(&mut self, service: Key) {
        let (ns, name) = &service;
        let mut targeting: Vec<&(Origin, TrafficPolicy)> = self
            .policies
            .range((ns.clone(), String::new())..)
            .take_while(|((pns, _), _, _)| pns == ns)
            .filter(|(_, _, (_, tp))| tp.target == *name)
            .map(|(_, _, def)| def)
            .collect();
        targeting.sort_by(|a, b| a.0.cmp(&b.0));
        let chosen = targeting.first().map(|(_, tp)| tp.clone());
        for (origin, tp) in targeting.iter().skip(1) {
            tracing::warn!(
                file = %origin.file.display(),
                "TrafficPolicy {ns}/{} is ignored: Service {name} already has TrafficPolicy {} \
                 (from an earlier file)",
                tp.metadata.name,
                targeting[0].1.metadata.name
            );
        }
        if self.traffic_policies.get(&service) != chosen.as_ref() {
            match chosen {
                Some(tp) => self.traffic_policies.insert(service.clone(), tp),
                None => self.traffic_policies.remove(&service),
            };
            self.changes.services.insert(service);
        }
    }

    /// Logs the route rules naming an HTTPFault that does not exist.
    fn warn_missing_faults(&self) {
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

/// Removes `item` from the set at `key`, and the set when it is left empty.
fn remove_from<K: Hash + Eq, V: Ord>(map: &mut HashMap<K, BTreeSet<V>>, key: &K, item: &V) {
    if let Some(set) = map.get_mut(key) {
        set.remove(item);
        if set.is_empty() {
            map.remove(key);
        }
    }
}

#[cfg(test)]
mod tests;
