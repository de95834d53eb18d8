//! Drives the demo's traffic with a progress bar and prints the report:
//! requests, successes, latency percentiles, the split across replicas, and
//! the identities on both ends of one request.

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use indicatif::{ProgressBar, ProgressStyle};
use std::{
    collections::BTreeMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// What the run produced.
#[derive(Default)]
pub struct Results {
    pub ok: u32,
    pub failed: u32,
    pub latencies: Vec<Duration>,
    pub replicas: BTreeMap<String, u32>,
    pub sample: Option<serde_json::Value>,
    pub elapsed: Duration,
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

async fn send(c: &HttpClient, proxy: SocketAddr, host: &str) -> anyhow::Result<(u16, Bytes)> {
    let req = Request::get(format!("http://{proxy}/"))
        .header("host", host)
        .body(Full::new(Bytes::new()))?;
    let fut = async {
        let rsp = c.request(req).await?;
        let status = rsp.status().as_u16();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut).await?
}

/// One request through `proxy` to `host`.
pub async fn one(proxy: SocketAddr, host: &str) -> anyhow::Result<(u16, Bytes)> {
    send(&client(), proxy, host).await
}

/// Sends `n` requests over `concurrency` connections.
pub async fn drive(proxy: SocketAddr, host: &'static str, n: u32, concurrency: u32) -> Results {
    let bar = ProgressBar::new(u64::from(n));
    bar.set_style(
        ProgressStyle::with_template("  {bar:40} {pos}/{len} requests  {per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let results = Arc::new(Mutex::new(Results::default()));
    let next = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (results, next, bar) = (results.clone(), next.clone(), bar.clone());
        tasks.push(tokio::spawn(async move {
            let c = client();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n {
                let t = Instant::now();
                let r = send(&c, proxy, host).await;
                let took = t.elapsed();
                let mut res = match results.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                match r {
                    Ok((200, body)) => {
                        res.ok += 1;
                        res.latencies.push(took);
                        let v: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let replica = v["api"]["replica"].as_str().unwrap_or("?").to_string();
                        *res.replicas.entry(replica).or_default() += 1;
                        res.sample.get_or_insert(v);
                    }
                    _ => res.failed += 1,
                }
                bar.inc(1);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    bar.finish_and_clear();
    let mut res = match Arc::try_unwrap(results) {
        Ok(m) => m.into_inner().unwrap_or_default(),
        Err(shared) => std::mem::take(&mut *shared.lock().unwrap_or_else(|p| p.into_inner())),
    };
    res.elapsed = start.elapsed();
    res
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The server identities the client proxy verified, from its metrics.
fn verified_identities(metrics: &str) -> Vec<String> {
    let mut ids: Vec<String> = metrics
        .lines()
        .filter(|l| l.starts_with("mesh_requests_total{direction=\"outbound\""))
        .filter_map(|l| l.split("dst_identity=\"").nth(1))
        .filter_map(|s| s.split('"').next())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The sum of every sample of metric `name` in Prometheus text.
pub fn sum(metrics: &str, name: &str) -> f64 {
    metrics
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Prints the report.
pub fn print(r: &Results, client_metrics: Option<&str>) {
    let mut lat = r.latencies.clone();
    lat.sort();
    let total = r.ok + r.failed;
    let ms = |d: Duration| format!("{:.2} ms", d.as_secs_f64() * 1000.0);
    println!();
    println!("  path: loadgen → proxy → mTLS → proxy → web → proxy → mTLS → proxy → api-1|api-2");
    println!(
        "  requests {total}, succeeded {} ({:.1} %), failed {}, {:.0} req/s",
        r.ok,
        100.0 * f64::from(r.ok) / f64::from(total.max(1)),
        r.failed,
        f64::from(total) / r.elapsed.as_secs_f64().max(1e-9)
    );
    println!(
        "  latency p50 {}  p90 {}  p99 {}  max {}",
        ms(percentile(&lat, 0.5)),
        ms(percentile(&lat, 0.9)),
        ms(percentile(&lat, 0.99)),
        ms(lat.last().copied().unwrap_or_default())
    );
    let split: Vec<String> = r.replicas.iter().map(|(k, v)| format!("{k} {v}")).collect();
    println!("  api replicas: {}", split.join(", "));
    if let Some(s) = &r.sample {
        println!("  one request, as each app saw it:");
        println!(
            "    web saw caller  {}",
            s["caller"].as_str().unwrap_or("?")
        );
        println!(
            "    {} saw caller {}",
            s["api"]["replica"].as_str().unwrap_or("api"),
            s["api"]["caller"].as_str().unwrap_or("?")
        );
    }
    if let Some(m) = client_metrics {
        for id in verified_identities(m) {
            println!("    loadgen's proxy verified the server as {id}");
        }
    }
    println!();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_millis(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_millis(99));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn identities_from_metrics() {
        let m = "mesh_requests_total{direction=\"outbound\",dst_service=\"web:80\",src_identity=\"a\",dst_identity=\"spiffe://cluster.local/ns/demo/sa/web\",tls=\"true\"} 3\nmesh_requests_total{direction=\"inbound\",dst_identity=\"x\"} 1\n";
        assert_eq!(
            verified_identities(m),
            vec!["spiffe://cluster.local/ns/demo/sa/web".to_string()]
        );
    }
}
