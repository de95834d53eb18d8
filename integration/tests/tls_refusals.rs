//! The inbound listener accepts only mutual TLS from the mesh's own CA, and
//! the outbound side accepts only the identity discovery announced.

use mesh_integration::{
    apps, client,
    fixture::{spiffe, workload},
    tls::{client_cert, exchange, tls_request, transport_header},
    Mesh,
};
use std::{sync::atomic::Ordering, time::Duration};
use tokio::net::TcpStream;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inbound_refuses_plaintext_anonymous_and_foreign_clients() {
    let mesh = Mesh::start("1h").await;
    let echo = apps::echo("api-1").await;
    let api = mesh.proxy("demo", "api", "api-1").await;
    let port = echo.addr.port();

    // Control: a client certificate from the mesh CA gets through, so the
    // refusals below are about the certificates, not the test client.
    let good = client_cert(&mesh.identity_dir, &spiffe("demo", "web"));
    let out = tls_request(api.inbound, Some(good), port).await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "mesh client refused: {out}"
    );
    assert!(
        out.to_lowercase()
            .contains("x-seen-client-id: spiffe://cluster.local/ns/demo/sa/web"),
        "{out}"
    );
    assert_eq!(echo.hits.load(Ordering::SeqCst), 1);

    // Plaintext.
    let tcp = TcpStream::connect(api.inbound).await.expect("connect");
    let mut bytes = transport_header(0, port, "");
    bytes.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    let out = exchange(tcp, &bytes).await;
    assert!(!out.contains("HTTP/1.1 200"), "plaintext accepted: {out}");

    // TLS without a client certificate.
    let out = tls_request(api.inbound, None, port).await;
    assert!(
        !out.contains("HTTP/1.1 200"),
        "anonymous TLS accepted: {out}"
    );

    // TLS with a certificate from another CA (same SPIFFE ID).
    let other = tempfile::tempdir().unwrap();
    mesh_identity::files::init_dir(other.path(), "cluster.local", false).unwrap();
    let foreign = client_cert(other.path(), &spiffe("demo", "web"));
    let out = tls_request(api.inbound, Some(foreign), port).await;
    assert!(!out.contains("HTTP/1.1 200"), "foreign CA accepted: {out}");

    assert_eq!(
        echo.hits.load(Ordering::SeqCst),
        1,
        "a refused client reached the app"
    );
    let m = api.metrics().await;
    assert!(
        m.contains("mesh_proxy_errors_total{direction=\"inbound\",reason=\"tls handshake\"} 3"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_refuses_a_peer_with_another_identity() {
    let mesh = Mesh::start("1h").await;
    let echo = apps::echo("api-1").await;
    // The proxy really is `api`, but discovery says the endpoint is `payments`.
    let api = mesh.proxy("demo", "api", "api-1").await;
    mesh.serve_api("payments", echo.addr.port(), &api).await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let h1 = client::http1(web.outbound);
    let r = client::get(&h1, "http://api.demo.svc.cluster.local/")
        .await
        .expect("response");
    assert_eq!(r.status, 502, "{r:?}");
    assert_eq!(r.header("x-mesh-proxy-error"), "tls failed");
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        body.contains("spiffe://cluster.local/ns/demo/sa/api")
            && body.contains("spiffe://cluster.local/ns/demo/sa/payments"),
        "{body}"
    );
    assert_eq!(echo.hits.load(Ordering::SeqCst), 0);

    // Control: once discovery announces the right identity, it works.
    mesh.write(
        "api-1.yaml",
        &workload(
            "api-1",
            "demo",
            "api",
            "api",
            &[("http", echo.addr.port())],
            api.inbound,
        ),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = client::get(&h1, "http://api.demo.svc.cluster.local/")
            .await
            .expect("response");
        if r.status == 200 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
