//! Parsing of the `target` strings proxies ask about (DESIGN §4): a Service name with a
//! port, or an `ip:port`. Pure; a malformed target is a typed error the gRPC layer turns
//! into `INVALID_ARGUMENT`.

use std::net::SocketAddr;

/// A parsed discovery target.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// `name.namespace[.svc[.<cluster-domain>]]:port`.
    Service {
        /// Service name.
        name: String,
        /// Service namespace.
        namespace: String,
        /// A Service `port`.
        port: u16,
    },
    /// `ip:port`: a Service cluster IP or a workload address.
    Addr(SocketAddr),
    /// A well-formed host name that can never name a Service in this cluster.
    Other {
        /// The host part, lower-cased.
        host: String,
        /// The port.
        port: u16,
    },
}

/// Why a target string is malformed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TargetError {
    /// There is no `:port` suffix.
    #[error("target {0:?} has no port (expected host:port)")]
    NoPort(String),
    /// The port is not a number in 1–65535.
    #[error("target {0:?} has an invalid port (expected 1-65535)")]
    BadPort(String),
    /// The host part is empty or not a valid name.
    #[error("target {0:?} has an empty or invalid host")]
    BadHost(String),
}

impl Target {
    /// Parses `target`, accepting Service names in `cluster_domain`.
    pub fn parse(target: &str, cluster_domain: &str) -> Result<Self, TargetError> {
        if let Ok(addr) = target.parse::<SocketAddr>() {
            if addr.port() == 0 {
                return Err(TargetError::BadPort(target.to_string()));
            }
            return Ok(Target::Addr(addr));
        }
        let (host, port) = target
            .rsplit_once(':')
            .ok_or_else(|| TargetError::NoPort(target.to_string()))?;
        let port = match port.parse::<u16>() {
            Ok(p) if p != 0 => p,
            _ if port.is_empty() => return Err(TargetError::NoPort(target.to_string())),
            _ => return Err(TargetError::BadPort(target.to_string())),
        };
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        // 253: the longest DNS name; a longer one names nothing and would only take memory.
        if host.is_empty() || host.contains(':') || host.len() > 253 {
            // `[::1`-like leftovers or a bare `:port`.
            return Err(TargetError::BadHost(target.to_string()));
        }
        let domain = cluster_domain.trim_matches('.').to_ascii_lowercase();
        let labels: Vec<&str> = host.split('.').collect();
        let service = match labels.as_slice() {
            [name, ns] | [name, ns, "svc"] => Some((name, ns)),
            [name, ns, "svc", rest @ ..] if !rest.is_empty() && rest.join(".") == domain => {
                Some((name, ns))
            }
            _ => None,
        };
        Ok(match service {
            Some((name, ns)) if !name.is_empty() && !ns.is_empty() => Target::Service {
                name: name.to_string(),
                namespace: ns.to_string(),
                port,
            },
            _ => Target::Other { host, port },
        })
    }

    /// The port of the target.
    pub fn port(&self) -> u16 {
        match self {
            Target::Service { port, .. } | Target::Other { port, .. } => *port,
            Target::Addr(a) => a.port(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn svc(name: &str, ns: &str, port: u16) -> Target {
        Target::Service {
            name: name.into(),
            namespace: ns.into(),
            port,
        }
    }

    #[test]
    fn names_longer_than_dns_allows_are_refused() {
        let long = format!("{}.prod:80", "w".repeat(300));
        assert!(matches!(
            Target::parse(&long, "cluster.local"),
            Err(TargetError::BadHost(_))
        ));
    }

    #[test]
    fn service_forms() {
        let p = |s| Target::parse(s, "cluster.local");
        assert_eq!(
            p("web.prod.svc.cluster.local:80"),
            Ok(svc("web", "prod", 80))
        );
        assert_eq!(
            p("web.prod.svc.cluster.local.:80"),
            Ok(svc("web", "prod", 80))
        );
        assert_eq!(p("Web.Prod.svc:8080"), Ok(svc("web", "prod", 8080)));
        assert_eq!(p("web.prod:1"), Ok(svc("web", "prod", 1)));
        assert_eq!(
            p("web.prod.svc.other.domain:80"),
            Ok(Target::Other {
                host: "web.prod.svc.other.domain".into(),
                port: 80
            })
        );
        assert_eq!(
            Target::parse("web.prod.svc.example.org:80", "example.org"),
            Ok(svc("web", "prod", 80))
        );
    }

    #[test]
    fn addr_forms() {
        let p = |s| Target::parse(s, "cluster.local");
        assert_eq!(
            p("10.0.0.1:80"),
            Ok(Target::Addr("10.0.0.1:80".parse().unwrap()))
        );
        assert_eq!(
            p("[fd00::1]:80"),
            Ok(Target::Addr("[fd00::1]:80".parse().unwrap()))
        );
    }

    #[test]
    fn malformed() {
        let p = |s| Target::parse(s, "cluster.local");
        assert!(matches!(
            p("web.prod.svc.cluster.local"),
            Err(TargetError::NoPort(_))
        ));
        assert!(matches!(p("web.prod:"), Err(TargetError::NoPort(_))));
        assert!(matches!(p("web.prod:http"), Err(TargetError::BadPort(_))));
        assert!(matches!(p("web.prod:70000"), Err(TargetError::BadPort(_))));
        assert!(matches!(p("web.prod:0"), Err(TargetError::BadPort(_))));
        assert!(matches!(p("10.0.0.1:0"), Err(TargetError::BadPort(_))));
        assert!(matches!(p(":80"), Err(TargetError::BadHost(_))));
        let msg = p("web.prod:x").unwrap_err().to_string();
        assert!(msg.contains("web.prod:x"), "{msg}");
    }
}
