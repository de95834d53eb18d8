//! These tests go through the real file watcher: the safety rescan is set to an hour, so
//! every change below must be noticed from file-system events.

use std::path::Path;
use std::time::Duration;

use super::*;
use crate::index::{IndexConfig, IndexReader, Resolution, Target};

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n";

fn workload(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: prod, labels: {{app: web}}}}\nspec: {{address: {ip}}}\n"
    )
}

const OPTS: DirOptions = DirOptions {
    debounce: Duration::from_millis(50),
    resync: Duration::from_secs(3600),
};

fn endpoints(reader: &IndexReader) -> Vec<String> {
    let target = Target::Service {
        name: "web".into(),
        namespace: "prod".into(),
        port: 80,
    };
    match reader.borrow().resolve(&target) {
        Resolution::Endpoints(set) => set.endpoints.into_keys().collect(),
        Resolution::Empty => vec![],
        Resolution::Unknown => vec!["<unknown>".into()],
    }
}

/// Waits (at most 5 s) until the endpoints of `web.prod:80` are `want`.
async fn wait_for(reader: &mut IndexReader, want: &[&str]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let _ = reader.borrow_and_update();
        if endpoints(reader) == want {
            return;
        }
        let changed = tokio::time::timeout_at(deadline, reader.changed()).await;
        assert!(
            matches!(changed, Ok(Ok(()))),
            "timed out: endpoints are {:?}, want {want:?}",
            endpoints(reader)
        );
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

async fn start(dir: &Path) -> (DirWatch, IndexReader) {
    let writer = IndexWriter::new(IndexConfig::default());
    let reader = writer.subscribe();
    let watch = DirWatch::start(dir, writer, OPTS).await.unwrap();
    (watch, reader)
}

#[tokio::test]
async fn initial_load_is_complete_before_start_returns() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "svc.yaml", SERVICE);
    write(tmp.path(), "w1.yml", &workload("w1", "10.0.0.1"));
    write(tmp.path(), "w2.yaml.bak", &workload("w2", "10.0.0.2"));
    write(tmp.path(), ".w3.yaml", &workload("w3", "10.0.0.3"));
    write(
        tmp.path(),
        "broken.yaml",
        "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {ports: [{port: x}]}\n",
    );
    let (_watch, reader) = start(tmp.path()).await;
    assert_eq!(endpoints(&reader), ["10.0.0.1:8080"]);
    let index = reader.borrow();
    let mut files: Vec<_> = index.files().filter_map(|f| f.file_name()).collect();
    files.sort();
    // A file never seen good contributes nothing.
    assert_eq!(files, ["svc.yaml", "w1.yml"]);
}

#[tokio::test]
async fn missing_directory_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let writer = IndexWriter::new(IndexConfig::default());
    let err = DirWatch::start(tmp.path().join("nope"), writer, OPTS)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
}

#[tokio::test]
async fn follows_additions_changes_and_deletions() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "svc.yaml", SERVICE);
    let (_watch, mut reader) = start(tmp.path()).await;
    assert!(endpoints(&reader).is_empty());

    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.1"));
    wait_for(&mut reader, &["10.0.0.1:8080"]).await;

    write(tmp.path(), "w2.yaml", &workload("w2", "10.0.0.2"));
    wait_for(&mut reader, &["10.0.0.1:8080", "10.0.0.2:8080"]).await;

    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.11"));
    wait_for(&mut reader, &["10.0.0.11:8080", "10.0.0.2:8080"]).await;

    std::fs::remove_file(tmp.path().join("w2.yaml")).unwrap();
    wait_for(&mut reader, &["10.0.0.11:8080"]).await;

    // Editors write a temporary file and rename it into place.
    write(tmp.path(), ".w1.yaml.tmp", &workload("w1", "10.0.0.21"));
    std::fs::rename(tmp.path().join(".w1.yaml.tmp"), tmp.path().join("w1.yaml")).unwrap();
    wait_for(&mut reader, &["10.0.0.21:8080"]).await;

    std::fs::remove_file(tmp.path().join("svc.yaml")).unwrap();
    wait_for(&mut reader, &["<unknown>"]).await;
}

#[tokio::test]
async fn malformed_file_keeps_last_good_version() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "svc.yaml", SERVICE);
    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.1"));
    let (_watch, mut reader) = start(tmp.path()).await;
    assert_eq!(endpoints(&reader), ["10.0.0.1:8080"]);

    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.300"));
    // A marker file: once it is indexed, the broken w1.yaml has been rescanned too.
    write(tmp.path(), "w2.yaml", &workload("w2", "10.0.0.2"));
    wait_for(&mut reader, &["10.0.0.1:8080", "10.0.0.2:8080"]).await;

    // Fixed again: the new content replaces the old.
    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.5"));
    wait_for(&mut reader, &["10.0.0.2:8080", "10.0.0.5:8080"]).await;

    // Deleting a file whose current content is broken removes its last good objects.
    write(tmp.path(), "w1.yaml", "kind: [");
    std::fs::remove_file(tmp.path().join("w1.yaml")).unwrap();
    wait_for(&mut reader, &["10.0.0.2:8080"]).await;
}

#[tokio::test]
async fn dropping_the_watch_ends_readers() {
    let tmp = tempfile::tempdir().unwrap();
    let (watch, mut reader) = start(tmp.path()).await;
    drop(watch);
    let ended = tokio::time::timeout(Duration::from_secs(5), reader.changed()).await;
    assert!(matches!(ended, Ok(Err(_))), "reader still open: {ended:?}");
}

// === traffic resources ===

const ROUTE: &str = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: split, namespace: prod}\nspec:\n  parentRefs: [{kind: Service, name: web, port: 80}]\n  rules:\n    - matches: [{path: {type: RegularExpression, value: \"/api/.*\"}}]\n      backendRefs: [{name: web-v1, port: 80, weight: 90}, {name: web-v2, port: 80, weight: 10}]\n";

fn weights(reader: &IndexReader) -> Vec<u32> {
    let index = reader.borrow();
    let target = index.parse_target("web.prod:80").unwrap();
    let policy = index.service_policy(&target, "web.prod:80");
    policy
        .routes
        .iter()
        .flat_map(|r| r.backends.iter().map(|b| b.weight))
        .collect()
}

#[tokio::test]
async fn invalid_route_edit_keeps_last_good_policy() {
    // The refusals are checked on what `scan` returns, not on captured logs: a thread-local
    // `tracing` subscriber misses events when other tests register callsites concurrently.
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "svc.yaml", SERVICE);
    write(tmp.path(), "route.yaml", ROUTE);
    let writer = IndexWriter::new(IndexConfig::default());
    let reader = writer.subscribe();
    let mut source = DirSource::new(tmp.path());
    source.scan(&writer).await.unwrap();
    assert_eq!(weights(&reader), [90, 10]);

    // An invalid regex: rejected whole, the last good route stays in force.
    write(
        tmp.path(),
        "route.yaml",
        &ROUTE.replace("/api/.*", "/api/(").replace("90", "50"),
    );
    let rejected = source.scan(&writer).await.unwrap();
    assert_eq!(weights(&reader), [90, 10]);
    assert_eq!(rejected.len(), 1, "{rejected:?}");
    assert!(rejected[0].path.ends_with("route.yaml"));
    assert!(
        rejected[0]
            .error
            .contains("HTTPRoute prod/split: spec.rules[0].matches[0].path.value"),
        "{rejected:?}"
    );

    // A weight out of range: the same.
    write(
        tmp.path(),
        "route.yaml",
        &ROUTE.replace("weight: 10}", "weight: 1000001}"),
    );
    let rejected = source.scan(&writer).await.unwrap();
    assert_eq!(weights(&reader), [90, 10]);
    assert!(
        rejected[0]
            .error
            .contains("spec.rules[0].backendRefs[1].weight"),
        "{rejected:?}"
    );

    // A valid edit replaces it.
    write(
        tmp.path(),
        "route.yaml",
        &ROUTE.replace("90", "50").replace("10}", "50}"),
    );
    source.scan(&writer).await.unwrap();
    assert_eq!(weights(&reader), [50, 50]);
}

#[tokio::test]
async fn scans_count_file_events_and_invalid_manifests() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "svc.yaml", SERVICE);
    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.1"));
    let writer = IndexWriter::new(IndexConfig::default());
    let mut source = DirSource::new(tmp.path());
    let events = |writer: &IndexWriter, event: &str| {
        let text = writer.metrics().render(&Default::default());
        let series = format!(
            "mesh_controller_source_events_total{{source=\"dir\",kind=\"file\",event=\"{event}\"}}"
        );
        crate::metrics::sample(&text, &series).unwrap_or_else(|| panic!("{series}:\n{text}"))
    };
    let invalid = |writer: &IndexWriter| {
        let text = writer.metrics().render(&Default::default());
        crate::metrics::sample(
            &text,
            "mesh_controller_errors_total{reason=\"invalid_resource\"}",
        )
    };
    source.scan(&writer).await.unwrap();
    assert_eq!(events(&writer, "apply"), 2.0);

    // Unchanged files are not events; a changed one is.
    source.scan(&writer).await.unwrap();
    assert_eq!(events(&writer, "apply"), 2.0);
    write(tmp.path(), "w1.yaml", &workload("w1", "10.0.0.9"));
    source.scan(&writer).await.unwrap();
    assert_eq!(events(&writer, "apply"), 3.0);

    // An invalid manifest: an error event, once per content, and an invalid_resource.
    write(
        tmp.path(),
        "bad.yaml",
        "apiVersion: v1\nkind: Service\nspec: [",
    );
    source.scan(&writer).await.unwrap();
    source.scan(&writer).await.unwrap();
    assert_eq!(events(&writer, "error"), 1.0);
    assert_eq!(invalid(&writer), Some(1.0));

    std::fs::remove_file(tmp.path().join("w1.yaml")).unwrap();
    source.scan(&writer).await.unwrap();
    assert_eq!(events(&writer, "delete"), 1.0);
    assert_eq!(events(&writer, "relist"), 0.0);
    let text = writer
        .metrics()
        .render(&writer.subscribe().borrow().object_counts());
    assert_eq!(
        crate::metrics::sample(
            &text,
            "mesh_controller_index_objects{kind=\"WorkloadEntry\"}"
        ),
        Some(0.0)
    );
    assert_eq!(
        crate::metrics::sample(&text, "mesh_controller_index_objects{kind=\"Service\"}"),
        Some(1.0)
    );
}
