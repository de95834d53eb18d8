//! Trust-bundle rotation the Kubernetes way, against a fake API server (issue 14): the
//! anchors of `mesh-identity` (its mounted `mesh-identity-trust-roots` ConfigMap)
//! change, identity publishes the new bundle as `mesh-trust-roots` in every namespace,
//! a stand-in kubelet refreshes a pod's ConfigMap volume (the atomic `..data` symlink
//! swap), and the real proxy reading it reloads; a new issuer Secret under the new
//! anchor and a renewal directive move its leaf; the old anchor goes. A garbage anchors
//! file changes nothing.

use base64::Engine;
use mesh_cli::identity::pem_fingerprints as fingerprints;
use mesh_identity::ca::{generate_issuer, generate_trust_anchor};
use mesh_identity::kubernetes::{self, KubeSettings, LeaseSettings};
use mesh_identity::metrics::Metrics;
use mesh_identity::server::{serve, IdentityService, ServeConfig, ServiceConfig};
use mesh_integration::{
    fixture::admin_get,
    process::{bin, free_addr, Proc},
};
use mesh_kube_fake::KubeApi;
use mesh_proto::workload::renewal_directive;
use serde_json::{json, Value};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

const TD: &str = "cluster.local";
const NS: &str = "mesh-system";
const SECRETS: &str = "/api/v1/secrets";
const CONFIG_MAPS: &str = "/api/v1/configmaps";
const PODS: &str = "/api/v1/pods";
const PATHS: &[&str] = &[
    "/apis/authentication.k8s.io/v1/tokenreviews",
    SECRETS,
    "/apis/events.k8s.io/v1/events",
    "/api/v1/namespaces",
    CONFIG_MAPS,
    "/apis/coordination.k8s.io/v1/leases",
    PODS,
];

fn issuer_secret(cert: &str, key: &str) -> Value {
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": "mesh-identity-issuer", "namespace": NS},
        "data": {"tls.crt": b64(cert), "tls.key": b64(key)}})
}

/// The API server's TokenReview: `demo-token` is demo/api's token.
fn review(body: &Value) -> (u16, Value) {
    let status = match body["spec"]["token"].as_str().unwrap_or_default() {
        "demo-token" => json!({"authenticated": true, "audiences": ["identity.mesh.dev"],
            "user": {"username": "system:serviceaccount:demo:api", "uid": "u1"}}),
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut answer = body.clone();
    answer["status"] = status;
    (201, answer)
}

/// Writes `text` as file `key` of a ConfigMap volume: a fresh timestamped directory,
/// then the `..data` symlink swapped to it by rename; `key` links through `..data`.
fn kubelet_write(volume: &Path, key: &str, text: &str, generation: u32) {
    let dir = format!("..2026_12_06_{generation:04}");
    std::fs::create_dir_all(volume.join(&dir)).unwrap();
    std::fs::write(volume.join(&dir).join(key), text).unwrap();
    let tmp = volume.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&dir, &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    let link = volume.join(key);
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink(format!("..data/{key}"), &link).unwrap();
    }
}

/// A stand-in kubelet: copies key `key` of ConfigMap `ns/name` into `volume` whenever
/// it changes (bounded: 2 min). Returns the file's path once it exists.
async fn kubelet(
    api: Arc<KubeApi>,
    (ns, name, key): (&'static str, &'static str, &'static str),
    volume: PathBuf,
) -> (PathBuf, tokio::task::JoinHandle<()>) {
    std::fs::create_dir_all(&volume).unwrap();
    let file = volume.join(key);
    let task = tokio::spawn(async move {
        let mut last = String::new();
        let mut generation = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(cm) = api.get(CONFIG_MAPS, ns, name) {
                let text = cm["data"][key].as_str().unwrap_or_default();
                if text != last {
                    generation += 1;
                    kubelet_write(&volume, key, text, generation);
                    last = text.to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    until("volume written", 10, async || file.exists()).await;
    (file, task)
}

/// Polls `f` until it returns true (at most `secs`); returns how long it took.
async fn until(what: &str, secs: u64, mut f: impl AsyncFnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f().await {
        assert!(
            started.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    started.elapsed()
}

fn published(api: &KubeApi) -> Vec<String> {
    api.get(CONFIG_MAPS, "demo", "mesh-trust-roots")
        .map(|cm| fingerprints(cm["data"]["ca-bundle.pem"].as_str().unwrap_or_default()))
        .unwrap_or_default()
}

/// Writes the identity's mounted anchors file (by rename, as the kubelet would).
fn write_anchors(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// A fake cluster: namespaces `demo` and `mesh-system`, the issuer Secret under
/// `anchor`, TokenReviews answered.
async fn cluster(issuer: &(String, String)) -> Arc<KubeApi> {
    let api = Arc::new(KubeApi::start(PATHS).await);
    api.on_post(PATHS[0], review);
    api.apply(SECRETS, issuer_secret(&issuer.0, &issuer.1));
    for ns in ["demo", NS] {
        api.apply(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                "status": {"phase": "Active"}}),
        );
    }
    api
}

/// mesh-identity in Kubernetes mode against `api`, its anchors read from
/// `anchors_file` (first `anchors`): (Certify address, admin address, the mode).
async fn identity(
    api: &KubeApi,
    anchors: &str,
    anchors_file: &Path,
) -> (SocketAddr, SocketAddr, kubernetes::KubeMode) {
    mesh_identity::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let settings = KubeSettings {
        namespace: NS.to_string(),
        issuer_secret: "mesh-identity-issuer".to_string(),
        trust_anchors_pem: anchors.to_string(),
        trust_anchors_file: Some(anchors_file.to_path_buf()),
        startup_timeout: Duration::from_secs(10),
        lease: LeaseSettings::with_timings(
            "mesh-identity-0",
            Duration::from_millis(1000),
            Duration::from_millis(200),
            Duration::from_millis(100),
        )
        .unwrap(),
    };
    let client = kubernetes::client(api.config()).unwrap();
    let kube = kubernetes::start(client, settings, metrics.clone())
        .await
        .unwrap();
    let service = IdentityService::with_config(ServiceConfig {
        issuer: kube.issuer.clone(),
        authenticator: kube.authenticator.clone(),
        trust_domain: TD.to_string(),
        lifetime: Duration::from_secs(3600),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    tokio::spawn(serve(
        ServeConfig {
            listener,
            admin_listener: Some(admin_listener),
            service,
        },
        std::future::pending(),
    ));
    (addr, admin, kube)
}

/// A real proxy for demo/`name` (service account `api`) reading its bundle from
/// `bundle_file`, ready: (process, admin address).
async fn proxy(
    dir: &Path,
    identity: SocketAddr,
    bundle_file: &Path,
    name: &str,
) -> (Proc, SocketAddr) {
    let admin = free_addr();
    let mut cmd = Command::new(bin("mesh-proxy"));
    cmd.env("MESH_PROXY_OUTBOUND_ADDR", free_addr().to_string())
        .env("MESH_PROXY_INBOUND_ADDR", free_addr().to_string())
        .env("MESH_PROXY_ADMIN_ADDR", admin.to_string())
        .env("MESH_PROXY_DESTINATION_ADDR", "127.0.0.1:1")
        .env("MESH_PROXY_IDENTITY_ADDR", identity.to_string())
        .env("MESH_PROXY_TRUST_ANCHORS_FILE", bundle_file)
        .env("MESH_PROXY_IDENTITY_TOKEN", "demo-token")
        .env("MESH_PROXY_NAMESPACE", "demo")
        .env("MESH_PROXY_SERVICE_ACCOUNT", "api")
        .env("MESH_PROXY_WORKLOAD", name)
        .env("MESH_PROXY_LOG", "info");
    let mut proc = Proc::spawn(
        &format!("mesh-proxy {name}"),
        cmd,
        dir.join(format!("proxy-{name}.log")),
    );
    let took = until("proxy ready", 20, async || {
        proc.assert_running();
        admin_get(admin, "/ready").await.map(|(s, _)| s) == Some(200)
    })
    .await;
    println!("{name} certified by mesh-identity (TokenReview) in {took:?}");
    (proc, admin)
}

/// The anchors a proxy trusts.
async fn bundle(admin: SocketAddr) -> Vec<String> {
    admin_get(admin, "/trust-bundle")
        .await
        .map(|(_, b)| fingerprints(&b))
        .unwrap_or_default()
}

/// The certificate that issued a proxy's leaf.
async fn leaf_issuer(admin: SocketAddr) -> Option<String> {
    admin_get(admin, "/certificate")
        .await
        .and_then(|(_, c)| fingerprints(&c).get(1).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_configmap_change_reaches_a_proxys_mounted_file_and_its_handshakes() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, old_key) = generate_trust_anchor(TD).unwrap();
    let (new, new_key) = generate_trust_anchor(TD).unwrap();
    let old_issuer = generate_issuer(&old, &old_key, TD).unwrap();
    let api = cluster(&old_issuer).await;

    // mesh-identity, its anchors read from a file it watches (written by hand here).
    let anchors_file = tmp.path().join("identity-ca.crt");
    write_anchors(&anchors_file, &old);
    let (identity_addr, _, kube) = identity(&api, &old, &anchors_file).await;

    // The pod: its ConfigMap volume kept by the stand-in kubelet, and a real proxy.
    until("first publication", 20, async || {
        published(&api) == fingerprints(&old)
    })
    .await;
    let (bundle_file, kubelet) = kubelet(
        api.clone(),
        ("demo", "mesh-trust-roots", "ca-bundle.pem"),
        tmp.path().join("trust-roots"),
    )
    .await;
    let (mut proxy, admin) = proxy(tmp.path(), identity_addr, &bundle_file, "api-1").await;
    assert_eq!(
        leaf_issuer(admin).await,
        fingerprints(&old_issuer.0).first().cloned()
    );

    // 1. The new anchor joins identity's anchors: published, mounted, reloaded.
    write_anchors(&anchors_file, &format!("{old}{new}"));
    let both = [fingerprints(&old), fingerprints(&new)].concat();
    let took = until("bundle of two in the proxy", 20, async || {
        bundle(admin).await == both
    })
    .await;
    println!("step 1: the proxy trusts the new anchor {took:?} after the ConfigMap change");
    assert_eq!(published(&api), both);

    // 2. A new issuer under the new anchor (accepted: the bundle has it), then a renewal
    // directive: the proxy's leaf moves to it.
    let (new_issuer, new_issuer_key) = generate_issuer(&new, &new_key, TD).unwrap();
    api.apply(SECRETS, issuer_secret(&new_issuer, &new_issuer_key));
    until("identity signs with the new issuer", 10, async || {
        kube.issuer.current().issuer_cert_pem().trim() == new_issuer.trim()
    })
    .await;
    let directive = renewal_directive(
        SystemTime::now() + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    write_anchors(&anchors_file, &format!("{directive}\n{old}{new}"));
    let want = fingerprints(&new_issuer).first().cloned();
    let took = until("leaf from the new issuer", 20, async || {
        leaf_issuer(admin).await == want
    })
    .await;
    println!("step 2: the proxy renewed from the new issuer {took:?} after the directive");

    // A garbage anchors file: identity keeps publishing the last good bundle.
    write_anchors(&anchors_file, "garbage\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(published(&api), both);
    assert_eq!(bundle(admin).await, both);

    // 3. The old anchor goes.
    write_anchors(&anchors_file, &new);
    let took = until("old anchor gone from the proxy", 20, async || {
        bundle(admin).await == fingerprints(&new)
    })
    .await;
    println!("step 3: the proxy dropped the old anchor {took:?} after the ConfigMap change");
    assert_eq!(published(&api), fingerprints(&new));
    // Still certified, and identity (its serving certificate from the new issuer) still
    // answers the proxy's renewals: the proxy stays ready.
    assert_eq!(admin_get(admin, "/ready").await.map(|(s, _)| s), Some(200));
    let log = proxy
        .wait_log(&["trust bundle reloaded"], Duration::from_secs(5))
        .await;
    assert!(log.contains("trust bundle reloaded"), "{log}");
    kubelet.abort();
    proxy.kill();
}

/// A pod of `ns` running the proxy container.
fn proxy_pod(ns: &str, name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns},
        "spec": {"containers": [{"name": "app"}, {"name": "mesh-proxy"}]},
        "status": {"phase": "Running"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_identity_rotate_kubernetes_runs_all_three_steps_through_the_api() {
    let tmp = tempfile::tempdir().unwrap();
    let (old, old_key) = generate_trust_anchor(TD).unwrap();
    let old_issuer = generate_issuer(&old, &old_key, TD).unwrap();
    let api = cluster(&old_issuer).await;
    // The bundle mesh-identity mounts, as `mesh install` creates it.
    api.apply(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "mesh-identity-trust-roots", "namespace": NS},
            "data": {"ca-bundle.crt": old}}),
    );
    let (anchors_file, identity_kubelet) = kubelet(
        api.clone(),
        (NS, "mesh-identity-trust-roots", "ca-bundle.crt"),
        tmp.path().join("identity-volume"),
    )
    .await;
    let (identity_addr, identity_admin, _kube) = identity(&api, &old, &anchors_file).await;
    api.apply(
        PODS,
        json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "mesh-identity-0", "namespace": NS,
                "labels": {"app.kubernetes.io/name": "mesh-identity"}},
            "spec": {"containers": [{"name": "identity"}]}, "status": {"phase": "Running"}}),
    );
    api.proxy_pod(NS, "mesh-identity-0", 9991, identity_admin);

    // Two pods in demo, each with its own volume of the published bundle.
    until("first publication", 20, async || {
        published(&api) == fingerprints(&old)
    })
    .await;
    let mut pods = Vec::new();
    for name in ["api-1", "api-2"] {
        let (file, kubelet) = kubelet(
            api.clone(),
            ("demo", "mesh-trust-roots", "ca-bundle.pem"),
            tmp.path().join(format!("volume-{name}")),
        )
        .await;
        let (proc, admin) = proxy(tmp.path(), identity_addr, &file, name).await;
        api.apply(PODS, proxy_pod("demo", name));
        api.proxy_pod("demo", name, 4191, admin);
        pods.push((proc, admin, kubelet));
    }

    // The command, against the fake API through a kubeconfig.
    let kubeconfig = tmp.path().join("kubeconfig");
    api.write_kubeconfig(&kubeconfig).unwrap();
    let state = tmp.path().join("rotation");
    let started = Instant::now();
    let out = tokio::task::spawn_blocking({
        let (kubeconfig, state) = (kubeconfig.clone(), state.clone());
        move || {
            Command::new(bin("mesh"))
                .args(["identity", "rotate", "--kubernetes", "--state-dir"])
                .arg(&state)
                .args(["--timeout", "60s", "--spread", "1s"])
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    print!("{stdout}");
    assert!(out.status.success(), "{stdout}\n{stderr}");
    println!(
        "kubernetes rotation took {:.1} s",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(stdout.matches("step ").count(), 3, "{stdout}");

    // The cluster holds only the new anchor and an issuer it signed; the state directory
    // keeps the new anchor and its key; every proxy followed.
    let new = std::fs::read_to_string(state.join("anchor.pem")).unwrap();
    assert!(state.join("anchor.key").exists());
    let trust_roots = api
        .get(CONFIG_MAPS, NS, "mesh-identity-trust-roots")
        .unwrap();
    let in_cluster = trust_roots["data"]["ca-bundle.crt"].as_str().unwrap();
    assert_eq!(fingerprints(in_cluster), fingerprints(&new));
    let secret = api.get(SECRETS, NS, "mesh-identity-issuer").unwrap();
    let b64 = |k: &str| {
        let raw = secret["data"][k].as_str().unwrap();
        String::from_utf8(
            base64::engine::general_purpose::STANDARD
                .decode(raw)
                .unwrap(),
        )
        .unwrap()
    };
    assert!(mesh_identity::ca::is_signed_by(&b64("tls.crt"), &new));
    assert_eq!(fingerprints(&b64("ca.crt")), fingerprints(&new));
    let issuer = fingerprints(&b64("tls.crt")).remove(0);
    for (_, admin, _) in &pods {
        assert_eq!(bundle(*admin).await, fingerprints(&new));
        assert_eq!(leaf_issuer(*admin).await, Some(issuer.clone()));
    }
    identity_kubelet.abort();
    for (mut proc, _, kubelet) in pods {
        kubelet.abort();
        proc.kill();
    }
}
