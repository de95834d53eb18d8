//! The Grafana dashboards in `manifests/grafana/dashboards/`: every one
//! names only documented metrics and labels and its own variables, and,
//! against the real `prometheus` scraping a real local mesh with traffic,
//! every panel query runs and returns data and every template variable has
//! values.

use mesh_integration::{
    apps::{self, Behaviour},
    client::blast,
    fixture::{retry_route, service, spiffe, workload},
    grafana::{family, names, panels, parse_label_values, queries, substitute, variable_queries},
    prometheus::{self, Prometheus, Target},
    Mesh,
};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

const WEB: &str = "http://web.demo.svc.cluster.local/";
const NS: &str = "demo";
/// The workload the per-workload dashboards are read for: it serves
/// (inbound) and calls (outbound).
const WORKLOAD: &str = "web-1";
const SERVICE: &str = "api.demo.svc.cluster.local:80";
const API: &str = "http://api.demo.svc.cluster.local/";
const ROUTE: &str = "httproute/demo/api-retry/0";

/// Template variables and Grafana's built-ins, as the panels are read.
const VARS: &[(&str, &str)] = &[
    ("__rate_interval", "10s"),
    ("__interval", "1s"),
    ("__range", "1m"),
    ("datasource", "prometheus"),
    ("namespace", NS),
    ("workload", WORKLOAD),
    ("service", SERVICE),
    ("route", ROUTE),
];

/// Panels that may be empty after this test's traffic: (file, title, why).
const MAY_BE_EMPTY: &[(&str, &str, &str)] = &[
    (
        "workload.json",
        "Retries skipped",
        "a retry avoids the failed endpoint, so attempts and budget are not used up",
    ),
    (
        "service-route.json",
        "Retries skipped",
        "a retry avoids the failed endpoint, so attempts and budget are not used up",
    ),
];

/// Target labels the scrape configurations add (besides Prometheus' own).
const TARGET_LABELS: &[&str] = &["namespace", "workload", "pod", "job", "instance", "le"];

/// Labels a query makes itself (`label_join`) for Grafana's node graph, which
/// reads its nodes' `id` field.
const MADE_LABELS: &[&str] = &["id"];

const DASHBOARDS: &[&str] = &[
    "top-line.json",
    "namespace.json",
    "workload.json",
    "service-route.json",
    "proxy-health.json",
    "control-plane.json",
];

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// Every dashboard, (file name, JSON); exactly the six expected.
fn dashboards() -> Vec<(String, Value)> {
    let all = mesh_integration::grafana::dashboards(&repo().join("manifests/grafana/dashboards"));
    let mut found: Vec<&str> = all.iter().map(|(n, _)| n.as_str()).collect();
    let mut want = DASHBOARDS.to_vec();
    found.sort();
    want.sort();
    assert_eq!(found, want, "manifests/grafana/dashboards/");
    all
}

#[test]
fn dashboards_use_documented_names_and_their_own_variables() {
    let doc = std::fs::read_to_string(repo().join("docs/metrics.md")).expect("docs/metrics.md");
    let documented = |name: &str| doc.contains(&format!("`{name}`"));
    let mut problems = Vec::new();
    let mut uids = BTreeSet::new();
    for (file, d) in dashboards() {
        assert_eq!(d["schemaVersion"], 39, "{file}: schemaVersion");
        assert!(
            uids.insert(d["uid"].as_str().unwrap_or("").to_string()),
            "{file}: uid not unique"
        );
        let defined: BTreeSet<String> = d["templating"]["list"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|v| v["name"].as_str().map(str::to_string))
            .collect();
        assert!(
            defined.contains("datasource"),
            "{file}: no datasource variable"
        );
        let mut ids = BTreeSet::new();
        for p in panels(&d) {
            let title = p["title"].as_str().unwrap_or("");
            assert!(
                ids.insert(p["id"].as_i64()),
                "{file}: panel id of {title} not unique"
            );
            if p["type"] != "row" {
                assert_eq!(p["datasource"]["uid"], "${datasource}", "{file}: {title}");
                for t in p["targets"].as_array().into_iter().flatten() {
                    assert_eq!(t["datasource"]["uid"], "${datasource}", "{file}: {title}");
                }
            }
        }
        let exprs = queries(&d)
            .into_iter()
            .map(|(title, _, e)| (title, e))
            .chain(
                variable_queries(&d)
                    .into_iter()
                    .map(|(n, q)| (format!("${n}"), q)),
            );
        for (title, expr) in exprs {
            // Variables: the dashboard's own or Grafana's.
            for (i, _) in expr.match_indices('$') {
                let rest = expr[i + 1..].trim_start_matches('{');
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.starts_with("__") && !defined.contains(&name) {
                    problems.push(format!("{file}: {title}: undefined variable ${name}"));
                }
            }
            let (metrics, labels) = names(&expr);
            for m in metrics {
                if !documented(family(&m)) {
                    problems.push(format!("{file}: {title}: {m} is not in docs/metrics.md"));
                }
            }
            for l in labels {
                if !documented(&l)
                    && !TARGET_LABELS.contains(&l.as_str())
                    && !MADE_LABELS.contains(&l.as_str())
                {
                    problems.push(format!("{file}: {title}: label {l} is not documented"));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// === the real thing ===

const TRAFFIC_POLICY: &str = r#"apiVersion: policy.mesh.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: api, namespace: demo}
spec:
  targetRef: {kind: Service, name: api}
  outlierDetection:
    consecutiveFailures: 3
    baseEjectionTime: 1s
    maxEjectionTime: 2s
    maxEjectionPercent: 50
"#;

/// loadgen → web-1 (a forwarding app) → api (api-1 healthy, api-2 failing
/// one request in five, then every request for a moment so it is ejected),
/// with retries on 5xx; a few calls to a Service with no endpoints. Every
/// dashboard query through Prometheus scraping all of it every second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_data_from_a_real_prometheus() {
    if !prometheus::can_run() {
        return;
    }
    let started = Instant::now();
    let run = tokio::time::timeout(Duration::from_secs(55), scenario());
    run.await.expect("the dashboards test took more than 55 s");
    println!("dashboards test: {:.1} s", started.elapsed().as_secs_f64());
}

async fn scenario() {
    let mesh = Mesh::start("1h").await;
    for (name, file) in [
        ("api", "svc-api.yaml"),
        ("web", "svc-web.yaml"),
        ("empty", "svc-empty.yaml"),
    ] {
        mesh.write(file, &service(name, NS, &[("http", 80, "http", "")]));
    }
    mesh.write(
        "route.yaml",
        &format!("{}---\n{TRAFFIC_POLICY}", retry_route(2)),
    );
    let api1 = mesh.replica("api", "api-1", Behaviour::default()).await;
    let api2 = mesh.replica("api", "api-2", Behaviour::failing(20)).await;
    let web = mesh.proxy(NS, "web", WORKLOAD).await;
    let fwd = apps::forwarder(web.outbound, "api.demo.svc.cluster.local").await;
    mesh.write(
        "web-1.yaml",
        &workload(
            WORKLOAD,
            NS,
            "web",
            "web",
            &[("http", fwd.addr.port())],
            web.inbound,
        ),
    );
    let loadgen = mesh.proxy(NS, "loadgen", "loadgen").await;
    mesh.wait_for_endpoints(SERVICE, 2).await;
    mesh.wait_for_endpoints("web.demo.svc.cluster.local:80", 1)
        .await;

    let proxies = [&loadgen, &web, &api1.proxy, &api2.proxy];
    let targets = mesh.file_sd_targets(&proxies);
    let n = targets.len();
    let prom = Prometheus::start(|dir| {
        let file = dir.join(prometheus::TARGETS_FILE);
        prometheus::write_file_sd(&file, &targets).expect("write targets");
        prometheus::file_sd_config(&file, "1s")
    })
    .await;
    prom.wait_for_targets_up(n, Duration::from_secs(15)).await;
    check_target_labels(&prom, &targets).await;

    drive(&loadgen, &web, &api2).await;
    // Two more scrapes, so the last counts are in.
    tokio::time::sleep(Duration::from_millis(2500)).await;

    let mut problems = Vec::new();
    let mut allowed_empty = Vec::new();
    let mut count = 0;
    for (file, d) in dashboards() {
        for (title, ref_id, expr) in queries(&d) {
            count += 1;
            let q = substitute(&expr, VARS);
            if q.contains('$') {
                problems.push(format!(
                    "{file}: {title} ({ref_id}): unknown variable in {q}"
                ));
                continue;
            }
            let may_be_empty = MAY_BE_EMPTY
                .iter()
                .any(|(f, t, _)| *f == file && *t == title);
            match prom.query(&q).await {
                Err(e) => problems.push(format!("{file}: {title} ({ref_id}): {e}\n    {q}")),
                Ok(r) if r.is_empty() && may_be_empty => {
                    allowed_empty.push(format!("{file}: {title}"))
                }
                Ok(r) if r.is_empty() => {
                    problems.push(format!("{file}: {title} ({ref_id}): no data\n    {q}"))
                }
                Ok(_) => {}
            }
        }
        for (name, query) in variable_queries(&d) {
            count += 1;
            let Some((label, selector)) = parse_label_values(&query) else {
                problems.push(format!("{file}: ${name}: not label_values(...): {query}"));
                continue;
            };
            let selector = selector.map(|s| substitute(&s, VARS));
            match prom.label_values(&label, selector.as_deref()).await {
                Err(e) => problems.push(format!("{file}: ${name}: {e}")),
                Ok(v) if v.is_empty() => problems.push(format!("{file}: ${name}: no values")),
                Ok(_) => {}
            }
        }
    }
    for (file, title, _) in MAY_BE_EMPTY {
        let d = dashboards()
            .into_iter()
            .find(|(f, _)| f == file)
            .expect("file")
            .1;
        assert!(
            panels(&d).iter().any(|p| p["title"] == *title),
            "allow-list names a panel that does not exist: {file}: {title}"
        );
    }
    println!("{count} queries; empty and allowed: {allowed_empty:?}");
    assert!(
        problems.is_empty(),
        "{} of {count} dashboard queries failed:\n{}",
        problems.len(),
        problems.join("\n")
    );
    edges_from_prometheus(&prom);
    let _ = (&api1, &fwd);
}

/// `mesh edges` over the same Prometheus: web calls both api replicas over
/// mutual TLS, with both identities.
fn edges_from_prometheus(prom: &Prometheus) {
    let out = std::process::Command::new(mesh_integration::process::bin("mesh"))
        .args([
            "edges",
            "deploy",
            "-n",
            NS,
            "-t",
            "30s",
            "-o",
            "json",
            "--prometheus",
        ])
        .arg(format!("http://{}", prom.addr))
        .output()
        .expect("mesh edges");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let edges: Vec<Value> = serde_json::from_str(&text).expect("edges json");
    for api in ["demo/api-1", "demo/api-2"] {
        let e = edges
            .iter()
            .find(|e| e["dst"] == api && e["src_identity"] == spiffe(NS, "web"))
            .unwrap_or_else(|| panic!("no edge web -> {api}: {text}"));
        assert_eq!(e["dst_identity"], spiffe(NS, "api"), "{e}");
        assert_eq!(e["mtls"], true, "{e}");
        assert!(e["rps"].as_f64().unwrap() > 0.0, "{e}");
    }
    assert!(
        edges
            .iter()
            .any(|e| e["src_identity"] == spiffe(NS, "loadgen")),
        "{text}"
    );
}

/// The targets carry the file-SD labels (`job` from the file, not the job name).
async fn check_target_labels(prom: &Prometheus, targets: &[Target]) {
    let active = prom.active_targets().await;
    for t in targets {
        let found = active
            .iter()
            .find(|a| {
                a["scrapeUrl"]
                    .as_str()
                    .is_some_and(|u| u.contains(&t.addr.to_string()))
            })
            .unwrap_or_else(|| panic!("no active target for {t:?}: {active:#?}"));
        for (k, v) in &t.labels {
            assert_eq!(found["labels"][*k], *v.as_str(), "{k} of {t:?}");
        }
    }
}

/// Bounded traffic, several scrapes long: about 8 s.
async fn drive(
    loadgen: &mesh_integration::Proxy,
    web: &mesh_integration::Proxy,
    api2: &mesh_integration::fixture::Replica,
) {
    // The route arrives with web-1's first call to api: wait for a retry.
    let deadline = Instant::now() + Duration::from_secs(10);
    while web.metric_sum("mesh_retries_total", &[]).await == 0.0 {
        assert!(Instant::now() < deadline, "no retry within 10 s");
        blast(loadgen.outbound, WEB, 20, 2, &[]).await;
    }
    let empty = [("x-forward-to", "empty.demo.svc.cluster.local")];
    let steady = |secs: u64| async move {
        let until = Instant::now() + Duration::from_secs(secs);
        let mut sent = 0;
        while Instant::now() < until && sent < 20_000 {
            let t = blast(loadgen.outbound, WEB, 50, 4, &[]).await;
            blast(loadgen.outbound, WEB, 2, 1, &empty).await;
            // web-1's app on a connection of its own, closed after: the
            // forwarder's pooled connections never close.
            blast(web.outbound, API, 2, 1, &[]).await;
            sent += t.total() + 4;
        }
    };
    steady(3).await;
    // api-2 fails everything until web-1's proxy ejects it.
    api2.app.set(Behaviour::failing(100));
    // (Bounded generously: on a loaded 2-core CI machine the failures that trip the
    // detector arrive slowly.)
    let deadline = Instant::now() + Duration::from_secs(15);
    while web.metric_sum("mesh_endpoint_ejections_total", &[]).await == 0.0 {
        assert!(
            Instant::now() < deadline,
            "api-2 was not ejected within 15 s"
        );
        blast(loadgen.outbound, WEB, 20, 2, &[]).await;
    }
    api2.app.set(Behaviour::failing(20));
    steady(3).await;
}
