//! Which requests a tap sees: every field given must match.

use super::{Head, Outcome};
use mesh_proto::tap::Match;

/// A tap's filter, checked when the request begins (direction, method,
/// authority, path) and when its response head is in (identities, workloads).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    direction: Option<&'static str>,
    method: Option<String>,
    authority: Option<String>,
    path_prefix: Option<String>,
    src_identity: Option<String>,
    dst_identity: Option<String>,
    src_workload: Option<Workload>,
    dst_workload: Option<Workload>,
    dst_service: Option<String>,
}

/// `name` or `namespace/name`.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Workload {
    namespace: Option<String>,
    name: String,
}

/// A filter that cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FilterError {
    #[error("direction {0:?} is neither inbound nor outbound")]
    Direction(String),
    #[error("{0} is longer than 512 bytes")]
    TooLong(&'static str),
}

/// Longest filter value accepted.
const MAX_VALUE: usize = 512;

impl Filter {
    /// Reads a tap request's match.
    pub fn parse(m: &Match) -> Result<Filter, FilterError> {
        let fields = [
            ("authority", &m.authority),
            ("path_prefix", &m.path_prefix),
            ("method", &m.method),
            ("src_identity", &m.src_identity),
            ("dst_identity", &m.dst_identity),
            ("src_workload", &m.src_workload),
            ("dst_workload", &m.dst_workload),
            ("dst_service", &m.dst_service),
        ];
        if let Some((name, _)) = fields.iter().find(|(_, v)| v.len() > MAX_VALUE) {
            return Err(FilterError::TooLong(name));
        }
        let given = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let direction = match m.direction.to_ascii_lowercase().as_str() {
            "" => None,
            "inbound" => Some("inbound"),
            "outbound" => Some("outbound"),
            _ => return Err(FilterError::Direction(m.direction.clone())),
        };
        let workload = |s: &str| {
            (!s.is_empty()).then(|| match s.split_once('/') {
                Some((ns, name)) => Workload {
                    namespace: Some(ns.to_string()),
                    name: name.to_string(),
                },
                None => Workload {
                    namespace: None,
                    name: s.to_string(),
                },
            })
        };
        Ok(Filter {
            direction,
            method: given(&m.method.to_ascii_uppercase()),
            authority: given(&m.authority.to_ascii_lowercase()),
            path_prefix: given(&m.path_prefix),
            src_identity: given(&m.src_identity),
            dst_identity: given(&m.dst_identity),
            src_workload: workload(&m.src_workload),
            dst_workload: workload(&m.dst_workload),
            dst_service: given(&m.dst_service.to_ascii_lowercase()),
        })
    }

    /// What is known when the request begins.
    pub fn matches_head(&self, h: &Head<'_>) -> bool {
        self.direction.is_none_or(|d| d == h.direction)
            && self
                .method
                .as_deref()
                .is_none_or(|m| m == h.method.as_str())
            && self
                .path_prefix
                .as_deref()
                .is_none_or(|p| h.path.starts_with(p))
            && self
                .authority
                .as_deref()
                .is_none_or(|a| authority_matches(a, h.authority))
    }

    /// What is known once the response head is in.
    pub fn matches_outcome(&self, o: &Outcome<'_>) -> bool {
        self.src_identity
            .as_deref()
            .is_none_or(|i| i == o.src_identity)
            && self
                .dst_identity
                .as_deref()
                .is_none_or(|i| i == o.dst_identity)
            && self
                .src_workload
                .as_ref()
                .is_none_or(|w| w.matches(o.src_namespace, o.src_workload))
            && self
                .dst_workload
                .as_ref()
                .is_none_or(|w| w.matches(o.dst_namespace, o.dst_workload))
            && self
                .dst_service
                .as_deref()
                .is_none_or(|s| authority_matches(s, o.dst_service))
    }
}

impl Workload {
    fn matches(&self, namespace: &str, name: &str) -> bool {
        self.name == name && self.namespace.as_deref().is_none_or(|ns| ns == namespace)
    }
}

/// The whole `host:port`, the host, or a prefix of the host that ends
/// before a dot; case-insensitive (`want` is lower case).
fn authority_matches(want: &str, authority: &str) -> bool {
    let host = if authority.ends_with(']') {
        authority
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    if authority.eq_ignore_ascii_case(want) || host.eq_ignore_ascii_case(want) {
        return true;
    }
    host.len() > want.len()
        && host.as_bytes()[want.len()] == b'.'
        && host[..want.len()].eq_ignore_ascii_case(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(dir: &'static str, m: &'a http::Method, auth: &'a str, path: &'a str) -> Head<'a> {
        Head {
            direction: dir,
            method: m,
            authority: auth,
            path,
        }
    }

    #[test]
    fn empty_matches_everything() {
        let f = Filter::parse(&Match::default()).unwrap();
        let get = http::Method::GET;
        assert!(f.matches_head(&head("inbound", &get, "", "/")));
        assert!(f.matches_outcome(&Outcome::default()));
    }

    #[test]
    fn request_fields() {
        let f = Filter::parse(&Match {
            direction: "Outbound".into(),
            method: "post".into(),
            authority: "api.demo".into(),
            path_prefix: "/items".into(),
            ..Match::default()
        })
        .unwrap();
        let (post, get) = (http::Method::POST, http::Method::GET);
        let auth = "api.demo.svc.cluster.local:8080";
        assert!(f.matches_head(&head("outbound", &post, auth, "/items/1")));
        assert!(!f.matches_head(&head("inbound", &post, auth, "/items/1")));
        assert!(!f.matches_head(&head("outbound", &get, auth, "/items/1")));
        assert!(!f.matches_head(&head("outbound", &post, auth, "/other")));
        assert!(!f.matches_head(&head("outbound", &post, "api.demox.svc:80", "/items")));
        assert!(!f.matches_head(&head("outbound", &post, "web.demo.svc:80", "/items")));
        assert!(f.matches_head(&head("outbound", &post, "API.DEMO.svc:80", "/items")));
    }

    #[test]
    fn authorities() {
        assert!(authority_matches("a.b:80", "a.b:80"));
        assert!(authority_matches("a.b", "a.b:80"));
        assert!(authority_matches("a", "a.b:80"));
        assert!(!authority_matches("a.b:81", "a.b:80"));
        assert!(!authority_matches("a.", "a.b:80"));
        assert!(!authority_matches("ab", "a.b:80"));
        assert!(authority_matches("127.0.0.1", "127.0.0.1:8080"));
        assert!(authority_matches("[::1]", "[::1]:80"));
        assert!(authority_matches("[::1]", "[::1]"));
        assert!(!authority_matches("x", ""));
    }

    #[test]
    fn identities_and_workloads() {
        let f = Filter::parse(&Match {
            src_identity: "spiffe://td/ns/demo/sa/web".into(),
            dst_workload: "demo/api".into(),
            ..Match::default()
        })
        .unwrap();
        let o = Outcome {
            src_identity: "spiffe://td/ns/demo/sa/web",
            dst_namespace: "demo",
            dst_workload: "api",
            ..Outcome::default()
        };
        assert!(f.matches_outcome(&o));
        assert!(!f.matches_outcome(&Outcome {
            dst_namespace: "other",
            ..o
        }));
        let any_ns = Filter::parse(&Match {
            dst_workload: "api".into(),
            ..Match::default()
        })
        .unwrap();
        assert!(any_ns.matches_outcome(&Outcome {
            dst_namespace: "other",
            dst_workload: "api",
            ..Outcome::default()
        }));
        assert!(!any_ns.matches_outcome(&Outcome::default()));
    }

    #[test]
    fn bad_filters() {
        let e = Filter::parse(&Match {
            direction: "sideways".into(),
            ..Match::default()
        })
        .unwrap_err();
        assert_eq!(e, FilterError::Direction("sideways".into()));
        let e = Filter::parse(&Match {
            path_prefix: "/".repeat(600),
            ..Match::default()
        })
        .unwrap_err();
        assert_eq!(e, FilterError::TooLong("path_prefix"));
    }
}
