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
        let (chain, bundle) = match anchors {
            Some(_) => (
                Some(
                    kube_pods::admin_get(client, &ns, &name, "/certificate", timeout)
                        .await
                        .unwrap_or_default(),
                ),
                kube_pods::admin_get(client, &ns, &name, "/trust-bundle", timeout)
                    .await
                    .ok(),
            ),
            None => (None, None),
        };
        (format!("{ns}/{name}"), metrics, chain, bundle)
    }))
    .await;
    if let Some(anchors) = anchors {
        let trust: Vec<_> = read
            .iter()
            .map(|(pod, _, chain, bundle)| (pod.as_str(), bundle.as_deref(), chain.as_deref()))
            .collect();
        out.push(trust_check(&trust, anchors));
    }
    for (pod, metrics, chain, _) in read {
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

/// Pure: which anchors the proxies trust and which issuers signed their leaves, and
/// whether every proxy trusts exactly `anchors` (one that does not missed a reload of
/// its `mesh-trust-roots` volume). `reads` are (pod, `/trust-bundle`, `/certificate`).
pub fn trust_check(reads: &[(&str, Option<&str>, Option<&str>)], anchors: &str) -> Check {
    use crate::identity::pem_fingerprints;
    use std::collections::BTreeMap;
    let short = |fp: &String| fp.chars().take(16).collect::<String>();
    let mut want = pem_fingerprints(anchors);
    want.sort();
    let mut issuers: BTreeMap<String, usize> = BTreeMap::new();
    let mut other = Vec::new();
    for (pod, bundle, chain) in reads {
        let issuer = chain
            .and_then(|c| pem_fingerprints(c).get(1).map(short))
            .unwrap_or_else(|| "?".into());
        *issuers.entry(issuer).or_default() += 1;
        let mut have = bundle.map(pem_fingerprints).unwrap_or_default();
        have.sort();
        if have != want {
            let names: Vec<String> = have.iter().map(short).collect();
            other.push(format!(
                "{pod} ({})",
                if names.is_empty() {
                    "unreadable".into()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    let anchors: Vec<String> = want.iter().map(short).collect();
    let issued: Vec<String> = issuers.iter().map(|(i, n)| format!("{i} ({n})")).collect();
    let desc = format!(
        "proxies trust anchor(s) {}; their certificates were issued by {}",
        anchors.join(", "),
        issued.join(", ")
    );
    if other.is_empty() {
        Check::ok(GROUP, desc)
    } else {
        Check::fail(
            GROUP,
            desc,
            format!("on another trust bundle: {}", other.join(", ")),
            "their mesh-trust-roots volume is not current: look for `trust bundle file refused` in kubectl logs POD -c mesh-proxy",
        )
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_is_summarised_and_stale_bundles_named() {
        let (a, a_key) = mesh_identity::ca::generate_trust_anchor("cluster.local").unwrap();
        let (b, _) = mesh_identity::ca::generate_trust_anchor("cluster.local").unwrap();
        let (issuer, _) = mesh_identity::ca::generate_issuer(&a, &a_key, "cluster.local").unwrap();
        let chain = format!("{issuer}{issuer}");
        let both = format!("{a}{b}");
        let reads = [
            ("demo/x", Some(a.as_str()), Some(chain.as_str())),
            ("demo/y", Some(both.as_str()), Some(chain.as_str())),
            ("demo/z", None, None),
        ];
        let check = trust_check(&reads, &a);
        assert_eq!(check.result, super::super::Status::Error, "{check:?}");
        let fp = |pem: &str| crate::identity::pem_fingerprints(pem)[0][..16].to_string();
        assert!(
            check.description.contains(&format!("anchor(s) {}", fp(&a))),
            "{check:?}"
        );
        assert!(
            check.description.contains(&format!("{} (2)", fp(&issuer))),
            "{check:?}"
        );
        let error = check.error.clone().unwrap();
        assert!(
            error.contains("demo/y (") && error.contains("demo/z (unreadable)"),
            "{error}"
        );
        assert!(!error.contains("demo/x"), "{error}");
        assert_eq!(
            trust_check(&reads[..1], &a).result,
            super::super::Status::Success
        );
    }
}
