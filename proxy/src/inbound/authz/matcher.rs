//! Matchers of one rule's sources (who calls) and operations (what is
//! called), compiled from the proto.

use super::{Call, Caller, Cidr};
use mesh_proto::policy as pb;

/// A `from` entry: every non-empty field must match.
#[derive(Debug)]
pub struct Source {
    identities: Vec<String>,
    namespaces: Vec<String>,
    /// `namespace/name`.
    service_accounts: Vec<String>,
    networks: Vec<Cidr>,
    unauthenticated: bool,
    unmatchable: bool,
}

impl Source {
    /// Compiles `s`; a network that does not parse is dropped (logged),
    /// which narrows the rule rather than widening it.
    pub fn compile(s: &pb::Source, policy: &str) -> Self {
        let networks = s
            .networks
            .iter()
            .filter_map(|n| match n.parse() {
                Ok(c) => Some(c),
                Err(error) => {
                    tracing::warn!(policy, %error, "ignoring an invalid network");
                    None
                }
            })
            .collect::<Vec<_>>();
        Source {
            identities: s.identities.clone(),
            namespaces: s.namespaces.clone(),
            service_accounts: s.service_accounts.clone(),
            unauthenticated: s.unauthenticated,
            // Every network invalid: match nobody rather than everybody.
            unmatchable: networks.is_empty() && !s.networks.is_empty(),
            networks,
        }
    }

    pub fn matches(&self, caller: &Caller<'_>) -> bool {
        if self.unmatchable {
            return false;
        }
        if !self.networks.is_empty() && !self.networks.iter().any(|n| n.contains(caller.addr)) {
            return false;
        }
        let Some(id) = caller.identity else {
            return self.unauthenticated;
        };
        if !self.identities.is_empty() && !self.identities.iter().any(|p| glob(p, id)) {
            return false;
        }
        let (ns, sa) = ns_sa(id).unwrap_or_default();
        if !self.namespaces.is_empty() && !self.namespaces.iter().any(|n| n == "*" || n == ns) {
            return false;
        }
        if !self.service_accounts.is_empty()
            && !self.service_accounts.iter().any(|s| {
                s.split_once('/')
                    .is_some_and(|(n, a)| n == ns && a == sa && !ns.is_empty())
            })
        {
            return false;
        }
        true
    }
}

/// An operation (`to` entry): every non-empty field must match.
#[derive(Debug)]
pub struct Operation {
    paths: Vec<pb::path_match::Kind>,
    methods: Vec<http::Method>,
    ports: Vec<u16>,
}

impl Operation {
    pub fn compile(o: &pb::Operation) -> Self {
        Operation {
            paths: o.paths.iter().filter_map(|p| p.kind.clone()).collect(),
            // A method that is not a token can never be requested.
            methods: o
                .methods
                .iter()
                .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
                .collect(),
            ports: o
                .ports
                .iter()
                .filter_map(|p| u16::try_from(*p).ok())
                .collect(),
        }
    }

    /// `lenient`: on an opaque connection, path and method conditions are
    /// ignored instead of failing the match.
    pub fn matches(&self, call: &Call<'_>, lenient: bool) -> bool {
        if !self.ports.is_empty() && !self.ports.contains(&call.port) {
            return false;
        }
        let http_only = !self.paths.is_empty() || !self.methods.is_empty();
        let Some((method, path)) = call.http else {
            return !http_only || lenient;
        };
        if !self.methods.is_empty() && !self.methods.iter().any(|m| m == method) {
            return false;
        }
        self.paths.is_empty()
            || self.paths.iter().any(|p| match p {
                pb::path_match::Kind::Exact(e) => e == path,
                pb::path_match::Kind::Prefix(pre) => prefix_match(pre, path),
            })
    }
}

/// Prefix matching on path segments: `/api` matches `/api` and `/api/x`,
/// not `/apix` (a trailing `/` in the prefix is ignored).
fn prefix_match(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    match path.strip_prefix(prefix) {
        Some(rest) => rest.is_empty() || rest.starts_with('/') || prefix.is_empty(),
        None => false,
    }
}

/// Namespace and service account of `spiffe://<td>/ns/<ns>/sa/<sa>`.
fn ns_sa(id: &str) -> Option<(&str, &str)> {
    let rest = id.strip_prefix("spiffe://")?;
    let (_, rest) = rest.split_once("/ns/")?;
    rest.split_once("/sa/")
}

/// Glob matching where `*` matches any run of characters (none included).
pub fn glob(pattern: &str, s: &str) -> bool {
    let Some((head, tail)) = pattern.split_once('*') else {
        return pattern == s;
    };
    let Some(rest) = s.strip_prefix(head) else {
        return false;
    };
    let (middle, last) = tail.rsplit_once('*').unwrap_or(("", tail));
    let Some(mut rest) = rest.strip_suffix(last) else {
        return false;
    };
    for part in middle.split('*').filter(|p| !p.is_empty()) {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    true
}
