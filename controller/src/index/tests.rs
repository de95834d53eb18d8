use super::*;
use crate::resources::parse_documents;
use mesh_proto::destination::ProtocolHint;

/// Resources from YAML, for brevity.
pub(crate) fn yaml(text: &str) -> Vec<Resource> {
    parse_documents(text).unwrap().resources
}

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports:
    - {name: http, port: 80, targetPort: http, appProtocol: http}
    - {name: admin, port: 9000}
    - {name: raw, port: 7000, targetPort: 7700, appProtocol: tcp}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: prod}
spec:
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: lonely, namespace: prod}
spec:
  selector: {app: nobody}
  ports: [{port: 80}]
"#;

const WORKLOADS: &str = r#"
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web-1, namespace: prod, labels: {app: web}}
spec: {address: 10.0.0.1, ports: {http: 8080}, serviceAccount: web}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web-2, namespace: prod, labels: {app: other}}
spec:
  address: 10.0.0.2
  ports: {http: 8081}
  labels: {app: web}
  meshed: false
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web-noport, namespace: prod, labels: {app: web}}
spec: {address: 10.0.0.3, proxyInboundAddress: "10.0.0.3:5143"}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web-elsewhere, namespace: staging, labels: {app: web}}
spec: {address: 10.0.0.4, ports: {http: 8080}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: api-1, namespace: staging, labels: {app: api}}
spec: {address: 10.0.0.5, ports: {http: 8080}, workload: api}
"#;

fn index() -> Index {
    let mut idx = Index::new(IndexConfig {
        cluster_domain: "cluster.local".into(),
        trust_domain: "example.org".into(),
    });
    assert!(idx.apply_file("/m/services.yaml", yaml(SERVICES)));
    assert!(idx.apply_file("/m/workloads.yaml", yaml(WORKLOADS)));
    idx
}

fn resolve(idx: &Index, target: &str) -> Resolution {
    idx.resolve(&idx.parse_target(target).unwrap())
}

fn addrs(r: &Resolution) -> Vec<&str> {
    match r {
        Resolution::Endpoints(set) => set.endpoints.keys().map(String::as_str).collect(),
        other => panic!("expected endpoints, got {other:?}"),
    }
}

#[test]
fn service_selects_workloads_with_named_target_port() {
    let idx = index();
    let r = resolve(&idx, "web.prod.svc.cluster.local:80");
    // web-noport lacks the named port; web-elsewhere is in another namespace.
    assert_eq!(addrs(&r), ["10.0.0.1:8080", "10.0.0.2:8081"]);
    let Resolution::Endpoints(set) = r else {
        unreachable!()
    };
    assert_eq!(
        set.metric_labels.get("service").map(String::as_str),
        Some("web")
    );
    assert_eq!(
        set.metric_labels.get("namespace").map(String::as_str),
        Some("prod")
    );
    let ep = &set.endpoints["10.0.0.1:8080"];
    assert_eq!(ep.weight, 10_000);
    assert_eq!(ep.protocol_hint(), ProtocolHint::Http);
    assert_eq!(ep.metric_labels["pod"], "web-1");
    assert_eq!(
        ep.metric_labels["workload"], "web-1",
        "no spec.workload: its name"
    );
    assert_eq!(ep.metric_labels["namespace"], "prod");
    assert_eq!(ep.metric_labels["serviceaccount"], "web");
}

#[test]
fn meshed_and_unmeshed_endpoints() {
    let idx = index();
    let r = resolve(&idx, "web.prod:80");
    let Resolution::Endpoints(set) = r else {
        panic!("no endpoints")
    };
    let tls = set.endpoints["10.0.0.1:8080"].tls.as_ref().unwrap();
    assert_eq!(tls.identity, "spiffe://example.org/ns/prod/sa/web");
    assert_eq!(tls.proxy_addr, "10.0.0.1:4143");
    assert!(set.endpoints["10.0.0.2:8081"].tls.is_none());
    assert_eq!(
        set.endpoints["10.0.0.2:8081"].metric_labels["serviceaccount"],
        "default"
    );
}

#[test]
fn numeric_and_default_target_ports() {
    let idx = index();
    let r = resolve(&idx, "web.prod.svc:9000");
    assert_eq!(
        addrs(&r),
        ["10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000"]
    );
    let Resolution::Endpoints(set) = r else {
        unreachable!()
    };
    assert_eq!(
        set.endpoints["10.0.0.3:9000"].protocol_hint(),
        ProtocolHint::Unknown
    );
    assert_eq!(
        set.endpoints["10.0.0.3:9000"]
            .tls
            .as_ref()
            .unwrap()
            .proxy_addr,
        "10.0.0.3:5143"
    );
    let r = resolve(&idx, "web.prod:7000");
    assert_eq!(
        addrs(&r),
        ["10.0.0.1:7700", "10.0.0.2:7700", "10.0.0.3:7700"]
    );
    let Resolution::Endpoints(set) = r else {
        unreachable!()
    };
    assert!(set
        .endpoints
        .values()
        .all(|e| e.protocol_hint() == ProtocolHint::Opaque));
}

#[test]
fn unknown_and_empty_targets() {
    let idx = index();
    assert_eq!(
        resolve(&idx, "nope.prod.svc.cluster.local:80"),
        Resolution::Unknown
    );
    assert_eq!(
        resolve(&idx, "web.prod.svc.cluster.local:81"),
        Resolution::Unknown
    );
    assert_eq!(resolve(&idx, "web.staging:80"), Resolution::Unknown);
    assert_eq!(
        resolve(&idx, "web.prod.svc.other.domain:80"),
        Resolution::Unknown
    );
    assert_eq!(resolve(&idx, "10.9.9.9:80"), Resolution::Unknown);
    // An empty selector selects nothing; a selector can match no workload.
    assert_eq!(resolve(&idx, "empty.prod:80"), Resolution::Empty);
    assert_eq!(resolve(&idx, "lonely.prod:80"), Resolution::Empty);
}

#[test]
fn ip_targets() {
    let idx = index();
    // The cluster IP resolves like the Service name.
    assert_eq!(
        resolve(&idx, "10.96.0.10:80"),
        resolve(&idx, "web.prod.svc.cluster.local:80")
    );
    assert_eq!(resolve(&idx, "10.96.0.10:81"), Resolution::Unknown);
    // A workload address and one of its ports: that workload alone.
    let r = resolve(&idx, "10.0.0.4:8080");
    assert_eq!(addrs(&r), ["10.0.0.4:8080"]);
    let Resolution::Endpoints(set) = r else {
        unreachable!()
    };
    assert_eq!(
        set.metric_labels.get("namespace").map(String::as_str),
        Some("staging")
    );
    let ep = &set.endpoints["10.0.0.4:8080"];
    assert_eq!(
        ep.tls.as_ref().unwrap().identity,
        "spiffe://example.org/ns/staging/sa/default"
    );
    // Not one of its declared ports.
    assert_eq!(resolve(&idx, "10.0.0.4:9999"), Resolution::Unknown);
    // A replica of a named workload: metrics name the workload, and the replica as pod.
    let Resolution::Endpoints(set) = resolve(&idx, "10.0.0.5:8080") else {
        panic!("api-1 unresolved")
    };
    let ep = &set.endpoints["10.0.0.5:8080"];
    assert_eq!(ep.metric_labels["workload"], "api");
    assert_eq!(ep.metric_labels["pod"], "api-1");
}

#[test]
fn files_replace_and_remove_their_objects() {
    let mut idx = index();
    assert!(
        !idx.apply_file("/m/workloads.yaml", yaml(WORKLOADS)),
        "same content"
    );
    let only_web1 = WORKLOADS.split("---").next().unwrap();
    assert!(idx.apply_file("/m/workloads.yaml", yaml(only_web1)));
    assert_eq!(addrs(&resolve(&idx, "web.prod:80")), ["10.0.0.1:8080"]);
    assert!(idx.remove_file(std::path::Path::new("/m/workloads.yaml")));
    assert!(!idx.remove_file(std::path::Path::new("/m/workloads.yaml")));
    assert_eq!(resolve(&idx, "web.prod:80"), Resolution::Empty);
    assert!(idx.remove_file(std::path::Path::new("/m/services.yaml")));
    assert_eq!(resolve(&idx, "web.prod:80"), Resolution::Unknown);
    assert_eq!(idx.files().count(), 0);
}

#[test]
fn default_policy() {
    let idx = index();
    let t = "web.prod.svc.cluster.local:80";
    let p = idx.service_policy(&idx.parse_target(t).unwrap(), t);
    assert_eq!(p.service, "web.prod");
    assert!(p.routes.is_empty());
    assert!(!p.opaque);
    let default = p.default_route.unwrap();
    assert_eq!(default.name, "default");
    assert!(default.matches.is_empty() && default.retry.is_none());
    assert_eq!(default.request_timeout_ms, 0);
    let backend = &default.backends[0];
    assert_eq!((backend.target.as_str(), backend.weight), (t, 1));
    // Other spellings of the same target get the canonical name.
    let short = idx.service_policy(&idx.parse_target("web.prod:80").unwrap(), "web.prod:80");
    assert_eq!(short, p_again(&idx, t));
    assert_eq!(p.balancer.unwrap().ewma_decay_ms, 10_000);
    let budget = p.retry_budget.unwrap();
    assert_eq!(
        (budget.ratio, budget.min_retries_per_second, budget.ttl_ms),
        (0.2, 10, 10_000)
    );

    let raw = idx.service_policy(
        &idx.parse_target("10.96.0.10:7000").unwrap(),
        "10.96.0.10:7000",
    );
    assert!(raw.opaque);
    assert_eq!(raw.service, "web.prod");
    assert_eq!(
        raw.default_route.unwrap().backends[0].target,
        "web.prod.svc.cluster.local:7000"
    );
    let wl = idx.service_policy(&idx.parse_target("10.0.0.4:8080").unwrap(), "10.0.0.4:8080");
    assert_eq!(wl.service, "");
    assert!(!wl.opaque);
    assert!(wl.routes.is_empty());
    assert_eq!(
        wl.default_route.unwrap().backends[0].target,
        "10.0.0.4:8080"
    );
}

fn p_again(idx: &Index, t: &str) -> mesh_proto::destination::ServicePolicy {
    idx.service_policy(&idx.parse_target(t).unwrap(), t)
}

#[test]
fn writer_notifies_readers_only_on_change() {
    let writer = IndexWriter::new(IndexConfig::default());
    let mut reader = writer.subscribe();
    assert!(!reader.has_changed().unwrap());
    assert!(writer.update(|idx| idx.apply_file("/a.yaml", yaml(SERVICES))));
    assert!(reader.has_changed().unwrap());
    let _ = reader.borrow_and_update();
    assert!(!writer.update(|idx| idx.apply_file("/a.yaml", yaml(SERVICES))));
    assert!(!reader.has_changed().unwrap());
    drop(writer);
    assert!(reader.has_changed().is_err());
}

#[test]
fn opaque_ports_annotation_marks_service_and_workload_ports() {
    let mut idx = index();
    assert!(idx.apply_file(
        "/m/db.yaml",
        yaml(
            r#"
apiVersion: v1
kind: Service
metadata:
  name: db
  namespace: prod
  annotations: {config.mesh.dev/opaque-ports: "5000-5001, 6000"}
spec:
  selector: {app: db}
  clusterIP: 10.96.0.20
  ports: [{port: 5001, targetPort: 5432}, {port: 80, targetPort: 8080}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: db-1
  namespace: prod
  labels: {app: db}
  annotations: {config.mesh.dev/opaque-ports: "8080"}
spec: {address: 10.0.0.20, ports: {pg: 5432, http: 8080}}
"#
        )
    ));
    let policy = |t: &str| idx.service_policy(&idx.parse_target(t).unwrap(), t);
    // The Service's annotation names its own ports (a range here).
    let by_ip = policy("10.96.0.20:5001");
    assert!(by_ip.opaque);
    assert_eq!(by_ip.authority, "db.prod.svc.cluster.local:5001");
    assert!(!policy("db.prod:80").opaque, "port 80 is not listed");
    // A workload's annotation names its ports: direct calls and endpoint hints.
    assert!(policy("10.0.0.20:8080").opaque);
    assert!(!policy("10.0.0.20:5432").opaque);
    // A known workload is named by its address; an unknown one is nameless.
    assert_eq!(policy("10.0.0.20:8080").authority, "10.0.0.20:8080");
    assert_eq!(policy("10.0.0.99:8080").authority, "");
    let hint = |t: &str| match resolve(&idx, t) {
        Resolution::Endpoints(set) => set.endpoints.values().next().unwrap().protocol_hint(),
        other => panic!("{other:?}"),
    };
    assert_eq!(hint("db.prod:5001"), ProtocolHint::Opaque);
    assert_eq!(
        hint("db.prod:80"),
        ProtocolHint::Opaque,
        "workload lists 8080"
    );
    assert_eq!(hint("10.0.0.20:5432"), ProtocolHint::Unknown);
    // Malformed items are ignored, not fatal.
    let ann = std::collections::BTreeMap::from([(
        crate::inject::OPAQUE_PORTS.to_string(),
        "x, 9-8, 7".to_string(),
    )]);
    assert!(annotated_opaque(&ann, 7));
    assert!(!annotated_opaque(&ann, 8));
}

#[test]
fn policy_by_cluster_ip_carries_the_service_authority() {
    let idx = index();
    let t = "10.96.0.10:80";
    let p = idx.service_policy(&idx.parse_target(t).unwrap(), t);
    assert_eq!(p.authority, "web.prod.svc.cluster.local:80");
    let unknown = idx.service_policy(&idx.parse_target("10.9.9.9:80").unwrap(), "10.9.9.9:80");
    assert_eq!(unknown.authority, "");
    assert!(!unknown.opaque);
}
