//! Trust-bundle rotation the Kubernetes way, against a fake API server (issue 14): the
//! anchors of `mesh-identity` (its mounted `mesh-identity-trust-roots` ConfigMap)
//! change, identity publishes the new bundle as `mesh-trust-roots` in every namespace,
//! a stand-in kubelet refreshes a pod's ConfigMap volume (the atomic `..data` symlink
//! swap), and the real proxy reading it reloads; a new issuer Secret under the new
//! anchor and a renewal directive move its leaf; the old anchor goes. A garbage anchors
//! file changes nothing.

use base64::Engine;
use mesh_identity::ca::{generate_issuer, generate_trust_anchor};
use mesh_identity::kubernetes::{self, KubeSettings, LeaseSettings};
use mesh_identity::metrics::Metrics;
use mesh_identity::server::{serve, IdentityService, ServeConfig, ServiceConfig};
use mesh_integration::{
    fixture::admin_get,
    process::{bin, free_addr, Proc},
};
use mesh_kube_fake::KubeApi;
use mesh_proto::workload::{fingerprint, renewal_directive};
use rustls::pki_types::{pem::PemObject, CertificateDer};
use serde_json::{json, Value};
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

const TD: &str = "cluster.local";
const NS: &str = "mesh-system";
const SECRETS: &str = "/api/v1/secrets";
const CONFIG_MAPS: &str = "/api/v1/configmaps";
const PATHS: &[&str] = &[
    "/apis/authentication.k8s.io/v1/tokenreviews",
    SECRETS,
    "/apis/events.k8s.io/v1/events",
    "/api/v1/namespaces",
    CONFIG_MAPS,
    "/apis/coordination.k8s.io/v1/leases",
];

fn fingerprints(pem: &str) -> Vec<String> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .map(|d| fingerprint(&d))
        .collect()
}

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

/// Writes `text` as a ConfigMap volume does: a fresh timestamped directory, then the
/// `..data` symlink swapped to it by rename; `ca-bundle.pem` links through `..data`.
fn kubelet_write(volume: &Path, text: &str, generation: u32) {
    let dir = format!("..2026_12_06_{generation:04}");
    std::fs::create_dir_all(volume.join(&dir)).unwrap();
    std::fs::write(volume.join(&dir).join("ca-bundle.pem"), text).unwrap();
    let tmp = volume.join("..data_tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(&dir, &tmp).unwrap();
    std::fs::rename(&tmp, volume.join("..data")).unwrap();
    let link = volume.join("ca-bundle.pem");
    if std::fs::symlink_metadata(&link).is_err() {
        std::os::unix::fs::symlink("..data/ca-bundle.pem", &link).unwrap();
    }
}

/// A stand-in kubelet: copies ConfigMap demo/mesh-trust-roots into `volume` whenever it
/// changes (bounded: 2 min).
fn kubelet(api: Arc<KubeApi>, volume: PathBuf) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = String::new();
        let mut generation = 0;
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Some(cm) = api.get(CONFIG_MAPS, "demo", "mesh-trust-roots") {
                let text = cm["data"]["ca-bundle.pem"].as_str().unwrap_or_default();
                if text != last {
                    generation += 1;
                    kubelet_write(&volume, text, generation);
                    last = text.to_string();
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_configmap_change_reaches_a_proxys_mounted_file_and_its_handshakes() {
    mesh_identity::install_crypto_provider();
    let tmp = tempfile::tempdir().unwrap();
    let (old, old_key) = generate_trust_anchor(TD).unwrap();
    let (new, new_key) = generate_trust_anchor(TD).unwrap();
    let (old_issuer, old_issuer_key) = generate_issuer(&old, &old_key, TD).unwrap();

    let api = Arc::new(KubeApi::start(PATHS).await);
    api.on_post(PATHS[0], review);
    api.apply(SECRETS, issuer_secret(&old_issuer, &old_issuer_key));
    for ns in ["demo", NS] {
        api.apply(
            "/api/v1/namespaces",
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns},
                "status": {"phase": "Active"}}),
        );
    }

    // mesh-identity, its anchors read from a file it watches.
    let anchors_file = tmp.path().join("identity-ca.crt");
    write_anchors(&anchors_file, &old);
    let metrics = Arc::new(Metrics::new());
    let settings = KubeSettings {
        namespace: NS.to_string(),
        issuer_secret: "mesh-identity-issuer".to_string(),
        trust_anchors_pem: old.clone(),
        trust_anchors_file: Some(anchors_file.clone()),
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
    let identity_addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        ServeConfig {
            listener,
            admin_listener: None,
            service,
        },
        std::future::pending(),
    ));

    // The pod: its ConfigMap volume kept by the stand-in kubelet, and a real proxy.
    until("first publication", 10, async || {
        published(&api) == fingerprints(&old)
    })
    .await;
    let volume = tmp.path().join("trust-roots");
    std::fs::create_dir_all(&volume).unwrap();
    let kubelet = kubelet(api.clone(), volume.clone());
    until("volume written", 10, async || {
        volume.join("ca-bundle.pem").exists()
    })
    .await;
    let admin = free_addr();
    let mut cmd = Command::new(bin("mesh-proxy"));
    cmd.env("MESH_PROXY_OUTBOUND_ADDR", free_addr().to_string())
        .env("MESH_PROXY_INBOUND_ADDR", free_addr().to_string())
        .env("MESH_PROXY_ADMIN_ADDR", admin.to_string())
        .env("MESH_PROXY_DESTINATION_ADDR", "127.0.0.1:1")
        .env("MESH_PROXY_IDENTITY_ADDR", identity_addr.to_string())
        .env(
            "MESH_PROXY_TRUST_ANCHORS_FILE",
            volume.join("ca-bundle.pem"),
        )
        .env("MESH_PROXY_IDENTITY_TOKEN", "demo-token")
        .env("MESH_PROXY_NAMESPACE", "demo")
        .env("MESH_PROXY_SERVICE_ACCOUNT", "api")
        .env("MESH_PROXY_WORKLOAD", "api-1")
        .env("MESH_PROXY_LOG", "info");
    let mut proxy = Proc::spawn("mesh-proxy api-1", cmd, tmp.path().join("proxy.log"));
    let bundle = async || {
        admin_get(admin, "/trust-bundle")
            .await
            .map(|(_, b)| fingerprints(&b))
            .unwrap_or_default()
    };
    let leaf_issuer = async || {
        admin_get(admin, "/certificate")
            .await
            .and_then(|(_, c)| fingerprints(&c).get(1).cloned())
    };
    let took = until("proxy ready", 20, async || {
        proxy.assert_running();
        admin_get(admin, "/ready").await.map(|(s, _)| s) == Some(200)
    })
    .await;
    println!("proxy certified by mesh-identity (TokenReview) in {took:?}");
    assert_eq!(
        leaf_issuer().await,
        fingerprints(&old_issuer).first().cloned()
    );

    // 1. The new anchor joins identity's anchors: published, mounted, reloaded.
    write_anchors(&anchors_file, &format!("{old}{new}"));
    let both = [fingerprints(&old), fingerprints(&new)].concat();
    let took = until("bundle of two in the proxy", 20, async || {
        bundle().await == both
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
        leaf_issuer().await == want
    })
    .await;
    println!("step 2: the proxy renewed from the new issuer {took:?} after the directive");

    // A garbage anchors file: identity keeps publishing the last good bundle.
    write_anchors(&anchors_file, "garbage\n");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(published(&api), both);
    assert_eq!(bundle().await, both);

    // 3. The old anchor goes.
    write_anchors(&anchors_file, &new);
    let took = until("old anchor gone from the proxy", 20, async || {
        bundle().await == fingerprints(&new)
    })
    .await;
    println!("step 3: the proxy dropped the old anchor {took:?} after the ConfigMap change");
    assert_eq!(published(&api), fingerprints(&new));
    // Still certified, and identity (its serving certificate from the new issuer) still
    // answers the proxy's renewals: the proxy stays ready.
    assert_eq!(admin_get(admin, "/ready").await.map(|(s, _)| s), Some(200));
    let log = proxy.log_text();
    assert!(log.contains("trust bundle reloaded"), "{log}");
    kubelet.abort();
    proxy.kill();
}
