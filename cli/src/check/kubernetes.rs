//! The Kubernetes checks of `mesh check`: the API is reachable and recent enough, the
//! CRDs the mesh relies on (its own and the Gateway API routes) are installed, and the
//! control plane's pods are ready. A failure to reach the API stops the run there.

use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};

use super::Check;

const API: &str = "kubernetes-api";
const CRDS: &str = "crds";
const CONTROL_PLANE: &str = "control-plane";

use crate::install::GATEWAY_API_INSTALL;

/// The Gateway API CRDs the controller watches, with the version it reads.
const GATEWAY_CRDS: &[&str] = &[
    "httproutes.gateway.networking.k8s.io",
    "grpcroutes.gateway.networking.k8s.io",
];

/// The oldest Kubernetes minor version with native sidecars on by default.
const NATIVE_SIDECAR_MINOR: u32 = 29;

/// What to check.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The control plane's namespace.
    pub namespace: String,
}

/// Runs every Kubernetes check with `client` (or reports why there is none).
pub async fn checks(client: Result<Client, String>, settings: &Settings) -> Vec<Check> {
    let mut out = Vec::new();
    let client = match client {
        Ok(c) => {
            out.push(Check::ok(API, "can initialize the client"));
            c
        }
        Err(e) => {
            out.push(Check::fail(
                API,
                "can initialize the client",
                e,
                "set KUBECONFIG (or run inside a cluster) so that kubectl works",
            ));
            return out;
        }
    };
    match client.apiserver_version().await {
        Ok(v) => {
            out.push(Check::ok(API, "can reach the Kubernetes API"));
            out.push(version_check(&v.major, &v.minor, &v.git_version));
        }
        Err(e) => {
            out.push(Check::fail(
                API,
                "can reach the Kubernetes API",
                e.to_string(),
                "check that `kubectl version` works with this kubeconfig",
            ));
            return out;
        }
    }
    out.extend(crd_checks(&client).await);
    out.extend(control_plane_checks(&client, &settings.namespace).await);
    out
}

/// Native sidecars (the injector's default) need 1.29.
fn version_check(major: &str, minor: &str, git: &str) -> Check {
    let desc = "is running a supported Kubernetes version";
    let minor_n: Option<u32> = minor.trim_end_matches('+').parse().ok();
    match (major, minor_n) {
        ("1", Some(m)) if m >= NATIVE_SIDECAR_MINOR => Check::ok(API, format!("{desc} ({git})")),
        ("1", Some(_)) => Check::fail(
            API,
            desc,
            format!("{git} is older than 1.{NATIVE_SIDECAR_MINOR}"),
            "the proxy is injected as a native sidecar, which needs Kubernetes 1.29 or newer",
        ),
        _ => Check::warn(
            API,
            desc,
            format!("cannot parse version {major}.{minor} ({git})"),
            "continue at your own risk",
        ),
    }
}

async fn crd_checks(client: &Client) -> Vec<Check> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let ours = mesh_controller::crds::all()
        .into_iter()
        .filter_map(|c| c.metadata.name);
    let mut out = Vec::new();
    for name in ours {
        let desc = format!("CRD {name} is installed");
        out.push(match api.get_opt(&name).await {
            Ok(Some(_)) => Check::ok(CRDS, desc),
            Ok(None) => Check::fail(
                CRDS,
                desc,
                "not found",
                "mesh install --crds | kubectl apply -f -",
            ),
            Err(e) => Check::fail(
                CRDS,
                desc,
                e.to_string(),
                "check RBAC: get customresourcedefinitions",
            ),
        });
    }
    for name in GATEWAY_CRDS {
        let desc = format!("Gateway API CRD {name} is installed (v1)");
        out.push(match api.get_opt(name).await {
            Ok(Some(crd)) if serves_v1(&crd) => Check::ok(CRDS, desc),
            Ok(Some(_)) => Check::fail(
                CRDS,
                desc,
                "installed, but does not serve v1",
                format!("upgrade the Gateway API CRDs: {GATEWAY_API_INSTALL}"),
            ),
            Ok(None) => Check::fail(
                CRDS,
                desc,
                "not found: routes are ignored until it is installed",
                GATEWAY_API_INSTALL,
            ),
            Err(e) => Check::fail(
                CRDS,
                desc,
                e.to_string(),
                "check RBAC: get customresourcedefinitions",
            ),
        });
    }
    out
}

fn serves_v1(crd: &CustomResourceDefinition) -> bool {
    crd.spec.versions.iter().any(|v| v.name == "v1" && v.served)
}

async fn control_plane_checks(client: &Client, ns: &str) -> Vec<Check> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let desc = format!("control plane namespace {ns} exists");
    match namespaces.get_opt(ns).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            return vec![Check::fail(
                CONTROL_PLANE,
                desc,
                "not found",
                "mesh install | kubectl apply -f -",
            )]
        }
        Err(e) => {
            return vec![Check::fail(
                CONTROL_PLANE,
                desc,
                e.to_string(),
                "check RBAC",
            )]
        }
    }
    let mut out = vec![Check::ok(CONTROL_PLANE, desc)];
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    for component in ["mesh-controller", "mesh-identity"] {
        let desc = format!("{component} pods are ready");
        let lp = ListParams::default().labels(&format!("app.kubernetes.io/name={component}"));
        out.push(match pods.list(&lp).await {
            Ok(list) => pods_ready(&desc, component, ns, &list.items),
            Err(e) => Check::fail(CONTROL_PLANE, desc, e.to_string(), "check RBAC: list pods"),
        });
    }
    out
}

/// Pure: whether `pods` of `component` are all ready.
pub fn pods_ready(desc: &str, component: &str, ns: &str, pods: &[Pod]) -> Check {
    if pods.is_empty() {
        return Check::fail(
            CONTROL_PLANE,
            desc,
            "no pods found",
            format!("kubectl -n {ns} get deploy {component}"),
        );
    }
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|p| !is_ready(p))
        .map(|p| p.metadata.name.clone().unwrap_or_default())
        .collect();
    if not_ready.is_empty() {
        Check::ok(CONTROL_PLANE, format!("{desc} ({} ready)", pods.len()))
    } else {
        Check::fail(
            CONTROL_PLANE,
            desc,
            format!("not ready: {}", not_ready.join(", ")),
            format!("kubectl -n {ns} describe pod {}", not_ready[0]),
        )
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::Status;

    #[test]
    fn versions() {
        assert_eq!(version_check("1", "31", "v1.31.2").result, Status::Success);
        assert_eq!(
            version_check("1", "29+", "v1.29.1-eks").result,
            Status::Success
        );
        let old = version_check("1", "27", "v1.27.9");
        assert_eq!(old.result, Status::Error);
        assert!(old.hint.unwrap().contains("1.29"));
        assert_eq!(version_check("x", "y", "?").result, Status::Warning);
    }

    #[test]
    fn pod_readiness() {
        let pod = |name: &str, ready: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "metadata": {"name": name},
                "status": {"conditions": [{"type": "Ready", "status": ready}]}
            }))
            .unwrap()
        };
        let ok = pods_ready("d", "mesh-identity", "mesh-system", &[pod("a", "True")]);
        assert_eq!(ok.result, Status::Success);
        let bad = pods_ready(
            "d",
            "mesh-identity",
            "mesh-system",
            &[pod("a", "True"), pod("b", "False")],
        );
        assert_eq!(bad.result, Status::Error);
        assert_eq!(bad.error.as_deref(), Some("not ready: b"));
        assert_eq!(
            pods_ready("d", "x", "ns", &[]).error.as_deref(),
            Some("no pods found")
        );
    }
}
