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

async fn fetch(f: &Fetch, t: &ProxyTarget, timeout: Duration) -> anyhow::Result<String> {
    match f {
        Fetch::Direct(c) => {
            let url = format!("http://{}/metrics", t.addr);
            let (status, body) = tokio::time::timeout(timeout, get(c, &url))
                .await
                .map_err(|_| anyhow::anyhow!("no answer within {timeout:?}"))?
                .context("cannot scrape proxy")?;
            if status != 200 {
                anyhow::bail!("cannot scrape proxy: {url} answered {status}");
            }
            Ok(body)
        }
        Fetch::Kubernetes(client) => {
            let (ns, pod) = t.addr.split_once('/').unwrap_or(("", &t.addr));
            crate::kube_pods::admin_get(client, ns, pod, "/metrics", timeout).await
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

/// A proxy that could not be read, and why (one line).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unreachable {
    /// `host:port`, or `namespace/pod`.
    pub target: String,
    /// Why.
    pub reason: String,
}

type Scraped = Result<(std::time::Instant, Vec<super::scrape::Sample>), String>;

/// Scrapes every target at once, each within `timeout`: when each answered
/// and its samples, or why not.
async fn scrape_all(f: &Fetch, targets: &[ProxyTarget], timeout: Duration) -> Vec<Scraped> {
    futures::future::join_all(targets.iter().map(|t| async move {
        let body = fetch(f, t, timeout).await.map_err(|e| format!("{e:#}"))?;
        let at = std::time::Instant::now();
        let samples = super::scrape::parse(&body).map_err(|e| e.to_string())?;
        Ok((at, samples))
    }))
    .await
}

/// Scrapes every target, waits `window`, scrapes again. Targets that did not
/// answer both times are returned apart, with the first reason; it is an
/// error only when none answered.
pub async fn scrape_twice(
    f: &Fetch,
    targets: &[ProxyTarget],
    window: Duration,
    timeout: Duration,
) -> anyhow::Result<(Vec<Scrapes>, Vec<Unreachable>)> {
    let first = scrape_all(f, targets, timeout).await;
    tokio::time::sleep(window).await;
    // Only those that answered are asked again: one that did not costs one
    // timeout, not two.
    let mut unreachable = Vec::new();
    let mut answered = Vec::new();
    for (t, a) in targets.iter().zip(first) {
        match a {
            Ok(a) => answered.push((t.clone(), a)),
            Err(reason) => unreachable.push(Unreachable {
                target: t.addr.clone(),
                reason,
            }),
        }
    }
    let again: Vec<ProxyTarget> = answered.iter().map(|(t, _)| t.clone()).collect();
    let second = scrape_all(f, &again, timeout).await;
    let mut scrapes = Vec::new();
    for ((t, (t0, before)), b) in answered.into_iter().zip(second) {
        match b {
            Ok((t1, after)) => scrapes.push(Scrapes {
                target: t.labels.clone(),
                before,
                after,
                elapsed: t1.duration_since(t0).as_secs_f64(),
            }),
            Err(reason) => unreachable.push(Unreachable {
                target: t.addr.clone(),
                reason,
            }),
        }
    }
    if scrapes.is_empty() {
        let all: Vec<String> = unreachable
            .iter()
            .map(|u| format!("{}: {}", u.target, u.reason))
            .collect();
        anyhow::bail!("no proxy could be scraped: {}", all.join("; "));
    }
    Ok((scrapes, unreachable))
}
