//! `GRPCRoute` → [`Route`]. A gRPC method match becomes a path match on `/<service>/<method>`:
//! both set → exact path; service only → prefix `/<service>` (segment boundary, so it
//! matches every method of the service); method only → regex `/[^/]+/<method>`. With
//! `type: RegularExpression` the parts are regexes and the result is always a path regex.
//! GRPCRoute has no `timeouts` or `retry` fields: the route annotations configure them.

use gateway_api::experimental::grpcroutes::{
    GrpcRouteRules, GrpcRouteRulesMatches, GrpcRouteRulesMatchesHeadersType as HeaderType,
    GrpcRouteRulesMatchesMethod, GrpcRouteRulesMatchesMethodType as MethodType, GrpcRouteSpec,
};
use mesh_proto::destination::{header_match, path_match, HeaderMatch, HttpMatch, PathMatch};

use super::http::name_value;
use super::{
    route_parents, rule_backends, rule_fault, RawBackend, RawParent, Route, RouteKind, RouteRule,
};
use crate::resources::retry::{rule_retry, rule_timeouts, RouteAnnotations};
use crate::resources::validate::{self, Invalid};
use crate::resources::ObjectMeta;

/// Validates a `GRPCRoute` and reduces it to a [`Route`].
pub fn grpc_route(metadata: ObjectMeta, spec: GrpcRouteSpec) -> Result<Route, Invalid> {
    let what = format!("GRPCRoute {}/{}", metadata.namespace, metadata.name);
    let ann = RouteAnnotations::parse(&metadata.annotations)?;
    let raws = spec.parent_refs.iter().flatten().map(|p| RawParent {
        group: p.group.as_deref(),
        kind: p.kind.as_deref(),
        name: &p.name,
        namespace: p.namespace.as_deref(),
        port: p.port,
    });
    let parents = route_parents(raws, &metadata, &what)?;
    let rules = spec
        .rules
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, r)| rule(r, &metadata, &ann, &what, &format!("spec.rules[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Route {
        kind: RouteKind::Grpc,
        metadata,
        parents,
        rules,
    })
}

fn rule(
    r: &GrpcRouteRules,
    meta: &ObjectMeta,
    ann: &RouteAnnotations,
    what: &str,
    path: &str,
) -> Result<RouteRule, Invalid> {
    let matches = r
        .matches
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, m)| grpc_match(m, &format!("{path}.matches[{i}]")))
        .collect::<Result<_, _>>()?;
    let raw = r.backend_refs.as_ref().map(|refs| {
        refs.iter()
            .map(|b| RawBackend {
                group: b.group.as_deref(),
                kind: b.kind.as_deref(),
                name: &b.name,
                namespace: b.namespace.as_deref(),
                port: b.port,
                weight: b.weight,
            })
            .collect()
    });
    let backends = rule_backends(raw, meta, what, path)?;
    let filters = r.filters.iter().flatten().map(|f| {
        let ext = f
            .extension_ref
            .as_ref()
            .map(|e| (e.group.as_str(), e.kind.as_str(), e.name.as_str()));
        (format!("{:?}", f.r#type), ext)
    });
    let fault = rule_fault(filters, what, path)?;
    let (request_timeout_ms, backend_request_timeout_ms) = rule_timeouts(None, None, ann, path)?;
    let retry = rule_retry(None, ann, true, path)?;
    Ok(RouteRule {
        matches,
        backends,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
        fault,
    })
}

fn grpc_match(m: &GrpcRouteRulesMatches, path: &str) -> Result<HttpMatch, Invalid> {
    let path_kind = m
        .method
        .as_ref()
        .map(|method| method_path(method, &format!("{path}.method")))
        .transpose()?;
    let mut headers = Vec::new();
    for (i, h) in m.headers.iter().flatten().enumerate() {
        let hpath = format!("{path}.headers[{i}]");
        let regex = matches!(h.r#type, Some(HeaderType::RegularExpression));
        let value = name_value(&h.name, &h.value, regex, &hpath)?;
        headers.push(HeaderMatch {
            name: h.name.to_ascii_lowercase(),
            value: Some(match value {
                Ok(v) => header_match::Value::Exact(v),
                Err(re) => header_match::Value::Regex(re),
            }),
        });
    }
    Ok(HttpMatch {
        path: path_kind.map(|kind| PathMatch { kind: Some(kind) }),
        method: String::new(),
        headers,
        query_params: Vec::new(),
    })
}

/// The path match of a gRPC method match (`path` is the `method` field's path).
fn method_path(m: &GrpcRouteRulesMatchesMethod, path: &str) -> Result<path_match::Kind, Invalid> {
    let service = m.service.as_deref().filter(|s| !s.is_empty());
    let method = m.method.as_deref().filter(|s| !s.is_empty());
    let regex = matches!(m.r#type, Some(MethodType::RegularExpression));
    if regex {
        if let Some(s) = service {
            validate::regex(s, &format!("{path}.service"))?;
        }
        if let Some(me) = method {
            validate::regex(me, &format!("{path}.method"))?;
        }
    } else {
        for (field, v) in [("service", service), ("method", method)] {
            if v.is_some_and(|v| v.contains('/')) {
                return Err(Invalid::new(
                    format!("{path}.{field}"),
                    "must not contain \"/\"",
                ));
            }
        }
    }
    let kind = match (service, method, regex) {
        (None, None, _) => {
            return Err(Invalid::new(path, "one of service or method is required"));
        }
        (Some(s), Some(me), false) => path_match::Kind::Exact(format!("/{s}/{me}")),
        (Some(s), None, false) => path_match::Kind::Prefix(format!("/{s}")),
        (None, Some(me), false) => {
            path_match::Kind::Regex(format!("/[^/]+/{}", regex_lite::escape(me)))
        }
        (Some(s), Some(me), true) => path_match::Kind::Regex(format!("/(?:{s})/(?:{me})")),
        (Some(s), None, true) => path_match::Kind::Regex(format!("/(?:{s})/[^/]+")),
        (None, Some(me), true) => path_match::Kind::Regex(format!("/[^/]+/(?:{me})")),
    };
    Ok(kind)
}
