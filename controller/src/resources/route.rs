//! Gateway API routes (`HTTPRoute`, `GRPCRoute`) reduced to what the mesh uses: parent
//! Services, and per rule the request matches (already in the proto's shape), weighted
//! backend Services, timeouts, retries and an optional `HTTPFault` reference. Parsed from
//! the `gateway-api` crate's types and fully validated, so a [`Route`] in the index is
//! always compilable.

mod grpc;
mod http;

use mesh_proto::destination::{HttpMatch, RetryPolicy};

use super::validate::Invalid;
use super::ObjectMeta;

pub use self::grpc::grpc_route;
pub use self::http::http_route;

/// `apiVersion` of Gateway API's standard kinds.
pub const GATEWAY_V1: &str = "gateway.networking.k8s.io/v1";
/// `apiVersion` of the older `HTTPRoute` version, accepted with the same schema.
pub const GATEWAY_V1BETA1: &str = "gateway.networking.k8s.io/v1beta1";
/// Largest backend weight Gateway API allows.
pub const MAX_WEIGHT: i64 = 1_000_000;

/// Which Gateway API kind a [`Route`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RouteKind {
    /// `HTTPRoute`.
    Http,
    /// `GRPCRoute`.
    Grpc,
}

impl RouteKind {
    /// The Kubernetes kind, e.g. `HTTPRoute`.
    pub fn kind(self) -> &'static str {
        match self {
            RouteKind::Http => "HTTPRoute",
            RouteKind::Grpc => "GRPCRoute",
        }
    }

    /// The lower-case prefix of route names in metrics, e.g. `httproute`.
    pub fn prefix(self) -> &'static str {
        match self {
            RouteKind::Http => "httproute",
            RouteKind::Grpc => "grpcroute",
        }
    }
}

/// A validated `HTTPRoute` or `GRPCRoute`.
#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    /// Which kind it is.
    pub kind: RouteKind,
    /// Name, namespace, annotations.
    pub metadata: ObjectMeta,
    /// The Services it attaches to (parentRefs of other kinds are dropped).
    pub parents: Vec<ParentRef>,
    /// Its rules, in order (the index is part of each compiled route's name).
    pub rules: Vec<RouteRule>,
}

/// A `parentRef` naming a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParentRef {
    /// The Service's namespace (the route's when unset).
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port; `None` attaches to every port.
    pub port: Option<u16>,
}

impl ParentRef {
    /// Whether this parentRef selects port `port` of Service `namespace/name`.
    pub fn selects(&self, namespace: &str, name: &str, port: u16) -> bool {
        self.namespace == namespace && self.name == name && self.port.is_none_or(|p| p == port)
    }
}

/// One rule of a route.
#[derive(Clone, Debug, PartialEq)]
pub struct RouteRule {
    /// Request matches, one compiled route each; empty matches every request.
    pub matches: Vec<HttpMatch>,
    /// Weighted backends; `None` when the rule has no `backendRefs` (traffic goes to the
    /// parent Service itself); `Some(empty)` when every backendRef was unusable.
    pub backends: Option<Vec<BackendRef>>,
    /// Whole-request timeout in milliseconds, 0 = none.
    pub request_timeout_ms: u32,
    /// Per-attempt timeout in milliseconds, 0 = none.
    pub backend_request_timeout_ms: u32,
    /// Retry policy, if any.
    pub retry: Option<RetryPolicy>,
    /// Name of the `HTTPFault` (in the route's namespace) an `ExtensionRef` filter names.
    pub fault: Option<String>,
}

/// A weighted backend Service port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendRef {
    /// The Service's namespace (the route's when unset).
    pub namespace: String,
    /// The Service's name.
    pub name: String,
    /// The Service port.
    pub port: u16,
    /// Relative weight, 0–1 000 000 (default 1).
    pub weight: u32,
}

// === shared conversions ===

/// Whether `group`/`kind` name a core `Service` (`kind` defaults to `default_kind`).
fn is_service(group: Option<&str>, kind: Option<&str>, default_kind: &str) -> bool {
    matches!(group.unwrap_or(""), "" | "core") && kind.unwrap_or(default_kind) == "Service"
}

/// The fields of a `parentRef` (identical in every route kind).
pub(crate) struct RawParent<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
}

/// A `parentRef` → `Some` for a Service, `None` (debug-logged) for anything else.
/// A route's Service parents, from its raw `parentRefs` (others are dropped).
fn route_parents<'a>(
    raws: impl Iterator<Item = RawParent<'a>>,
    meta: &ObjectMeta,
    what: &str,
) -> Result<Vec<ParentRef>, Invalid> {
    let mut parents = Vec::new();
    for (i, raw) in raws.enumerate() {
        parents.extend(parent_ref(
            raw,
            meta,
            what,
            &format!("spec.parentRefs[{i}]"),
        )?);
    }
    Ok(parents)
}

fn parent_ref(
    raw: RawParent<'_>,
    meta: &ObjectMeta,
    what: &str,
    path: &str,
) -> Result<Option<ParentRef>, Invalid> {
    // Gateway API's default parent kind is Gateway.
    if !is_service(raw.group, raw.kind, "Gateway") {
        tracing::debug!(
            route = %what,
            group = raw.group.unwrap_or(""),
            kind = raw.kind.unwrap_or("Gateway"),
            name = raw.name,
            "ignoring parentRef that is not a Service"
        );
        return Ok(None);
    }
    if raw.name.is_empty() {
        return Err(Invalid::new(format!("{path}.name"), "missing Service name"));
    }
    let port = raw
        .port
        .map(|p| port(i64::from(p), &format!("{path}.port")))
        .transpose()?;
    Ok(Some(ParentRef {
        namespace: raw.namespace.unwrap_or(&meta.namespace).to_string(),
        name: raw.name.to_string(),
        port,
    }))
}

/// The fields of a `backendRef` (identical in every route kind).
pub(crate) struct RawBackend<'a> {
    group: Option<&'a str>,
    kind: Option<&'a str>,
    name: &'a str,
    namespace: Option<&'a str>,
    port: Option<i32>,
    weight: Option<i32>,
}

/// A `backendRef` → `Some` for a Service port, `None` (warn-logged: its share of traffic
/// is lost, as Gateway API says for unsupported backends) for other kinds.
fn backend_ref(
    raw: RawBackend<'_>,
    meta: &ObjectMeta,
    what: &str,
    path: &str,
) -> Result<Option<BackendRef>, Invalid> {
    if !is_service(raw.group, raw.kind, "Service") {
        tracing::warn!(
            route = %what,
            group = raw.group.unwrap_or(""),
            kind = raw.kind.unwrap_or(""),
            name = raw.name,
            "ignoring backendRef that is not a Service"
        );
        return Ok(None);
    }
    if raw.name.is_empty() {
        return Err(Invalid::new(format!("{path}.name"), "missing Service name"));
    }
    let port = match raw.port {
        Some(p) => port(i64::from(p), &format!("{path}.port"))?,
        None => {
            return Err(Invalid::new(
                format!("{path}.port"),
                "required for a Service backend",
            ))
        }
    };
    let weight = i64::from(raw.weight.unwrap_or(1));
    if !(0..=MAX_WEIGHT).contains(&weight) {
        return Err(Invalid::new(
            format!("{path}.weight"),
            format!("{weight} is outside 0-{MAX_WEIGHT}"),
        ));
    }
    Ok(Some(BackendRef {
        namespace: raw.namespace.unwrap_or(&meta.namespace).to_string(),
        name: raw.name.to_string(),
        port,
        weight: weight as u32,
    }))
}

/// A port number, 1–65535.
fn port(p: i64, path: &str) -> Result<u16, Invalid> {
    match u16::try_from(p) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(Invalid::new(path, format!("port {p} is outside 1-65535"))),
    }
}

/// API group of the mesh's own filter kinds.
pub const POLICY_GROUP: &str = "policy.mesh.dev";

/// A rule filter: an `ExtensionRef` to an `HTTPFault` gives its name; any other filter is
/// ignored (debug-logged). `ext` is `(group, kind, name)` of the filter's `extensionRef`.
fn fault_filter(
    filter_type: &str,
    ext: Option<(&str, &str, &str)>,
    what: &str,
    path: &str,
) -> Result<Option<String>, Invalid> {
    match (filter_type, ext) {
        ("ExtensionRef", Some((POLICY_GROUP, "HTTPFault", name))) => {
            if name.is_empty() {
                return Err(Invalid::new(
                    format!("{path}.extensionRef.name"),
                    "missing HTTPFault name",
                ));
            }
            Ok(Some(name.to_string()))
        }
        ("ExtensionRef", None) => Err(Invalid::new(
            format!("{path}.extensionRef"),
            "required for an ExtensionRef filter",
        )),
        _ => {
            tracing::debug!(
                route = %what,
                filter = filter_type,
                extension = ?ext,
                "ignoring unsupported filter"
            );
            Ok(None)
        }
    }
}

/// Keeps the first fault reference of a rule; a second one is an error.
/// A rule's backends, from its raw `backendRefs`. `None` when the list is
/// absent or empty (`backendRefs: []` means the same as none): the parent
/// Service is then the backend.
fn rule_backends<'a>(
    refs: Option<Vec<RawBackend<'a>>>,
    meta: &ObjectMeta,
    what: &str,
    path: &str,
) -> Result<Option<Vec<BackendRef>>, Invalid> {
    let Some(refs) = refs else {
        return Ok(None);
    };
    let empty = refs.is_empty();
    let mut out = Vec::new();
    for (i, raw) in refs.into_iter().enumerate() {
        out.extend(backend_ref(
            raw,
            meta,
            what,
            &format!("{path}.backendRefs[{i}]"),
        )?);
    }
    Ok((!empty).then_some(out))
}

/// The one HTTPFault a rule's filters name, if any. Each filter is given as
/// its type (debug-formatted) and its extensionRef (group, kind, name).
fn rule_fault<'a>(
    filters: impl Iterator<Item = (String, Option<(&'a str, &'a str, &'a str)>)>,
    what: &str,
    path: &str,
) -> Result<Option<String>, Invalid> {
    let mut fault = None;
    for (i, (filter_type, ext)) in filters.enumerate() {
        let fpath = format!("{path}.filters[{i}]");
        if let Some(name) = fault_filter(&filter_type, ext, what, &fpath)? {
            set_fault(&mut fault, name, &fpath)?;
        }
    }
    Ok(fault)
}

fn set_fault(slot: &mut Option<String>, name: String, path: &str) -> Result<(), Invalid> {
    if slot.is_some() {
        return Err(Invalid::new(path, "only one HTTPFault filter per rule"));
    }
    *slot = Some(name);
    Ok(())
}

#[cfg(test)]
mod tests;
