//! The incremental index against the one built in a single batch: after any sequence of
//! file replacements and removals, both answer every probe the same, and every probe
//! whose answer changed was concerned by the recorded [`Changes`] (no stream misses an
//! update).

use std::collections::BTreeMap;
use std::path::PathBuf;

use proptest::prelude::*;

use super::super::tests::yaml;
use super::super::*;
use crate::resources::{EndpointSlice, ObjectMeta, PodInfo, SliceEndpoint};

const YAML: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: prod}
spec:
  selector: {app: api}
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: prod}
spec:
  selector: {app: api}
  clusterIP: 10.96.0.11
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: pods, namespace: prod}
spec:
  selector: {app: pod}
  clusterIP: 10.96.0.12
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: w1, namespace: prod, labels: {app: web}}
spec: {address: 10.0.0.1, ports: {http: 8080}, serviceAccount: web}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: w1, namespace: prod, labels: {app: api}}
spec: {address: 10.0.0.2, ports: {http: 8080}, serviceAccount: api}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: w2, namespace: prod, labels: {app: web, tier: x}}
spec: {address: 10.0.0.2, ports: {http: 9090}, meshed: false}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: tp-a, namespace: prod}
spec:
  targetRef: {kind: Service, name: web}
  limits: {maxConnections: 7}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: TrafficPolicy
metadata: {name: tp-b, namespace: prod}
spec:
  targetRef: {kind: Service, name: web}
  limits: {maxConnections: 9}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: prod}
spec:
  parentRefs: [{kind: Service, name: web, port: 80}]
  rules:
    - matches: [{path: {type: PathPrefix, value: /a}}]
      filters: [{type: ExtensionRef, extensionRef: {group: policy.mesh.dev, kind: HTTPFault, name: f}}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: HTTPFault
metadata: {name: f, namespace: prod}
spec: {abort: {httpStatus: 503, percent: 50}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: prod}
spec:
  targetRef: {kind: Service, name: web}
  action: deny
  rules: [{from: [{namespaces: [x]}]}]
---
apiVersion: v1
kind: Service
metadata: {name: bare, namespace: prod}
spec:
  clusterIP: 10.96.0.13
  ports: [{name: http, port: 80}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: w3
  namespace: prod
  annotations: {config.mesh.dev/opaque-ports: "8080"}
spec: {address: 10.0.0.3, ports: {http: 8080}, labels: {app: web}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: everyone, namespace: prod}
spec: {action: allow, mtls: strict, rules: [{from: [{namespaces: [prod]}]}]}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: by-label, namespace: prod}
spec: {action: deny, selector: {matchLabels: {app: api}}}
"#;

fn pod(name: &str, ip: &str, sa: &str) -> Resource {
    let meta = ObjectMeta {
        name: name.into(),
        namespace: "prod".into(),
        labels: BTreeMap::from([("app".into(), "pod".into())]),
        annotations: BTreeMap::new(),
    };
    Resource::WorkloadEntry(crate::resources::WorkloadEntry {
        metadata: meta,
        spec: crate::resources::WorkloadEntrySpec {
            address: ip.parse().unwrap(),
            ports: BTreeMap::new(),
            labels: None,
            service_account: Some(sa.into()),
            meshed: true,
            proxy_inbound_address: None,
            workload: None,
            pod: Some(PodInfo {
                name: name.into(),
                owner_kind: None,
                owner_name: None,
            }),
        },
    })
}

fn slice(name: &str, service: &str, eps: &[(&str, &str, bool)]) -> Resource {
    Resource::EndpointSlice(EndpointSlice {
        metadata: ObjectMeta {
            name: name.into(),
            namespace: "prod".into(),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
        },
        service: service.into(),
        ports: vec![("http".into(), 8080)],
        endpoints: eps
            .iter()
            .map(|(pod, ip, ready)| SliceEndpoint {
                addresses: vec![ip.parse().unwrap()],
                ready: *ready,
                terminating: false,
                pod: Some(pod.to_string()),
            })
            .collect(),
    })
}

/// Every object a file may hold (several define the same key differently).
fn universe() -> Vec<Resource> {
    let mut all = yaml(YAML);
    all.extend([
        pod("p1", "10.1.0.1", "a"),
        pod("p1", "10.1.0.9", "b"),
        pod("p2", "10.1.0.2", "a"),
        slice(
            "pods-1",
            "pods",
            &[("p1", "10.1.0.1", true), ("p2", "10.1.0.2", true)],
        ),
        slice("pods-1", "pods", &[("p2", "10.1.0.2", true)]),
        slice("pods-2", "pods", &[("p1", "10.1.0.9", false)]),
        slice("pods-2", "api", &[("p2", "10.1.0.2", true)]),
    ]);
    all
}

const TARGETS: &[&str] = &[
    "web.prod.svc.cluster.local:80",
    "api.prod.svc.cluster.local:80",
    "pods.prod.svc.cluster.local:80",
    "10.96.0.10:80",
    "10.96.0.11:80",
    "10.96.0.12:80",
    "10.0.0.1:8080",
    "10.0.0.2:8080",
    "10.0.0.2:9090",
    "10.1.0.1:8080",
    "10.1.0.9:8080",
    "10.1.0.2:8080",
    "10.0.0.3:8080",
    "10.96.0.10:81",
    "10.96.0.13:80",
    "bare.prod.svc.cluster.local:80",
];

const WORKLOADS: &[(&str, u16)] = &[
    ("w1", 8080),
    ("w2", 9090),
    ("w3", 8080),
    ("p1", 8080),
    ("p2", 8080),
];

/// One probe's answer, comparable across indexes.
#[derive(Debug, PartialEq)]
enum Answer {
    Target(Resolution, Box<mesh_proto::destination::ServicePolicy>),
    Inbound(mesh_proto::policy::ServerPolicy),
}

fn answers(idx: &Index) -> Vec<(Interest, Answer)> {
    let mut out = Vec::new();
    for t in TARGETS {
        let target = idx.parse_target(t).unwrap();
        let policy = Box::new(idx.service_policy(&target, t));
        let answer = Answer::Target(idx.resolve(&target), policy);
        out.push((Interest::of_target(&target), answer));
    }
    for (w, port) in WORKLOADS {
        let answer = Answer::Inbound(idx.server_policy("prod", w, *port));
        out.push((Interest::of_workload(&format!("prod/{w}")), answer));
    }
    out
}

fn config() -> IndexConfig {
    IndexConfig {
        cluster_domain: "cluster.local".into(),
        trust_domain: "example.org".into(),
    }
}

/// One step: file `file` and, in the same batch, maybe another now hold the objects
/// picked (none: the file is removed).
type Step = (usize, Vec<usize>, Option<(usize, Vec<usize>)>);

fn steps() -> impl Strategy<Value = Vec<Step>> {
    let n = universe().len();
    let picks = move || proptest::collection::vec(0..n, 0..6);
    proptest::collection::vec(
        (
            0..3usize,
            picks(),
            proptest::option::of((0..3usize, picks())),
        ),
        1..12,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn incremental_updates_match_a_full_build_and_wake_every_concerned_stream(steps in steps()) {
        let all = universe();
        let mut idx = Index::new(config());
        let mut files: BTreeMap<PathBuf, Vec<Resource>> = BTreeMap::new();
        for (file, picks, second) in steps {
            let before = answers(&idx);
            idx.take_changes();
            let mut batch = vec![(file, picks)];
            batch.extend(second);
            let single = batch.len() == 1;
            let mut applied = Vec::new();
            for (file, picks) in batch {
                let path = PathBuf::from(format!("/m/{file}.yaml"));
                let resources: Vec<Resource> = picks.iter().map(|i| all[*i].clone()).collect();
                if resources.is_empty() {
                    files.remove(&path);
                } else {
                    files.insert(path.clone(), resources.clone());
                }
                applied.push((path, resources));
            }
            if single {
                let (path, resources) = applied.remove(0);
                if resources.is_empty() {
                    idx.remove_file(&path);
                } else {
                    idx.apply_file(path, resources);
                }
            } else {
                // A batch (a relist): what each file holds at the end of it.
                let paths: Vec<PathBuf> = applied.iter().map(|(p, _)| p.clone()).collect();
                let (kept, gone): (Vec<PathBuf>, Vec<PathBuf>) =
                    paths.into_iter().partition(|p| files.contains_key(p));
                let kept = kept.into_iter().map(|p| (p.clone(), files[&p].clone()));
                idx.apply_batch(kept.collect::<Vec<_>>(), gone);
            }
            let changes = idx.take_changes();
            let after = answers(&idx);
            for ((interest, old), (_, new)) in before.iter().zip(&after) {
                prop_assert!(
                    old == new || changes.concerns(interest),
                    "{interest:?} changed but was not woken by {changes:?}"
                );
            }
            let mut fresh = Index::new(config());
            fresh.apply_batch(files.clone(), Vec::new());
            prop_assert_eq!(&after, &answers(&fresh));
            prop_assert_eq!(idx.object_counts(), fresh.object_counts());
        }
    }
}

#[test]
fn an_endpoint_change_concerns_its_service_only() {
    let mut idx = Index::new(config());
    idx.apply_file("/k8s/svc", yaml(YAML)[3..4].to_vec());
    idx.apply_file("/k8s/p1", vec![pod("p1", "10.1.0.1", "a")]);
    idx.apply_file(
        "/k8s/slice",
        vec![slice("pods-1", "pods", &[("p1", "10.1.0.1", true)])],
    );
    idx.take_changes();
    idx.apply_file(
        "/k8s/slice",
        vec![slice("pods-1", "pods", &[("p1", "10.1.0.1", false)])],
    );
    let changes = idx.take_changes();
    assert_eq!(
        changes.services,
        [("prod".to_string(), "pods".to_string())].into()
    );
    assert!(changes.workloads.is_empty() && changes.workload_namespaces.is_empty());
    assert!(!changes.all_policies);
    assert_eq!(
        changes.addrs,
        ["10.96.0.12".parse().unwrap()].into(),
        "its cluster IP resolves differently too"
    );
    // The same content again is no change at all.
    assert!(!idx.apply_file(
        "/k8s/slice",
        vec![slice("pods-1", "pods", &[("p1", "10.1.0.1", false)])],
    ));
    assert!(idx.take_changes().is_empty());
}
