//! The control-plane load (`make bench-control-plane`, and a scaled-down run in `make
//! test`): a fake Kubernetes API filled with Services, meshed pods and their
//! EndpointSlices; the real `mesh-controller` on it (with the real `mesh-identity` for its
//! certificate); simulated proxies each holding a `Destination.Get`, a `GetPolicy` and an
//! `InboundPolicy.Watch` stream over their own mutual-TLS connection; then single
//! endpoint changes and a burst of them, each putting a unique marker address into a
//! Service's slice, timed from the API write to every interested stream.

pub mod objects;
pub mod streams;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use mesh_kube_fake::KubeApi;
use mesh_proto::workload::{certified_key, mtls_channel, CertStore, TrustBundle};

use crate::fixture::{spiffe, Mesh};
use crate::process::{cpu_seconds, peak_rss_mib, rss_mib};
use objects::{marker, Shape, NAMESPACES, PODS, SERVICES, SLICES};
use streams::{Proxy, Recorder};

/// What to load the controller with.
#[derive(Clone, Copy, Debug)]
pub struct Config {
    pub shape: Shape,
    /// Simulated proxies (three streams each).
    pub proxies: usize,
    /// Single changes, one at a time.
    pub single: usize,
    /// Changes in the burst (at most one per Service).
    pub burst: usize,
    /// The time the burst is spread over.
    pub burst_window: Duration,
    /// How long to wait for every stream to see a change.
    pub deadline: Duration,
}

/// Propagation times of a set of deliveries, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Latency {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
    /// Deliveries measured.
    pub n: usize,
}

impl Latency {
    fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() - 1) as f64 * q).round() as usize];
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            max: ms[ms.len() - 1],
            n: ms.len(),
        }
    }
}

/// What the run measured.
#[derive(Clone, Debug, Default)]
pub struct Report {
    pub config_line: String,
    /// From starting the controller to serving (initial list indexed).
    pub load_secs: f64,
    pub load_cpu: f64,
    pub rss_loaded: f64,
    /// From the first connection to every stream's first message.
    pub streams_secs: f64,
    pub streams: usize,
    pub rss_streams: f64,
    pub single: Latency,
    pub burst: Latency,
    /// Controller CPU seconds from the burst's first write until every stream has it.
    pub burst_cpu: f64,
    /// Changes in the burst.
    pub burst_changes: usize,
    pub burst_secs: f64,
    /// Deliveries that never arrived, and streams that ended.
    pub missing: usize,
    pub dropped: usize,
    /// Updates the simulated proxies received during the burst: (Get, GetPolicy, Watch).
    pub burst_updates: [u64; 3],
    /// Deliveries the burst had to make (interested Get streams).
    pub burst_expected: usize,
    pub peak_rss: f64,
}

impl Report {
    /// The report as the table `make bench-control-plane` prints.
    pub fn render(&self) -> String {
        let l = |l: &Latency| {
            format!(
                "p50 {:.1} ms · p99 {:.1} ms · max {:.1} ms ({} deliveries)",
                l.p50, l.p99, l.max, l.n
            )
        };
        [
            format!("control plane load: {}", self.config_line),
            format!(
                "initial load            {:.2} s · {:.2} CPU-s · RSS {:.1} MiB",
                self.load_secs, self.load_cpu, self.rss_loaded
            ),
            format!(
                "streams open            {} in {:.2} s · RSS {:.1} MiB",
                self.streams, self.streams_secs, self.rss_streams
            ),
            format!("one change → streams    {}", l(&self.single)),
            format!("burst → streams         {}", l(&self.burst)),
            format!(
                "burst cost              {:.2} CPU-s for {} changes ({:.2} CPU-s per 1,000) in {:.2} s",
                self.burst_cpu,
                self.burst_changes,
                self.burst_cpu * 1000.0 / self.burst_changes.max(1) as f64,
                self.burst_secs
            ),
            format!(
                "burst updates received  Get {} (needed {}) · GetPolicy {} · Watch {}",
                self.burst_updates[0],
                self.burst_expected,
                self.burst_updates[1],
                self.burst_updates[2]
            ),
            format!(
                "missing deliveries {} · dropped streams {} · controller peak RSS {:.1} MiB",
                self.missing, self.dropped, self.peak_rss
            ),
        ]
        .join("\n")
    }
}

/// Which proxies watch Service `s`.
fn watchers(cfg: &Config, s: usize) -> Vec<usize> {
    (s..cfg.proxies).step_by(cfg.shape.services).collect()
}

/// Runs the load and reports.
pub async fn run(cfg: Config) -> anyhow::Result<Report> {
    let shape = cfg.shape;
    if cfg.burst > shape.services || shape.services == 0 || shape.pods_per_service == 0 {
        bail!("the burst changes each Service at most once; need services ≥ burst > 0");
    }
    let mut report = Report {
        config_line: format!(
            "{} Services in {} namespaces, {} pods, {} proxies × 3 streams, {} single changes, burst {} in {:?}",
            shape.services,
            shape.namespaces,
            shape.services * shape.pods_per_service,
            cfg.proxies,
            cfg.single,
            cfg.burst,
            cfg.burst_window
        ),
        ..Report::default()
    };
    let kube = KubeApi::start(objects::PATHS).await;
    for n in 0..shape.namespaces.max(1) {
        kube.apply(NAMESPACES, objects::namespace(&format!("load-{n}")));
    }
    for s in 0..shape.services {
        kube.apply(SERVICES, objects::service(&shape, s));
        for p in 0..shape.pods_per_service {
            kube.apply(PODS, objects::pod(&shape, s, p));
        }
        kube.apply(SLICES, objects::slice(&shape, s, shape.pod_ip(s, 0)));
    }

    let mesh = Mesh::start_identity("24h").await;
    let kubeconfig = mesh.root.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig)?;
    let started = Instant::now();
    let controller = mesh.spawn_controller_from(
        mesh.controller_addr,
        mesh.controller_admin,
        "kubernetes",
        &[("KUBECONFIG", kubeconfig.as_os_str())],
    );
    let pid = controller.pid();
    report.load_secs = started.elapsed().as_secs_f64();
    report.load_cpu = cpu_seconds(pid);
    report.rss_loaded = rss_mib(pid);

    // The proxies, each on its own connection (as real ones are).
    let (chain, key) = crate::tls::client_cert(&mesh.identity_dir, &spiffe("load", "proxy"));
    let certs = Arc::new(CertStore::default());
    certs.set(certified_key(&chain, &key)?);
    let anchors = std::fs::read_to_string(mesh.anchors_path())?;
    let bundle = TrustBundle::from_pem(&anchors)?;
    let rec = Arc::new(Recorder::default());
    let started = Instant::now();
    for id in 0..cfg.proxies {
        let s = id % shape.services;
        let pod = shape.pod(s, (id / shape.services) % shape.pods_per_service);
        let channel = mtls_channel(
            &mesh.controller_addr.to_string(),
            certs.clone(),
            bundle.clone(),
            &spiffe("mesh-system", "mesh-controller"),
            Duration::from_secs(10),
        )?;
        let proxy = Proxy {
            id,
            target: shape.target(s),
            workload: format!("{}/{pod}", shape.namespace(s)),
        };
        proxy.spawn(channel, rec.clone());
    }
    report.streams = 3 * cfg.proxies;
    wait_until(cfg.deadline * 6, || {
        rec.opened.load(std::sync::atomic::Ordering::Relaxed) >= report.streams
    })
    .await
    .with_context(|| {
        format!(
            "only {} of {} streams opened ({} dropped)",
            rec.opened.load(std::sync::atomic::Ordering::Relaxed),
            report.streams,
            rec.dropped.load(std::sync::atomic::Ordering::Relaxed)
        )
    })?;
    report.streams_secs = started.elapsed().as_secs_f64();
    report.rss_streams = rss_mib(pid);

    // Single changes, one at a time: marker n goes to Service n.
    let mut applied: HashMap<usize, (usize, Instant)> = HashMap::new();
    let mut single = Vec::new();
    for n in 0..cfg.single {
        let s = n % shape.services;
        applied.insert(n, (s, Instant::now()));
        kube.apply(SLICES, objects::slice(&shape, s, marker(n)));
        let want = watchers(&cfg, s).len();
        let _ = wait_until(cfg.deadline, || rec.delivered(n) >= want).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    single.extend(latencies(&rec, &applied, 0..cfg.single));
    report.single = Latency::of(single);

    // The burst: markers single.. go to Services 0.., spread over the window.
    let first = cfg.single;
    report.burst_changes = cfg.burst;
    let cpu_before = cpu_seconds(pid);
    let updates_before = rec.update_counts();
    let started = Instant::now();
    for k in 0..cfg.burst {
        let due = started + cfg.burst_window.mul_f64(k as f64 / cfg.burst as f64);
        tokio::time::sleep_until(due.into()).await;
        let n = first + k;
        applied.insert(n, (k, Instant::now()));
        kube.apply(SLICES, objects::slice(&shape, k, marker(n)));
    }
    report.burst_expected = (0..cfg.burst).map(|s| watchers(&cfg, s).len()).sum();
    let burst_done = |rec: &Recorder| {
        (first..first + cfg.burst).all(|n| rec.delivered(n) >= watchers(&cfg, n - first).len())
    };
    let _ = wait_until(cfg.deadline, || burst_done(&rec)).await;
    report.burst_secs = started.elapsed().as_secs_f64();
    report.burst_cpu = cpu_seconds(pid) - cpu_before;
    // Late or spurious updates would show here.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after = rec.update_counts();
    report.burst_updates = [0, 1, 2].map(|i| after[i] - updates_before[i]);
    report.burst = Latency::of(latencies(&rec, &applied, first..first + cfg.burst));
    report.missing = (0..first + cfg.burst)
        .map(|n| {
            let s = applied[&n].0;
            watchers(&cfg, s).len().saturating_sub(rec.delivered(n))
        })
        .sum();
    report.dropped = rec.dropped.load(std::sync::atomic::Ordering::Relaxed);
    report.peak_rss = peak_rss_mib(pid);
    drop(controller);
    Ok(report)
}

/// The first arrival of each marker in `markers` at each proxy, in ms after its write.
fn latencies(
    rec: &Recorder,
    applied: &HashMap<usize, (usize, Instant)>,
    markers: std::ops::Range<usize>,
) -> Vec<f64> {
    let seen = rec.seen.lock().unwrap_or_else(|p| p.into_inner());
    markers
        .filter_map(|m| Some((applied.get(&m)?.1, seen.get(&m)?)))
        .flat_map(|(written, at)| {
            at.values()
                .map(move |t| t.saturating_duration_since(written).as_secs_f64() * 1000.0)
        })
        .collect()
}

/// Polls `done` every 5 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut done: impl FnMut() -> bool) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while !done() {
        if Instant::now() > deadline {
            bail!("not done in {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}
