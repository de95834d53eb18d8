//! Routes from the controller steer traffic: weighted splits (changed live),
//! header matches, request timeouts, and gRPC retries and deadlines.

use mesh_integration::{
    apps::{self, Behaviour},
    client::{self, blast},
    fixture::{service, Replica},
    Mesh,
};
use std::time::{Duration, Instant};

const URL: &str = "http://api.demo.svc.cluster.local/";

fn split_route(v1: u32, v2: u32) -> String {
    format!(
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: api-split
  namespace: demo
spec:
  parentRefs:
  - kind: Service
    name: api
    port: 80
  rules:
  - matches:
    - headers:
      - name: x-canary
        value: "true"
    backendRefs:
    - name: api-v2
      port: 80
  - backendRefs:
    - name: api
      port: 80
      weight: {v1}
    - name: api-v2
      port: 80
      weight: {v2}
"#
    )
}

async fn two_versions(mesh: &Mesh) -> (Replica, Replica) {
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write(
        "svc-v2.yaml",
        &service("api-v2", "demo", &[("http", 80, "http", "")]),
    );
    let v1 = mesh.replica("api", "api-v1", Behaviour::default()).await;
    let v2 = mesh.replica("api-v2", "api-v2", Behaviour::default()).await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    mesh.wait_for_endpoints("api-v2.demo.svc.cluster.local:80", 1)
        .await;
    (v1, v2)
}

fn share(t: &client::Tally, app: &str) -> f64 {
    100.0 * t.from(app) as f64 / t.total().max(1) as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_split_follows_the_weights_and_changes_live() {
    let mesh = Mesh::start("1h").await;
    let (_v1, _v2) = two_versions(&mesh).await;
    mesh.write("route.yaml", &split_route(90, 10));
    let web = mesh.proxy("demo", "web", "web-1").await;
    // The policy arrives with the proxy's first request to the target.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = blast(web.outbound, URL, 200, 4, &[]).await;
        if t.from("api-v2") > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "split never applied: {t:?}");
    }

    let t = blast(web.outbound, URL, 5000, 8, &[]).await;
    assert_eq!(t.status(200), 5000, "{t:?}");
    let v2 = share(&t, "api-v2");
    println!("90/10 split: api-v2 got {v2:.2} % of 5000");
    assert!((8.0..=12.0).contains(&v2), "api-v2 got {v2:.2} %");

    // 50/50 while traffic flows: no failures, effective within 2 s.
    let during = tokio::spawn(blast(web.outbound, URL, 1500, 4, &[]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    mesh.write("route.yaml", &split_route(50, 50));
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = blast(web.outbound, URL, 2000, 8, &[]).await;
    let during = during.await.unwrap();
    assert_eq!(
        during.status(200),
        during.total(),
        "failures during the change: {during:?}"
    );
    assert_eq!(after.status(200), 2000, "{after:?}");
    let v2 = share(&after, "api-v2");
    println!("after the change to 50/50: api-v2 got {v2:.2} %");
    assert!((45.0..=55.0).contains(&v2), "api-v2 got {v2:.2} %");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn header_match_always_reaches_the_canary() {
    let mesh = Mesh::start("1h").await;
    let (_v1, _v2) = two_versions(&mesh).await;
    mesh.write("route.yaml", &split_route(100, 0));
    let web = mesh.proxy("demo", "web", "web-1").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let t = blast(web.outbound, URL, 20, 1, &[("x-canary", "true")]).await;
        if t.from("api-v2") == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "route never applied: {t:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let canary = blast(web.outbound, URL, 500, 4, &[("x-canary", "true")]).await;
    assert_eq!(canary.from("api-v2"), 500, "{canary:?}");
    let other = blast(web.outbound, URL, 500, 4, &[("x-canary", "false")]).await;
    assert_eq!(other.from("api-v1"), 500, "{other:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_timeout_answers_504_in_time() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let _slow = mesh.replica("api", "api-1", Behaviour::delayed(300)).await;
    mesh.write(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-timeout, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: api, port: 80}]
  rules:
  - backendRefs: [{name: api, port: 80}]
    timeouts: {request: 100ms}
"#,
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let c = client::http1(web.outbound);
    // Warm up discovery and policy so the timing below is the route's.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let r = client::get(&c, URL).await.expect("response");
        if r.status == 504 {
            break;
        }
        assert!(Instant::now() < deadline, "timeout never applied: {r:?}");
    }
    for _ in 0..5 {
        let start = Instant::now();
        let r = client::get(&c, URL).await.expect("response");
        let took = start.elapsed();
        assert_eq!(r.status, 504, "{r:?}");
        assert_eq!(r.header("x-mesh-proxy-error"), "request timeout");
        assert!(
            took >= Duration::from_millis(100) && took < Duration::from_millis(200),
            "answered after {took:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_retries_unavailable_not_invalid_and_honours_grpc_timeout() {
    use mesh_proto::identity::{identity_client::IdentityClient, CertifyRequest};
    let mesh = Mesh::start("1h").await;
    let app = apps::grpc("grpc-1").await;
    let proxy = mesh.proxy("demo", "api", "grpc-1").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("grpc", 8080, "grpc", "grpc")]),
    );
    mesh.write(
        "grpc-1.yaml",
        &mesh_integration::fixture::workload(
            "grpc-1",
            "demo",
            "api",
            "api",
            &[("grpc", app.addr.port())],
            proxy.inbound,
        ),
    );
    mesh.write(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata:
  name: api-grpc
  namespace: demo
  annotations:
    retry.mesh.dev/grpc: unavailable
    retry.mesh.dev/limit: "2"
    timeout.mesh.dev/request: 1s
spec:
  parentRefs: [{kind: Service, name: api, port: 8080}]
  rules:
  - matches: [{method: {service: mesh.identity.v1.Identity}}]
    backendRefs: [{name: api, port: 8080}]
"#,
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:8080", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", web.outbound))
        .unwrap()
        .origin("http://api.demo.svc.cluster.local:8080".parse().unwrap())
        .connect()
        .await
        .unwrap();
    let mut client = IdentityClient::new(channel);
    let call = |identity: &str| CertifyRequest {
        identity: identity.into(),
        ..Default::default()
    };

    // Wait for the route (a retried call costs two app calls).
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let before = app.calls.load(std::sync::atomic::Ordering::Relaxed);
        let ok = client.certify(call("unavailable-odd")).await.is_ok();
        let used = app.calls.load(std::sync::atomic::Ordering::Relaxed) - before;
        if ok
            && used >= 1
            && web
                .metric_sum("mesh_retries_total", &["reason=\"grpc\""])
                .await
                > 0.0
        {
            break;
        }
        assert!(Instant::now() < deadline, "gRPC retries never applied");
    }

    // UNAVAILABLE on every other call: every client call succeeds.
    for _ in 0..50 {
        client
            .certify(call("unavailable-odd"))
            .await
            .expect("UNAVAILABLE is retried");
    }
    // INVALID_ARGUMENT is not retried: one app call per client call.
    let before = app.calls.load(std::sync::atomic::Ordering::Relaxed);
    for _ in 0..10 {
        let e = client.certify(call("invalid")).await.expect_err("invalid");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
    }
    assert_eq!(
        app.calls.load(std::sync::atomic::Ordering::Relaxed) - before,
        10
    );

    // grpc-timeout (100 ms) shorter than the route's 1 s wins. The call is
    // made by hand over h2c: tonic would enforce the deadline itself and race
    // the proxy, and the DEADLINE_EXCEEDED must come from the proxy.
    let msg = prost::Message::encode_to_vec(&call("slow"));
    let mut frame = vec![0u8];
    frame.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    frame.extend_from_slice(&msg);
    let req = http::Request::post(
        "http://api.demo.svc.cluster.local:8080/mesh.identity.v1.Identity/Certify",
    )
    .header("content-type", "application/grpc")
    .header("te", "trailers")
    .header("grpc-timeout", "100m")
    .body(http_body_util::Full::new(bytes::Bytes::from(frame)))
    .unwrap();
    let h2 = client::http2(web.outbound);
    let start = Instant::now();
    let r = client::send(&h2, req).await.expect("response");
    let took = start.elapsed();
    assert_eq!(r.header("grpc-status"), "4", "{r:?}");
    assert!(
        took >= Duration::from_millis(100) && took < Duration::from_millis(250),
        "took {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fault_injection_aborts_a_share_of_requests() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let api = mesh.replica("api", "api-1", Behaviour::default()).await;
    mesh.write(
        "route.yaml",
        r#"apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: api-chaos, namespace: demo}
spec:
  parentRefs: [{kind: Service, name: api, port: 80}]
  rules:
  - backendRefs: [{name: api, port: 80}]
    filters:
    - type: ExtensionRef
      extensionRef: {group: policy.mesh.dev, kind: HTTPFault, name: half}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: HTTPFault
metadata: {name: half, namespace: demo}
spec:
  abort: {httpStatus: 418, percent: 50}
"#,
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let deadline = Instant::now() + Duration::from_secs(5);
    while blast(web.outbound, URL, 20, 1, &[]).await.status(418) == 0 {
        assert!(Instant::now() < deadline, "fault never applied");
    }
    let before = api.app.count();
    let t = blast(web.outbound, URL, 2000, 4, &[]).await;
    let aborted = t.status(418);
    println!("fault: {aborted}/2000 aborted");
    assert!((900..=1100).contains(&aborted), "{t:?}");
    assert_eq!(t.status(200) + aborted, 2000, "{t:?}");
    assert_eq!(
        api.app.count() - before,
        t.status(200),
        "aborted requests reached the app"
    );
}
