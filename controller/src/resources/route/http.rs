//! `HTTPRoute` → [`Route`]: path (default `PathPrefix /`), header, query-parameter and
//! method matches; `timeouts`; GEP-1731 `retry`; filters.

use gateway_api::experimental::httproutes::{
    HttpRouteRules, HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HeaderType,
    HttpRouteRulesMatchesMethod as Method, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType, HttpRouteSpec,
};
use mesh_proto::destination::{
    header_match, path_match, query_match, HeaderMatch, HttpMatch, PathMatch, QueryMatch,
};

use super::{
    route_parents, rule_backends, rule_fault, RawBackend, RawParent, Route, RouteKind, RouteRule,
};
use crate::resources::retry::{rule_retry, rule_timeouts, GatewayRetry, RouteAnnotations};
use crate::resources::validate::{self, Invalid};
use crate::resources::ObjectMeta;

/// Validates an `HTTPRoute` and reduces it to a [`Route`].
pub fn http_route(metadata: ObjectMeta, spec: HttpRouteSpec) -> Result<Route, Invalid> {
    let what = format!("HTTPRoute {}/{}", metadata.namespace, metadata.name);
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
        kind: RouteKind::Http,
        metadata,
        parents,
        rules,
    })
}

fn rule(
    r: &HttpRouteRules,
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
        .map(|(i, m)| http_match(m, &format!("{path}.matches[{i}]")))
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
    let timeouts = r.timeouts.as_ref();
    let (request_timeout_ms, backend_request_timeout_ms) = rule_timeouts(
        timeouts.and_then(|t| t.request.as_deref()),
        timeouts.and_then(|t| t.backend_request.as_deref()),
        ann,
        path,
    )?;
    let gw_retry = r.retry.as_ref().map(|r| GatewayRetry {
        attempts: r.attempts,
        codes: r.codes.as_deref(),
        backoff: r.backoff.as_deref(),
    });
    let retry = rule_retry(gw_retry.as_ref(), ann, false, path)?;
    Ok(RouteRule {
        matches,
        backends,
        request_timeout_ms,
        backend_request_timeout_ms,
        retry,
        fault,
    })
}

fn http_match(m: &HttpRouteRulesMatches, path: &str) -> Result<HttpMatch, Invalid> {
    let (kind, value) = match &m.path {
        None => (PathType::PathPrefix, "/".to_string()),
        Some(p) => (
            p.r#type.clone().unwrap_or(PathType::PathPrefix),
            p.value.clone().unwrap_or_else(|| "/".to_string()),
        ),
    };
    let value_path = format!("{path}.path.value");
    let kind = match kind {
        PathType::Exact | PathType::PathPrefix if !value.starts_with('/') => {
            return Err(Invalid::new(value_path, "must start with \"/\""));
        }
        PathType::Exact => path_match::Kind::Exact(value),
        PathType::PathPrefix => path_match::Kind::Prefix(value),
        PathType::RegularExpression => {
            validate::regex(&value, &value_path)?;
            path_match::Kind::Regex(value)
        }
    };
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
    let mut query_params = Vec::new();
    for (i, q) in m.query_params.iter().flatten().enumerate() {
        let qpath = format!("{path}.queryParams[{i}]");
        let regex = matches!(q.r#type, Some(QueryType::RegularExpression));
        let value = name_value(&q.name, &q.value, regex, &qpath)?;
        query_params.push(QueryMatch {
            name: q.name.clone(),
            value: Some(match value {
                Ok(v) => query_match::Value::Exact(v),
                Err(re) => query_match::Value::Regex(re),
            }),
        });
    }
    Ok(HttpMatch {
        path: Some(PathMatch { kind: Some(kind) }),
        method: m
            .method
            .as_ref()
            .map(method)
            .unwrap_or_default()
            .to_string(),
        headers,
        query_params,
    })
}

/// Checks a header/query match: a non-empty name, and a valid regex for regex matches.
/// Returns `Ok(value)` for an exact match, `Err(regex)` for a regex match.
pub(super) fn name_value(
    name: &str,
    value: &str,
    regex: bool,
    path: &str,
) -> Result<Result<String, String>, Invalid> {
    if name.is_empty() {
        return Err(Invalid::new(format!("{path}.name"), "must not be empty"));
    }
    if regex {
        validate::regex(value, &format!("{path}.value"))?;
        Ok(Err(value.to_string()))
    } else {
        Ok(Ok(value.to_string()))
    }
}

fn method(m: &Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
    }
}
