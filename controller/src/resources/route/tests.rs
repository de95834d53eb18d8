use mesh_proto::destination::{header_match, path_match, query_match, StatusRange};

use super::*;
use crate::resources::{parse_documents, ParseError, Resource};

fn route(text: &str) -> Route {
    let parsed = parse_documents(text).unwrap();
    match parsed.resources.as_slice() {
        [Resource::Route(r)] => r.clone(),
        other => panic!("expected one route, got {other:?}"),
    }
}

/// `(kind namespace/name, path, message)` of the validation error of `text`.
pub(super) fn invalid(text: &str) -> (String, String, String) {
    match parse_documents(text) {
        Err(ParseError::Invalid {
            resource,
            path,
            message,
            ..
        }) => (resource, path, message),
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// An HTTPRoute `demo/api-split` with parent `api` and the given rules (YAML flow list).
pub(super) fn http(rules: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: api-split, namespace: demo}}\nspec:\n  parentRefs: [{{kind: Service, group: \"\", name: api, port: 80}}]\n  rules: {rules}\n"
    )
}

pub(super) fn grpc(rules: &str, annotations: &str) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: GRPCRoute\nmetadata: {{name: greeter, namespace: demo, annotations: {{{annotations}}}}}\nspec:\n  parentRefs: [{{kind: Service, name: greeter}}]\n  rules: {rules}\n"
    )
}

fn path_of(m: &HttpMatch) -> path_match::Kind {
    m.path.clone().and_then(|p| p.kind).expect("a path match")
}

#[test]
fn http_matches_of_every_kind() {
    let r = route(&http(
        r#"[{matches: [
            {path: {type: Exact, value: /a}},
            {path: {type: PathPrefix, value: /b}, method: POST},
            {path: {type: RegularExpression, value: "/c/[0-9]+"}},
            {headers: [{name: X-Canary, value: "1"}, {type: RegularExpression, name: x-user, value: "a.*"}],
             queryParams: [{name: debug, value: "true"}, {type: RegularExpression, name: v, value: "[12]"}]},
            {}]}]"#,
    ));
    assert_eq!(r.kind, RouteKind::Http);
    let m = &r.rules[0].matches;
    assert_eq!(m.len(), 5);
    assert_eq!(path_of(&m[0]), path_match::Kind::Exact("/a".into()));
    assert_eq!(path_of(&m[1]), path_match::Kind::Prefix("/b".into()));
    assert_eq!(m[1].method, "POST");
    assert_eq!(path_of(&m[2]), path_match::Kind::Regex("/c/[0-9]+".into()));
    // A match without a path is a `/` prefix (the Gateway API default).
    assert_eq!(path_of(&m[3]), path_match::Kind::Prefix("/".into()));
    assert_eq!(path_of(&m[4]), path_match::Kind::Prefix("/".into()));
    assert_eq!(m[3].method, "");
    let h = &m[3].headers;
    assert_eq!(h[0].name, "x-canary", "header names are lower-cased");
    assert_eq!(h[0].value, Some(header_match::Value::Exact("1".into())));
    assert_eq!(h[1].value, Some(header_match::Value::Regex("a.*".into())));
    let q = &m[3].query_params;
    assert_eq!(q[0].name, "debug");
    assert_eq!(q[0].value, Some(query_match::Value::Exact("true".into())));
    assert_eq!(q[1].value, Some(query_match::Value::Regex("[12]".into())));
    // No matches at all: one rule with an empty match list.
    let r = route(&http("[{}]"));
    assert!(r.rules[0].matches.is_empty());
}

#[test]
fn parents_and_backends() {
    let r = route(
        "apiVersion: gateway.networking.k8s.io/v1beta1\nkind: HTTPRoute\nmetadata: {name: r, namespace: demo}\nspec:\n  parentRefs:\n    - {kind: Service, name: api}\n    - {kind: Service, group: core, name: api, namespace: other, port: 8080}\n    - {name: my-gateway}\n    - {group: gateway.networking.k8s.io, kind: Gateway, name: gw}\n  rules:\n    - backendRefs:\n        - {name: api-v1, port: 80}\n        - {name: api-v2, namespace: canary, port: 8080, weight: 10}\n        - {kind: Service, name: zero, port: 80, weight: 0}\n        - {group: example.com, kind: Bucket, name: b}\n    - {}\n    - backendRefs: [{group: example.com, kind: Bucket, name: b}]\n",
    );
    assert_eq!(
        r.parents,
        [
            ParentRef {
                namespace: "demo".into(),
                name: "api".into(),
                port: None
            },
            ParentRef {
                namespace: "other".into(),
                name: "api".into(),
                port: Some(8080)
            },
        ]
    );
    assert!(r.parents[0].selects("demo", "api", 80));
    assert!(!r.parents[0].selects("other", "api", 80));
    assert!(r.parents[1].selects("other", "api", 8080));
    assert!(!r.parents[1].selects("other", "api", 80));
    let b = r.rules[0].backends.as_ref().unwrap();
    let brief: Vec<_> = b
        .iter()
        .map(|b| (b.namespace.as_str(), b.name.as_str(), b.port, b.weight))
        .collect();
    assert_eq!(
        brief,
        [
            ("demo", "api-v1", 80, 1),
            ("canary", "api-v2", 8080, 10),
            ("demo", "zero", 80, 0)
        ]
    );
    assert_eq!(r.rules[1].backends, None, "no backendRefs: the parent");
    assert_eq!(r.rules[2].backends, Some(vec![]), "only unusable backends");
}

#[test]
fn timeouts_and_gateway_retry() {
    let r = route(&http(
        "[{timeouts: {request: 1m30s, backendRequest: 100ms}, retry: {attempts: 2, codes: [503, 429], backoff: 50ms}}, {retry: {}}, {retry: {attempts: 0, backoff: 1s}}, {}]",
    ));
    let rule = &r.rules[0];
    assert_eq!(
        (rule.request_timeout_ms, rule.backend_request_timeout_ms),
        (90_000, 100)
    );
    let retry = rule.retry.clone().unwrap();
    // Gateway API counts retries; the proto counts attempts, the first included.
    assert_eq!(retry.attempts, 3);
    assert_eq!(retry.status_codes, [503, 429]);
    assert!(retry.status_ranges.is_empty() && retry.grpc_codes.is_empty());
    assert!(retry.connect_failures);
    assert_eq!((retry.backoff_base_ms, retry.backoff_max_ms), (50, 500));
    // Defaults: one retry, 5xx, 25 ms backoff capped at 250 ms.
    let retry = r.rules[1].retry.clone().unwrap();
    assert_eq!(retry.attempts, 2);
    assert_eq!(retry.status_ranges, [StatusRange { min: 500, max: 599 }]);
    assert_eq!((retry.backoff_base_ms, retry.backoff_max_ms), (25, 250));
    let retry = r.rules[2].retry.clone().unwrap();
    assert_eq!(retry.attempts, 1, "attempts: 0 means no retry");
    assert_eq!(
        (retry.backoff_base_ms, retry.backoff_max_ms),
        (1000, 10_000)
    );
    let plain = &r.rules[3];
    assert_eq!(plain.retry, None);
    assert_eq!(
        (plain.request_timeout_ms, plain.backend_request_timeout_ms),
        (0, 0)
    );
}

#[test]
fn annotations_fill_what_rules_leave_unset() {
    let text = http("[{timeouts: {request: 5s}, retry: {codes: [503]}}, {}]").replace(
        "namespace: demo}",
        "namespace: demo, annotations: {retry.mesh.dev/http: \"5xx,429\", retry.mesh.dev/grpc: \"unavailable,INTERNAL\", retry.mesh.dev/limit: \"3\", timeout.mesh.dev/request: 2s, timeout.mesh.dev/backend-request: 500ms}}",
    );
    let r = route(&text);
    let own = &r.rules[0];
    assert_eq!(
        (own.request_timeout_ms, own.backend_request_timeout_ms),
        (5_000, 500)
    );
    let retry = own.retry.clone().unwrap();
    assert_eq!(retry.attempts, 4, "limit 3 = 3 retries = 4 attempts");
    assert_eq!(retry.status_codes, [503], "the rule's codes win");
    assert!(retry.status_ranges.is_empty());
    assert_eq!(retry.grpc_codes, ["unavailable", "internal"]);
    let bare = &r.rules[1];
    assert_eq!(
        (bare.request_timeout_ms, bare.backend_request_timeout_ms),
        (2_000, 500)
    );
    let retry = bare.retry.clone().unwrap();
    assert_eq!(retry.attempts, 4);
    assert_eq!(retry.status_codes, [429]);
    assert_eq!(retry.status_ranges, [StatusRange { min: 500, max: 599 }]);
}

#[test]
fn grpc_methods_compile_to_paths() {
    let r = route(&grpc(
        r#"[{matches: [
            {method: {service: helloworld.Greeter, method: SayHello}},
            {method: {service: helloworld.Greeter}},
            {method: {method: Say.Hello}},
            {method: {type: RegularExpression, service: "hello.*", method: "Say.*"}},
            {method: {type: RegularExpression, service: "hello.*"}},
            {method: {type: RegularExpression, method: "Say.*"}},
            {headers: [{name: x-tenant, value: a}]}]}]"#,
        "",
    ));
    assert_eq!(r.kind, RouteKind::Grpc);
    let m = &r.rules[0].matches;
    let paths: Vec<_> = m[..6].iter().map(path_of).collect();
    use path_match::Kind::{Exact, Prefix, Regex};
    assert_eq!(
        paths,
        [
            Exact("/helloworld.Greeter/SayHello".into()),
            Prefix("/helloworld.Greeter".into()),
            Regex(r"/[^/]+/Say\.Hello".into()),
            Regex("/(?:hello.*)/(?:Say.*)".into()),
            Regex("/(?:hello.*)/[^/]+".into()),
            Regex("/[^/]+/(?:Say.*)".into()),
        ]
    );
    assert_eq!(m[6].path, None, "headers only: any method");
    assert_eq!(
        m[6].headers[0].value,
        Some(header_match::Value::Exact("a".into()))
    );
    assert!(r.rules[0].retry.is_none());
}

#[test]
fn grpc_annotations() {
    let r = route(&grpc(
        "[{backendRefs: [{name: greeter-v2, port: 50051}]}]",
        "retry.mesh.dev/grpc: \"cancelled, deadline-exceeded,internal,resource-exhausted,unavailable\", retry.mesh.dev/limit: \"2\", timeout.mesh.dev/request: 3s",
    ));
    let rule = &r.rules[0];
    assert_eq!(rule.request_timeout_ms, 3_000);
    let retry = rule.retry.clone().unwrap();
    assert_eq!(retry.attempts, 3);
    assert_eq!(
        retry.grpc_codes,
        [
            "cancelled",
            "deadline-exceeded",
            "internal",
            "resource-exhausted",
            "unavailable"
        ]
    );
    assert!(retry.status_codes.is_empty() && retry.status_ranges.is_empty());
    // A limit alone retries gRPC `unavailable` on a GRPCRoute.
    let r = route(&grpc("[{}]", "retry.mesh.dev/limit: \"1\""));
    assert_eq!(
        r.rules[0].retry.clone().unwrap().grpc_codes,
        ["unavailable"]
    );
}

#[test]
fn fault_filters() {
    let r = route(&http(
        "[{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: a, value: b}]}}, {type: ExtensionRef, extensionRef: {group: policy.mesh.dev, kind: HTTPFault, name: flaky}}]}, {filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Other, name: x}}]}]",
    ));
    assert_eq!(r.rules[0].fault.as_deref(), Some("flaky"));
    assert_eq!(r.rules[1].fault, None, "other extensions are ignored");
    let r = route(&grpc(
        "[{filters: [{type: ExtensionRef, extensionRef: {group: policy.mesh.dev, kind: HTTPFault, name: slow}}]}]",
        "",
    ));
    assert_eq!(r.rules[0].fault.as_deref(), Some("slow"));
}

mod validation;
