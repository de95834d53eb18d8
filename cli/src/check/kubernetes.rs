//! The Kubernetes checks of `mesh check`: the API is reachable and recent enough, the
//! CRDs the mesh relies on (its own and the Gateway API routes) are installed, and the
//! control plane's pods are ready. A failure to reach the API stops the run there.

use std::time::SystemTime;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::ListParams;
use kube::{Api, Client};

use super::local::{signed_by, validity_check};
use super::Check;

const API: &str = "kubernetes-api";
const CRDS: &str = "crds";
const CONTROL_PLANE: &str = "control-plane";
const WEBHOOK: &str = "injector-webhook";
const IDENTITY: &str = "identity";

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
    /// Also check every injected pod's proxy (`--proxy`).
    pub proxies: bool,
    /// How long each proxy may take to answer.
    pub timeout: std::time::Duration,
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
    out.extend(webhook_checks(&client, &settings.namespace).await);
    out.extend(identity_checks(&client, &settings.namespace).await);
    if settings.proxies {
        let anchors = trust_anchors(&client, &settings.namespace).await;
        out.extend(super::data_plane::checks(&client, anchors.as_deref(), settings.timeout).await);
    }
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

/// The injector is registered, its CA and serving certificate are valid for 60 days and
/// the serving certificate is signed by the CA the API server trusts.
async fn webhook_checks(client: &Client, ns: &str) -> Vec<Check> {
    use crate::install::webhook::{CONFIGURATION_NAME, SECRET_NAME};
    let configs: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
    let desc = format!("webhook {CONFIGURATION_NAME} is registered");
    let ca = match configs.get_opt(CONFIGURATION_NAME).await {
        Ok(Some(c)) => c
            .webhooks
            .iter()
            .flatten()
            .find_map(|w| w.client_config.ca_bundle.as_ref())
            .map(|b| String::from_utf8_lossy(&b.0).into_owned()),
        Ok(None) => {
            return vec![Check::fail(
                WEBHOOK,
                desc,
                "not found: new pods are not injected",
                "mesh install | kubectl apply -f -",
            )]
        }
        Err(e) => return vec![Check::fail(WEBHOOK, desc, e.to_string(), "check RBAC")],
    };
    let mut out = vec![Check::ok(WEBHOOK, desc)];
    let hint = "re-run `mesh install | kubectl apply -f -` to issue new webhook certificates";
    let now = SystemTime::now();
    let Some(ca) = ca else {
        out.push(Check::fail(WEBHOOK, "webhook has a caBundle", "none", hint));
        return out;
    };
    out.push(validity_check(
        WEBHOOK,
        "webhook CA (caBundle) is valid for at least 60 days",
        &ca,
        now,
        hint,
    ));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let desc = "webhook serving certificate is valid for at least 60 days";
    match secrets.get_opt(SECRET_NAME).await {
        Ok(Some(s)) => match secret_text(&s, "tls.crt") {
            Some(cert) => {
                out.push(validity_check(WEBHOOK, desc, &cert, now, hint));
                out.push(match signed_by(&cert, &ca) {
                    Ok(()) => {
                        Check::ok(WEBHOOK, "webhook serving certificate matches the caBundle")
                    }
                    Err(e) => Check::fail(
                        WEBHOOK,
                        "webhook serving certificate matches the caBundle",
                        e,
                        hint,
                    ),
                });
            }
            None => out.push(Check::fail(
                WEBHOOK,
                desc,
                format!("{SECRET_NAME} has no tls.crt"),
                hint,
            )),
        },
        Ok(None) => out.push(Check::fail(
            WEBHOOK,
            desc,
            format!("Secret {ns}/{SECRET_NAME} not found"),
            hint,
        )),
        Err(e) => out.push(Check::fail(
            WEBHOOK,
            desc,
            e.to_string(),
            "check RBAC: get secrets",
        )),
    }
    out
}

/// The trust anchors and the issuer are valid for 60 days and the issuer is signed by
/// an anchor.
async fn identity_checks(client: &Client, ns: &str) -> Vec<Check> {
    use crate::install::identity::{ISSUER_SECRET, TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY};
    let hint = "rotate the issuer Secret (mesh-identity reloads it); anchors: see `mesh install --identity-trust-anchors-file`";
    let now = SystemTime::now();
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let desc = "trust anchors are valid for at least 60 days";
    let anchors = match maps.get_opt(TRUST_ROOTS_CONFIG_MAP).await {
        Ok(Some(cm)) => cm.data.and_then(|d| d.get(TRUST_ROOTS_KEY).cloned()),
        Ok(None) => None,
        Err(e) => {
            return vec![Check::fail(
                IDENTITY,
                desc,
                e.to_string(),
                "check RBAC: get configmaps",
            )]
        }
    };
    let Some(anchors) = anchors else {
        return vec![Check::fail(
            IDENTITY,
            desc,
            format!("ConfigMap {ns}/{TRUST_ROOTS_CONFIG_MAP} (key {TRUST_ROOTS_KEY}) not found"),
            "mesh install | kubectl apply -f -",
        )];
    };
    let mut out = vec![validity_check(IDENTITY, desc, &anchors, now, hint)];
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let desc = "issuer certificate is valid for at least 60 days";
    let issuer = match secrets.get_opt(ISSUER_SECRET).await {
        Ok(Some(s)) => secret_text(&s, "tls.crt"),
        Ok(None) => None,
        Err(e) => {
            out.push(Check::fail(
                IDENTITY,
                desc,
                e.to_string(),
                "check RBAC: get secrets",
            ));
            return out;
        }
    };
    let Some(issuer) = issuer else {
        out.push(Check::fail(
            IDENTITY,
            desc,
            format!("Secret {ns}/{ISSUER_SECRET} (tls.crt) not found"),
            "mesh install | kubectl apply -f -",
        ));
        return out;
    };
    out.push(validity_check(IDENTITY, desc, &issuer, now, hint));
    out.push(match signed_by(&issuer, &anchors) {
        Ok(()) => Check::ok(IDENTITY, "issuer is signed by a trust anchor"),
        Err(e) => Check::fail(
            IDENTITY,
            "issuer is signed by a trust anchor",
            e,
            "the issuer Secret must be issued by the anchors in the trust-roots ConfigMap",
        ),
    });
    out
}

/// The trust anchors the install published, if readable.
async fn trust_anchors(client: &Client, ns: &str) -> Option<String> {
    use crate::install::identity::{TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY};
    let maps: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    let cm = maps.get_opt(TRUST_ROOTS_CONFIG_MAP).await.ok()??;
    cm.data?.get(TRUST_ROOTS_KEY).cloned()
}

/// A Secret's key as text.
fn secret_text(s: &Secret, key: &str) -> Option<String> {
    s.data
        .as_ref()?
        .get(key)
        .map(|b| String::from_utf8_lossy(&b.0).into_owned())
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
