//! `mesh stat` output from fixed rows (golden files; `UPDATE_GOLDEN=1`
//! rewrites them), and its one-line errors from the real binary.

mod common;

use mesh_cli::stat::{render, Row};
use std::process::Command;

fn rows() -> Vec<Row> {
    vec![
        Row {
            name: "api-1".into(),
            namespace: "demo".into(),
            meshed: 1,
            success: Some(1.0),
            rps: 52.25,
            latency_ms_p50: Some(0.75),
            latency_ms_p95: Some(4.5),
            latency_ms_p99: Some(9.9),
            tcp_conn: 4,
            retries_per_sec: 0.0,
            timeouts_per_sec: 0.0,
            read_bytes_per_sec: 20480.0,
            write_bytes_per_sec: 10240.5,
            ..Row::default()
        },
        Row {
            name: "api-2".into(),
            namespace: "demo".into(),
            meshed: 1,
            success: Some(0.8),
            rps: 51.0,
            latency_ms_p50: Some(0.8),
            latency_ms_p95: Some(12.25),
            latency_ms_p99: Some(250.0),
            tcp_conn: 4,
            retries_per_sec: 1.5,
            timeouts_per_sec: 0.25,
            ..Row::default()
        },
        Row {
            name: "idle".into(),
            namespace: "other".into(),
            meshed: 2,
            ..Row::default()
        },
    ]
}

#[test]
fn table_output() {
    common::assert_golden(
        "stat-table.txt",
        &render::render_table(&rows(), false, false),
    );
    common::assert_golden(
        "stat-table-all.txt",
        &render::render_table(&rows(), false, true),
    );
    assert_eq!(
        render::render_table(&[], false, false),
        "No traffic found.\n"
    );
}

#[test]
fn wide_output() {
    common::assert_golden("stat-wide.txt", &render::render_table(&rows(), true, false));
}

#[test]
fn route_output_has_a_service_column() {
    let r = Row {
        name: "httproute/demo/api-retry/0".into(),
        namespace: "demo".into(),
        service: Some("api:80".into()),
        success: Some(0.995),
        rps: 3.0,
        ..Row::default()
    };
    common::assert_golden("stat-route.txt", &render::render_table(&[r], false, false));
}

#[test]
fn json_output() {
    let text = render::render_json(&rows());
    common::assert_golden("stat.json", &text);
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v[1]["success"], 0.8);
    assert_eq!(v[1]["rps"], 51.0);
    assert_eq!(v[1]["latency_ms_p99"], 250.0);
    assert!(v[2]["success"].is_null());
    assert_eq!(v[2]["meshed"], 2);
}

fn stat(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("stat")
        .args(args)
        .env_remove("MESH_TARGETS")
        .output()
        .expect("run mesh");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let targets = dir.path().join("t.json");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &targets,
        format!(r#"[{{"targets": ["127.0.0.1:{port}"], "labels": {{"job": "mesh-proxy", "namespace": "demo", "workload": "a", "pod": "a"}}}}]"#),
    )
    .unwrap();
    let dead = format!("http://127.0.0.1:{port}");
    let t = targets.to_str().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["job"], "unknown resource kind \"job\""),
        (
            &["deploy", "-t", "10x", "--targets", t],
            "bad time window \"10x\"",
        ),
        (&["deploy"], "no data source"),
        (
            &["deploy", "--prometheus", &dead],
            "cannot query Prometheus",
        ),
        (
            &["deploy", "--targets", t, "-t", "1s"],
            "cannot scrape proxy",
        ),
        (
            &["svc", "--to", "deploy/x", "--targets", t],
            "--to works with",
        ),
    ];
    for (args, want) in cases {
        let (ok, err) = stat(args);
        assert!(!ok, "{args:?} succeeded");
        assert!(err.starts_with("mesh: error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{args:?}: {err}");
    }
}
