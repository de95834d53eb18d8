use super::*;

const GOOD: &str = r#"
apiVersion: v1
kind: Service
metadata:
  name: web
  namespace: prod
  labels: {tier: front}
  uid: 1234            # unknown fields are ignored
spec:
  selector: {app: web}
  clusterIP: 10.96.0.10
  type: ClusterIP
  ports:
    - name: http
      port: 80
      targetPort: http
      appProtocol: http
    - port: 9000
    - port: 9001
      targetPort: 9101
      protocol: UDP
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata:
  name: web-1
  labels: {app: web}
spec:
  address: 10.0.0.1
  ports: {http: 8080}
  labels: {version: v1}
  serviceAccount: web
  proxyInboundAddress: 10.0.0.1:4143
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: legacy, namespace: prod}
spec:
  address: "fd00::2"
  meshed: false
"#;

fn field_error(text: &str) -> (String, String) {
    match parse_documents(text) {
        Err(ParseError::Field { path, message, .. }) => (path, message),
        other => panic!("expected a field error, got {other:?}"),
    }
}

#[test]
fn parses_good_file() {
    let parsed = parse_documents(GOOD).unwrap();
    assert!(parsed.ignored.is_empty());
    assert_eq!(parsed.resources.len(), 3);
    let Resource::Service(svc) = &parsed.resources[0] else {
        panic!("not a service");
    };
    assert_eq!(svc.metadata.name, "web");
    assert_eq!(svc.metadata.namespace, "prod");
    assert_eq!(svc.spec.cluster_ip, Some("10.96.0.10".parse().unwrap()));
    assert_eq!(svc.spec.ports.len(), 3);
    let p = &svc.spec.ports[0];
    assert_eq!(p.target_port, Some(TargetPort::Name("http".into())));
    assert_eq!(p.app_protocol.as_deref(), Some("http"));
    assert_eq!(p.protocol, "TCP");
    assert_eq!(svc.spec.ports[1].target_port, None);
    assert_eq!(
        svc.spec.ports[2].target_port,
        Some(TargetPort::Number(9101))
    );
    assert_eq!(svc.spec.ports[2].protocol, "UDP");

    let Resource::WorkloadEntry(w) = &parsed.resources[1] else {
        panic!("not a workload");
    };
    assert_eq!(w.metadata.namespace, "default");
    assert_eq!(w.spec.ports.get("http"), Some(&8080));
    assert_eq!(w.service_account(), "web");
    assert!(w.spec.meshed);
    let labels = w.selection_labels();
    assert_eq!(labels.get("app").map(String::as_str), Some("web"));
    assert_eq!(labels.get("version").map(String::as_str), Some("v1"));

    let Resource::WorkloadEntry(legacy) = &parsed.resources[2] else {
        panic!("not a workload");
    };
    assert!(!legacy.spec.meshed);
    assert_eq!(legacy.service_account(), "default");
    assert_eq!(
        legacy.proxy_inbound_address(),
        "[fd00::2]:4143".parse().unwrap()
    );
}

#[test]
fn a_workload_entry_names_the_workload_its_replicas_share() {
    let entry = |extra: &str| {
        format!(
            "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: api-2, labels: {{app: api}}}}\nspec: {{address: 10.0.0.2{extra}}}\n"
        )
    };
    let parsed = parse_documents(&entry(", workload: api")).unwrap();
    let Resource::WorkloadEntry(w) = &parsed.resources[0] else {
        panic!("not a workload");
    };
    assert_eq!(w.workload_name(), "api");
    // Absent: the entry's own name.
    let parsed = parse_documents(&entry("")).unwrap();
    let Resource::WorkloadEntry(w) = &parsed.resources[0] else {
        panic!("not a workload");
    };
    assert_eq!(w.workload_name(), "api-2");
    // Not a DNS label: refused, naming the field.
    for bad in ["API", "\"\"", "a_b", "-api", &"x".repeat(64)] {
        let (path, message) = field_error(&entry(&format!(", workload: {bad}")));
        assert_eq!(path, "spec.workload", "{bad}: {message}");
        assert!(message.contains("is not a DNS label"), "{bad}: {message}");
    }
}

#[test]
fn wrong_type_names_field_path() {
    let text =
        "apiVersion: v1\nkind: Service\nmetadata: {name: web}\nspec:\n  ports:\n    - port: x\n";
    let (path, message) = field_error(text);
    assert_eq!(path, "spec.ports[0].port");
    assert!(message.contains("invalid type: string \"x\""), "{message}");
    let err = parse_documents(text).unwrap_err().to_string();
    assert!(err.contains("Service web"), "{err}");
    assert!(err.contains("spec.ports[0].port"), "{err}");
}

#[test]
fn invalid_values_are_errors() {
    let wl = |spec: &str| {
        format!(
            "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: a}}\nspec: {spec}\n"
        )
    };
    let (path, _) = field_error(&wl("{address: 10.0.0.300}"));
    assert_eq!(path, "spec.address");
    let (path, message) = field_error(&wl("{ports: {http: 80}}"));
    assert_eq!(path, "spec");
    assert!(message.contains("missing field `address`"), "{message}");
    let (path, _) = field_error(&wl("{address: 10.0.0.1, ports: {http: 70000}}"));
    assert_eq!(path, "spec.ports.http");
    let (path, _) = field_error(&wl("{address: 10.0.0.1, ports: {http: 0}}"));
    assert_eq!(path, "spec.ports.http");
    let (path, _) = field_error(&wl("{address: 10.0.0.1, proxyInboundAddress: nope}"));
    assert_eq!(path, "spec.proxyInboundAddress");

    let svc = |spec: &str| {
        format!("apiVersion: v1\nkind: Service\nmetadata: {{name: s}}\nspec: {spec}\n")
    };
    let (path, _) = field_error(&svc("{ports: [{port: 80, targetPort: 0}]}"));
    assert_eq!(path, "spec.ports[0].targetPort");
    let (path, _) = field_error(&svc("{clusterIP: banana}"));
    assert_eq!(path, "spec.clusterIP");
    let (path, _) = field_error("apiVersion: v1\nkind: Service\nspec: {}\n");
    assert_eq!(path, ".");
    let headless = parse_documents(&svc("{clusterIP: None}")).unwrap();
    assert!(matches!(&headless.resources[0], Resource::Service(s) if s.spec.cluster_ip.is_none()));
}

#[test]
fn bad_yaml_is_an_error() {
    let err = parse_documents("kind: Service\nmetadata: [\n").unwrap_err();
    assert!(matches!(err, ParseError::Yaml { doc: 1, .. }), "{err}");
}

#[test]
fn unknown_kinds_are_ignored() {
    let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec: {replicas: x}\n---\napiVersion: v2\nkind: Service\nmetadata: {name: odd}\n";
    let parsed = parse_documents(text).unwrap();
    assert!(parsed.resources.is_empty());
    let kinds: Vec<_> = parsed
        .ignored
        .iter()
        .map(|o| (o.kind.as_str(), o.name.as_str()))
        .collect();
    assert_eq!(kinds, [("Deployment", "web"), ("Service", "odd")]);
}

#[test]
fn multi_document_and_lists() {
    let text = "---\n---\napiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n    spec: {}\n  - apiVersion: v1\n    kind: ConfigMap\n    metadata: {name: c}\n---\napiVersion: v1\nkind: Service\nmetadata: {name: b}\nspec: {}\n---\n";
    let parsed = parse_documents(text).unwrap();
    let names: Vec<_> = parsed
        .resources
        .iter()
        .map(|r| r.metadata().name.as_str())
        .collect();
    assert_eq!(names, ["a", "b"]);
    assert_eq!(parsed.ignored.len(), 1);

    let bad_item = "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: v1\n    kind: Service\n    metadata: {name: a}\n    spec: {ports: [{port: -1}]}\n";
    let (path, _) = field_error(bad_item);
    assert_eq!(path, "items[0].spec.ports[0].port");
    assert!(parse_documents("").unwrap().resources.is_empty());
}

mod props {
    //! Manifests with one line broken in every way a user (or an attacker
    //! with write access to one namespace) might: parsing and the index's
    //! computations answer or refuse, never panic.

    use super::*;
    use crate::index::{IndexConfig, IndexWriter};
    use proptest::prelude::*;

    const CORPUS: &[&str] = &[
        GOOD,
        include_str!("../../../manifests/example/traffic.yaml"),
        include_str!("../../../manifests/example/demo.yaml"),
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: ledger-callers, namespace: prod}\nspec:\n  targetRef: {kind: Service, name: web, port: http}\n  action: allow\n  mtls: strict\n  rules:\n  - from:\n    - identities: [\"spiffe://cluster.local/ns/prod/sa/*\"]\n      networks: [10.0.0.0/8]\n    to:\n    - paths: [{prefix: /api}]\n      methods: [GET]\n      ports: [8080]\n",
    ];

    const JUNK: &[&str] = &[
        "-1",
        "0",
        "65536",
        "99999999999999999999",
        "",
        "[]",
        "{}",
        "null",
        "~",
        "*",
        "\"\\u0000\"",
        "a b",
        "0.5",
        "true",
        "{kind: Pod}",
        "[1, [2, [3]]]",
        "'",
        "\"",
        "&a",
        "*a",
        "!!binary AAAA",
        "::::",
        "spiffe://",
        "/../..",
        "%2f",
        "1e999",
    ];

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(1_500))]

        #[test]
        fn a_broken_line_is_refused_or_parsed_never_a_panic(
            doc in proptest::sample::select(CORPUS.to_vec()),
            line in any::<proptest::sample::Index>(),
            junk in proptest::sample::select(JUNK.to_vec()),
            how in 0u8..4,
        ) {
            let mut lines: Vec<String> = doc.lines().map(str::to_string).collect();
            let i = line.index(lines.len().max(1)).min(lines.len().saturating_sub(1));
            if let Some(l) = lines.get_mut(i) {
                match how {
                    0 => {
                        if let Some((key, _)) = l.split_once(':') {
                            *l = format!("{key}: {junk}");
                        }
                    }
                    1 => *l = format!("{l}{junk}"),
                    2 => *l = junk.to_string(),
                    _ => {
                        let dup = l.clone();
                        lines.insert(i, dup);
                    }
                }
            }
            let text = lines.join("\n");
            if let Ok(parsed) = parse_documents(&text) {
                let writer = IndexWriter::new(IndexConfig::default());
                writer.update(|index| index.apply_file("/fuzz.yaml", parsed.resources));
                let index = writer.subscribe();
                let index = index.borrow();
                for t in ["web.prod.svc.cluster.local:80", "10.0.0.1:8080", "10.96.0.10:80", "api.demo:80"] {
                    if let Ok(target) = index.parse_target(t) {
                        let _ = index.resolve(&target);
                        let _ = index.service_policy(&target, t);
                    }
                }
                for (ns, w) in [("prod", "web-1"), ("demo", "api-1"), ("prod", "legacy")] {
                    let _ = index.server_policy(ns, w, 8080);
                }
            }
        }
    }
}
