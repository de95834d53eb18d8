//! Incremental adoption (issue 13): while a namespace is half meshed, a meshed
//! client calling a workload without a proxy keeps its protocol — gRPC stays
//! HTTP/2 — whether discovery knows the workload (unmeshed endpoint) or not.

use mesh_integration::{apps, client, fixture::service, Mesh};
use mesh_proto::identity::{identity_client::IdentityClient, CertifyRequest};

async fn grpc_via(proxy: std::net::SocketAddr, origin: &str) -> Result<String, tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{proxy}"))
        .unwrap()
        .origin(origin.parse().unwrap())
        .connect()
        .await
        .expect("channel to the proxy");
    IdentityClient::new(channel)
        .certify(CertifyRequest::default())
        .await
        .map(|r| String::from_utf8_lossy(&r.into_inner().leaf_certificate).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_to_a_workload_without_a_proxy_stays_http2() {
    let mesh = Mesh::start("1h").await;
    // A gRPC server with no proxy, behind a Service.
    let legacy = apps::grpc("legacy").await;
    let echo = apps::echo("legacy-http").await;
    mesh.write(
        "legacy.yaml",
        &format!(
            "{}---\napiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: legacy-1, namespace: demo, labels: {{app: legacy}}}}\nspec: {{address: 127.0.0.1, meshed: false, ports: {{grpc: {}, http: {}}}}}\n",
            service(
                "legacy",
                "demo",
                &[("grpc", 8080, "grpc", "grpc"), ("http", 80, "http", "")]
            ),
            legacy.addr.port(),
            echo.addr.port(),
        ),
    );
    mesh.wait_for_endpoints("legacy.demo.svc.cluster.local:8080", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;

    // Known to discovery, unmeshed endpoint.
    let name = grpc_via(web.outbound, "http://legacy.demo.svc.cluster.local:8080")
        .await
        .expect("gRPC to an unmeshed endpoint");
    assert_eq!(name, "legacy");
    // Unknown to discovery altogether.
    let name = grpc_via(web.outbound, &format!("http://{}", legacy.addr))
        .await
        .expect("gRPC to an address outside the mesh");
    assert_eq!(name, "legacy");
    // HTTP/1.1 keeps being HTTP/1.1.
    let r = client::get(
        &client::http1(web.outbound),
        "http://legacy.demo.svc.cluster.local/",
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-version"), "HTTP/1.1");
    // And HTTP/2 from the app stays HTTP/2 to the unmeshed server.
    let r = client::get(
        &client::http2(web.outbound),
        "http://legacy.demo.svc.cluster.local/",
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0");
    assert!(legacy.calls.load(std::sync::atomic::Ordering::Relaxed) >= 2);
}
