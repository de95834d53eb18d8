//! `mesh stat` against a real local mesh: loadgen → Service api (api-1
//! healthy, api-2 failing one request in five) with steady, counted traffic;
//! a real Prometheus scraping every proxy each second. The real `mesh`
//! binary, once through Prometheus and once scraping the proxies itself,
//! must agree with each other and with what the client counted.

use mesh_integration::{
    apps::Behaviour,
    client::{get, http1},
    fixture::service,
    process::bin,
    prometheus::{self, Prometheus},
    Mesh,
};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const API: &str = "http://api.demo.svc.cluster.local/";
const CLIENTS: usize = 4;
const PAUSE: Duration = Duration::from_millis(20);
const MAX_REQUESTS: u64 = 30_000;
const PROM_WINDOW_S: f64 = 30.0;
const DIRECT_WINDOW_S: f64 = 5.0;

/// What the clients counted, per app (`x-app-name`): (sent, 2xx).
#[derive(Default, Debug)]
struct Counts {
    apps: BTreeMap<String, (u64, u64)>,
    /// Requests answered without an app (the proxy's own errors) or not at all.
    other: u64,
}

impl Counts {
    fn sent(&self) -> u64 {
        self.apps.values().map(|(s, _)| s).sum::<u64>() + self.other
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stat_agrees_with_prometheus_and_the_client() {
    if !prometheus::can_run() {
        return;
    }
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(100), scenario())
        .await
        .expect("the stat test took more than 100 s");
    println!("stat test: {:.1} s", started.elapsed().as_secs_f64());
}

async fn scenario() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc-api.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let api1 = mesh.replica("api", "api-1", Behaviour::default()).await;
    let api2 = mesh.replica("api", "api-2", Behaviour::failing(20)).await;
    let loadgen = mesh.proxy("demo", "loadgen", "loadgen").await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 2)
        .await;

    let targets = mesh.file_sd_targets(&[&loadgen, &api1.proxy, &api2.proxy]);
    let n = targets.len();
    let prom = Prometheus::start(|dir| {
        let file = dir.join(prometheus::TARGETS_FILE);
        prometheus::write_file_sd(&file, &targets).expect("write targets");
        prometheus::file_sd_config(&file, "1s")
    })
    .await;
    prom.wait_for_targets_up(n, Duration::from_secs(15)).await;
    let targets_file = prom.dir.path().join(prometheus::TARGETS_FILE);

    // Steady traffic: CLIENTS loops, each one request then a short pause,
    // bounded by MAX_REQUESTS and by 80 s.
    let counts = Arc::new(Mutex::new(Counts::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let t0 = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..CLIENTS {
        let (counts, stop, proxy) = (counts.clone(), stop.clone(), loadgen.outbound);
        tasks.push(tokio::spawn(async move {
            let c = http1(proxy);
            let deadline = Instant::now() + Duration::from_secs(80);
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                let r = get(&c, API).await;
                if !record(&counts, r) {
                    break;
                }
                tokio::time::sleep(PAUSE).await;
            }
        }));
    }

    // A full Prometheus window of traffic (plus two scrapes), then both reads
    // while the traffic goes on.
    tokio::time::sleep(Duration::from_secs_f64(PROM_WINDOW_S + 2.5)).await;
    let url = format!("http://{}", prom.addr);
    let via_prom = mesh_stat(&["--prometheus", &url, "-t", "30s"]).await;
    // The client's own rate while the direct read's window runs (on this 2-core
    // machine the load's rate wanders by more than 10 % between windows).
    let sent = || counts.lock().unwrap().sent();
    let (sent_before, direct_started) = (sent(), Instant::now());
    let direct = mesh_stat(&[
        "--targets",
        targets_file.to_str().expect("utf-8"),
        "-t",
        "5s",
    ])
    .await;
    let client_direct_rps = (sent() - sent_before) as f64 / direct_started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = t0.elapsed().as_secs_f64();
    let counts = std::mem::take(&mut *counts.lock().unwrap());
    println!("client: {counts:?} in {elapsed:.1} s");
    println!("prometheus: {via_prom:#?}\ndirect: {direct:#?}");
    assert_eq!(counts.other, 0, "requests without an app answer");
    assert!(
        counts.sent() < MAX_REQUESTS,
        "the count bound cut the traffic short"
    );

    let client_rps = counts.sent() as f64 / elapsed;
    let mut sum = [0.0; 2];
    for app in ["api-1", "api-2"] {
        let p = row(&via_prom, app);
        let d = row(&direct, app);
        let (sent, ok) = counts.apps[app];
        let client_success = ok as f64 / sent as f64;
        let (ps, ds) = (num(p, "success"), num(d, "success"));
        let (pr, dr) = (num(p, "rps"), num(d, "rps"));
        sum[0] += pr;
        sum[1] += dr;
        println!(
            "{app}: success prometheus {ps:.4} direct {ds:.4} client {client_success:.4}; \
             rps prometheus {pr:.2} direct {dr:.2}; p50 {:?}/{:?} ms",
            p["latency_ms_p50"], d["latency_ms_p50"]
        );
        assert!((ps - ds).abs() <= 0.05, "{app}: success {ps} vs {ds}");
        // Per replica the split of the balancer wanders between windows
        // (a few %); the sum over the api workloads is compared below.
        // Failures are spread evenly, so a window of N requests has the
        // client's share of failures give or take one request.
        for (source, s, rps, w) in [
            ("prometheus", ps, pr, PROM_WINDOW_S),
            ("direct", ds, dr, DIRECT_WINDOW_S),
        ] {
            let one = 1.0 / (rps * w) + 1.0 / sent as f64;
            assert!(
                (s - client_success).abs() <= one,
                "{app}: {source} success {s} vs the client's {client_success} (± {one})"
            );
        }
        assert_eq!(num(p, "meshed"), 1.0, "{app} meshed (prometheus)");
        assert_eq!(num(d, "meshed"), 1.0, "{app} meshed (direct)");
        assert!(p["latency_ms_p50"].is_number() && d["latency_ms_p99"].is_number());
        assert_eq!(p["namespace"], "demo");
    }
    println!(
        "rps: client {client_rps:.2} (during the direct read {client_direct_rps:.2}), \
         prometheus {:.2}, direct {:.2}",
        sum[0], sum[1]
    );
    // Each read against what the client sent over the same stretch of time.
    for (source, rps, truth) in [
        ("prometheus", sum[0], client_rps),
        ("direct", sum[1], client_direct_rps),
    ] {
        assert!(
            (rps - truth).abs() <= 0.10 * truth,
            "{source} rps {rps} vs the client's {truth}"
        );
    }
}

/// Counts one answer; false once MAX_REQUESTS have been sent.
fn record(counts: &Mutex<Counts>, r: anyhow::Result<mesh_integration::client::Reply>) -> bool {
    let mut k = counts.lock().unwrap();
    if k.sent() >= MAX_REQUESTS {
        return false;
    }
    match r {
        Ok(r) if !r.header("x-app-name").is_empty() => {
            let e = k
                .apps
                .entry(r.header("x-app-name").to_string())
                .or_default();
            e.0 += 1;
            e.1 += u64::from(r.status.is_success());
        }
        _ => k.other += 1,
    }
    true
}

/// Runs `mesh stat deploy -n demo -o json` with `args`; the parsed rows.
async fn mesh_stat(args: &[&str]) -> Vec<Value> {
    let out = tokio::process::Command::new(bin("mesh"))
        .args(["stat", "deploy", "-n", "demo", "-o", "json"])
        .args(args)
        .env_remove("MESH_TARGETS")
        .output()
        .await
        .expect("run mesh stat");
    assert!(
        out.status.success(),
        "mesh stat {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<Value>(&out.stdout)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_else(|| {
            panic!(
                "mesh stat {args:?}: not a JSON array: {}",
                String::from_utf8_lossy(&out.stdout)
            )
        })
}

fn row<'a>(rows: &'a [Value], name: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["name"] == name)
        .unwrap_or_else(|| panic!("no row {name} in {rows:#?}"))
}

fn num(row: &Value, field: &str) -> f64 {
    row[field]
        .as_f64()
        .unwrap_or_else(|| panic!("{field} is not a number in {row}"))
}
