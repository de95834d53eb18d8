//! `mesh stat` with no Prometheus and no targets file reads every injected pod's proxy
//! through the API server's pod proxy (a fake API here, reached through a kubeconfig),
//! twice a window apart, and groups the pods by the workload the injector recorded.

mod common;

use common::{fake_api, kubeconfig, Route};
use serde_json::{json, Value};
use std::process::Command;

/// A proxy of workload `api` whose counters grow by 100 requests (`ok` of them
/// successful) per scrape.
fn metrics(ok: u32) -> Value {
    let l = r#"direction="inbound",dst_service="api.demo.svc.cluster.local:80",src_identity="spiffe://cluster.local/ns/demo/sa/web",src_namespace="demo",src_workload="",dst_identity="spiffe://cluster.local/ns/demo/sa/api",dst_namespace="demo",dst_workload="api",tls="true",route="""#;
    let fail = 100 - ok;
    Value::String(format!(
        "mesh_requests_total{{{l}}} {{n*100}}\n\
         mesh_responses_total{{{l},status_code=\"200\",classification=\"success\"}} {{n*{ok}}}\n\
         mesh_responses_total{{{l},status_code=\"503\",classification=\"failure\"}} {{n*{fail}}}\n\
         mesh_response_latency_seconds_bucket{{{l},le=\"0.005\"}} {{n*100}}\n\
         mesh_response_latency_seconds_bucket{{{l},le=\"+Inf\"}} {{n*100}}\n\
         mesh_response_latency_seconds_count{{{l}}} {{n*100}}\n\
         mesh_identity_cert_renewals_total 1\n\
         mesh_tcp_open_connections{{direction=\"inbound\",dst_service=\"api.demo.svc.cluster.local:80\",tls=\"true\"}} 2\n"
    ))
}

fn routes() -> Vec<Route> {
    let pod = |name: &str| {
        json!({"metadata": {"name": name, "namespace": "demo",
                "annotations": {"mesh.dev/workload": "api"}},
            "spec": {"containers": [{"name": "app"}, {"name": "mesh-proxy"}]}})
    };
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [pod("api-1"), pod("api-2"),
            {"metadata": {"name": "db", "namespace": "demo"}, "spec": {"containers": [{"name": "db"}]}}]});
    let proxy = |name: &str| format!("/api/v1/namespaces/demo/pods/{name}:4191/proxy/metrics");
    vec![
        ("/api/v1/namespaces/demo/pods".into(), "", 200, list),
        (proxy("api-1"), "", 200, metrics(100)),
        (proxy("api-2"), "", 200, metrics(80)),
    ]
}

#[test]
fn stat_reads_proxies_through_the_api_server() {
    let addr = fake_api(routes());
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["stat", "deploy", "-n", "demo", "-t", "1s", "-o", "json"])
        .env(
            "KUBECONFIG",
            kubeconfig(dir.path(), &format!("http://{addr}")),
        )
        .env_remove("MESH_TARGETS")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let rows: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let api = rows
        .iter()
        .find(|r| r["name"] == "api")
        .unwrap_or_else(|| panic!("{rows:?}"));
    assert_eq!(api["meshed"], 2, "{api}");
    // Each proxy adds 100 requests per ~1 s window: 200 requests, 180 successful.
    let success = api["success"].as_f64().unwrap();
    assert!((success - 0.9).abs() < 1e-3, "{api}");
    let rps = api["rps"].as_f64().unwrap();
    assert!((100.0..=220.0).contains(&rps), "{api}");
    assert_eq!(api["tcp_conn"], 4, "{api}");
}

#[test]
fn one_unreachable_proxy_is_named_and_the_others_shown() {
    // api-3's proxy refuses its admin port: the API server answers 503 (which the
    // Kubernetes client would retry for minutes).
    let pod = |name: &str| {
        json!({"metadata": {"name": name, "namespace": "demo",
                "annotations": {"mesh.dev/workload": "api"}},
            "spec": {"containers": [{"name": "app"}, {"name": "mesh-proxy"}]}})
    };
    let mut routes = routes();
    routes[0].3 = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [pod("api-1"), pod("api-2"), pod("api-3")]});
    routes.push((
        "/api/v1/namespaces/demo/pods/api-3:4191/proxy/metrics".into(),
        "",
        503,
        json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "reason": "ServiceUnavailable", "code": 503,
            "message": "error trying to reach service: dial tcp 10.0.0.3:4191: connect: connection refused"}),
    ));
    let addr = fake_api(routes);
    let dir = tempfile::tempdir().unwrap();
    let started = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["stat", "deploy", "-n", "demo", "-t", "1s", "-o", "json"])
        .env(
            "KUBECONFIG",
            kubeconfig(dir.path(), &format!("http://{addr}")),
        )
        .env_remove("MESH_TARGETS")
        .output()
        .unwrap();
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(took < std::time::Duration::from_secs(5), "took {took:?}");
    let rows: Vec<Value> = serde_json::from_str(&stdout).unwrap();
    let api = rows.iter().find(|r| r["name"] == "api").unwrap();
    assert_eq!(api["meshed"], 2, "the two reachable proxies: {api}");
    let line = stderr
        .lines()
        .find(|l| l.contains("demo/api-3"))
        .unwrap_or_else(|| panic!("api-3 not named: {stderr}"));
    assert!(line.starts_with("unreachable: demo/api-3: "), "{line}");
    assert!(!line.contains("Status {"), "a raw status dump: {line}");
    println!("{took:?}: {line}");
}
