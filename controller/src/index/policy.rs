//! Client-side policy of a target (`Destination.GetPolicy`), compiled from the index: the
//! HTTPRoutes/GRPCRoutes attached to a Service port become one proto `Route` per match,
//! ordered by Gateway API precedence; the Service itself is the default route; its
//! TrafficPolicy (or the defaults) gives the balancer and retry budget. Pure functions.

use std::cmp::Reverse;

use mesh_proto::destination::{
    path_match, Backend, Fault, HttpMatch, ProtocolHint, Route, ServicePolicy,
};

use super::{service_port_hint, Index, IndexedRoute, Origin, Target};
use crate::resources::traffic::{default_balancer, default_retry_budget};
use crate::resources::RouteRule;

/// Name of the route for requests no other route matches.
pub const DEFAULT_ROUTE: &str = "default";

/// The order of compiled routes: Gateway API precedence. Smaller sorts first, i.e. wins.
///
/// Exact path, then path prefix (longer first), then regex path; then a route with a
/// method before one without; then more header matches; then more query-parameter
/// matches; then the older resource (file path, then position in the file); then the
/// route name, rule index and match index.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Precedence {
    path_rank: u8,
    path_len: Reverse<usize>,
    no_method: bool,
    headers: Reverse<usize>,
    query_params: Reverse<usize>,
    origin: Origin,
    name: String,
    rule: usize,
    match_index: usize,
}

/// The precedence of match `m` (`None` for a rule without matches, which matches like a
/// `/` prefix) of rule `rule` of the route `name` read at `origin`.
pub fn route_precedence(
    m: Option<&HttpMatch>,
    origin: &Origin,
    name: &str,
    rule: usize,
    match_index: usize,
) -> Precedence {
    let kind = m
        .and_then(|m| m.path.as_ref())
        .and_then(|p| p.kind.as_ref());
    let (path_rank, path_len) = match kind {
        Some(path_match::Kind::Exact(p)) => (0, p.len()),
        Some(path_match::Kind::Prefix(p)) => (1, p.len()),
        // No path matches every path, like the prefix `/`.
        None => (1, 1),
        Some(path_match::Kind::Regex(_)) => (2, 0),
    };
    Precedence {
        path_rank,
        path_len: Reverse(path_len),
        no_method: m.is_none_or(|m| m.method.is_empty()),
        headers: Reverse(m.map_or(0, |m| m.headers.len())),
        query_params: Reverse(m.map_or(0, |m| m.query_params.len())),
        origin: origin.clone(),
        name: name.to_string(),
        rule,
        match_index,
    }
}

/// The canonical target of a Service port, `name.ns.svc.<cluster-domain>:port`.
pub fn service_target(namespace: &str, name: &str, port: u16, cluster_domain: &str) -> String {
    let domain = cluster_domain.trim_matches('.');
    format!("{name}.{namespace}.svc.{domain}:{port}")
}

/// The routes of port `port` of Service `namespace/name`: every rule of every route in
/// `routes` with a parentRef selecting that port, one [`Route`] per match, in precedence
/// order. `fault` looks up an HTTPFault by namespace and name; a rule naming a missing
/// one gets no backends (the proxy answers 500).
pub fn compile_routes<'a>(
    routes: impl IntoIterator<Item = &'a IndexedRoute>,
    namespace: &str,
    name: &str,
    port: u16,
    cluster_domain: &str,
    fault: impl Fn(&str, &str) -> Option<Fault>,
) -> Vec<Route> {
    let parent = service_target(namespace, name, port, cluster_domain);
    let mut out = Vec::new();
    for IndexedRoute { origin, route } in routes {
        if !route
            .parents
            .iter()
            .any(|p| p.selects(namespace, name, port))
        {
            continue;
        }
        let meta = &route.metadata;
        let base = format!("{}/{}/{}", route.kind.prefix(), meta.namespace, meta.name);
        for (i, rule) in route.rules.iter().enumerate() {
            let compiled =
                compile_rule(rule, &format!("{base}/{i}"), &parent, cluster_domain, |f| {
                    fault(&meta.namespace, f)
                });
            if rule.matches.is_empty() {
                out.push((route_precedence(None, origin, &base, i, 0), compiled));
                continue;
            }
            for (j, m) in rule.matches.iter().enumerate() {
                let key = route_precedence(Some(m), origin, &base, i, j);
                out.push((
                    key,
                    Route {
                        matches: vec![m.clone()],
                        ..compiled.clone()
                    },
                ));
            }
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out.into_iter().map(|(_, r)| r).collect()
}

/// One rule as a route with all its matches. `parent` is the target of the Service the
/// route is attached to, the backend of a rule without backendRefs. A rule whose backends
/// all have weight 0, or whose HTTPFault is missing, gets no backends.
fn compile_rule(
    rule: &RouteRule,
    name: &str,
    parent: &str,
    cluster_domain: &str,
    fault: impl Fn(&str) -> Option<Fault>,
) -> Route {
    let mut backends: Vec<Backend> = match &rule.backends {
        None => vec![Backend {
            target: parent.to_string(),
            weight: 1,
        }],
        Some(refs) => refs
            .iter()
            .map(|b| Backend {
                target: service_target(&b.namespace, &b.name, b.port, cluster_domain),
                weight: b.weight,
            })
            .collect(),
    };
    if backends.iter().all(|b| b.weight == 0) {
        backends.clear();
    }
    let fault = match &rule.fault {
        None => None,
        Some(f) => {
            let found = fault(f);
            if found.is_none() {
                backends.clear();
            }
            found
        }
    };
    Route {
        name: name.to_string(),
        matches: rule.matches.clone(),
        backends,
        request_timeout_ms: rule.request_timeout_ms,
        backend_request_timeout_ms: rule.backend_request_timeout_ms,
        retry: rule.retry.clone(),
        fault,
    }
}

/// The route for requests no route matches: everything to `target`, no timeout, no retry.
pub fn default_route(target: &str) -> Route {
    Route {
        name: DEFAULT_ROUTE.to_string(),
        matches: Vec::new(),
        backends: vec![Backend {
            target: target.to_string(),
            weight: 1,
        }],
        request_timeout_ms: 0,
        backend_request_timeout_ms: 0,
        retry: None,
        fault: None,
    }
}

// === impl Index ===

impl Index {
    /// The policy of `target`; `raw` is the target as the client spelled it. A Service
    /// port (by name or cluster IP) gets its routes and TrafficPolicy, with the Service
    /// port as the default route; any other target gets no routes, default settings and
    /// itself as the default route.
    pub fn service_policy(&self, target: &Target, raw: &str) -> ServicePolicy {
        let domain = &self.config.cluster_domain;
        let Some((svc, port)) = self.service_port(target) else {
            let (service, own) = match target {
                Target::Service {
                    name,
                    namespace,
                    port,
                } => (
                    format!("{name}.{namespace}"),
                    service_target(namespace, name, *port, domain),
                ),
                _ => (String::new(), raw.to_string()),
            };
            let workload = match target {
                Target::Addr(addr) => self.workload_at(*addr).map(|w| (w, addr)),
                _ => None,
            };
            let opaque = workload.is_some_and(|(w, addr)| {
                super::endpoints::annotated_opaque(&w.metadata.annotations, addr.port())
            });
            return ServicePolicy {
                service,
                routes: Vec::new(),
                default_route: Some(default_route(&own)),
                opaque,
                balancer: Some(default_balancer()),
                retry_budget: Some(default_retry_budget()),
                // A workload the index knows is named by its address; what it
                // does not know has no name (proxies label it `external`).
                authority: workload
                    .map(|(_, addr)| addr.to_string())
                    .unwrap_or_default(),
            };
        };
        let (ns, name) = (&svc.metadata.namespace, &svc.metadata.name);
        let routes = compile_routes(self.routes(), ns, name, port.port, domain, |ns, f| {
            self.fault(ns, f).cloned()
        });
        let tp = self.traffic_policy(ns, name);
        let authority = service_target(ns, name, port.port, domain);
        ServicePolicy {
            service: format!("{name}.{ns}"),
            routes,
            default_route: Some(default_route(&authority)),
            opaque: service_port_hint(svc, port) == ProtocolHint::Opaque,
            balancer: Some(tp.map_or_else(default_balancer, |tp| tp.balancer)),
            retry_budget: Some(tp.map_or_else(default_retry_budget, |tp| tp.retry_budget)),
            authority,
        }
    }
}

#[cfg(test)]
mod tests;
