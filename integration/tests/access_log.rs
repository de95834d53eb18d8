//! The JSON access log (`MESH_PROXY_ACCESS_LOG=json`): one parseable line per request
//! on both proxies, with route, status, attempts, upstream, identities and response
//! flags (`URX` when retries ran out, `NR` when there is no endpoint).

use mesh_integration::{
    apps::Behaviour,
    client::{self, blast},
    fixture::{retry_route, service, spiffe},
    Mesh,
};
use serde_json::Value;
use std::time::{Duration, Instant};

const URL: &str = "http://api.demo.svc.cluster.local/";

fn lines(log: &str) -> Vec<Value> {
    log.lines()
        .filter(|l| l.starts_with("{\"timestamp\""))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_request_gets_one_json_line_with_flags() {
    // Inherited by every proxy this test starts (one test per process).
    std::env::set_var("MESH_PROXY_ACCESS_LOG", "json");
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write("route.yaml", &retry_route(3));
    let api = mesh.replica("api", "api-1", Behaviour::failing(100)).await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;

    // Until the route is in force every try fails once; then three tries each.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        blast(web.outbound, URL, 5, 1, &[]).await;
        let retried = lines(&web.proc.log_text())
            .iter()
            .any(|l| l["attempts"] == 3);
        if retried {
            break;
        }
        assert!(Instant::now() < deadline, "the retry route never applied");
    }
    let r = client::get(
        &client::http1(web.outbound),
        "http://nope.demo.svc.cluster.local/",
    )
    .await
    .expect("response");
    assert!(r.status.is_server_error());
    tokio::time::sleep(Duration::from_millis(200)).await;

    let out = lines(&web.proc.log_text());
    let sent = out
        .iter()
        .filter(|l| l["authority"] == "api.demo.svc.cluster.local")
        .count();
    assert!(sent >= 5, "{out:?}");
    let exhausted = out
        .iter()
        .find(|l| l["attempts"] == 3)
        .expect("a request that used its retries");
    assert_eq!(exhausted["direction"], "outbound");
    assert_eq!(exhausted["route"], "httproute/demo/api-retry/0");
    assert_eq!(exhausted["status"], 503);
    assert_eq!(exhausted["flags"], "URX");
    assert_eq!(exhausted["client_id"], spiffe("demo", "web"));
    assert_eq!(exhausted["server_id"], spiffe("demo", "api"));
    assert_eq!(exhausted["method"], "GET");
    assert_eq!(exhausted["path"], "/");
    let upstream = exhausted["upstream"].as_str().unwrap();
    assert!(upstream.starts_with("127.0.0.1:"), "{exhausted}");
    assert!(exhausted["duration_ms"].as_f64().unwrap() > 0.0);
    let unknown = out
        .iter()
        .find(|l| l["authority"] == "nope.demo.svc.cluster.local")
        .expect("the unknown target's line");
    assert!(
        ["NR", "UF"].contains(&unknown["flags"].as_str().unwrap()),
        "{unknown}"
    );

    // The server side logs each try it received, with the caller's identity.
    let inbound = lines(&api.proxy.proc.log_text());
    let tries = inbound
        .iter()
        .filter(|l| l["direction"] == "inbound")
        .count();
    assert!(tries >= 5, "{tries} inbound lines");
    let first = &inbound[0];
    assert_eq!(first["client_id"], spiffe("demo", "web"));
    assert_eq!(first["server_id"], spiffe("demo", "api"));
    assert_eq!(first["status"], 503);
    assert_eq!(first["flags"], "-");
}
