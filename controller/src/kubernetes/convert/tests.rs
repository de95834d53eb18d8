//! Kubernetes objects (as the API serves them) through the conversions and the index.

use super::*;
use crate::index::{Index, IndexConfig, Resolution};
use mesh_proto::destination::WeightedAddr;
use serde_json::json;

fn pod(name: &str, ips: &[&str], sa: &str, meshed: bool) -> Pod {
    let mut containers =
        vec![json!({"name": "app", "ports": [{"name": "http", "containerPort": 8080}]})];
    if meshed {
        containers.push(json!({"name": "mesh-proxy"}));
    }
    serde_json::from_value(json!({
        "metadata": {
            "name": name, "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "5d9f"},
            "ownerReferences": [{"apiVersion": "apps/v1", "kind": "ReplicaSet",
                "name": "web-5d9f", "uid": "u1", "controller": true}]
        },
        "spec": {"serviceAccountName": sa, "containers": containers},
        "status": {"phase": "Running", "podIP": ips[0],
            "podIPs": ips.iter().map(|ip| json!({"ip": ip})).collect::<Vec<_>>()}
    }))
    .unwrap()
}

fn slice(name: &str, endpoints: serde_json::Value) -> KubeSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "shop",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"},
                  {"name": "metrics", "port": 9090, "protocol": "TCP"}],
        "endpoints": endpoints
    }))
    .unwrap()
}

fn endpoint(ip: &str, pod: &str, ready: Option<bool>, terminating: bool) -> serde_json::Value {
    let mut conditions = json!({"terminating": terminating});
    if let Some(r) = ready {
        conditions["ready"] = json!(r);
    }
    json!({"addresses": [ip], "conditions": conditions,
           "targetRef": {"kind": "Pod", "name": pod, "namespace": "shop"}})
}

fn service() -> Vec<Resource> {
    object(
        "v1",
        "Service",
        json!({
            "metadata": {"name": "web", "namespace": "shop", "resourceVersion": "7",
                "managedFields": [{"manager": "kubectl"}]},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20",
                "clusterIPs": ["10.96.0.20"], "type": "ClusterIP",
                "ports": [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]},
            "status": {"loadBalancer": {}}
        }),
    )
    .unwrap()
}

fn index(files: Vec<(&str, Vec<Resource>)>) -> Index {
    let mut idx = Index::new(IndexConfig::default());
    for (key, resources) in files {
        idx.apply_file(key, resources);
    }
    idx
}

fn endpoints(idx: &Index, target: &str) -> Vec<WeightedAddr> {
    match idx.resolve(&idx.parse_target(target).unwrap()) {
        Resolution::Endpoints(set) => set.endpoints.into_values().collect(),
        other => panic!("{target}: {other:?}"),
    }
}

fn pods_and_slice(endpoints: serde_json::Value) -> Index {
    let pods: Vec<Resource> = [
        pod("web-1", &["10.0.0.1"], "web", true),
        pod("web-2", &["10.0.0.2"], "web", false),
        pod("web-3", &["10.0.0.3"], "web", true),
    ]
    .iter()
    .flat_map(pod_entries)
    .map(Resource::WorkloadEntry)
    .collect();
    let s = endpoint_slice(&slice("web-abc", endpoints)).unwrap();
    index(vec![
        ("k8s/Service/shop/web", service()),
        ("k8s/Pod", pods),
        (
            "k8s/EndpointSlice/shop/web-abc",
            vec![Resource::EndpointSlice(s)],
        ),
    ])
}

#[test]
fn slice_conditions_and_ports_decide_the_endpoints() {
    let idx = pods_and_slice(json!([
        endpoint("10.0.0.1", "web-1", Some(true), false),
        endpoint("10.0.0.2", "web-2", None, false), // ready absent = ready
        endpoint("10.0.0.3", "web-3", Some(false), false), // not ready
        endpoint("10.0.0.9", "web-9", Some(true), true), // terminating
    ]));
    let eps = endpoints(&idx, "web.shop.svc.cluster.local:80");
    let addrs: Vec<&str> = eps.iter().map(|e| e.addr.as_str()).collect();
    // The slice port named like the Service port ("http" → 8080), not 9090.
    assert_eq!(addrs, ["10.0.0.1:8080", "10.0.0.2:8080"]);
    // A meshed pod carries its identity and owner labels; an unmeshed one none.
    let tls = eps[0].tls.as_ref().expect("web-1 is meshed");
    assert_eq!(tls.identity, "spiffe://cluster.local/ns/shop/sa/web");
    assert_eq!(tls.proxy_addr, "10.0.0.1:4143");
    assert_eq!(eps[0].metric_labels["deployment"], "web");
    assert_eq!(eps[0].metric_labels["pod"], "web-1");
    assert_eq!(eps[0].metric_labels["serviceaccount"], "web");
    assert!(eps[1].tls.is_none(), "web-2 runs no proxy: plaintext");
    // Same answer by cluster IP.
    assert_eq!(endpoints(&idx, "10.96.0.20:80"), eps);
}

#[test]
fn pod_ip_lookups_work_on_any_port_and_know_the_identity() {
    let idx = pods_and_slice(json!([]));
    let eps = endpoints(&idx, "10.0.0.3:7000");
    assert_eq!(eps.len(), 1);
    assert_eq!(
        eps[0].tls.as_ref().unwrap().identity,
        "spiffe://cluster.local/ns/shop/sa/web"
    );
    assert!(endpoints(&idx, "10.0.0.2:8080")[0].tls.is_none());
    assert_eq!(
        idx.resolve(&idx.parse_target("10.0.0.77:80").unwrap()),
        Resolution::Unknown
    );
}

#[test]
fn a_service_with_empty_slices_has_no_endpoints_and_ignores_its_selector() {
    let idx = pods_and_slice(json!([endpoint("10.0.0.3", "web-3", Some(false), false)]));
    assert_eq!(
        idx.resolve(&idx.parse_target("web.shop:80").unwrap()),
        Resolution::Empty
    );
}

#[test]
fn deleting_the_service_makes_it_unknown() {
    let mut idx = pods_and_slice(json!([endpoint("10.0.0.1", "web-1", Some(true), false)]));
    assert_eq!(endpoints(&idx, "web.shop:80").len(), 1);
    assert!(idx.remove_file(std::path::Path::new("k8s/Service/shop/web")));
    assert_eq!(
        idx.resolve(&idx.parse_target("web.shop:80").unwrap()),
        Resolution::Unknown
    );
}

#[test]
fn dual_stack_pods_get_one_entry_per_family() {
    let entries = pod_entries(&pod("web-1", &["10.0.0.1", "fd00::1"], "web", true));
    assert_eq!(entries.len(), 2);
    assert_eq!(entries[0].metadata.name, "web-1");
    assert_eq!(entries[1].metadata.name, "web-1@fd00::1");
    assert_eq!(entries[1].spec.pod.as_ref().unwrap().name, "web-1");
    let mut v6: KubeSlice = slice(
        "web-v6",
        json!([{
        "addresses": ["fd00::1"], "conditions": {"ready": true},
        "targetRef": {"kind": "Pod", "name": "web-1"}}]),
    );
    v6.address_type = "IPv6".into();
    let idx = index(vec![
        ("svc", service()),
        (
            "pods",
            entries.into_iter().map(Resource::WorkloadEntry).collect(),
        ),
        (
            "v6",
            vec![Resource::EndpointSlice(endpoint_slice(&v6).unwrap())],
        ),
    ]);
    let eps = endpoints(&idx, "web.shop:80");
    assert_eq!(eps[0].addr, "[fd00::1]:8080");
    assert_eq!(eps[0].tls.as_ref().unwrap().proxy_addr, "[fd00::1]:4143");
}

#[test]
fn finished_pods_and_unowned_slices_are_dropped() {
    let mut done = pod("job-1", &["10.0.0.5"], "job", false);
    done.status.as_mut().unwrap().phase = Some("Succeeded".into());
    assert!(pod_entries(&done).is_empty());
    let mut orphan = slice("x", json!([]));
    orphan.metadata.labels = None;
    assert!(endpoint_slice(&orphan).is_none());
    let mut statefulset = pod("db-0", &["10.0.0.6"], "db", true);
    let owner = &mut statefulset.metadata.owner_references.as_mut().unwrap()[0];
    owner.kind = "StatefulSet".into();
    owner.name = "db".into();
    assert_eq!(
        super::owner(&statefulset),
        Some(("statefulset".into(), "db".into()))
    );
}

#[test]
fn httproutes_from_the_api_compile_to_policy() {
    let route = object(
        "gateway.networking.k8s.io/v1",
        "HTTPRoute",
        json!({
            "metadata": {"name": "web-split", "namespace": "shop", "generation": 3},
            "spec": {
                "parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}],
                "rules": [{
                    "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
                    "backendRefs": [{"name": "web", "port": 80, "weight": 1}],
                    "timeouts": {"request": "2s"}
                }]
            },
            "status": {"parents": []}
        }),
    )
    .unwrap();
    let idx = index(vec![("svc", service()), ("route", route)]);
    let t = "10.96.0.20:80";
    let p = idx.service_policy(&idx.parse_target(t).unwrap(), t);
    assert_eq!(p.routes.len(), 1);
    assert_eq!(p.routes[0].request_timeout_ms, 2000);
    assert_eq!(
        p.routes[0].backends[0].target,
        "web.shop.svc.cluster.local:80"
    );
    // An invalid object is an error naming the field, as for files.
    let bad = object(
        "policy.mesh.dev/v1alpha1",
        "TrafficPolicy",
        json!({"metadata": {"name": "tp", "namespace": "shop"},
               "spec": {"targetRef": {"kind": "Service", "name": "web"},
                        "retryBudget": {"ratio": 7.0}}}),
    )
    .unwrap_err()
    .to_string();
    assert!(bad.contains("TrafficPolicy shop/tp"), "{bad}");
    assert!(bad.contains("retryBudget"), "{bad}");
}
