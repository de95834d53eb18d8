//! Which proxies a tap opens on, and with which filter: `deploy/NAME`,
//! `sts/NAME`, `pod/NAME`, `ns/NAME` tap the proxies of that resource (both
//! directions; `ns/*` every proxy); `svc/NAME` taps every proxy's outbound requests to that
//! Service. `--to deploy/Y|svc/Y` keeps the resource's outbound requests to Y.

use crate::stat::plan::Kind;
use mesh_proto::tap::Match;
use std::collections::BTreeMap;

/// A tap's target and filters, as the command line gives them.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// `KIND/NAME`.
    pub resource: String,
    /// The namespace.
    pub namespace: String,
    /// `--to`.
    pub to: Option<String>,
    /// `--path`.
    pub path: Option<String>,
    /// `--method`.
    pub method: Option<String>,
    /// `--authority`.
    pub authority: Option<String>,
}

/// What to tap.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    kind: Kind,
    name: String,
    namespace: String,
    /// The filter every proxy gets.
    pub filter: Match,
}

/// Reads `spec`.
pub fn plan(spec: &Spec) -> anyhow::Result<Plan> {
    let (kind, name) = spec.resource.split_once('/').ok_or_else(|| {
        anyhow::anyhow!(
            "expected KIND/NAME (deploy, sts, pod, svc or ns), not {:?}",
            spec.resource
        )
    })?;
    let kind: Kind = kind.parse()?;
    if kind == Kind::Route {
        anyhow::bail!("tap works on deploy, sts, pod, svc or ns, not routes");
    }
    if name.is_empty() || name.contains('/') {
        anyhow::bail!("bad resource name {name:?}");
    }
    let ns = spec.namespace.clone();
    let mut filter = Match {
        path_prefix: spec.path.clone().unwrap_or_default(),
        method: spec.method.clone().unwrap_or_default(),
        authority: spec.authority.clone().unwrap_or_default(),
        ..Match::default()
    };
    if kind == Kind::Svc {
        // The destination the client proxy resolved, however the app named it.
        filter.direction = "outbound".into();
        filter.dst_service = format!("{name}.{ns}.svc");
    }
    if let Some(to) = &spec.to {
        filter.direction = "outbound".into();
        let (k, n) = to.split_once('/').unwrap_or(("deploy", to));
        match k.parse::<Kind>()? {
            Kind::Deploy | Kind::Sts => filter.dst_workload = qualified(n, &ns),
            Kind::Svc => {
                let (n, tns) = n.split_once('.').unwrap_or((n, &ns));
                filter.dst_service = format!("{n}.{tns}.svc");
            }
            _ => anyhow::bail!("--to takes deploy/NAME, sts/NAME or svc/NAME, not {to:?}"),
        }
    }
    Ok(Plan {
        kind,
        name: name.to_string(),
        namespace: ns,
        filter,
    })
}

/// `NS/NAME` unless `name` names its namespace already.
fn qualified(name: &str, ns: &str) -> String {
    if name.contains('/') {
        name.to_string()
    } else {
        format!("{ns}/{name}")
    }
}

impl Plan {
    /// Whether the proxy with these target labels is tapped.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        let l = |k: &str| labels.get(k).map(String::as_str).unwrap_or("");
        match self.kind {
            Kind::Deploy | Kind::Sts => {
                l("namespace") == self.namespace && l("workload") == self.name
            }
            Kind::Pod => l("namespace") == self.namespace && l("pod") == self.name,
            // `ns/*`: every namespace.
            Kind::Ns => self.name == "*" || l("namespace") == self.name,
            // Callers of a Service may be anywhere.
            Kind::Svc => true,
            Kind::Route => false,
        }
    }

    /// The resource, for messages.
    pub fn describe(&self) -> String {
        format!("{:?}/{} in {}", self.kind, self.name, self.namespace).to_lowercase()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(ns: &str, workload: &str, pod: &str) -> BTreeMap<String, String> {
        [("namespace", ns), ("workload", workload), ("pod", pod)]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn spec(resource: &str) -> Spec {
        Spec {
            resource: resource.into(),
            namespace: "demo".into(),
            ..Spec::default()
        }
    }

    #[test]
    fn resources_select_their_proxies() {
        let api1 = labels("demo", "api", "api-1");
        let web = labels("demo", "web", "web-1");
        let other = labels("prod", "api", "api-1");
        let p = plan(&spec("deploy/api")).unwrap();
        assert!(p.selects(&api1) && !p.selects(&web) && !p.selects(&other));
        assert_eq!(p.filter, Match::default());
        let p = plan(&spec("pod/api-1")).unwrap();
        assert!(p.selects(&api1) && !p.selects(&other));
        let p = plan(&spec("ns/demo")).unwrap();
        assert!(p.selects(&api1) && p.selects(&web) && !p.selects(&other));
        let p = plan(&spec("ns/*")).unwrap();
        assert!(p.selects(&api1) && p.selects(&other));
        let p = plan(&spec("svc/api")).unwrap();
        assert!(p.selects(&other));
        assert_eq!(p.filter.direction, "outbound");
        assert_eq!(p.filter.dst_service, "api.demo.svc");
    }

    #[test]
    fn filters() {
        let p = plan(&Spec {
            to: Some("deploy/api".into()),
            path: Some("/items".into()),
            method: Some("GET".into()),
            ..spec("deploy/web")
        })
        .unwrap();
        assert_eq!(p.filter.direction, "outbound");
        assert_eq!(p.filter.dst_workload, "demo/api");
        assert_eq!(
            (p.filter.path_prefix.as_str(), p.filter.method.as_str()),
            ("/items", "GET")
        );
        let p = plan(&Spec {
            to: Some("svc/api.prod".into()),
            ..spec("deploy/web")
        })
        .unwrap();
        assert_eq!(p.filter.dst_service, "api.prod.svc");
    }

    #[test]
    fn bad_specs() {
        for bad in ["api", "job/x", "deploy/", "route/x", "deploy/a/b"] {
            assert!(plan(&spec(bad)).is_err(), "{bad}");
        }
        let e = plan(&Spec {
            to: Some("pod/x".into()),
            ..spec("deploy/web")
        })
        .unwrap_err();
        assert!(e.to_string().contains("--to takes"), "{e}");
    }
}
