//! Direct mode: the proxies listed in a file-SD targets file, each scraped
//! twice a window apart.

use super::compute::Scrapes;
use crate::http::{get, HttpClient};
use anyhow::Context;
use std::{collections::BTreeMap, path::Path, time::Duration};

/// A proxy's admin address and its target labels.
#[derive(Clone, Debug)]
pub struct ProxyTarget {
    /// `host:port`.
    pub addr: String,
    /// `job`, `namespace`, `workload`, `pod`.
    pub labels: BTreeMap<String, String>,
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
    c: &HttpClient,
    targets: &[ProxyTarget],
) -> anyhow::Result<Vec<(std::time::Instant, Vec<super::scrape::Sample>)>> {
    let mut out = Vec::new();
    for t in targets {
        let url = format!("http://{}/metrics", t.addr);
        let (status, body) = get(c, &url).await.context("cannot scrape proxy")?;
        let at = std::time::Instant::now();
        if status != 200 {
            anyhow::bail!("cannot scrape proxy: {url} answered {status}");
        }
        let samples = super::scrape::parse(&body).with_context(|| url.clone())?;
        out.push((at, samples));
    }
    Ok(out)
}

/// Scrapes every target, waits `window`, scrapes again.
pub async fn scrape_twice(
    c: &HttpClient,
    targets: &[ProxyTarget],
    window: Duration,
) -> anyhow::Result<Vec<Scrapes>> {
    let first = scrape_all(c, targets).await?;
    tokio::time::sleep(window).await;
    let second = scrape_all(c, targets).await?;
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
