//! `mesh check` against a fake Kubernetes API (static JSON answers on a loopback port,
//! reached through a real kubeconfig): all green on a healthy install, a specific `×`
//! with a hint for each broken thing, JSON output, and the exit codes.

mod common;

use common::{fake_api, kubeconfig, Route};

use std::process::Command;

use serde_json::{json, Value};

fn crd(name: &str, version: &str) -> Value {
    let (plural, group) = name.split_once('.').unwrap();
    json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition",
        "metadata": {"name": name},
        "spec": {"group": group, "scope": "Namespaced",
            "names": {"kind": "X", "plural": plural},
            "versions": [{"name": version, "served": true, "storage": true}]}})
}

fn pods(ready: &[(&str, bool)]) -> Value {
    let items: Vec<Value> = ready
        .iter()
        .map(|(name, r)| json!({"metadata": {"name": name},
            "status": {"conditions": [{"type": "Ready", "status": if *r { "True" } else { "False" }}]}}))
        .collect();
    json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": items})
}

/// The objects `mesh install` renders, as the API server would return them.
fn installed() -> Vec<Value> {
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("install")
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .filter(|v: &Value| !v.is_null())
        .collect()
}

fn object<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
}

/// The webhook and identity objects of one install; the issuer Secret from `issuer_from`
/// (another install, to simulate an issuer the anchors did not sign).
fn install_routes(docs: &[Value], issuer_from: &[Value]) -> Vec<Route> {
    let ns = "/api/v1/namespaces/mesh-system";
    vec![
        (
            "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/mesh-proxy-injector".into(),
            "",
            200,
            object(docs, "MutatingWebhookConfiguration", "mesh-proxy-injector").clone(),
        ),
        (
            format!("{ns}/secrets/mesh-webhook-tls"),
            "",
            200,
            object(docs, "Secret", "mesh-webhook-tls").clone(),
        ),
        (
            format!("{ns}/configmaps/mesh-identity-trust-roots"),
            "",
            200,
            object(docs, "ConfigMap", "mesh-identity-trust-roots").clone(),
        ),
        (
            format!("{ns}/secrets/mesh-identity-issuer"),
            "",
            200,
            object(issuer_from, "Secret", "mesh-identity-issuer").clone(),
        ),
    ]
}

fn routes(gateway: bool, identity_ready: bool) -> Vec<Route> {
    let crds = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/";
    let mut r: Vec<Route> = vec![
        (
            "/version".into(),
            "",
            200,
            json!({"major": "1", "minor": "31", "gitVersion": "v1.31.2", "gitCommit": "x",
                "gitTreeState": "clean", "buildDate": "2026-01-01T00:00:00Z", "goVersion": "go1.22",
                "compiler": "gc", "platform": "linux/amd64"}),
        ),
        (
            "/api/v1/namespaces/mesh-system".into(),
            "",
            200,
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "mesh-system"}}),
        ),
        (
            "/api/v1/namespaces/mesh-system/pods".into(),
            "mesh-controller",
            200,
            pods(&[("mesh-controller-1", true)]),
        ),
        (
            "/api/v1/namespaces/mesh-system/pods".into(),
            "mesh-identity",
            200,
            pods(&[("mesh-identity-1", identity_ready)]),
        ),
    ];
    for name in [
        "authorizationpolicies.policy.mesh.dev",
        "httpfaults.policy.mesh.dev",
        "trafficpolicies.policy.mesh.dev",
        "workloadentries.policy.mesh.dev",
    ] {
        r.push((format!("{crds}{name}"), "", 200, crd(name, "v1alpha1")));
    }
    if gateway {
        for name in [
            "httproutes.gateway.networking.k8s.io",
            "grpcroutes.gateway.networking.k8s.io",
        ] {
            r.push((format!("{crds}{name}"), "", 200, crd(name, "v1")));
        }
    }
    r
}

fn mesh_check(server: &str, args: &[&str]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("check")
        .args(args)
        .env("KUBECONFIG", kubeconfig(dir.path(), server))
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
    )
}

#[test]
fn a_healthy_install_is_all_green() {
    let docs = installed();
    let mut r = routes(true, true);
    r.extend(install_routes(&docs, &docs));
    let addr = fake_api(r);
    let (code, out) = mesh_check(&format!("http://{addr}"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains('×') && !out.contains('‼'), "{out}");
    assert!(
        out.contains("√ is running a supported Kubernetes version (v1.31.2)"),
        "{out}"
    );
    assert!(
        out.contains("√ mesh-identity pods are ready (1 ready)"),
        "{out}"
    );
    for line in [
        "√ webhook mesh-proxy-injector is registered",
        "√ webhook serving certificate matches the caBundle",
        "√ trust anchors are valid for at least 60 days",
        "√ issuer is signed by a trust anchor",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    assert!(out.ends_with("Status check results are √\n"), "{out}");
}

#[test]
fn missing_gateway_crds_and_an_unready_pod_fail_with_hints() {
    // And an issuer Secret from another install: not signed by these anchors.
    let (docs, other) = (installed(), installed());
    let mut r = routes(false, false);
    r.extend(install_routes(&docs, &other));
    let addr = fake_api(r);
    let (code, out) = mesh_check(&format!("http://{addr}"), &[]);
    assert_eq!(code, 1, "{out}");
    common::assert_golden("check-broken.txt", &out);
    let (code, json) = mesh_check(&format!("http://{addr}"), &["-o", "json"]);
    assert_eq!(code, 1);
    common::assert_golden("check-broken.json", &json);
    let v: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["success"], false);
    let crds = v["categories"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["categoryName"] == "crds")
        .unwrap();
    let failed: Vec<&str> = crds["checks"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["result"] == "error")
        .map(|c| c["description"].as_str().unwrap())
        .collect();
    assert_eq!(
        failed,
        [
            "Gateway API CRD httproutes.gateway.networking.k8s.io is installed (v1)",
            "Gateway API CRD grpcroutes.gateway.networking.k8s.io is installed (v1)"
        ]
    );
}

/// A workload certificate chain (leaf, issuer) from the issuer Secret of `docs`.
fn chain_from(docs: &[Value]) -> String {
    use base64::Engine;
    let secret = object(docs, "Secret", "mesh-identity-issuer");
    let field = |k: &str| {
        let b64 = secret["data"][k].as_str().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(b64)
                .unwrap(),
        )
        .unwrap()
    };
    let (cert, key) = (field("tls.crt"), field("tls.key"));
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(&cert, rcgen::KeyPair::from_pem(&key).unwrap()).unwrap();
    let leaf_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names = vec![rcgen::SanType::URI(
        "spiffe://cluster.local/ns/shop/sa/web".try_into().unwrap(),
    )];
    let leaf = params.signed_by(&leaf_key, &issuer).unwrap();
    format!("{}{}", leaf.pem(), cert)
}

/// Three injected pods: web-1 fine, api-1 with its proxy not ready, old-1 on another
/// version with an expired certificate from another CA.
fn data_plane_routes(docs: &[Value], other: &[Value]) -> Vec<Route> {
    let version = format!("v{}", env!("CARGO_PKG_VERSION"));
    let pod = |name: &str, ready: bool, tag: &str| {
        json!({"metadata": {"name": name, "namespace": "shop"},
            "spec": {"containers": [{"name": "app", "image": "app:1"}],
                "initContainers": [{"name": "mesh-proxy", "image": format!("ghcr.io/mesh-dev/mesh-proxy:{tag}"),
                    "restartPolicy": "Always"}]},
            "status": {"initContainerStatuses": [{"name": "mesh-proxy", "ready": ready,
                "restartCount": 0, "image": "x", "imageID": ""}]}})
    };
    let list = json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": [
        pod("web-1", true, &version), pod("api-1", false, &version), pod("old-1", true, "v0.0.9"),
        {"metadata": {"name": "plain", "namespace": "shop"}, "spec": {"containers": [{"name": "app"}]}}
    ]});
    let metrics = |expiry: u64| {
        Value::String(format!(
            "# TYPE mesh_identity_cert_expiry_timestamp_seconds gauge\nmesh_identity_cert_expiry_timestamp_seconds {expiry}\n"
        ))
    };
    let future = 4_102_444_800; // 2100-01-01
    let mut r: Vec<Route> = vec![("/api/v1/pods".into(), "", 200, list)];
    let (ours, theirs) = (chain_from(docs), chain_from(other));
    for (name, expiry, chain) in [
        ("web-1", future, &ours),
        ("api-1", future, &ours),
        ("old-1", 1_000, &theirs),
    ] {
        r.push((
            format!("/api/v1/namespaces/shop/pods/{name}:4191/proxy/metrics"),
            "",
            200,
            metrics(expiry),
        ));
        r.push((
            format!("/api/v1/namespaces/shop/pods/{name}:4191/proxy/certificate"),
            "",
            200,
            Value::String(chain.clone()),
        ));
    }
    r
}

#[test]
fn proxy_checks_name_unready_outdated_and_expired_proxies() {
    let (docs, other) = (installed(), installed());
    let mut r = routes(true, true);
    r.extend(install_routes(&docs, &docs));
    r.extend(data_plane_routes(&docs, &other));
    let addr = fake_api(r);
    let (code, out) = mesh_check(&format!("http://{addr}"), &["--proxy"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("data-plane\n----------\n× 3 injected pods have their proxy ready\n    not ready: shop/api-1"), "{out}");
    assert!(out.contains("‼ proxies run version v"), "{out}");
    assert!(out.contains("other versions: shop/old-1 (v0.0.9)"), "{out}");
    assert!(
        out.contains("× 3 proxies have a valid certificate\n    expired: shop/old-1"),
        "{out}"
    );
    // Without --proxy the data plane is not looked at.
    let (code, out) = mesh_check(&format!("http://{addr}"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("data-plane"), "{out}");
}

#[test]
fn an_unreachable_api_stops_at_the_first_group() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = closed.local_addr().unwrap();
    drop(closed);
    let (code, out) = mesh_check(&format!("http://{addr}"), &[]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("× can reach the Kubernetes API"), "{out}");
    assert!(
        out.contains("hint: check that `kubectl version` works"),
        "{out}"
    );
    assert!(!out.contains("crds\n"), "later groups are skipped:\n{out}");
}
