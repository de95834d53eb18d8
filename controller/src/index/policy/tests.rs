use mesh_proto::destination::{Balancer, RetryBudget};

use super::*;
use crate::index::tests::yaml;
use crate::index::IndexConfig;

const SERVICES: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: api, namespace: demo}
spec:
  clusterIP: 10.96.0.20
  ports: [{port: 80, appProtocol: http}, {port: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: other, namespace: demo}
spec:
  ports: [{port: 80}]
"#;

fn index(files: &[(&str, &str)]) -> Index {
    let mut idx = Index::new(IndexConfig {
        cluster_domain: "example.org".into(),
        trust_domain: "example.org".into(),
    });
    idx.apply_file("/m/00-services.yaml", yaml(SERVICES));
    for (file, text) in files {
        idx.apply_file(*file, yaml(text));
    }
    idx
}

fn policy(idx: &Index, target: &str) -> ServicePolicy {
    idx.service_policy(&idx.parse_target(target).unwrap(), target)
}

/// An HTTPRoute `demo/<name>` attached to `api` (with `parent` extra parentRef fields).
fn http(name: &str, parent: &str, rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  parentRefs: [{{kind: Service, name: api{parent}}}]\n  rules: {rules}\n"
    )
}

fn names(p: &ServicePolicy) -> Vec<&str> {
    p.routes.iter().map(|r| r.name.as_str()).collect()
}

fn backends(r: &Route) -> Vec<(&str, u32)> {
    r.backends
        .iter()
        .map(|b| (b.target.as_str(), b.weight))
        .collect()
}

#[test]
fn routes_attach_by_parent_ref_and_port() {
    let idx = index(&[(
        "/m/routes.yaml",
        &[
            http("all-ports", "", "[{}]"),
            http("port-80", ", port: 80", "[{}]"),
            http("port-9000", ", port: 9000", "[{}]"),
            http("other-ns", ", namespace: prod", "[{}]"),
        ]
        .join("---\n"),
    )]);
    let p80 = policy(&idx, "api.demo.svc.example.org:80");
    assert_eq!(
        names(&p80),
        ["httproute/demo/all-ports/0", "httproute/demo/port-80/0"]
    );
    let p9000 = policy(&idx, "api.demo:9000");
    assert_eq!(
        names(&p9000),
        ["httproute/demo/all-ports/0", "httproute/demo/port-9000/0"]
    );
    // By cluster IP: the same Service port, the same policy.
    assert_eq!(policy(&idx, "10.96.0.20:80"), p80);
    assert!(policy(&idx, "other.demo:80").routes.is_empty());
    // A port the Service does not have, and a workload address: no routes.
    assert!(policy(&idx, "api.demo:81").routes.is_empty());
    assert!(policy(&idx, "10.0.0.9:80").routes.is_empty());
}

#[test]
fn rules_become_routes_with_backends() {
    let idx = index(&[(
        "/m/r.yaml",
        &http(
            "split",
            "",
            "[{matches: [{path: {value: /v1}}, {path: {value: /v2}}], backendRefs: [{name: api-v1, port: 80, weight: 90}, {name: api-v2, namespace: canary, port: 8080, weight: 10}], timeouts: {request: 1s}, retry: {attempts: 2}}, {backendRefs: [{name: dark, port: 80, weight: 0}]}, {}]",
        ),
    )]);
    let p = policy(&idx, "api.demo:80");
    assert_eq!(
        names(&p),
        [
            "httproute/demo/split/0",
            "httproute/demo/split/0",
            "httproute/demo/split/1",
            "httproute/demo/split/2"
        ]
    );
    let (a, b) = (&p.routes[0], &p.routes[1]);
    assert_eq!(a.matches.len(), 1, "one route per match");
    assert_eq!(
        a.matches[0].path.clone().and_then(|p| p.kind),
        Some(path_match::Kind::Prefix("/v1".into()))
    );
    assert_eq!(
        backends(a),
        [
            ("api-v1.demo.svc.example.org:80", 90),
            ("api-v2.canary.svc.example.org:8080", 10)
        ]
    );
    assert_eq!(a.backends, b.backends);
    assert_eq!(a.request_timeout_ms, 1_000);
    assert_eq!(a.retry.as_ref().map(|r| r.attempts), Some(3));
    assert!(p.routes[2].backends.is_empty(), "every weight 0: 500");
    let no_refs = &p.routes[3];
    assert!(no_refs.matches.is_empty());
    assert_eq!(backends(no_refs), [("api.demo.svc.example.org:80", 1)]);
    assert_eq!(no_refs.retry, None);
}

#[test]
fn fault_filters_resolve_in_the_route_namespace() {
    let fault = "apiVersion: policy.mesh.dev/v1alpha1\nkind: HTTPFault\nmetadata: {name: flaky, namespace: demo}\nspec: {abort: {httpStatus: 503, percent: 10}}\n";
    let ext = |name: &str| {
        format!("{{filters: [{{type: ExtensionRef, extensionRef: {{group: policy.mesh.dev, kind: HTTPFault, name: {name}}}}}]}}")
    };
    let route = http("f", "", &format!("[{}, {}]", ext("flaky"), ext("missing")));
    let idx = index(&[("/m/f.yaml", fault), ("/m/r.yaml", &route)]);
    let p = policy(&idx, "api.demo:80");
    let with = &p.routes[0];
    assert_eq!(
        with.fault,
        Some(Fault {
            abort_status: 503,
            abort_percent: 10.0,
            ..Fault::default()
        })
    );
    assert_eq!(backends(with), [("api.demo.svc.example.org:80", 1)]);
    let without = &p.routes[1];
    assert_eq!(without.fault, None);
    assert!(without.backends.is_empty(), "missing HTTPFault: 500");
    // The fault appears: the rule recovers.
    let idx = index(&[
        (
            "/m/f.yaml",
            &format!("{fault}---\n{}", fault.replace("flaky", "missing")),
        ),
        ("/m/r.yaml", &route),
    ]);
    assert_eq!(policy(&idx, "api.demo:80").routes[1].backends.len(), 1);
}

#[test]
fn precedence() {
    let one = |path: &str, extra: &str| format!("{{matches: [{{path: {path}{extra}}}]}}");
    // Rules deliberately listed worst first.
    let rules = [
        one("{type: RegularExpression, value: /z.*}", ""),
        "{}".to_string(),
        one("{value: /a}", ""),
        one("{value: /a}", ", method: GET"),
        one(
            "{value: /a}",
            ", method: GET, headers: [{name: h, value: v}]",
        ),
        one(
            "{value: /a}",
            ", method: GET, headers: [{name: h, value: v}], queryParams: [{name: q, value: v}]",
        ),
        one("{value: /a/long}", ""),
        one("{type: Exact, value: /a}", ""),
    ];
    let route = http("p", "", &format!("[{}]", rules.join(", ")));
    let idx = index(&[("/m/r.yaml", &route)]);
    let order: Vec<_> = policy(&idx, "api.demo:80")
        .routes
        .iter()
        .map(|r| r.name.rsplit('/').next().unwrap_or_default().to_string())
        .collect();
    assert_eq!(order, ["7", "6", "5", "4", "3", "2", "1", "0"]);

    // Equal matches: the older resource (file path, then position) wins, then the name.
    let same = "[{matches: [{path: {value: /same}}]}]";
    let idx = index(&[
        (
            "/m/b.yaml",
            &format!("{}---\n{}", http("z", "", same), http("y", "", same)),
        ),
        ("/m/a.yaml", &http("x", "", same)),
        ("/m/c.yaml", &http("w", "", same)),
    ]);
    assert_eq!(
        names(&policy(&idx, "api.demo:80")),
        [
            "httproute/demo/x/0",
            "httproute/demo/z/0",
            "httproute/demo/y/0",
            "httproute/demo/w/0"
        ]
    );
}

#[test]
fn precedence_keys() {
    let origin = Origin {
        file: "/a.yaml".into(),
        position: 0,
    };
    let m = |kind: path_match::Kind| HttpMatch {
        path: Some(mesh_proto::destination::PathMatch { kind: Some(kind) }),
        ..HttpMatch::default()
    };
    let key = |m: Option<&HttpMatch>| route_precedence(m, &origin, "r", 0, 0);
    let exact = m(path_match::Kind::Exact("/x".into()));
    let long = m(path_match::Kind::Prefix("/x/y".into()));
    let slash = m(path_match::Kind::Prefix("/".into()));
    let regex = m(path_match::Kind::Regex("/.*".into()));
    let pathless = HttpMatch::default();
    assert!(key(Some(&exact)) < key(Some(&long)));
    assert!(key(Some(&long)) < key(Some(&slash)));
    assert_eq!(key(Some(&slash)), key(None), "no matches = prefix /");
    assert_eq!(key(Some(&pathless)), key(None));
    assert!(key(Some(&slash)) < key(Some(&regex)));
}

#[test]
fn grpc_routes_and_service_defaults() {
    let grpc = "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {name: g, namespace: demo, annotations: {retry.mesh.dev/grpc: unavailable}}\nspec:\n  parentRefs: [{kind: Service, name: api, port: 80}]\n  rules: [{matches: [{method: {service: pkg.Svc, method: Get}}]}]\n";
    let idx = index(&[("/m/g.yaml", grpc)]);
    let p = policy(&idx, "api.demo:80");
    assert_eq!(p.service, "api.demo");
    assert_eq!(names(&p), ["grpcroute/demo/g/0"]);
    assert_eq!(
        p.routes[0].retry.as_ref().unwrap().grpc_codes,
        ["unavailable"]
    );
    let default = p.default_route.clone().unwrap();
    assert_eq!(default, default_route("api.demo.svc.example.org:80"));
    assert_eq!(default.name, "default");
    assert_eq!(p.balancer, Some(default_balancer()));
    assert_eq!(p.retry_budget, Some(default_retry_budget()));
    assert!(!p.opaque);
}

#[test]
fn traffic_policies() {
    let tp = |name: &str, target: &str, decay: &str| {
        format!("apiVersion: policy.mesh.dev/v1alpha1\nkind: TrafficPolicy\nmetadata: {{name: {name}, namespace: demo}}\nspec:\n  targetRef: {{kind: Service, name: {target}}}\n  loadBalancer: {{type: PeakEWMA, decay: {decay}}}\n  limits: {{maxConnections: 7}}\n  outlierDetection: {{consecutiveFailures: 2}}\n  retryBudget: {{ratio: 0.5, minRetriesPerSecond: 1, ttl: 1s}}\n")
    };
    let idx = index(&[
        ("/m/tp-b.yaml", &tp("second", "api", "2s")),
        ("/m/tp-a.yaml", &tp("first", "api", "1s")),
        ("/m/tp-c.yaml", &tp("for-other", "other", "3s")),
    ]);
    let p = policy(&idx, "api.demo:80");
    let b: Balancer = p.balancer.unwrap();
    assert_eq!(b.ewma_decay_ms, 1_000, "the oldest file path wins");
    assert_eq!(b.max_connections, 7);
    assert_eq!(b.outlier_detection.unwrap().consecutive_failures, 2);
    assert_eq!(
        p.retry_budget,
        Some(RetryBudget {
            ratio: 0.5,
            min_retries_per_second: 1,
            ttl_ms: 1_000
        })
    );
    // The same for every port of the Service; other Services keep their own.
    assert_eq!(
        policy(&idx, "api.demo:9000")
            .balancer
            .unwrap()
            .ewma_decay_ms,
        1_000
    );
    assert_eq!(
        policy(&idx, "other.demo:80")
            .balancer
            .unwrap()
            .ewma_decay_ms,
        3_000
    );
    // Removing the winner lets the next one in.
    let mut idx = idx;
    idx.remove_file(std::path::Path::new("/m/tp-a.yaml"));
    assert_eq!(
        policy(&idx, "api.demo:80").balancer.unwrap().ewma_decay_ms,
        2_000
    );
}

#[test]
fn unknown_targets() {
    let idx = index(&[]);
    let p = policy(&idx, "nope.demo.svc.example.org:80");
    assert_eq!(p.service, "nope.demo");
    assert!(p.routes.is_empty());
    assert_eq!(
        p.default_route.unwrap().backends[0].target,
        "nope.demo.svc.example.org:80"
    );
    let p = policy(&idx, "www.example.com:443");
    assert_eq!(p.service, "");
    assert_eq!(
        p.default_route.unwrap().backends[0].target,
        "www.example.com:443"
    );
}

/// `manifests/example/traffic.yaml` stays valid and means what its comments say.
#[test]
fn example_manifest() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../manifests/example/");
    let read = |f: &str| std::fs::read_to_string(format!("{dir}{f}")).unwrap();
    let mut idx = Index::new(IndexConfig::default());
    assert!(idx.apply_file("/ex/demo.yaml", yaml(&read("demo.yaml"))));
    let parsed = crate::resources::parse_documents(&read("traffic.yaml")).unwrap();
    assert!(parsed.ignored.is_empty(), "{:?}", parsed.ignored);
    assert_eq!(parsed.resources.len(), 6);
    assert!(idx.apply_file("/ex/traffic.yaml", parsed.resources));

    let api = policy(&idx, "api.demo.svc.cluster.local:80");
    assert_eq!(
        names(&api),
        [
            "httproute/demo/api-split/2", // exact /chaos
            "httproute/demo/api-split/0", // prefix /api + header
            "httproute/demo/api-split/1", // prefix /api
            "httproute/demo/api-split/1", // regex
        ]
    );
    let chaos = &api.routes[0];
    assert_eq!(chaos.fault.as_ref().map(|f| f.abort_status), Some(503));
    assert_eq!(backends(chaos), [("api.demo.svc.cluster.local:80", 1)]);
    assert_eq!(
        backends(&api.routes[1]),
        [("api-v2.demo.svc.cluster.local:80", 1)]
    );
    let split = &api.routes[2];
    assert_eq!(
        backends(split),
        [
            ("api.demo.svc.cluster.local:80", 90),
            ("api-v2.demo.svc.cluster.local:80", 10)
        ]
    );
    assert_eq!(
        (split.request_timeout_ms, split.backend_request_timeout_ms),
        (2_000, 500)
    );
    let retry = split.retry.as_ref().unwrap();
    assert_eq!(
        (retry.attempts, retry.status_codes.as_slice()),
        (3, &[503][..])
    );
    // The annotation fills in for the canary rule's missing retry codes.
    let canary_retry = api.routes[1].retry.as_ref().unwrap();
    assert_eq!(canary_retry.status_codes, [429]);
    assert_eq!(canary_retry.attempts, 2);
    let b = api.balancer.unwrap();
    assert_eq!(
        (b.max_connections, b.max_pending_requests, b.max_requests),
        (100, 50, 20)
    );
    assert!(b.outlier_detection.is_some());

    let greeter = policy(&idx, "greeter.demo:50051");
    assert_eq!(
        names(&greeter),
        ["grpcroute/demo/greeter/0", "grpcroute/demo/greeter/1"]
    );
    let r = &greeter.routes[0];
    assert_eq!(
        (r.request_timeout_ms, r.backend_request_timeout_ms),
        (1_000, 300)
    );
    assert_eq!(r.retry.as_ref().map(|r| r.grpc_codes.len()), Some(5));
    assert_eq!(greeter.balancer, Some(default_balancer()));
}
