//! SPIFFE IDs of workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<sa>`
//! (DESIGN §2). Building and parsing them in one place keeps every component
//! agreeing on the exact string.

use thiserror::Error;

const SCHEME: &str = "spiffe://";

/// Why a string is not a workload SPIFFE ID.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpiffeError {
    /// The ID does not start with `spiffe://`.
    #[error("{0:?} is not a SPIFFE ID: it must start with spiffe://")]
    Scheme(String),
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("{0:?} is not a workload SPIFFE ID: expected spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")]
    Shape(String),
    /// A segment (trust domain, namespace or service account) is invalid.
    #[error("invalid {what} {value:?}: must be non-empty and contain no '/'")]
    Segment {
        /// Which segment: "trust domain", "namespace" or "service account".
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// A parsed workload SPIFFE ID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    /// The trust domain, e.g. `cluster.local`.
    pub trust_domain: String,
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account.
    pub service_account: String,
}

/// Returns `spiffe://<trust_domain>/ns/<namespace>/sa/<service_account>`.
///
/// Does not validate; use [`check_segment`] first on untrusted input.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("{SCHEME}{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// Checks that one segment of an ID is non-empty and has no `/`.
pub fn check_segment(what: &'static str, value: &str) -> Result<(), SpiffeError> {
    if value.is_empty() || value.contains('/') || value.chars().any(char::is_whitespace) {
        return Err(SpiffeError::Segment {
            what,
            value: value.to_string(),
        });
    }
    Ok(())
}

/// Parses a workload SPIFFE ID into `(trust_domain, namespace, service_account)`.
pub fn parse(id: &str) -> Result<SpiffeId, SpiffeError> {
    let rest = id
        .strip_prefix(SCHEME)
        .ok_or_else(|| SpiffeError::Scheme(id.to_string()))?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [td, "ns", ns, "sa", sa] => {
            check_segment("trust domain", td)?;
            check_segment("namespace", ns)?;
            check_segment("service account", sa)?;
            Ok(SpiffeId {
                trust_domain: td.to_string(),
                namespace: ns.to_string(),
                service_account: sa.to_string(),
            })
        }
        _ => Err(SpiffeError::Shape(id.to_string())),
    }
}

impl std::fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&spiffe_id(
            &self.trust_domain,
            &self.namespace,
            &self.service_account,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_and_parses() {
        let id = spiffe_id("cluster.local", "default", "web");
        assert_eq!(id, "spiffe://cluster.local/ns/default/sa/web");
        let parsed = parse(&id).unwrap();
        assert_eq!(parsed.trust_domain, "cluster.local");
        assert_eq!(parsed.namespace, "default");
        assert_eq!(parsed.service_account, "web");
        assert_eq!(parsed.to_string(), id);
    }

    #[test]
    fn rejects_bad_ids() {
        for bad in [
            "http://cluster.local/ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/",
            "spiffe://cluster.local/ns//sa/b",
            "spiffe:///ns/a/sa/b",
            "spiffe://cluster.local/ns/a/sa/b/c",
            "spiffe://cluster.local/ns/a/xx/b",
            "spiffe://cluster.local/ns/a",
            "spiffe://cluster.local/ns/a b/sa/c",
            "",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
    }

    #[test]
    fn segment_checks() {
        assert!(check_segment("namespace", "a/b").is_err());
        assert!(check_segment("namespace", "").is_err());
        assert!(check_segment("namespace", "kube-system").is_ok());
    }
}
