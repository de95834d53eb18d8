//! `mesh authz`: the policies that apply to a workload, read from a manifest directory
//! (golden output) and from a fake Kubernetes API.
//! `UPDATE_GOLDEN=1 cargo test -p mesh-cli --test authz` rewrites the golden files.

mod common;

use std::process::{Command, Output};

use common::assert_golden;

const MANIFESTS: &str = r#"apiVersion: v1
kind: Service
metadata: {name: ledger, namespace: shop}
spec:
  selector: {app: ledger}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: grpc, port: 8080, targetPort: 9090}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: ledger-1, namespace: shop, labels: {app: ledger}}
spec: {address: 198.18.0.3, serviceAccount: ledger, ports: {http: 8000, grpc: 9090}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {name: orders-1, namespace: shop, labels: {app: orders}}
spec: {address: 198.18.0.4, serviceAccount: orders}
"#;

const POLICIES: &str = r#"apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger-callers, namespace: shop}
spec:
  targetRef: {kind: Service, name: ledger}
  action: allow
  rules:
    - from: [{identities: ["spiffe://cluster.local/ns/shop/sa/payments"]}]
    - from: [{serviceAccounts: [orders]}]
      to: [{methods: [get], paths: [{exact: /balance}, {prefix: /api/}]}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: no-debug, namespace: shop}
spec:
  targetRef: {kind: Service, name: ledger, port: http}
  action: deny
  rules:
    - to: [{paths: [{prefix: /debug}]}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ledger-mtls, namespace: shop}
spec:
  selector: {matchLabels: {app: ledger}}
  mtls: strict
---
apiVersion: policy.mesh.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: ops-audit, namespace: shop}
spec:
  action: audit
  rules:
    - from: [{namespaces: [ops], networks: [198.18.0.0/15]}, {unauthenticated: true}]
"#;

fn mesh(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("authz")
        .args(args)
        .env("KUBECONFIG", "/nonexistent")
        .output()
        .expect("run mesh")
}

fn dir_with(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

#[test]
fn lists_the_policies_of_a_workload_port_by_port() {
    let dir = dir_with(&[("shop.yaml", MANIFESTS), ("policies.yaml", POLICIES)]);
    let d = dir.path().to_str().unwrap();
    let out = mesh(&["ledger-1", "-n", "shop", "--local", d]);
    assert!(out.status.success(), "{out:?}");
    assert_golden("authz-ledger.txt", &String::from_utf8(out.stdout).unwrap());
    let out = mesh(&["ledger-1", "-n", "shop", "--local", d, "-o", "json"]);
    assert!(out.status.success(), "{out:?}");
    assert_golden("authz-ledger.json", &String::from_utf8(out.stdout).unwrap());

    // A workload only the namespace-wide policy selects.
    let out = mesh(&["orders-1", "-n", "shop", "--local", d]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("POLICY ops-audit"), "{text}");
    assert!(!text.contains("ledger-callers"), "{text}");
}

#[test]
fn unknown_workloads_and_invalid_files_are_reported() {
    let bad = "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: bad, namespace: shop}\nspec:\n  action: allow\n  rules:\n    - from: [{principals: [x]}]\n";
    let dir = dir_with(&[("shop.yaml", MANIFESTS), ("bad.yaml", bad)]);
    let d = dir.path().to_str().unwrap();
    let out = mesh(&["nope", "-n", "shop", "--local", d]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("workload shop/nope not found (known in shop: ledger-1, orders-1)"),
        "{err}"
    );
    assert!(
        err.contains("bad.yaml") && err.contains("unknown field `principals`"),
        "{err}"
    );
}

#[test]
fn reads_services_pods_and_policies_from_the_kubernetes_api() {
    use common::{fake_api, kubeconfig};
    use serde_json::json;
    let pod = |name: &str, ip: &str| {
        json!({"metadata": {"name": name, "namespace": "shop", "labels": {"app": "ledger"},
                "annotations": {"mesh.dev/workload": "ledger"}},
            "spec": {"serviceAccountName": "ledger",
                "containers": [{"name": "app", "ports": [{"name": "http", "containerPort": 8000}]},
                    {"name": "mesh-proxy"}]},
            "status": {"podIP": ip, "podIPs": [{"ip": ip}]}})
    };
    let list = |kind: &str, items: Vec<serde_json::Value>| json!({"apiVersion": "v1", "kind": kind, "metadata": {}, "items": items});
    let svc = json!({"metadata": {"name": "ledger", "namespace": "shop"},
        "spec": {"selector": {"app": "ledger"},
            "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}});
    let policy = json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "ledger-callers", "namespace": "shop"},
        "spec": {"targetRef": {"kind": "Service", "name": "ledger"}, "action": "allow",
            "rules": [{"from": [{"serviceAccounts": ["payments"]}]}]}});
    let routes = vec![
        (
            "/api/v1/namespaces/shop/services".to_string(),
            "",
            200,
            list("ServiceList", vec![svc]),
        ),
        (
            "/api/v1/namespaces/shop/pods".to_string(),
            "",
            200,
            list(
                "PodList",
                vec![
                    pod("ledger-7f9-b", "198.18.0.6"),
                    pod("ledger-7f9-a", "198.18.0.5"),
                ],
            ),
        ),
        (
            "/apis/policy.mesh.dev/v1alpha1/namespaces/shop/authorizationpolicies".to_string(),
            "",
            200,
            json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicyList",
                "metadata": {}, "items": [policy]}),
        ),
    ];
    let addr = fake_api(routes);
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["authz", "ledger", "-n", "shop"])
        .env(
            "KUBECONFIG",
            kubeconfig(dir.path(), &format!("http://{addr}")),
        )
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    // The first pod of the workload, by name.
    assert!(
        text.starts_with("WORKLOAD shop/ledger-7f9-a (app=ledger)"),
        "{text}"
    );
    assert!(text.contains("8000  default  ledger-callers"), "{text}");
    assert!(
        text.contains("from serviceAccounts=shop/payments to anything"),
        "{text}"
    );
}
