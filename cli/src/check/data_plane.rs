//! `mesh check --proxy` (Kubernetes): every pod with an injected proxy has it ready,
//! with a valid certificate (read from the proxy's metrics through the API server's pod
//! proxy), running the CLI's version.

use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::Pod;
use kube::Client;

use crate::kube_pods::{self, PROXY};

use super::local::{chains_to, metric};
use super::Check;

const GROUP: &str = "data-plane";

/// The image tag the CLI's own version installs.
fn expected_tag() -> String {
    format!("v{}", env!("CARGO_PKG_VERSION"))
}

/// Runs the data-plane checks; `anchors` (PEM) are the trust anchors proxies'
/// certificates must chain to, when known.
pub async fn checks(
    client: &Client,
    anchors: Option<&str>,
    timeout: std::time::Duration,
) -> Vec<Check> {
    let injected = match kube_pods::injected(client, None).await {
        Ok(p) => p,
        Err(e) => {
            return vec![Check::fail(
                GROUP,
                "injected pods can be listed",
                e.to_string(),
                "check RBAC: list pods in all namespaces",
            )]
        }
    };
    let injected: Vec<&Pod> = injected.iter().collect();
    if injected.is_empty() {
        return vec![Check::warn(
            GROUP,
            "injected pods exist",
            "no pod runs a mesh-proxy",
            "kubectl annotate ns NAMESPACE mesh.dev/inject=enabled, then restart its workloads",
        )];
    }
    let mut out = vec![ready_check(&injected), version_check(&injected)];
    let mut expired = Vec::new();
    let mut unreadable = Vec::new();
    let mut foreign = Vec::new();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    // Every proxy at once, each within `timeout`: one that does not answer is
    // named, not waited for.
    let read = futures::future::join_all(injected.iter().map(|p| async move {
        let (ns, name) = (
            p.metadata.namespace.clone().unwrap_or_default(),
            p.metadata.name.clone().unwrap_or_default(),
        );
        let metrics = kube_pods::admin_get(client, &ns, &name, "/metrics", timeout).await;
        let chain = match anchors {
            Some(_) => Some(
                kube_pods::admin_get(client, &ns, &name, "/certificate", timeout)
                    .await
                    .unwrap_or_default(),
            ),
            None => None,
        };
        (format!("{ns}/{name}"), metrics, chain)
    }))
    .await;
    for (pod, metrics, chain) in read {
        match &metrics {
            Ok(t) => match metric(t, "mesh_identity_cert_expiry_timestamp_seconds") {
                Some(t) if t > now => {}
                Some(_) => expired.push(pod.clone()),
                None => unreadable.push(format!("{pod} (no certificate metric)")),
            },
            Err(e) => unreadable.push(format!("{pod} ({e})")),
        }
        if let (Some(anchors), Some(chain)) = (anchors, chain) {
            if metrics.is_ok() && chains_to(&chain, anchors).is_err() {
                foreign.push(pod);
            }
        }
    }
    let desc = format!("{} proxies have a valid certificate", injected.len());
    out.push(
        if expired.is_empty() && unreadable.is_empty() && foreign.is_empty() {
            Check::ok(GROUP, desc)
        } else {
            let mut what = Vec::new();
            if !expired.is_empty() {
                what.push(format!("expired: {}", expired.join(", ")));
            }
            if !unreadable.is_empty() {
                what.push(format!("metrics unreadable: {}", unreadable.join(", ")));
            }
            if !foreign.is_empty() {
                what.push(format!(
                    "not chaining to the current trust anchors: {}",
                    foreign.join(", ")
                ));
            }
            Check::fail(
                GROUP,
                desc,
                what.join("; "),
                "look at the proxy's log (kubectl logs POD -c mesh-proxy) and at mesh-identity",
            )
        },
    );
    out
}

/// Pure: whether every injected pod's proxy container reports ready.
pub fn ready_check(pods: &[&Pod]) -> Check {
    let desc = format!("{} injected pods have their proxy ready", pods.len());
    let not_ready: Vec<String> = pods
        .iter()
        .filter(|p| !proxy_ready(p))
        .map(|p| {
            format!(
                "{}/{}",
                p.metadata.namespace.as_deref().unwrap_or_default(),
                p.metadata.name.as_deref().unwrap_or_default()
            )
        })
        .collect();
    if not_ready.is_empty() {
        Check::ok(GROUP, desc)
    } else {
        Check::fail(
            GROUP,
            desc,
            format!("not ready: {}", not_ready.join(", ")),
            format!(
                "kubectl logs -n {} -c mesh-proxy",
                not_ready[0].replacen('/', " ", 1)
            ),
        )
    }
}

fn proxy_ready(p: &Pod) -> bool {
    let Some(status) = &p.status else {
        return false;
    };
    status
        .container_statuses
        .iter()
        .flatten()
        .chain(status.init_container_statuses.iter().flatten())
        .any(|c| c.name == PROXY && c.ready)
}

/// Pure: whether every proxy runs the image tag of this CLI's version (a warning:
/// proxies catch up as workloads restart).
pub fn version_check(pods: &[&Pod]) -> Check {
    let want = expected_tag();
    let desc = format!("proxies run version {want}");
    let other: Vec<String> = pods
        .iter()
        .filter_map(|p| {
            let spec = p.spec.as_ref()?;
            let c = spec
                .containers
                .iter()
                .chain(spec.init_containers.iter().flatten())
                .find(|c| c.name == PROXY)?;
            let image = c.image.clone().unwrap_or_default();
            let tag = image.rsplit_once(':').map(|(_, t)| t).unwrap_or("latest");
            (tag != want).then(|| {
                format!(
                    "{}/{} ({tag})",
                    p.metadata.namespace.as_deref().unwrap_or_default(),
                    p.metadata.name.as_deref().unwrap_or_default()
                )
            })
        })
        .collect();
    if other.is_empty() {
        Check::ok(GROUP, desc)
    } else {
        Check::warn(
            GROUP,
            desc,
            format!("other versions: {}", other.join(", ")),
            "kubectl rollout restart the workloads after upgrading the control plane",
        )
    }
}
