//! The rules of an `AuthorizationPolicy`: who calls (`from`: identities, namespaces,
//! service accounts, networks, plaintext) and what is called (`to`: paths, methods,
//! ports). Each value is checked and normalized here, so the proxies receive only patterns
//! they can match without further checks.

use std::net::IpAddr;

use mesh_proto::policy::{path_match, Operation, PathMatch, Rule, Source};
use serde::Deserialize;

use crate::resources::validate::Invalid;

/// The raw shape of one rule.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    #[serde(default)]
    from: Vec<SourceSpec>,
    #[serde(default)]
    to: Vec<OperationSpec>,
}

/// The raw shape of one `from` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SourceSpec {
    #[serde(default)]
    identities: Vec<String>,
    #[serde(default)]
    namespaces: Vec<String>,
    #[serde(default)]
    service_accounts: Vec<String>,
    #[serde(default)]
    networks: Vec<String>,
    #[serde(default)]
    unauthenticated: Option<bool>,
}

/// The raw shape of one `to` entry.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OperationSpec {
    #[serde(default)]
    paths: Vec<PathSpec>,
    #[serde(default)]
    methods: Vec<String>,
    #[serde(default)]
    ports: Vec<i64>,
}

/// The raw shape of one path match: exactly one of the two.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PathSpec {
    #[serde(default)]
    exact: Option<String>,
    #[serde(default)]
    prefix: Option<String>,
}

/// Validates rule `spec` (at `path`) of a policy in `namespace` and converts it.
pub(super) fn rule(spec: &RuleSpec, namespace: &str, path: &str) -> Result<Rule, Invalid> {
    let from = spec
        .from
        .iter()
        .enumerate()
        .map(|(i, s)| source(s, namespace, &format!("{path}.from[{i}]")))
        .collect::<Result<_, _>>()?;
    let to = spec
        .to
        .iter()
        .enumerate()
        .map(|(i, o)| operation(o, &format!("{path}.to[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(Rule { from, to })
}

fn source(spec: &SourceSpec, namespace: &str, path: &str) -> Result<Source, Invalid> {
    let unauthenticated = spec.unauthenticated.unwrap_or(false);
    let names_identity = !spec.identities.is_empty()
        || !spec.namespaces.is_empty()
        || !spec.service_accounts.is_empty();
    if unauthenticated && names_identity {
        // Every non-empty field must match, and a plaintext caller has no identity: the
        // entry could only match authenticated callers, which is surely not what was meant.
        return Err(Invalid::new(
            format!("{path}.unauthenticated"),
            "cannot be combined with identities, namespaces or serviceAccounts \
             (an unauthenticated caller has none); use a separate from entry",
        ));
    }
    let each =
        |field: &str, values: &[String], check: &dyn Fn(&str, &str) -> Result<String, Invalid>| {
            values
                .iter()
                .enumerate()
                .map(|(i, v)| check(v, &format!("{path}.{field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
    Ok(Source {
        identities: each("identities", &spec.identities, &identity)?,
        namespaces: each("namespaces", &spec.namespaces, &namespace_pattern)?,
        service_accounts: each("serviceAccounts", &spec.service_accounts, &|v, p| {
            service_account(v, namespace, p)
        })?,
        networks: each("networks", &spec.networks, &network)?,
        unauthenticated,
    })
}

fn operation(spec: &OperationSpec, path: &str) -> Result<Operation, Invalid> {
    let paths = spec
        .paths
        .iter()
        .enumerate()
        .map(|(i, p)| path_match(p, &format!("{path}.paths[{i}]")))
        .collect::<Result<_, _>>()?;
    let methods = spec
        .methods
        .iter()
        .enumerate()
        .map(|(i, m)| method(m, &format!("{path}.methods[{i}]")))
        .collect::<Result<_, _>>()?;
    let ports = spec
        .ports
        .iter()
        .enumerate()
        .map(|(i, p)| match u16::try_from(*p) {
            Ok(p) if p != 0 => Ok(u32::from(p)),
            _ => Err(Invalid::new(
                format!("{path}.ports[{i}]"),
                format!("port {p} is outside 1-65535"),
            )),
        })
        .collect::<Result<_, _>>()?;
    Ok(Operation {
        paths,
        methods,
        ports,
    })
}

// === value checks ===

/// A SPIFFE ID pattern: `*`, or a `spiffe://` ID in which `*` matches any run of characters.
fn identity(value: &str, path: &str) -> Result<String, Invalid> {
    let ok = value == "*"
        || value
            .strip_prefix("spiffe://")
            .is_some_and(|rest| !rest.is_empty());
    if ok {
        Ok(value.to_string())
    } else {
        Err(Invalid::new(
            path,
            format!("{value:?} is not a SPIFFE ID pattern (spiffe://<trust domain>/..., or *)"),
        ))
    }
}

/// A namespace name (a DNS label) or `*`.
fn namespace_pattern(value: &str, path: &str) -> Result<String, Invalid> {
    if value == "*" || is_dns_label(value) {
        Ok(value.to_string())
    } else {
        Err(Invalid::new(
            path,
            format!("{value:?} is not a namespace name (lower-case DNS label) or *"),
        ))
    }
}

/// A service account `name` (in the policy's namespace) or `namespace/name`, normalized to
/// `namespace/name`.
fn service_account(value: &str, namespace: &str, path: &str) -> Result<String, Invalid> {
    let (ns, name) = value.split_once('/').unwrap_or((namespace, value));
    if is_dns_label(ns) && is_dns_subdomain(name) {
        Ok(format!("{ns}/{name}"))
    } else {
        Err(Invalid::new(
            path,
            format!("{value:?} is not a service account (name or namespace/name)"),
        ))
    }
}

/// A CIDR, or a bare IP address (a single host), normalized to its network address and
/// prefix length (`10.0.0.1` → `10.0.0.1/32`, `10.1.2.3/8` → `10.0.0.0/8`).
fn network(value: &str, path: &str) -> Result<String, Invalid> {
    let bad = |why: &str| Invalid::new(path, format!("invalid network {value:?}: {why}"));
    let (addr, len) = match value.split_once('/') {
        Some((addr, len)) => (addr, Some(len)),
        None => (value, None),
    };
    let ip: IpAddr = addr
        .parse()
        .map_err(|_| bad("expected a CIDR such as 10.0.0.0/8, or an IP address"))?;
    let max: u8 = if ip.is_ipv4() { 32 } else { 128 };
    let len = match len {
        None => max,
        Some(len) => len
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= max && len.bytes().all(|b| b.is_ascii_digit()))
            .ok_or_else(|| bad(&format!("prefix length must be 0-{max}")))?,
    };
    let net = match ip {
        IpAddr::V4(v4) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
            IpAddr::from((u32::from(v4) & mask).to_be_bytes())
        }
        IpAddr::V6(v6) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
            IpAddr::from((u128::from(v6) & mask).to_be_bytes())
        }
    };
    Ok(format!("{net}/{len}"))
}

/// An HTTP method: an RFC 9110 token, upper-cased.
fn method(value: &str, path: &str) -> Result<String, Invalid> {
    let tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    if !value.is_empty() && value.bytes().all(tchar) {
        Ok(value.to_ascii_uppercase())
    } else {
        Err(Invalid::new(
            path,
            format!("{value:?} is not an HTTP method"),
        ))
    }
}

/// A path match with exactly one of `exact` and `prefix`, starting with `/`.
fn path_match(spec: &PathSpec, path: &str) -> Result<PathMatch, Invalid> {
    let (kind, value) = match (&spec.exact, &spec.prefix) {
        (Some(v), None) => (path_match::Kind::Exact(v.clone()), v),
        (None, Some(v)) => (path_match::Kind::Prefix(v.clone()), v),
        _ => return Err(Invalid::new(path, "set exactly one of exact and prefix")),
    };
    if !value.starts_with('/') {
        return Err(Invalid::new(
            path,
            format!("{value:?} does not start with /"),
        ));
    }
    Ok(PathMatch { kind: Some(kind) })
}

/// A DNS-1123 label: 1–63 lower-case alphanumerics or `-`, alphanumeric at both ends.
fn is_dns_label(s: &str) -> bool {
    let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| alnum(b) || b == b'-')
        && s.bytes().next().is_some_and(alnum)
        && s.bytes().last().is_some_and(alnum)
}

/// A DNS-1123 subdomain (the form of service account names): dot-separated labels, at
/// most 253 characters.
fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}
