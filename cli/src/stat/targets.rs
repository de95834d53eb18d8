//! Direct mode: the proxies listed in a file-SD targets file, each scraped
//! twice a window apart.

use super::compute::Scrapes;
use crate::http::{get, HttpClient};
use anyhow::Context;
use std::{collections::BTreeMap, path::Path, time::Duration};

/// A proxy's admin address and its target labels.
#[derive(Clone, Debug)]
pub struct ProxyTarget {
    /// `host:port`, or `namespace/pod` when read through the API server.
    pub addr: String,
    /// `job`, `namespace`, `workload`, `pod`.
    pub labels: BTreeMap<String, String>,
}

/// How proxies' metrics are fetched.
pub enum Fetch {
    /// Directly from their admin addresses.
    Direct(Box<HttpClient>),
    /// Through the Kubernetes API server's pod proxy.
    Kubernetes(kube::Client),
}

/// The injected pods (of `namespace`, or all) as targets read through the API server.
pub async fn from_kubernetes(
    client: &kube::Client,
    namespace: Option<&str>,
) -> anyhow::Result<Vec<ProxyTarget>> {
    let pods = crate::kube_pods::injected(client, namespace)
        .await
        .context("cannot list pods")?;
    let out: Vec<ProxyTarget> = pods
        .iter()
        .filter_map(|p| {
            let ns = p.metadata.namespace.clone()?;
            let name = p.metadata.name.clone()?;
            let labels = BTreeMap::from([
                ("job".to_string(), super::JOB_PROXY.to_string()),
                ("namespace".to_string(), ns.clone()),
                ("pod".to_string(), name.clone()),
                ("workload".to_string(), crate::kube_pods::workload(p)),
            ]);
            Some(ProxyTarget {
                addr: format!("{ns}/{name}"),
                labels,
            })
        })
        .collect();
    if out.is_empty() {
        anyhow::bail!("no pods with a mesh-proxy found");
    }
    Ok(out)
}

async fn fetch(f: &Fetch, t: &ProxyTarget) -> anyhow::Result<String> {
    match f {
        Fetch::Direct(c) => {
            let url = format!("http://{}/metrics", t.addr);
            let (status, body) = get(c, &url).await.context("cannot scrape proxy")?;
            if status != 200 {
                anyhow::bail!("cannot scrape proxy: {url} answered {status}");
            }
            Ok(body)
        }
        Fetch::Kubernetes(client) => {
            let (ns, pod) = t.addr.split_once('/').unwrap_or(("", &t.addr));
            crate::kube_pods::admin_get(client, ns, pod, "/metrics")
                .await
                .with_context(|| format!("cannot scrape the proxy of {}", t.addr))
        }
    }
}

/// The proxy targets (`job` = `mesh-proxy`) of a file-SD targets file.
pub fn read(path: &Path) -> anyhow::Result<Vec<ProxyTarget>> {
    let out: Vec<ProxyTarget> = crate::file_sd::read(path)?
        .into_iter()
        .filter(|t| t.label("job") == super::JOB_PROXY)
        .map(|t| ProxyTarget {
            addr: t.addr.to_string(),
            labels: t
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
        })
        .collect();
    if out.is_empty() {
        anyhow::bail!("{}: no mesh-proxy targets", path.display());
    }
    Ok(out)
}

/// Scrapes every target in turn: when each answered, and its samples.
async fn scrape_all(
    f: &Fetch,
    targets: &[ProxyTarget],
) -> anyhow::Result<Vec<(std::time::Instant, Vec<super::scrape::Sample>)>> {
    let mut out = Vec::new();
    for t in targets {
        let body = fetch(f, t).await?;
        let at = std::time::Instant::now();
        let samples = super::scrape::parse(&body).with_context(|| t.addr.clone())?;
        out.push((at, samples));
    }
    Ok(out)
}

/// Scrapes every target, waits `window`, scrapes again.
pub async fn scrape_twice(
    f: &Fetch,
    targets: &[ProxyTarget],
    window: Duration,
) -> anyhow::Result<Vec<Scrapes>> {
    let first = scrape_all(f, targets).await?;
    tokio::time::sleep(window).await;
    let second = scrape_all(f, targets).await?;
    Ok(targets
        .iter()
        .zip(first.into_iter().zip(second))
        .map(|(t, ((t0, before), (t1, after)))| Scrapes {
            target: t.labels.clone(),
            before,
            after,
            elapsed: t1.duration_since(t0).as_secs_f64(),
        })
        .collect())
}
