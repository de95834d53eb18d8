//! `mesh stat`: golden metrics (success rate, requests per second, latency
//! percentiles, open connections) per resource, read either from Prometheus
//! (PromQL over its HTTP API) or straight from every proxy's `/metrics`,
//! scraped twice a window apart. Both sources answer the same [`compute::Query`]s,
//! so they give the same numbers.

pub mod compute;

pub mod plan;
pub mod prometheus;
pub mod render;
pub mod scrape;
pub mod targets;

use anyhow::Context;
use std::time::Duration;

pub use compute::Row;
pub use plan::{Kind, Selection};

/// The `job` target label of the proxies.
pub const JOB_PROXY: &str = crate::file_sd::JOB_PROXY;

/// `mesh stat` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Semantics (as Linkerd's):
  deploy, sts, pod, ns   the resource's INBOUND traffic (direction=\"inbound\"), by
                         dst_namespace+dst_workload (pod: the target label `pod`)
                         or dst_namespace.
  svc                    OUTBOUND traffic to the Service from every client, by dst_service.
  route                  OUTBOUND traffic by dst_service and route.
  --from NAME|NS/NAME    only inbound requests whose client identity (src_identity,
                         spiffe://<td>/ns/<NS>/sa/<NAME>) has service account NAME
                         (in namespace NS, any if not given).
  --to deploy/Y|svc/Y|Y  the resource's own OUTBOUND requests (src_workload = the
                         resource) to workload Y (dst_workload) or Service Y (dst_service).
SUCCESS is non-5xx responses / responses; RPS requests per second over the window;
latencies are histogram_quantile of mesh_response_latency_seconds; TCP_CONN the open
inbound connections; MESHED the proxies seen (distinct `pod` target labels).

Data sources: --prometheus URL queries Prometheus (rate over -t); otherwise --targets
FILE (or MESH_TARGETS), the file-SD targets file `mesh demo` writes
(prometheus-targets.json in its directory), and every proxy's /metrics is scraped
twice -t apart; with neither, the current kubeconfig's cluster: every injected pod's
proxy is read through the API server's pod proxy, twice -t apart.")]
pub struct Args {
    /// The resource kind: deploy, sts, pod, svc, ns or route.
    pub kind: String,
    /// The resource's name (every one when omitted).
    pub name: Option<String>,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Every namespace.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Only inbound traffic from this client service account (NAME or NS/NAME).
    #[arg(long)]
    pub from: Option<String>,
    /// Only the resource's outbound traffic to deploy/NAME or svc/NAME.
    #[arg(long)]
    pub to: Option<String>,
    /// The window rates are computed over (e.g. 10s, 1m).
    #[arg(short = 't', long = "time-window", default_value = "10s")]
    pub window: String,
    /// Output format.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "wide", "json"])]
    pub output: String,
    /// Where the metrics are read from.
    #[command(flatten)]
    pub data: DataArgs,
}

/// Where `mesh stat` and `mesh edges` read metrics from.
#[derive(Debug, clap::Args)]
pub struct DataArgs {
    /// Query this Prometheus (e.g. http://127.0.0.1:9090) instead of scraping proxies.
    #[arg(long)]
    pub prometheus: Option<String>,
    /// The file-SD targets file listing the proxies to scrape.
    #[arg(long, env = "MESH_TARGETS")]
    pub targets: Option<std::path::PathBuf>,
    /// How long each proxy (or Prometheus query) may take to answer; proxies are read
    /// in parallel and one that does not answer is listed, not waited for.
    #[arg(long, default_value = "2s")]
    pub timeout: String,
}

impl DataArgs {
    /// The source, and the timeout of one read.
    pub fn source(&self) -> anyhow::Result<(Data, Duration)> {
        let timeout = parse_window(&self.timeout).context("--timeout")?;
        let data = Data {
            prometheus: self.prometheus.clone(),
            targets: self.targets.clone(),
        };
        Ok((data, timeout))
    }
}

/// Parses a window: whole `ms`, `s`, `m` or `h`, more than zero.
pub fn parse_window(s: &str) -> anyhow::Result<Duration> {
    let bad = || anyhow::anyhow!("bad time window {s:?} (expected e.g. 10s, 1m)");
    let split = s.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
    let n: u64 = s[..split].parse().map_err(|_| bad())?;
    let d = match &s[split..] {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(bad()),
    };
    if d.is_zero() {
        return Err(bad());
    }
    Ok(d)
}

/// Runs `mesh stat`, printing the rows.
pub fn run(args: Args) -> anyhow::Result<()> {
    let kind: Kind = args.kind.parse()?;
    let window = parse_window(&args.window)?;
    let (data, timeout) = args.data.source()?;
    let sel = Selection {
        name: args.name.clone(),
        namespace: (!args.all_namespaces).then(|| args.namespace.clone()),
        from: args.from.clone(),
        to: args.to.clone(),
    };
    let wide = args.output == "wide";
    let queries = plan::queries(kind, &sel, wide)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let (answers, unreachable) = rt.block_on(answer(
        &queries,
        &data,
        sel.namespace.as_deref(),
        window,
        timeout,
    ))?;
    let mut rows = compute::rows(&answers, |k| plan::name_of(kind, k));
    if let (Some(ns), Kind::Svc | Kind::Route) = (&sel.namespace, kind) {
        rows.retain(|r| &r.namespace == ns);
    }
    let text = match args.output.as_str() {
        "json" => render::render_json(&rows),
        _ => render::render_table(&rows, wide, args.all_namespaces),
    };
    print!("{text}");
    // The others are shown; these are named, one line each.
    for u in &unreachable {
        eprintln!("unreachable: {}: {}", u.target, u.reason);
    }
    Ok(())
}

/// Where metrics are read from.
#[derive(Clone, Debug, Default)]
pub struct Data {
    /// A Prometheus base URL.
    pub prometheus: Option<String>,
    /// A file-SD targets file of proxies to scrape.
    pub targets: Option<std::path::PathBuf>,
}

/// Answers `queries` from `data` (without either: the proxies of the current
/// kubeconfig's cluster in `namespace`, or all) over `window`; the proxies
/// that could not be read are returned apart.
pub async fn answer(
    queries: &[compute::Query],
    data: &Data,
    namespace: Option<&str>,
    window: Duration,
    timeout: Duration,
) -> anyhow::Result<(
    Vec<(compute::Query, compute::Answer)>,
    Vec<targets::Unreachable>,
)> {
    let c = crate::http::client();
    let mut answers = Vec::new();
    if let Some(base) = &data.prometheus {
        let w = prom_window(window);
        for q in queries {
            answers.push((q.clone(), prometheus::eval(&c, base, q, &w).await?));
        }
        return Ok((answers, Vec::new()));
    }
    let (fetch, list) = match &data.targets {
        Some(file) => (
            targets::Fetch::Direct(Box::new(c.clone())),
            targets::read(file)?,
        ),
        None => {
            let _ = rustls::crypto::ring::default_provider().install_default();
            let client = crate::kube_pods::client().await.map_err(|e| {
                anyhow::anyhow!(
                    "no data source: give --prometheus URL or --targets FILE (or \
                     MESH_TARGETS), or a kubeconfig to read the proxies through the \
                     API server ({e})"
                )
            })?;
            let list = targets::from_kubernetes(&client, namespace).await?;
            (targets::Fetch::Kubernetes(client), list)
        }
    };
    let (scrapes, unreachable) = targets::scrape_twice(&fetch, &list, window, timeout).await?;
    for q in queries {
        answers.push((q.clone(), compute::eval(&scrapes, q)?));
    }
    Ok((answers, unreachable))
}

/// A window as PromQL writes it.
fn prom_window(d: Duration) -> String {
    if d.subsec_millis() != 0 {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}s", d.as_secs())
    }
}

/// Reads the targets file (for callers other than `run`).
pub fn read_targets(path: &std::path::Path) -> anyhow::Result<Vec<targets::ProxyTarget>> {
    targets::read(path).with_context(|| format!("reading {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows() {
        assert_eq!(parse_window("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_window("1m").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_window("500ms").unwrap(), Duration::from_millis(500));
        for bad in ["", "10", "s", "1.5s", "0s", "-1s", "10d"] {
            assert!(parse_window(bad).is_err(), "{bad}");
        }
        assert_eq!(prom_window(Duration::from_secs(30)), "30s");
        assert_eq!(prom_window(Duration::from_millis(1500)), "1500ms");
    }

    #[test]
    fn kinds() {
        assert_eq!("deploy".parse::<Kind>().unwrap(), Kind::Deploy);
        assert_eq!("po".parse::<Kind>().unwrap(), Kind::Pod);
        let e = "job".parse::<Kind>().unwrap_err().to_string();
        assert!(e.contains("unknown resource kind \"job\""), "{e}");
    }
}
