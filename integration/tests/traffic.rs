//! App → proxy → mTLS → proxy → app, over HTTP/1.1, HTTP/2, gRPC and an
//! HTTP/1.1 upgrade, with the caller's identity delivered to the server app.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh_integration::{
    apps, client,
    fixture::{service, spiffe, workload},
    Mesh,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const API: &str = "http://api.demo.svc.cluster.local:80";

struct Setup {
    mesh: Mesh,
    api: mesh_integration::Proxy,
    web: mesh_integration::Proxy,
    echo: apps::EchoApp,
    grpc: apps::GrpcApp,
}

async fn setup() -> Setup {
    let mesh = Mesh::start("1h").await;
    let echo = apps::echo("api-1").await;
    let grpc = apps::grpc("api-grpc").await;
    let api_proxy = mesh.proxy("demo", "api", "api-1").await;
    mesh.write(
        "api.yaml",
        &service(
            "api",
            "demo",
            &[("http", 80, "http", "http"), ("grpc", 8080, "grpc", "grpc")],
        ),
    );
    mesh.write(
        "api-1.yaml",
        &workload(
            "api-1",
            "demo",
            "api",
            "api",
            &[("http", echo.addr.port()), ("grpc", grpc.addr.port())],
            api_proxy.inbound,
        ),
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    Setup {
        mesh,
        api: api_proxy,
        web,
        echo,
        grpc,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_http2_grpc_and_upgrade_travel_through_both_proxies() {
    let s = setup().await;
    let web_id = spiffe("demo", "web");

    // HTTP/1.1, with a forged identity header the proxy must replace.
    let h1 = client::http1(s.web.outbound);
    let req = Request::post(format!("{API}/hello"))
        .header(
            "x-mesh-client-id",
            "spiffe://cluster.local/ns/evil/sa/forged",
        )
        .body(Full::new(Bytes::from_static(b"ping-h1")))
        .unwrap();
    let r = client::send(&h1, req).await.expect("http/1.1 request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-app-name"), "api-1");
    assert_eq!(r.header("x-seen-client-id"), web_id);
    assert_eq!(
        r.header("x-seen-version"),
        "HTTP/1.1",
        "app sees HTTP/1.1 restored"
    );
    assert_eq!(&r.body[..], b"ping-h1");

    // HTTP/2 (h2c from the app).
    let h2 = client::http2(s.web.outbound);
    let req = Request::post(format!("{API}/h2"))
        .body(Full::new(Bytes::from_static(b"ping-h2")))
        .unwrap();
    let r = client::send(&h2, req).await.expect("h2 request");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-client-id"), web_id);
    assert_eq!(r.header("x-seen-version"), "HTTP/2.0");
    assert_eq!(&r.body[..], b"ping-h2");

    // Unary gRPC through tonic.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", s.web.outbound))
        .unwrap()
        .origin("http://api.demo.svc.cluster.local:8080".parse().unwrap())
        .connect()
        .await
        .expect("grpc channel");
    let mut grpc = mesh_proto::identity::identity_client::IdentityClient::new(channel);
    let rsp = grpc
        .certify(mesh_proto::identity::CertifyRequest::default())
        .await
        .expect("grpc call")
        .into_inner();
    assert_eq!(rsp.leaf_certificate, b"api-grpc");
    assert_eq!(
        rsp.intermediate_certificates,
        vec![web_id.clone().into_bytes()]
    );

    // HTTP/1.1 Upgrade: the server switches protocols, bytes flow both ways.
    let mut tcp = tokio::net::TcpStream::connect(s.web.outbound)
        .await
        .unwrap();
    tcp.write_all(
        b"GET http://api.demo.svc.cluster.local/ws HTTP/1.1\r\nHost: api.demo.svc.cluster.local\r\nConnection: upgrade\r\nUpgrade: echo\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut byte))
            .await
            .expect("upgrade response in time")
            .unwrap();
        assert_eq!(
            n,
            1,
            "connection closed during upgrade: {:?}",
            String::from_utf8_lossy(&head)
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_lowercase();
    assert!(head.starts_with("http/1.1 101"), "{head}");
    assert!(
        head.contains(&format!("x-seen-client-id: {web_id}")),
        "{head}"
    );
    for msg in [&b"first frame"[..], b"second"] {
        tcp.write_all(msg).await.unwrap();
        let mut got = vec![0u8; msg.len()];
        tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_exact(&mut got))
            .await
            .expect("echo in time")
            .unwrap();
        assert_eq!(got, msg);
    }

    // The traffic shows in both proxies' metrics.
    let m = s.web.metrics().await;
    assert!(
        m.contains("mesh_requests_total{direction=\"outbound\",dst_service=\"api.demo.svc.cluster.local:80\""),
        "{m}"
    );
    assert!(m.contains("status_code=\"200\""), "{m}");
    // Source labels are the proxy's own; destination labels come from discovery.
    assert!(
        m.contains("src_namespace=\"demo\",src_workload=\"web-1\",dst_identity=\"spiffe://cluster.local/ns/demo/sa/api\",dst_namespace=\"demo\",dst_workload=\"api-1\""),
        "{m}"
    );
    // Connections from the app are counted, with their bytes.
    let open = s
        .web
        .metric_sum("mesh_tcp_open_total", &["direction=\"outbound\""])
        .await;
    assert!(open >= 1.0, "{m}");
    let read = s
        .web
        .metric_sum("mesh_tcp_read_bytes_total", &["direction=\"outbound\""])
        .await;
    assert!(read > 0.0, "{m}");
    // The server side counts the peer's mTLS connections under the target's name.
    let api = s.api.metrics().await;
    assert!(
        api.contains("mesh_tcp_open_total{direction=\"inbound\",dst_service=\"api.demo.svc.cluster.local:80\",tls=\"true\"}"),
        "{api}"
    );
    assert!(
        api.contains("src_namespace=\"demo\",src_workload=\"\",dst_identity=\"spiffe://cluster.local/ns/demo/sa/api\",dst_namespace=\"demo\""),
        "{api}"
    );
    // The unary gRPC call is counted with its status (OK) on both sides, once its
    // trailers passed.
    for (side, text) in [("client", &m), ("server", &api)] {
        assert!(
            text.contains("dst_service=\"api.demo.svc.cluster.local:8080\"")
                && text.contains("grpc_status=\"0\",classification=\"success\"} 1"),
            "{side}: {text}"
        );
    }
    assert!(s.echo.hits.load(std::sync::atomic::Ordering::Relaxed) >= 3);
    let _ = (&s.mesh, &s.grpc);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_service_and_missing_host_get_clear_errors() {
    let s = setup().await;
    let h1 = client::http1(s.web.outbound);
    // A mesh name the controller does not know: forwarded unchanged, which
    // fails here (no such host) with a proxy error, not a hang.
    let r = client::get(&h1, "http://nope.demo.svc.cluster.local:80/")
        .await
        .expect("response");
    assert!(r.status.is_server_error(), "{r:?}");
    assert!(!r.header("x-mesh-proxy-error").is_empty(), "{r:?}");
    // A known Service with no endpoints: 503 no endpoints.
    s.mesh.write(
        "empty.yaml",
        &service("empty", "demo", &[("http", 80, "http", "")]),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        let r = client::get(&h1, "http://empty.demo.svc.cluster.local:80/")
            .await
            .expect("response");
        if r.status == 503 && r.header("x-mesh-proxy-error") == "no endpoints" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
