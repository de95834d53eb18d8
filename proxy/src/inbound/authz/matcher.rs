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
    /// An entry did not compile (the controller validates, so only a
    /// version mismatch gets here).
    invalid: bool,
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
                    tracing::warn!(policy, %error, "invalid network in a rule");
                    None
                }
            })
            .collect::<Vec<_>>();
        Source {
            identities: s.identities.clone(),
            namespaces: s.namespaces.clone(),
            service_accounts: s.service_accounts.clone(),
            unauthenticated: s.unauthenticated,
            invalid: networks.len() != s.networks.len(),
            networks,
        }
    }

    /// `deny`: a source with an entry it cannot compile matches everyone
    /// (for an allow policy, no one).
    pub fn matches(&self, caller: &Caller<'_>, deny: bool) -> bool {
        if self.invalid {
            return deny;
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
        if self.namespaces.is_empty() && self.service_accounts.is_empty() {
            return true;
        }
        // Namespace and service-account conditions need a well-formed ID.
        let Some((ns, sa)) = ns_sa(id) else {
            return false;
        };
        (self.namespaces.is_empty() || self.namespaces.iter().any(|n| n == "*" || n == ns))
            && (self.service_accounts.is_empty()
                || self
                    .service_accounts
                    .iter()
                    .any(|s| s.split_once('/') == Some((ns, sa))))
    }
}

/// An operation (`to` entry): every non-empty field must match.
#[derive(Debug)]
pub struct Operation {
    paths: Vec<pb::path_match::Kind>,
    methods: Vec<http::Method>,
    ports: Vec<u16>,
    /// An entry did not compile.
    invalid: bool,
}

impl Operation {
    pub fn compile(o: &pb::Operation) -> Self {
        let paths: Vec<_> = o.paths.iter().filter_map(|p| p.kind.clone()).collect();
        let methods: Vec<_> = o
            .methods
            .iter()
            .filter_map(|m| http::Method::from_bytes(m.as_bytes()).ok())
            .collect();
        let ports: Vec<_> = o
            .ports
            .iter()
            .filter_map(|p| u16::try_from(*p).ok().filter(|p| *p != 0))
            .collect();
        Operation {
            invalid: paths.len() != o.paths.len()
                || methods.len() != o.methods.len()
                || ports.len() != o.ports.len(),
            paths,
            methods,
            ports,
        }
    }

    /// `deny` (a deny policy's rule): on an opaque connection, path and
    /// method conditions are ignored instead of failing the match, and an
    /// entry that did not compile matches (for an allow policy it never
    /// does).
    pub fn matches(&self, call: &Call<'_>, deny: bool) -> bool {
        if self.invalid {
            return deny;
        }
        let lenient = deny;
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

/// Namespace and service account of exactly `spiffe://<td>/ns/<ns>/sa/<sa>`
/// (any other shape has neither).
fn ns_sa(id: &str) -> Option<(&str, &str)> {
    let mut parts = id.strip_prefix("spiffe://")?.split('/');
    match (
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
        parts.next(),
    ) {
        (Some(td), Some("ns"), Some(ns), Some("sa"), Some(sa), None)
            if !td.is_empty() && !ns.is_empty() && !sa.is_empty() =>
        {
            Some((ns, sa))
        }
        _ => None,
    }
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
