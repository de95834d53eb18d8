//! Tests of [`review`] (pure) and of the HTTPS server over loopback.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use crate::inject::{InjectConfig, INIT_CONTAINER, INJECT_ANNOTATION, PROXY_CONTAINER};

/// A Deployment-created pod, as the API server sends it on CREATE.
fn pod_json() -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "web-7d4b9c6f5-",
            "namespace": "shop",
            "labels": {"app": "web", "pod-template-hash": "7d4b9c6f5"},
            "ownerReferences": [{
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": "web-7d4b9c6f5",
                "uid": "0b9f8c2e-3c7a-4b8e-9a51-2f1d6c1e0a11",
                "controller": true,
                "blockOwnerDeletion": true
            }]
        },
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "app",
                "image": "nginx:1.27",
                "ports": [{"containerPort": 8080, "protocol": "TCP"}],
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
                "imagePullPolicy": "IfNotPresent"
            }],
            "restartPolicy": "Always",
            "terminationGracePeriodSeconds": 30,
            "dnsPolicy": "ClusterFirst",
            "schedulerName": "default-scheduler",
            "volumes": [{
                "name": "kube-api-access-abcde",
                "projected": {"sources": [{"serviceAccountToken": {"path": "token"}}]}
            }]
        },
        "status": {}
    })
}

fn request(object: Value) -> Value {
    json!({
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "namespace": "shop",
            "operation": "CREATE",
            "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
            "object": object,
            "oldObject": null,
            "dryRun": false,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"}
        }
    })
}

fn namespaces() -> StaticNamespaces {
    let enabled = BTreeMap::from([(INJECT_ANNOTATION.to_string(), "enabled".to_string())]);
    StaticNamespaces(HashMap::from([
        ("shop".to_string(), enabled),
        ("plain".to_string(), BTreeMap::new()),
    ]))
}

fn run(body: &[u8]) -> AdmissionResponse {
    let out = review(body, &namespaces(), &InjectConfig::default());
    parse_response(&out)
}

fn parse_response(out: &[u8]) -> AdmissionResponse {
    let review: AdmissionReview = serde_json::from_slice(out).expect("response is a review");
    assert_eq!(review.api_version, ADMISSION_API_VERSION);
    assert_eq!(review.kind, ADMISSION_KIND);
    review.response.expect("response")
}

/// Applies the response's patch to `original` and reads the result as a Pod.
fn patched(original: &Value, response: &AdmissionResponse) -> Pod {
    assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(response.patch.as_deref().expect("patch"))
        .expect("base64");
    let patch: json_patch::Patch = serde_json::from_slice(&bytes).expect("patch JSON");
    let mut doc = original.clone();
    json_patch::patch(&mut doc, &patch).expect("patch applies");
    serde_json::from_value(doc).expect("a Pod")
}

fn assert_meshed(pod: &Pod) {
    let spec = pod.spec.as_ref().expect("spec");
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    assert_eq!(inits, [INIT_CONTAINER, PROXY_CONTAINER]);
    let containers: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(containers, ["app"]);
    assert_eq!(
        pod.metadata.generate_name.as_deref(),
        Some("web-7d4b9c6f5-")
    );
    assert_eq!(pod.metadata.owner_references.iter().flatten().count(), 1);
}

fn assert_unchanged(response: &AdmissionResponse) {
    assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(response.allowed);
    assert_eq!(response.patch, None);
    assert_eq!(response.patch_type, None);
    assert_eq!(response.status, None);
}

fn assert_bad(response: &AdmissionResponse, uid: &str, needle: &str) {
    assert_eq!(response.uid, uid);
    assert!(response.allowed, "fail open");
    assert_eq!(response.patch, None);
    let status = response.status.as_ref().expect("status");
    assert_eq!(status.code, 400);
    assert!(status.message.contains(needle), "{}", status.message);
}

#[test]
fn deployment_pod_in_enabled_namespace_is_injected() {
    let original = pod_json();
    let body = serde_json::to_vec(&request(original.clone())).expect("json");
    let response = run(&body);
    assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
    assert!(response.allowed);
    assert_eq!(response.status, None);
    assert_meshed(&patched(&original, &response));
}

#[test]
fn pods_left_alone() {
    let mut other_ns = request(pod_json());
    other_ns["request"]["namespace"] = json!("plain");
    let mut unknown_ns = request(pod_json());
    unknown_ns["request"]["namespace"] = json!("nowhere");
    let mut disabled = pod_json();
    disabled["metadata"]["annotations"] = json!({INJECT_ANNOTATION: "disabled"});
    let mut host = pod_json();
    host["spec"]["hostNetwork"] = json!(true);
    // Inject once, then review the injected pod again.
    let first = run(&serde_json::to_vec(&request(pod_json())).expect("json"));
    let again = serde_json::to_value(patched(&pod_json(), &first)).expect("json");
    let mut update = request(pod_json());
    update["request"]["operation"] = json!("UPDATE");
    let mut service = request(json!({"apiVersion": "v1", "kind": "Service"}));
    service["request"]["kind"] = json!({"group": "", "version": "v1", "kind": "Service"});
    for body in [
        other_ns,
        unknown_ns,
        request(disabled),
        request(host),
        request(again),
        update,
        service,
    ] {
        assert_unchanged(&run(&serde_json::to_vec(&body).expect("json")));
    }
}

#[test]
fn malformed_requests_fail_open_with_400() {
    let uid = "705ab4f5-6393-11e8-b7cc-42010a800002";
    assert_bad(&run(b"\x00\xffgarbage"), "", "not JSON");
    assert_bad(&run(b"{}"), "", "apiVersion");
    assert_bad(&run(b"[1, 2]"), "", "apiVersion");
    assert_bad(
        &run(br#"{"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}"#),
        "",
        "no request",
    );
    let mut v1beta1 = request(pod_json());
    v1beta1["apiVersion"] = json!("admission.k8s.io/v1beta1");
    assert_bad(
        &run(&serde_json::to_vec(&v1beta1).expect("json")),
        uid,
        "apiVersion",
    );
    let string_object = request(json!("not a pod"));
    assert_bad(
        &run(&serde_json::to_vec(&string_object).expect("json")),
        uid,
        "not a Pod",
    );
    let mut no_object = request(Value::Null);
    no_object["request"]["object"] = Value::Null;
    assert_bad(
        &run(&serde_json::to_vec(&no_object).expect("json")),
        uid,
        "no object",
    );
    let mut bad_kind = request(pod_json());
    bad_kind["request"]["kind"] = json!(42);
    assert_bad(
        &run(&serde_json::to_vec(&bad_kind).expect("json")),
        uid,
        "invalid",
    );
}

#[test]
fn namespace_annotations_file() {
    let ns =
        StaticNamespaces::from_yaml("shop:\n  mesh.dev/inject: enabled\nempty:\n").expect("yaml");
    assert_eq!(
        ns.annotations("shop")
            .and_then(|a| a.get(INJECT_ANNOTATION).cloned()),
        Some("enabled".to_string())
    );
    assert_eq!(ns.annotations("empty"), Some(BTreeMap::new()));
    assert_eq!(ns.annotations("other"), None);
    assert_eq!(
        StaticNamespaces::from_yaml("").expect("empty"),
        StaticNamespaces::default()
    );
    assert!(StaticNamespaces::from_yaml("- a\n- b\n").is_err());
}

/// Starts the server on loopback; returns its address, a client trusting its certificate,
/// and the sender that stops it.
async fn start() -> (
    std::net::SocketAddr,
    tokio_rustls::TlsConnector,
    tokio::sync::oneshot::Sender<()>,
) {
    start_with(Arc::new(namespaces())).await
}

async fn start_with(
    namespaces: Arc<dyn NamespaceAnnotations>,
) -> (
    std::net::SocketAddr,
    tokio_rustls::TlsConnector,
    tokio::sync::oneshot::Sender<()>,
) {
    let (tls, cert) = self_signed_tls().expect("self-signed");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(serve(
        listener,
        tls,
        namespaces,
        InjectConfig::default(),
        async move {
            let _ = stop_rx.await;
        },
    ));
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).expect("root");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
    (
        addr,
        tokio_rustls::TlsConnector::from(Arc::new(config)),
        stop_tx,
    )
}

/// Sends one HTTP/1.1 request over TLS; returns the status code and the body.
async fn send(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    method: &str,
    body: &[u8],
) -> (u16, Vec<u8>) {
    let mut request = head(method, body.len()).into_bytes();
    request.extend_from_slice(body);
    raw(addr, connector, &request).await
}

fn head(method: &str, content_length: usize) -> String {
    format!(
        "{method} /inject HTTP/1.1\r\nhost: {WEBHOOK_DNS_NAME}\r\n\
         content-type: application/json\r\ncontent-length: {content_length}\r\n\
         connection: close\r\n\r\n"
    )
}

/// Writes `request` over TLS; returns the response's status code and body.
async fn raw(
    addr: std::net::SocketAddr,
    connector: &tokio_rustls::TlsConnector,
    request: &[u8],
) -> (u16, Vec<u8>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from(WEBHOOK_DNS_NAME).expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("handshake");
    tls.write_all(request).await.expect("write");
    let mut out = Vec::new();
    let _ = tls.read_to_end(&mut out).await;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("head end");
    let status_line = String::from_utf8_lossy(&out[..split]).into_owned();
    let code = status_line
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status code");
    (code, out[split + 4..].to_vec())
}

#[tokio::test]
async fn https_end_to_end() {
    let (addr, connector, _stop) = start().await;
    let original = pod_json();
    let body = serde_json::to_vec(&request(original.clone())).expect("json");
    let (code, out) = send(addr, &connector, "POST", &body).await;
    assert_eq!(code, 200);
    assert_meshed(&patched(&original, &parse_response(&out)));

    let (code, out) = send(addr, &connector, "POST", b"garbage").await;
    assert_eq!(code, 200);
    assert_bad(&parse_response(&out), "", "not JSON");

    let (code, _) = send(addr, &connector, "GET", b"").await;
    assert_eq!(code, 405);

    // Refused on the declared length, before any of the body is read.
    let (code, _) = raw(addr, &connector, head("POST", MAX_BODY + 1).as_bytes()).await;
    assert_eq!(code, 413);
}

#[test]
fn tls_from_pem_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let certified =
        rcgen::generate_simple_self_signed(vec![WEBHOOK_DNS_NAME.to_string()]).expect("cert");
    let cert = dir.path().join("tls.crt");
    let key = dir.path().join("tls.key");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
    assert!(load_tls(&cert, &key).is_ok());
    let missing = dir.path().join("missing.crt");
    assert!(matches!(
        load_tls(&missing, &key),
        Err(TlsError::Cert { .. })
    ));
    assert!(matches!(load_tls(&cert, &cert), Err(TlsError::Key { .. })));
}

/// A namespace cache that has not seen anything yet; its source answers lookups
/// (`Err` while it is unreachable) and counts them.
struct LaggingCache {
    source: Option<StaticNamespaces>,
    lookups: std::sync::atomic::AtomicUsize,
}

impl NamespaceAnnotations for LaggingCache {
    fn annotations(&self, _: &str) -> Option<BTreeMap<String, String>> {
        None
    }

    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<Option<BTreeMap<String, String>>, String>> {
        self.lookups
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let answer = match &self.source {
            Some(source) => Ok(source.annotations(namespace)),
            None => Err("connection refused".to_string()),
        };
        Box::pin(std::future::ready(answer))
    }
}

#[tokio::test]
async fn a_namespace_missing_from_the_cache_is_looked_up_before_deciding() {
    let cache = Arc::new(LaggingCache {
        source: Some(namespaces()),
        lookups: Default::default(),
    });
    let (addr, connector, _stop) = start_with(cache.clone()).await;
    let original = pod_json();
    let body = serde_json::to_vec(&request(original.clone())).expect("json");
    let (code, out) = send(addr, &connector, "POST", &body).await;
    assert_eq!(code, 200);
    assert_meshed(&patched(&original, &parse_response(&out)));
    assert_eq!(cache.lookups.load(std::sync::atomic::Ordering::Relaxed), 1);

    // A namespace name that is not a DNS label is never looked up.
    let mut bad = request(original.clone());
    bad["request"]["namespace"] = json!("../../secrets");
    bad["request"]["object"]["metadata"]["namespace"] = json!("../../secrets");
    let body = serde_json::to_vec(&bad).expect("json");
    let (code, out) = send(addr, &connector, "POST", &body).await;
    assert_eq!(code, 200);
    assert_unchanged(&parse_response(&out));
    assert_eq!(cache.lookups.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[tokio::test]
async fn an_unanswerable_namespace_fails_the_request_instead_of_skipping_the_pod() {
    let cache = Arc::new(LaggingCache {
        source: None,
        lookups: Default::default(),
    });
    let (addr, connector, _stop) = start_with(cache).await;
    let body = serde_json::to_vec(&request(pod_json())).expect("json");
    let (code, out) = send(addr, &connector, "POST", &body).await;
    // Not "admitted without a proxy": the API server retries or applies failurePolicy.
    assert_eq!(code, 503);
    assert_eq!(out, b"namespace annotations unknown\n");
}
