use mesh_proto::policy::Action;

use super::*;
use crate::index::tests::yaml;
use crate::index::IndexConfig;
use crate::resources::{PodInfo, Resource};

const OBJECTS: &str = r#"
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec:
  selector: {app: ledger}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: grpc, port: 9090, targetPort: 9091}
    - {name: plain, port: 7000}
---
apiVersion: v1
kind: Service
metadata: {name: headless, namespace: shop}
spec:
  ports: [{port: 80}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: ledger-1, namespace: shop, labels: {app: ledger}}
spec: {address: 10.0.0.1, ports: {http: 8080}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: ledger-2, namespace: shop, labels: {app: ledger}}
spec: {address: 10.0.0.2, labels: {version: v2}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: web-1, namespace: shop, labels: {app: web}}
spec: {address: 10.0.0.3, ports: {http: 8080}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: ledger-1, namespace: ops, labels: {app: ledger}}
spec: {address: 10.0.1.1, ports: {http: 8080}}
---
apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: ops}
spec:
  selector: {app: ledger}
  ports: [{port: 80, targetPort: 8080}]
"#;

/// An AuthorizationPolicy document in `shop`.
fn policy(name: &str, spec: &str) -> String {
    format!(
        "---\napiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: shop}}\nspec: {spec}\n"
    )
}

/// Policies covering every kind of target, named so that name order is the test's order.
fn policies() -> String {
    [
        policy(
            "a-namespace",
            "{action: allow, rules: [{from: [{namespaces: [shop]}]}]}",
        ),
        policy(
            "b-selector",
            "{action: deny, selector: {matchLabels: {version: v2}}}",
        ),
        policy(
            "c-service",
            "{action: audit, mtls: permissive, targetRef: {kind: Service, name: ledger}}",
        ),
        // A named Service port whose targetPort is named too: only workloads with that
        // named port get it.
        policy(
            "d-service-port-name",
            "{action: allow, mtls: strict, targetRef: {kind: Service, name: ledger, port: http}}",
        ),
        policy(
            "e-service-port-number",
            "{action: deny, targetRef: {kind: Service, name: ledger, port: 9090}}",
        ),
        // No targetPort: the Service port itself.
        policy(
            "f-service-port-plain",
            "{action: allow, targetRef: {kind: Service, name: ledger, port: plain}}",
        ),
        policy(
            "g-missing-service",
            "{action: deny, targetRef: {kind: Service, name: nosuch}}",
        ),
        policy(
            "h-no-selector",
            "{action: deny, targetRef: {kind: Service, name: headless}}",
        ),
        policy(
            "i-missing-port",
            "{action: deny, targetRef: {kind: Service, name: ledger, port: 1234}}",
        ),
        policy(
            "j-mode-only",
            "{mtls: permissive, selector: {matchLabels: {app: web}}}",
        ),
        // Another namespace's namespace-wide policy never applies in shop.
        policy("z-ops", "{action: deny}").replace("namespace: shop", "namespace: ops"),
    ]
    .concat()
}

fn index(text: &str) -> Index {
    let mut index = Index::new(IndexConfig::default());
    index.apply_file("/objects.yaml", yaml(text));
    index
}

fn applied(index: &Index, ns: &str, workload: &str) -> Vec<(String, Option<u16>)> {
    index
        .authorization_policies_for(ns, workload)
        .iter()
        .map(|a| (a.policy.metadata.name.clone(), a.port))
        .collect()
}

fn expect(list: &[(&str, Option<u16>)]) -> Vec<(String, Option<u16>)> {
    list.iter().map(|(n, p)| (n.to_string(), *p)).collect()
}

fn names(p: &ServerPolicy) -> Vec<(&str, Action)> {
    p.policies
        .iter()
        .map(|a| (a.name.as_str(), a.action()))
        .collect()
}

#[test]
fn which_policies_apply_to_which_workload_and_port() {
    let idx = index(&format!("{OBJECTS}{}", policies()));
    assert_eq!(
        applied(&idx, "shop", "ledger-1"),
        expect(&[
            ("a-namespace", None),
            ("c-service", None),
            ("d-service-port-name", Some(8080)),
            ("e-service-port-number", Some(9091)),
            ("f-service-port-plain", Some(7000)),
        ])
    );
    // spec.labels count for selection; no named `http` port, so d does not apply.
    assert_eq!(
        applied(&idx, "shop", "ledger-2"),
        expect(&[
            ("a-namespace", None),
            ("b-selector", None),
            ("c-service", None),
            ("e-service-port-number", Some(9091)),
            ("f-service-port-plain", Some(7000)),
        ])
    );
    assert_eq!(
        applied(&idx, "shop", "web-1"),
        expect(&[("a-namespace", None), ("j-mode-only", None)])
    );
    // Unknown workload: the namespace-wide policies only.
    assert_eq!(
        applied(&idx, "shop", "ghost"),
        expect(&[("a-namespace", None)])
    );
    assert_eq!(applied(&idx, "ops", "ledger-1"), expect(&[("z-ops", None)]));
    assert_eq!(applied(&idx, "nowhere", "x"), expect(&[]));
}

#[test]
fn empty_match_labels_select_every_known_workload() {
    let idx = index(&format!(
        "{OBJECTS}{}",
        policy("all", "{action: deny, selector: {}}")
    ));
    for w in ["ledger-1", "ledger-2", "web-1"] {
        assert_eq!(applied(&idx, "shop", w), expect(&[("all", None)]), "{w}");
    }
    assert_eq!(applied(&idx, "shop", "ghost"), expect(&[]));
}

#[test]
fn server_policy_of_a_port() {
    let idx = index(&format!("{OBJECTS}{}", policies()));
    // Port 8080 of ledger-1: strict (d) beats permissive (c); d is the source.
    let p = idx.server_policy("shop", "ledger-1", 8080);
    assert_eq!(p.protocol(), Protocol::Detect);
    assert_eq!(p.tls_mode(), TlsMode::Strict);
    assert_eq!(p.tls_mode_source, "shop/d-service-port-name");
    assert_eq!(
        names(&p),
        [
            ("a-namespace", Action::Allow),
            ("c-service", Action::Audit),
            ("d-service-port-name", Action::Allow),
        ]
    );
    assert!(p.labels.is_empty());
    // The rules are the validated ones.
    assert_eq!(
        p.policies[0].rules,
        idx.authorization_policy("shop", "a-namespace")
            .unwrap()
            .rules
    );
    assert_eq!(p.policies[0].rules[0].from[0].namespaces, ["shop"]);

    // Port 9091: the grpc Service port's target.
    let p = idx.server_policy("shop", "ledger-1", 9091);
    assert_eq!(p.tls_mode(), TlsMode::Permissive);
    assert_eq!(p.tls_mode_source, "shop/c-service");
    assert_eq!(
        names(&p),
        [
            ("a-namespace", Action::Allow),
            ("c-service", Action::Audit),
            ("e-service-port-number", Action::Deny),
        ]
    );

    // A port no targetRef names: the all-port policies.
    let p = idx.server_policy("shop", "ledger-1", 1);
    assert_eq!(
        names(&p),
        [("a-namespace", Action::Allow), ("c-service", Action::Audit)]
    );

    // A mode-only policy sets the mode but sends no policy.
    let p = idx.server_policy("shop", "web-1", 8080);
    assert_eq!(p.tls_mode(), TlsMode::Permissive);
    assert_eq!(p.tls_mode_source, "shop/j-mode-only");
    assert_eq!(names(&p), [("a-namespace", Action::Allow)]);

    // Nothing applies: the default policy.
    assert_eq!(
        idx.server_policy("ops", "ghost", 80).tls_mode(),
        TlsMode::Default
    );
    let alone = index(OBJECTS).server_policy("shop", "ledger-1", 8080);
    assert_eq!(
        ServerPolicy {
            authorities: Vec::new(),
            ..alone.clone()
        },
        default_server_policy()
    );
    // The names clients may call the port by: the Service port and the address.
    assert_eq!(
        alone.authorities,
        ["10.0.0.1:8080", "ledger.shop.svc.cluster.local:80"]
    );
    assert!(idx.server_policy("ops", "ghost", 80).authorities.is_empty());
}

#[test]
fn strictest_mode_wins_and_its_first_policy_by_name_is_the_source() {
    let text = [
        OBJECTS.to_string(),
        policy("a", "{mtls: permissive}"),
        policy(
            "b",
            "{mtls: strict, selector: {matchLabels: {app: ledger}}}",
        ),
        policy("c", "{mtls: strict}"),
        policy("d", "{mtls: permissive}"),
    ]
    .concat();
    let idx = index(&text);
    let p = idx.server_policy("shop", "ledger-1", 8080);
    assert_eq!(p.tls_mode(), TlsMode::Strict);
    assert_eq!(p.tls_mode_source, "shop/b");
    assert!(p.policies.is_empty());
    // b does not select web-1: c is the first strict policy there.
    assert_eq!(
        idx.server_policy("shop", "web-1", 8080).tls_mode_source,
        "shop/c"
    );
}

#[test]
fn compile_only_counts_policies_covering_the_port() {
    let idx = index(&format!("{OBJECTS}{}", policies()));
    let applied = idx.authorization_policies_for("shop", "ledger-1");
    let d = applied
        .iter()
        .find(|a| a.policy.metadata.name == "d-service-port-name")
        .unwrap();
    assert!(d.covers(8080));
    assert!(!d.covers(8081));
    assert!(applied[0].covers(1) && applied[0].covers(65535));
    let p = compile_server_policy(&applied, 7000);
    assert_eq!(p.tls_mode(), TlsMode::Permissive);
    assert_eq!(
        names(&p),
        [
            ("a-namespace", Action::Allow),
            ("c-service", Action::Audit),
            ("f-service-port-plain", Action::Allow),
        ]
    );
    assert_eq!(compile_server_policy(&[], 80), default_server_policy());
}

#[test]
fn pod_workloads_are_selected_by_service_labels() {
    // Endpoint resolution reaches pods through EndpointSlices only; authorization selects
    // them by labels like any workload, and resolves named ports from their containers.
    let mut resources = yaml(&format!(
        "{OBJECTS}{}",
        policy(
            "svc-http",
            "{action: allow, targetRef: {kind: Service, name: ledger, port: 80}}"
        )
    ));
    let Some(Resource::WorkloadEntry(pod)) = yaml(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {name: ledger-abc, namespace: shop, labels: {app: ledger}}\nspec: {address: 10.0.0.9, ports: {http: 8443}}\n",
    )
    .pop() else {
        panic!("no workload")
    };
    let mut pod = pod;
    pod.spec.pod = Some(PodInfo {
        name: "ledger-abc".into(),
        ..PodInfo::default()
    });
    resources.push(Resource::WorkloadEntry(pod));
    let mut idx = Index::new(IndexConfig::default());
    idx.apply_file("/objects.yaml", resources);
    assert_eq!(
        applied(&idx, "shop", "ledger-abc"),
        expect(&[("svc-http", Some(8443))])
    );
}

#[test]
fn workload_ports_are_named_ports_and_service_targets() {
    let idx = index(OBJECTS);
    let ports = |w: &str| {
        idx.workload_ports("shop", w)
            .map(|p| p.into_iter().collect::<Vec<_>>())
    };
    assert_eq!(ports("ledger-1"), Some(vec![7000, 8080, 9091]));
    // No named `http` port: the named targetPort does not resolve.
    assert_eq!(ports("ledger-2"), Some(vec![7000, 9091]));
    assert_eq!(ports("web-1"), Some(vec![8080]));
    assert_eq!(ports("ghost"), None);
    assert_eq!(
        idx.workload_ports("ops", "ledger-1")
            .map(|p| p.into_iter().collect::<Vec<_>>()),
        Some(vec![8080])
    );
}

#[test]
fn later_file_wins_and_policies_are_counted() {
    let mut idx = index(&format!("{OBJECTS}{}", policy("p", "{action: allow}")));
    assert_eq!(idx.object_counts().authorization_policies, 1);
    assert!(idx.apply_file("/z.yaml", yaml(&policy("p", "{action: deny}"))));
    assert_eq!(idx.object_counts().authorization_policies, 1);
    let p = idx.server_policy("shop", "ledger-1", 8080);
    assert_eq!(names(&p), [("p", Action::Deny)]);
    assert!(idx.remove_file(std::path::Path::new("/z.yaml")));
    assert_eq!(
        names(&idx.server_policy("shop", "ledger-1", 8080)),
        [("p", Action::Allow)]
    );
    let listed: Vec<_> = idx
        .authorization_policies_in("shop")
        .map(|p| p.metadata.name.as_str())
        .collect();
    assert_eq!(listed, ["p"]);
    assert_eq!(idx.authorization_policies_in("ops").count(), 0);
}
