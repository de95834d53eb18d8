//! Tap on the proxy's admin port: only the tap identity may observe (no
//! certificate, or a workload's, gets PERMISSION_DENIED), filters choose the
//! events, header values, queries and bodies never travel, taps are capped
//! and rate limited, and the plaintext admin endpoints keep working on the
//! same port.

use bytes::Bytes;
use http_body_util::Full;
use mesh_integration::{
    apps::Behaviour,
    client::{self, blast},
    fixture::{admin_get, service, spiffe, Replica},
    tls::client_cert,
    Mesh, Proxy,
};
use mesh_proto::{
    tap::{tap_client::TapClient, Match, ObserveRequest, TapEvent},
    workload::{certified_key, mtls_channel_any_workload, CertStore, TrustBundle},
};
use std::{net::SocketAddr, sync::Arc, time::Duration};
use tonic::{Code, Streaming};

const API: &str = "http://api.demo.svc.cluster.local";
const TAP_ID: &str = "spiffe://cluster.local/ns/mesh-system/sa/mesh-tap";

/// A tap client of the proxy at `admin`, presenting `cert` (or none).
fn tap_client(
    mesh: &Mesh,
    admin: SocketAddr,
    cert: Option<(String, String)>,
) -> TapClient<tonic::transport::Channel> {
    let certs = Arc::new(CertStore::default());
    if let Some((chain, key)) = cert {
        certs.set(certified_key(&chain, &key).expect("cert"));
    }
    let anchors = std::fs::read_to_string(mesh.anchors_path()).expect("anchors");
    let bundle = TrustBundle::from_pem(&anchors).expect("bundle");
    let channel =
        mtls_channel_any_workload(&admin.to_string(), certs, bundle, Duration::from_secs(3))
            .expect("channel");
    TapClient::new(channel)
}

async fn observe(
    c: &mut TapClient<tonic::transport::Channel>,
    m: Match,
    limit: u32,
    max_rps: u32,
) -> Result<Streaming<TapEvent>, tonic::Status> {
    let req = ObserveRequest {
        limit,
        max_rps,
        r#match: Some(m),
    };
    tokio::time::timeout(Duration::from_secs(10), c.observe(req))
        .await
        .expect("tap answered in time")
        .map(|r| r.into_inner())
}

/// Events until none comes for `quiet`.
async fn drain(s: &mut Streaming<TapEvent>, quiet: Duration) -> Vec<TapEvent> {
    let mut out = Vec::new();
    while let Ok(Ok(Some(e))) = tokio::time::timeout(quiet, s.message()).await {
        out.push(e);
    }
    out
}

/// A mesh with a Service api (one replica, api-1) and a client web-1.
async fn api_and_web() -> (Mesh, Replica, Proxy) {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let api = mesh.replica("api", "api-1", Behaviour::default()).await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    (mesh, api, web)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_tap_identity_taps_and_sees_no_secrets() {
    // Inherited by every proxy this test starts (one test per process).
    std::env::set_var("MESH_PROXY_TAP_MAX", "2");
    let (mesh, api, web) = api_and_web().await;
    blast(web.outbound, &format!("{API}/warm"), 5, 1, &[]).await;

    // No certificate, and a workload's certificate: refused.
    let mut anonymous = tap_client(&mesh, api.proxy.admin, None);
    let e = observe(&mut anonymous, Match::default(), 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    let web_cert = client_cert(&mesh.identity_dir, &spiffe("demo", "web"));
    let mut workload = tap_client(&mesh, api.proxy.admin, Some(web_cert));
    let e = observe(&mut workload, Match::default(), 0, 0)
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().contains(&spiffe("demo", "web")), "{e:?}");

    // The tap identity, with a path filter, on the server side.
    let tap_cert = client_cert(&mesh.identity_dir, TAP_ID);
    let mut tap = tap_client(&mesh, api.proxy.admin, Some(tap_cert.clone()));
    let only = Match {
        path_prefix: "/tapped".into(),
        ..Match::default()
    };
    let mut stream = observe(&mut tap, only, 0, 0).await.expect("tap");
    let outbound = client::http1(web.outbound);
    for i in 0..10 {
        let path = if i % 2 == 0 { "/tapped/item" } else { "/other" };
        let req = http::Request::post(format!("{API}{path}?token=q-secret-{i}"))
            .header("authorization", "Bearer h-secret")
            .header("cookie", "session=c-secret")
            .body(Full::new(Bytes::from_static(b"password=b-secret")))
            .unwrap();
        let r = client::send(&outbound, req).await.expect("response");
        assert_eq!(r.status, 200);
    }
    let events = drain(&mut stream, Duration::from_millis(1500)).await;
    assert_eq!(events.len(), 5, "{events:?}");
    for e in &events {
        assert_eq!(
            (e.direction.as_str(), e.method.as_str()),
            ("inbound", "POST")
        );
        assert_eq!(e.path, "/tapped/item");
        assert_eq!(e.status, 200);
        assert!(e.response_bytes > 0 && e.latency_us > 0, "{e:?}");
        assert_eq!(e.src_identity, spiffe("demo", "web"));
        assert_eq!(e.dst_identity, spiffe("demo", "api"));
        assert!(e.tls);
        let text = format!("{e:?}");
        assert!(!text.contains("secret"), "a secret leaked: {text}");
    }

    // A second tap is the cap (2); a third is refused until one closes.
    let mut second = observe(&mut tap, Match::default(), 3, 0)
        .await
        .expect("second tap");
    let e = observe(&mut tap, Match::default(), 0, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    drop(stream);
    // `limit` ends the stream by itself.
    blast(web.outbound, &format!("{API}/more"), 10, 1, &[]).await;
    let got = drain(&mut second, Duration::from_secs(2)).await;
    assert_eq!(got.len(), 3, "{got:?}");
    drop(second);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // The client side, rate limited: a burst of 5, the rest counted as dropped.
    let mut out_tap = tap_client(&mesh, web.admin, Some(tap_cert));
    let to_api = Match {
        direction: "outbound".into(),
        // The fixture's entries are their own workloads.
        dst_workload: "demo/api-1".into(),
        ..Match::default()
    };
    let mut stream = observe(&mut out_tap, to_api, 0, 5)
        .await
        .expect("outbound tap");
    blast(web.outbound, &format!("{API}/burst"), 100, 4, &[]).await;
    let burst = drain(&mut stream, Duration::from_millis(500)).await;
    assert!((5..=8).contains(&burst.len()), "{}", burst.len());
    assert!(burst
        .iter()
        .all(|e| e.direction == "outbound" && e.dst_workload == "api-1"));
    assert!(burst
        .iter()
        .all(|e| e.route == "default" && e.dst_identity == spiffe("demo", "api")));
    tokio::time::sleep(Duration::from_millis(400)).await;
    blast(web.outbound, &format!("{API}/after"), 1, 1, &[]).await;
    let after = drain(&mut stream, Duration::from_millis(500)).await;
    let dropped: u64 = after.iter().map(|e| e.dropped).sum();
    assert!(
        dropped >= 80,
        "the rate limit's drops are reported: {dropped}"
    );

    drop(stream);

    // Requests the proxy refuses are seen too, with its reason; a tap by
    // Service matches the destination the proxy resolved.
    let by_service = Match {
        dst_service: "api.demo.svc".into(),
        ..Match::default()
    };
    let mut stream = observe(&mut out_tap, by_service, 0, 0)
        .await
        .expect("service tap");
    let mut refused = Match {
        method: "DELETE".into(),
        ..Match::default()
    };
    refused.direction = "outbound".into();
    let mut refusals = observe(&mut out_tap, refused, 0, 0)
        .await
        .expect("refusal tap");
    let two_hosts = http::Request::delete(format!("{API}/twice"))
        .header("host", "api.demo.svc.cluster.local")
        .header("host", "other.demo.svc.cluster.local")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(&outbound, two_hosts).await.expect("response");
    assert_eq!(r.status, 400);
    blast(web.outbound, &format!("{API}/short"), 1, 1, &[]).await;
    let seen = drain(&mut refusals, Duration::from_millis(500)).await;
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(
        (seen[0].status, seen[0].proxy_error.as_str()),
        (400, "bad request")
    );
    let by_svc = drain(&mut stream, Duration::from_millis(500)).await;
    assert!(by_svc.iter().any(|e| e.path == "/short"), "{by_svc:?}");
    assert!(by_svc.iter().all(|e| e.path != "/twice"), "{by_svc:?}");

    // The same port still serves the plaintext admin endpoints.
    let (status, text) = admin_get(api.proxy.admin, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    assert!(text.contains("mesh_requests_total"));
}

/// In Kubernetes, `mesh tap` finds the pods through the API server (here a
/// fake one) and dials each pod's IP on the admin port.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mesh_tap_finds_pods_through_the_api_server() {
    let (mesh, api, web) = api_and_web().await;
    let kube = mesh_kube_fake::KubeApi::start(&["/api/v1/pods"]).await;
    let pod = |name: &str, ip: &str| {
        serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "demo"},
            "spec": {"containers": [{"name": "app"}, {"name": "mesh-proxy"}]},
            "status": {"phase": "Running", "podIP": ip}})
    };
    // api-1 at the proxy's address; web-1 elsewhere (not tapped).
    kube.apply(
        "/api/v1/pods",
        pod("api-1", &api.proxy.admin.ip().to_string()),
    );
    kube.apply("/api/v1/pods", pod("web-1", "127.0.0.9"));
    let dir = tempfile::tempdir().unwrap();
    let kubeconfig = dir.path().join("kubeconfig");
    kube.write_kubeconfig(&kubeconfig).unwrap();
    let (chain, key) = client_cert(&mesh.identity_dir, TAP_ID);
    std::fs::write(dir.path().join("tap.crt"), chain).unwrap();
    std::fs::write(dir.path().join("tap.key"), key).unwrap();
    let traffic = tokio::spawn({
        let outbound = web.outbound;
        async move {
            for _ in 0..200 {
                blast(outbound, &format!("{API}/k8s"), 5, 1, &[]).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    let out = tokio::task::spawn_blocking({
        let (dir, kubeconfig) = (dir.path().to_path_buf(), kubeconfig.clone());
        let port = api.proxy.admin.port().to_string();
        let anchors = mesh.anchors_path();
        move || {
            std::process::Command::new(mesh_integration::process::bin("mesh"))
                .args(["tap", "pod/api-1", "-n", "demo", "--max", "3", "-o", "json"])
                .args(["--admin-port", &port])
                .arg("--tap-cert")
                .arg(dir.join("tap.crt"))
                .arg("--tap-key")
                .arg(dir.join("tap.key"))
                .arg("--trust-anchors")
                .arg(anchors)
                .env("KUBECONFIG", &kubeconfig)
                .env_remove("KUBERNETES_SERVICE_HOST")
                .env_remove("MESH_TARGETS")
                .output()
                .unwrap()
        }
    })
    .await
    .unwrap();
    traffic.abort();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(events.len(), 3, "{stdout}");
    for e in &events {
        assert_eq!(e["proxy"], "api-1", "{e}");
        assert_eq!(e["path"], "/k8s", "{e}");
        assert_eq!(e["direction"], "inbound", "{e}");
    }
}
