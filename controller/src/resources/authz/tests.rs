use mesh_proto::policy::{path_match, Operation, PathMatch, Source};

use super::*;
use crate::resources::{parse_documents, ParseError, Resource};

fn parse(spec: &str) -> Result<Resource, ParseError> {
    let text = format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: p, namespace: shop}}\nspec: {spec}\n"
    );
    parse_documents(&text).map(|mut p| p.resources.remove(0))
}

fn policy(spec: &str) -> AuthorizationPolicy {
    match parse(spec) {
        Ok(Resource::AuthorizationPolicy(p)) => p,
        other => panic!("expected an AuthorizationPolicy, got {other:?}"),
    }
}

/// `(path, message)` of the error, checking that it names the resource.
fn invalid(spec: &str) -> (String, String) {
    match parse(spec) {
        Err(e @ ParseError::Invalid { .. }) => {
            let text = e.to_string();
            assert!(text.contains("AuthorizationPolicy shop/p: "), "{text}");
            let ParseError::Invalid { path, message, .. } = e else {
                unreachable!()
            };
            (path, message)
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

/// The path of the error for `spec`, asserting the message mentions `needle`.
fn invalid_at(spec: &str, needle: &str) -> String {
    let (path, message) = invalid(spec);
    assert!(message.contains(needle), "{path}: {message}");
    path
}

const FULL: &str = r#"
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger-callers, namespace: shop}
spec:
  targetRef: {kind: Service, name: ledger, port: 8080}
  action: ALLOW
  mtls: Strict
  rules:
    - from:
        - identities: ["spiffe://cluster.local/ns/shop/sa/payments", "spiffe://cluster.local/ns/ops/*", "*"]
          namespaces: ["shop", "*"]
          serviceAccounts: ["payments", "other/foo"]
          networks: ["198.18.0.0/15", "10.0.0.1", "fd00::1", "10.1.2.3/8"]
        - unauthenticated: true
          networks: ["127.0.0.1"]
      to:
        - paths: [{exact: /balance}, {prefix: /api/}]
          methods: [GET, post]
          ports: [8080]
    - {}
"#;

#[test]
fn full_policy_converts_to_proto_rules() {
    let Resource::AuthorizationPolicy(p) = parse_documents(FULL).unwrap().resources.remove(0)
    else {
        panic!("not an AuthorizationPolicy")
    };
    assert_eq!(p.metadata.name, "ledger-callers");
    assert_eq!(
        p.target,
        AuthzTarget::Service {
            name: "ledger".into(),
            port: Some(ServicePortRef::Number(8080)),
        }
    );
    assert_eq!(p.action, Some(Action::Allow));
    assert_eq!(p.mtls, Some(TlsMode::Strict));
    assert_eq!(p.rules.len(), 2);
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        p.rules[0].from,
        [
            Source {
                identities: strings(&[
                    "spiffe://cluster.local/ns/shop/sa/payments",
                    "spiffe://cluster.local/ns/ops/*",
                    "*"
                ]),
                namespaces: strings(&["shop", "*"]),
                // A bare name is in the policy's namespace.
                service_accounts: strings(&["shop/payments", "other/foo"]),
                // Bare IPs are single hosts; host bits are cleared.
                networks: strings(&["198.18.0.0/15", "10.0.0.1/32", "fd00::1/128", "10.0.0.0/8"]),
                unauthenticated: false,
            },
            Source {
                networks: strings(&["127.0.0.1/32"]),
                unauthenticated: true,
                ..Source::default()
            },
        ]
    );
    let path = |k| PathMatch { kind: Some(k) };
    assert_eq!(
        p.rules[0].to,
        [Operation {
            paths: vec![
                path(path_match::Kind::Exact("/balance".into())),
                path(path_match::Kind::Prefix("/api/".into())),
            ],
            methods: strings(&["GET", "POST"]),
            ports: vec![8080],
        }]
    );
    // A rule without from/to matches every caller and operation.
    assert_eq!(p.rules[1], Rule::default());
}

#[test]
fn targets() {
    assert_eq!(policy("{action: deny}").target, AuthzTarget::Namespace);
    assert_eq!(
        policy("{action: deny, selector: {matchLabels: {app: ledger}}}").target,
        AuthzTarget::Selector(BTreeMap::from([("app".into(), "ledger".into())]))
    );
    assert_eq!(
        policy("{action: deny, selector: {}}").target,
        AuthzTarget::Selector(BTreeMap::new())
    );
    assert_eq!(
        policy(
            "{action: audit, targetRef: {group: \"\", kind: Service, name: ledger, port: http}}"
        )
        .target,
        AuthzTarget::Service {
            name: "ledger".into(),
            port: Some(ServicePortRef::Name("http".into())),
        }
    );
    assert_eq!(
        policy("{action: audit, targetRef: {kind: Service, name: ledger}}").target,
        AuthzTarget::Service {
            name: "ledger".into(),
            port: None,
        }
    );
}

#[test]
fn actions_and_modes() {
    for (text, action) in [
        ("allow", Action::Allow),
        ("Deny", Action::Deny),
        ("AUDIT", Action::Audit),
    ] {
        let p = policy(&format!("{{action: {text}}}"));
        assert_eq!((p.action, p.mtls), (Some(action), None), "{text}");
        // An allow policy without rules allows nothing: kept as is, not an error.
        assert!(p.rules.is_empty());
    }
    let p = policy("{mtls: PERMISSIVE}");
    assert_eq!((p.action, p.mtls), (None, Some(TlsMode::Permissive)));
    let p = policy("{mtls: strict, rules: []}");
    assert_eq!((p.action, p.mtls), (None, Some(TlsMode::Strict)));

    assert_eq!(
        invalid_at("{action: permit}", "unknown action \"permit\""),
        "spec.action"
    );
    assert_eq!(
        invalid_at("{mtls: disable}", "strict or permissive"),
        "spec.mtls"
    );
    assert_eq!(invalid_at("{}", "required unless"), "spec.action");
    assert_eq!(
        invalid_at("{mtls: strict, rules: [{}]}", "required when rules are set"),
        "spec.action"
    );
}

#[test]
fn target_errors() {
    assert_eq!(
        invalid_at(
            "{action: allow, targetRef: {kind: Service, name: a}, selector: {matchLabels: {app: a}}}",
            "exclusive"
        ),
        "spec.selector"
    );
    assert_eq!(
        invalid_at(
            "{action: allow, targetRef: {kind: Deployment, name: a}}",
            "must name a Service"
        ),
        "spec.targetRef"
    );
    assert_eq!(
        invalid_at(
            "{action: allow, targetRef: {group: apps, kind: Service, name: a}}",
            "group \"apps\""
        ),
        "spec.targetRef"
    );
    assert_eq!(
        invalid_at(
            "{action: allow, targetRef: {kind: Service, name: \"\"}}",
            "empty"
        ),
        "spec.targetRef.name"
    );
    assert_eq!(
        invalid_at(
            "{action: allow, targetRef: {kind: Service, name: a, port: 0}}",
            "1-65535"
        ),
        "spec.targetRef.port"
    );
    assert_eq!(
        invalid_at(
            "{action: allow, targetRef: {kind: Service}}",
            "missing field `name`"
        ),
        "spec.targetRef"
    );
}

#[test]
fn unknown_fields_are_rejected_anywhere_in_spec() {
    let cases = [
        (
            "{action: allow, principals: [x]}",
            "spec.principals",
            "principals",
        ),
        (
            "{action: allow, targetRef: {kind: Service, name: a, namespace: b}}",
            "spec.targetRef.namespace",
            "namespace",
        ),
        (
            "{action: allow, selector: {matchExpressions: []}}",
            "spec.selector.matchExpressions",
            "matchExpressions",
        ),
        (
            "{action: allow, rules: [{when: []}]}",
            "spec.rules[0].when",
            "when",
        ),
        (
            "{action: allow, rules: [{from: [{principals: [x]}]}]}",
            "spec.rules[0].from[0].principals",
            "principals",
        ),
        (
            "{action: allow, rules: [{}, {to: [{hosts: [x]}]}]}",
            "spec.rules[1].to[0].hosts",
            "hosts",
        ),
        (
            "{action: allow, rules: [{to: [{paths: [{regex: x}]}]}]}",
            "spec.rules[0].to[0].paths[0].regex",
            "regex",
        ),
    ];
    for (spec, want_path, field) in cases {
        let (path, message) = invalid(spec);
        assert_eq!(path, want_path, "{spec}: {message}");
        assert!(
            message.contains(&format!("unknown field `{field}`, expected")),
            "{spec}: {message}"
        );
    }
}

#[test]
fn source_errors() {
    let at = |from: &str, needle: &str| {
        invalid_at(
            &format!("{{action: allow, rules: [{{from: [{{}}, {from}]}}]}}"),
            needle,
        )
    };
    let p = "spec.rules[0].from[1]";
    assert_eq!(
        at(
            "{identities: [\"*\", \"cluster.local/ns/a/sa/b\"]}",
            "SPIFFE"
        ),
        format!("{p}.identities[1]")
    );
    assert_eq!(
        at("{identities: [\"spiffe://\"]}", "SPIFFE"),
        format!("{p}.identities[0]")
    );
    assert_eq!(
        at("{namespaces: [Shop]}", "namespace"),
        format!("{p}.namespaces[0]")
    );
    assert_eq!(
        at("{namespaces: [\"-a\"]}", "namespace"),
        format!("{p}.namespaces[0]")
    );
    for bad in ["\"a/b/c\"", "\"/b\"", "\"a/\"", "Payments", "\"a b\""] {
        assert_eq!(
            at(
                &format!("{{serviceAccounts: [ok, {bad}]}}"),
                "service account"
            ),
            format!("{p}.serviceAccounts[1]"),
            "{bad}"
        );
    }
    for bad in [
        "10.0.0.0/33",
        "fd00::/129",
        "10.0.0.0/",
        "10.0.0.0/x",
        "10.0.0",
        "host",
        "10.0.0.0/+8",
    ] {
        assert_eq!(
            at(&format!("{{networks: [\"{bad}\"]}}"), "invalid network"),
            format!("{p}.networks[0]"),
            "{bad}"
        );
    }
    for field in [
        "identities: [\"*\"]",
        "namespaces: [shop]",
        "serviceAccounts: [a]",
    ] {
        assert_eq!(
            at(
                &format!("{{unauthenticated: true, {field}}}"),
                "cannot be combined"
            ),
            format!("{p}.unauthenticated"),
            "{field}"
        );
    }
    // Plaintext callers from a network, and `unauthenticated: false` with identities, are fine.
    policy("{action: allow, rules: [{from: [{unauthenticated: true, networks: [10.0.0.0/8]}]}]}");
    policy("{action: allow, rules: [{from: [{unauthenticated: false, namespaces: [a]}]}]}");
}

#[test]
fn operation_errors() {
    let at = |to: &str, needle: &str| {
        invalid_at(
            &format!("{{action: deny, rules: [{{to: [{to}]}}]}}"),
            needle,
        )
    };
    let p = "spec.rules[0].to[0]";
    assert_eq!(
        at("{paths: [{exact: /a, prefix: /b}]}", "exactly one"),
        format!("{p}.paths[0]")
    );
    assert_eq!(
        at("{paths: [{exact: /a}, {}]}", "exactly one"),
        format!("{p}.paths[1]")
    );
    assert_eq!(
        at("{paths: [{prefix: api}]}", "start with /"),
        format!("{p}.paths[0]")
    );
    assert_eq!(
        at("{paths: [{exact: \"\"}]}", "start with /"),
        format!("{p}.paths[0]")
    );
    for bad in ["\"\"", "\"GET POST\"", "\"G(ET\""] {
        assert_eq!(
            at(&format!("{{methods: [GET, {bad}]}}"), "not an HTTP method"),
            format!("{p}.methods[1]"),
            "{bad}"
        );
    }
    for bad in ["0", "65536", "-1"] {
        assert_eq!(
            at(&format!("{{ports: [80, {bad}]}}"), "outside 1-65535"),
            format!("{p}.ports[1]"),
            "{bad}"
        );
    }
    // Extension methods are tokens too.
    let p =
        policy("{action: deny, rules: [{to: [{methods: [purge, M-SEARCH], ports: [1, 65535]}]}]}");
    assert_eq!(p.rules[0].to[0].methods, ["PURGE", "M-SEARCH"]);
    assert_eq!(p.rules[0].to[0].ports, [1, 65535]);
}

#[test]
fn errors_name_the_document_in_multi_document_files() {
    let text = format!(
        "{FULL}---\n{}",
        FULL.replace("ledger-callers", "second")
            .replace("methods: [GET, post]", "methods: [\"GET \"]")
    );
    let err = parse_documents(&text).unwrap_err().to_string();
    assert!(
        err.starts_with(
            "document 2: AuthorizationPolicy shop/second: spec.rules[0].to[0].methods[0]: "
        ),
        "{err}"
    );
}
