//! The Prometheus configurations in `manifests/prometheus/`, with the real
//! `prometheus`: the Kubernetes one's relabelling on synthetic pods (its pod
//! discovery replaced by a file of the same meta labels), the local one by
//! promtool.

use mesh_integration::prometheus::{self, Prometheus};
use serde_json::Value;
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// A pod as `kubernetes_sd_configs` (role pod) describes one container port;
/// `meta` adds `__meta_kubernetes_pod_<key>` labels (`label_*`, `annotation_*`).
fn pod(
    ns: &str,
    name: &str,
    owner: Option<(&str, &str)>,
    meta: &[(&str, &str)],
    port: (&str, u16),
    phase: &str,
) -> Value {
    let mut l = serde_json::Map::new();
    let mut set = |k: &str, v: &str| {
        l.insert(k.to_string(), Value::String(v.to_string()));
    };
    set("__meta_kubernetes_namespace", ns);
    set("__meta_kubernetes_pod_name", name);
    set("__meta_kubernetes_pod_phase", phase);
    set("__meta_kubernetes_pod_container_port_name", port.0);
    set(
        "__meta_kubernetes_pod_container_port_number",
        &port.1.to_string(),
    );
    if let Some((kind, owner)) = owner {
        set("__meta_kubernetes_pod_controller_kind", kind);
        set("__meta_kubernetes_pod_controller_name", owner);
    }
    for (k, v) in meta {
        set(&format!("__meta_kubernetes_pod_{k}"), v);
    }
    // TEST-NET-1: never scraped successfully, and never needs to be.
    let addr = format!("192.0.2.{}:{}", name.len(), port.1);
    serde_json::json!({ "targets": [addr], "labels": l })
}

/// manifests/prometheus/kubernetes.yaml, its pod discovery replaced by a
/// file of synthetic pods (the same meta labels), keeps the admin ports and
/// labels them with namespace, pod, workload and job.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_scrape_config_keeps_admin_ports_and_names_workloads() {
    if !prometheus::can_run() {
        return;
    }
    let config = std::fs::read_to_string(repo().join("manifests/prometheus/kubernetes.yaml"))
        .expect("kubernetes.yaml");
    let sd = "kubernetes_sd_configs:\n      - role: pod\n";
    assert_eq!(config.matches(sd).count(), 2, "two pod discovery jobs");
    let hash = [
        ("label_pod_template_hash", "7d9f8c6b5"),
        ("label_app", "web"),
    ];
    let named = [("annotation_mesh_dev_workload", "nightly")];
    let cp = |name| [("label_app_kubernetes_io_name", name)];
    let pods = Value::Array(vec![
        pod(
            "shop",
            "web-7d9f8c6b5-x2x4k",
            Some(("ReplicaSet", "web-7d9f8c6b5")),
            &hash,
            ("mesh-admin", 4191),
            "Running",
        ),
        pod(
            "shop",
            "web-7d9f8c6b5-x2x4k",
            Some(("ReplicaSet", "web-7d9f8c6b5")),
            &hash,
            ("mesh-inbound", 4143),
            "Running",
        ),
        pod(
            "shop",
            "web-7d9f8c6b5-x2x4k",
            Some(("ReplicaSet", "web-7d9f8c6b5")),
            &hash,
            ("http", 8080),
            "Running",
        ),
        pod(
            "shop",
            "db-0",
            Some(("StatefulSet", "db")),
            &[],
            ("mesh-admin", 4191),
            "Running",
        ),
        pod(
            "shop",
            "batch-1-abcde",
            Some(("ReplicaSet", "batch-1")),
            &[],
            ("", 4191),
            "Running",
        ),
        pod("shop", "lonely", None, &[], ("mesh-admin", 4191), "Running"),
        pod(
            "shop",
            "nightly-28391-xyz",
            Some(("Job", "nightly-28391")),
            &named,
            ("mesh-admin", 4191),
            "Running",
        ),
        pod(
            "shop",
            "done-xyz",
            Some(("Job", "done")),
            &[],
            ("mesh-admin", 4191),
            "Succeeded",
        ),
        pod(
            "mesh-system",
            "mesh-identity-5c6d7-abcde",
            Some(("ReplicaSet", "mesh-identity-5c6d7")),
            &cp("mesh-identity"),
            ("admin", 9991),
            "Running",
        ),
        pod(
            "mesh-system",
            "mesh-identity-5c6d7-abcde",
            Some(("ReplicaSet", "mesh-identity-5c6d7")),
            &cp("mesh-identity"),
            ("grpc", 8080),
            "Running",
        ),
        pod(
            "mesh-system",
            "mesh-controller-8f9a0-fghij",
            Some(("ReplicaSet", "mesh-controller-8f9a0")),
            &cp("mesh-controller"),
            ("admin", 9990),
            "Running",
        ),
        pod(
            "mesh-system",
            "mesh-controller-8f9a0-fghij",
            Some(("ReplicaSet", "mesh-controller-8f9a0")),
            &cp("mesh-controller"),
            ("webhook", 9443),
            "Running",
        ),
    ]);
    let prom = Prometheus::start(|dir| {
        let file = dir.join("pods.json");
        std::fs::write(&file, pods.to_string()).expect("write pods");
        // The alerting rules it loads, next to it as in the repository.
        std::fs::copy(
            repo().join("manifests/prometheus/alerts.yaml"),
            dir.join("alerts.yaml"),
        )
        .expect("alerts.yaml");
        let files = format!("file_sd_configs:\n      - files: ['{}']\n", file.display());
        config.replace(sd, &files)
    })
    .await;
    // (job, namespace, pod, workload) of every target kept.
    let want: BTreeSet<[&str; 4]> = [
        ["mesh-proxy", "shop", "web-7d9f8c6b5-x2x4k", "web"],
        ["mesh-proxy", "shop", "db-0", "db"],
        // A ReplicaSet without pod-template-hash (not a Deployment's) stays itself.
        ["mesh-proxy", "shop", "batch-1-abcde", "batch-1"],
        ["mesh-proxy", "shop", "lonely", "lonely"],
        // The injector's annotation wins over the owner.
        ["mesh-proxy", "shop", "nightly-28391-xyz", "nightly"],
        [
            "mesh-identity",
            "mesh-system",
            "mesh-identity-5c6d7-abcde",
            "",
        ],
        [
            "mesh-controller",
            "mesh-system",
            "mesh-controller-8f9a0-fghij",
            "",
        ],
    ]
    .into_iter()
    .collect();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got: Vec<[String; 4]> = prom
            .active_targets()
            .await
            .iter()
            .map(|t| {
                ["job", "namespace", "pod", "workload"]
                    .map(|k| t["labels"][k].as_str().unwrap_or("").to_string())
            })
            .collect();
        let got_set: BTreeSet<[&str; 4]> = got
            .iter()
            .map(|t| [0, 1, 2, 3].map(|i| t[i].as_str()))
            .collect();
        if got_set == want && got.len() == want.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "kept targets {got_set:#?}, want {want:#?}\n{}",
            prom.log_text()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Runs `promtool ARGS` in manifests/prometheus and asserts it succeeds; `false` when
/// promtool is not installed (not allowed under CI).
fn promtool(args: &[&str]) -> bool {
    let out = std::process::Command::new("promtool")
        .args(args)
        .current_dir(repo().join("manifests/prometheus"))
        .output();
    match out {
        Ok(out) => {
            assert!(
                out.status.success(),
                "promtool {args:?}:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            true
        }
        Err(_) => {
            println!("SKIPPED: promtool not installed");
            assert!(
                std::env::var_os("CI").is_none(),
                "promtool is needed under CI"
            );
            false
        }
    }
}

/// The alerting rules in manifests/prometheus/alerts.yaml pass `promtool check rules`
/// and their unit tests (alerts_test.yaml: anchor, issuer and leaf expiry, outdated
/// bundles).
#[test]
fn certificate_alerts_pass_their_promtool_tests() {
    if promtool(&["check", "rules", "alerts.yaml"]) {
        promtool(&["test", "rules", "alerts_test.yaml"]);
    }
}

/// manifests/prometheus/local.yaml (and the rules it loads) is valid.
#[test]
fn local_scrape_config_is_valid() {
    promtool(&["check", "config", "local.yaml"]);
}
