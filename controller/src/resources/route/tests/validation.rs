//! Every validation error names the route and the field.

use super::{grpc, http, invalid};
use crate::resources::parse_documents;

#[test]
fn validation_errors_name_resource_and_field() {
    let cases: &[(String, &str, &str)] = &[
        (
            http(r#"[{matches: [{}, {path: {type: RegularExpression, value: "/a/("}}]}]"#),
            "spec.rules[0].matches[1].path.value",
            "invalid regular expression",
        ),
        (
            http("[{matches: [{path: {type: Glob, value: /a}}]}]"),
            "spec.rules[0].matches[0].path.type",
            "unknown variant",
        ),
        (
            http("[{matches: [{path: {type: Exact, value: a}}]}]"),
            "spec.rules[0].matches[0].path.value",
            "must start with",
        ),
        (
            http("[{matches: [{headers: [{type: Fuzzy, name: a, value: b}]}]}]"),
            "spec.rules[0].matches[0].headers[0].type",
            "unknown variant",
        ),
        (
            http(r#"[{matches: [{headers: [{type: RegularExpression, name: a, value: "("}]}]}]"#),
            "spec.rules[0].matches[0].headers[0].value",
            "invalid regular expression",
        ),
        (
            http(r#"[{matches: [{queryParams: [{type: RegularExpression, name: q, value: "[a"}]}]}]"#),
            "spec.rules[0].matches[0].queryParams[0].value",
            "invalid regular expression",
        ),
        (
            http("[{matches: [{method: FETCH}]}]"),
            "spec.rules[0].matches[0].method",
            "unknown variant",
        ),
        (
            http("[{}, {backendRefs: [{name: a, port: 80, weight: 1000001}]}]"),
            "spec.rules[1].backendRefs[0].weight",
            "outside 0-1000000",
        ),
        (
            http("[{backendRefs: [{name: a, port: 80, weight: -1}]}]"),
            "spec.rules[0].backendRefs[0].weight",
            "outside",
        ),
        (
            http("[{backendRefs: [{name: a}]}]"),
            "spec.rules[0].backendRefs[0].port",
            "required",
        ),
        (
            http("[{backendRefs: [{name: a, port: 70000}]}]"),
            "spec.rules[0].backendRefs[0].port",
            "outside 1-65535",
        ),
        (
            http("[{timeouts: {request: 1.5s}}]"),
            "spec.rules[0].timeouts.request",
            "invalid duration",
        ),
        (
            http("[{timeouts: {request: 1s, backendRequest: 2s}}]"),
            "spec.rules[0].timeouts.backendRequest",
            "must not exceed",
        ),
        (
            http("[{retry: {attempts: -1}}]"),
            "spec.rules[0].retry.attempts",
            "outside",
        ),
        (
            http("[{retry: {codes: [503, 600]}}]"),
            "spec.rules[0].retry.codes[1]",
            "outside 100-599",
        ),
        (
            http("[{retry: {backoff: soon}}]"),
            "spec.rules[0].retry.backoff",
            "invalid duration",
        ),
        (
            http("[{filters: [{type: ExtensionRef}]}]"),
            "spec.rules[0].filters[0].extensionRef",
            "required",
        ),
        (
            http("[{filters: [{type: ExtensionRef, extensionRef: {group: policy.mesh.dev, kind: HTTPFault, name: a}}, {type: ExtensionRef, extensionRef: {group: policy.mesh.dev, kind: HTTPFault, name: b}}]}]"),
            "spec.rules[0].filters[1]",
            "only one HTTPFault",
        ),
        (
            http("[]").replace("name: api, port: 80", "port: 80"),
            "spec.parentRefs[0]",
            "missing field `name`",
        ),
        (
            http("[]").replace("name: api, port: 80", "name: \"\""),
            "spec.parentRefs[0].name",
            "missing Service name",
        ),
        (
            http("[]").replace("namespace: demo}", "namespace: demo, annotations: {retry.mesh.dev/http: \"5xx,700\"}}"),
            "metadata.annotations[\"retry.mesh.dev/http\"]",
            "outside 100-599",
        ),
        (
            grpc("[]", "retry.mesh.dev/grpc: \"unavailable,bogus\""),
            "metadata.annotations[\"retry.mesh.dev/grpc\"]",
            "unknown gRPC status",
        ),
        (
            grpc("[]", "retry.mesh.dev/limit: many"),
            "metadata.annotations[\"retry.mesh.dev/limit\"]",
            "not a number",
        ),
        (
            grpc("[]", "timeout.mesh.dev/request: 1d"),
            "metadata.annotations[\"timeout.mesh.dev/request\"]",
            "invalid duration",
        ),
        (
            grpc("[{matches: [{method: {}}]}]", ""),
            "spec.rules[0].matches[0].method",
            "one of service or method",
        ),
        (
            grpc("[{matches: [{method: {type: RegularExpression, method: \"(\"}}]}]", ""),
            "spec.rules[0].matches[0].method.method",
            "invalid regular expression",
        ),
        (
            grpc("[{matches: [{method: {service: a/b}}]}]", ""),
            "spec.rules[0].matches[0].method.service",
            "must not contain",
        ),
    ];
    for (text, want_path, want_msg) in cases {
        let (resource, path, message) = invalid(text);
        let expected = if text.contains("GRPCRoute") {
            "GRPCRoute demo/greeter"
        } else {
            "HTTPRoute demo/api-split"
        };
        assert_eq!(resource, expected, "{text}");
        assert_eq!(&path, want_path, "{text}: {message}");
        assert!(message.contains(want_msg), "{path}: {message}");
    }
    let msg = parse_documents(&cases[0].0).unwrap_err().to_string();
    assert!(
        msg.contains("HTTPRoute demo/api-split: spec.rules[0].matches[1].path.value"),
        "{msg}"
    );
}

#[test]
fn errors_inside_lists_carry_the_item_path() {
    let text = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: gateway.networking.k8s.io/v1\n    kind: HTTPRoute\n    metadata: {name: r}\n    spec: {rules: [{timeouts: {request: x}}]}\n";
    let (resource, path, _) = invalid(text);
    assert_eq!(resource, "HTTPRoute default/r");
    assert_eq!(path, "items[0].spec.rules[0].timeouts.request");
}
