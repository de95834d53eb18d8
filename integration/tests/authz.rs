//! Identity-based authorization (issue 7): "payments may call ledger;
//! nothing else may", enforced by ledger's inbound proxy from an
//! AuthorizationPolicy in the controller's manifest directory.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh_integration::{
    apps, client,
    fixture::{service, spiffe, workload, Proxy},
    tls::{client_cert, client_config},
    Mesh,
};
use serde_json::Value;
use std::{
    path::Path,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

const LEDGER: &str = "http://ledger.shop.svc.cluster.local";

/// Ledger (HTTP echo on `http`, gRPC on `grpc`) and its proxy.
struct Ledger {
    echo: apps::EchoApp,
    grpc: apps::GrpcApp,
    proxy: Proxy,
}

async fn ledger(mesh: &Mesh) -> Ledger {
    let echo = apps::echo("ledger-1").await;
    let grpc = apps::grpc("ledger-grpc").await;
    let proxy = mesh.proxy("shop", "ledger", "ledger-1").await;
    mesh.write(
        "ledger.yaml",
        &format!(
            "{}---\n{}",
            service(
                "ledger",
                "shop",
                &[("http", 80, "http", "http"), ("grpc", 8080, "grpc", "grpc")]
            ),
            workload(
                "ledger-1",
                "shop",
                "ledger",
                "ledger",
                &[("http", echo.addr.port()), ("grpc", grpc.addr.port())],
                proxy.inbound,
            )
        ),
    );
    mesh.wait_for_endpoints("ledger.shop.svc.cluster.local:80", 1)
        .await;
    Ledger { echo, grpc, proxy }
}

/// An allow policy on Service ledger with the given `rules` YAML.
fn allow_policy(name: &str, rules: &str) -> String {
    format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: {name}\n  namespace: shop\nspec:\n  targetRef: {{kind: Service, name: ledger}}\n  action: allow\n  rules:\n{rules}"
    )
}

fn only_payments() -> String {
    allow_policy(
        "ledger-callers",
        "  - from:\n    - identities: [\"spiffe://cluster.local/ns/shop/sa/payments\"]\n",
    )
}

async fn status(proxy: &Proxy, method: &str, path: &str) -> (u16, String) {
    let req = Request::builder()
        .method(method)
        .uri(format!("{LEDGER}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(&client::http1(proxy.outbound), req)
        .await
        .expect("response");
    (
        r.status.as_u16(),
        r.header("x-mesh-proxy-error").to_string(),
    )
}

/// Waits (at most `within`) until `proxy`'s `GET path` answers `want`;
/// returns how long that took.
async fn until_status(proxy: &Proxy, path: &str, want: u16, within: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let (got, _) = status(proxy, "GET", path).await;
        if got == want {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < within,
            "still {got}, not {want}, after {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A Certify call (the gRPC test API) through `proxy`.
async fn grpc_call(proxy: &Proxy) -> Result<(), tonic::Status> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", proxy.outbound))
        .unwrap()
        .origin(format!("{LEDGER}:8080").parse().unwrap())
        .connect()
        .await
        .expect("grpc channel");
    mesh_proto::identity::identity_client::IdentityClient::new(channel)
        .certify(mesh_proto::identity::CertifyRequest::default())
        .await
        .map(|_| ())
}

/// Mutual TLS to `inbound` as `identity` (certificate from the CA in
/// `ca_dir`) with a transport header asking for an opaque session to `port`.
async fn opaque_tls(
    inbound: std::net::SocketAddr,
    ca_dir: &Path,
    identity: &str,
    port: u16,
) -> std::io::Result<tokio_rustls::client::TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(inbound).await?;
    let connector =
        tokio_rustls::TlsConnector::from(client_config(Some(client_cert(ca_dir, identity))));
    let name = rustls::pki_types::ServerName::try_from("proxy.mesh.local").unwrap();
    let mut tls = connector.connect(name, tcp).await?;
    let mut header = b"mesh\x01\x02".to_vec();
    header.extend_from_slice(&port.to_be_bytes());
    header.extend_from_slice(&0u16.to_be_bytes());
    tls.write_all(&header).await?;
    Ok(tls)
}

/// An opaque session (see [`opaque_tls`]) that writes an HTTP/1.1 request
/// as raw bytes; returns what came back before the connection closed (or
/// the handshake error).
async fn opaque_session(
    inbound: std::net::SocketAddr,
    ca_dir: &Path,
    identity: &str,
    port: u16,
) -> String {
    let mut tls = match opaque_tls(inbound, ca_dir, identity, port).await {
        Ok(tls) => tls,
        Err(e) => return format!("handshake failed: {e}"),
    };
    let _ = tls
        .write_all(b"GET /opaque HTTP/1.1\r\nHost: ledger\r\nConnection: close\r\n\r\n")
        .await;
    let _ = tls.flush().await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

fn log_lines(proxy: &Proxy) -> Vec<Value> {
    proxy
        .proc
        .log_text()
        .lines()
        .filter(|l| l.starts_with("{\"timestamp\""))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payments_may_call_ledger_nothing_else_may() {
    std::env::set_var("MESH_PROXY_ACCESS_LOG", "json");
    let mesh = Mesh::start("1h").await;
    let ledger = ledger(&mesh).await;
    let payments = mesh.proxy("shop", "payments", "payments-1").await;
    let orders = mesh.proxy("shop", "orders", "orders-1").await;
    // Control: without a policy (default allow-all) orders gets through.
    assert_eq!(status(&orders, "GET", "/").await.0, 200);

    mesh.write("policy.yaml", &only_payments());
    until_status(&orders, "/", 403, Duration::from_secs(5)).await;

    let r = client::get(&client::http1(payments.outbound), &format!("{LEDGER}/pay"))
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("x-seen-client-id"), spiffe("shop", "payments"));

    let hits = ledger.echo.hits.load(Ordering::SeqCst);
    assert_eq!(
        status(&orders, "GET", "/steal").await,
        (403, "unauthorized".to_string())
    );
    assert_eq!(
        ledger.echo.hits.load(Ordering::SeqCst),
        hits,
        "a denied request reached the app"
    );

    // gRPC: PERMISSION_DENIED for orders, OK for payments.
    let denied = grpc_call(&orders).await.expect_err("orders' call denied");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
    grpc_call(&payments).await.expect("payments' call allowed");
    assert_eq!(ledger.grpc.calls.load(Ordering::SeqCst), 1);

    // Opaque TCP: orders' session is closed after the handshake, payments'
    // carries bytes to the app.
    let port = ledger.echo.addr.port();
    let out = opaque_session(
        ledger.proxy.inbound,
        &mesh.identity_dir,
        &spiffe("shop", "orders"),
        port,
    )
    .await;
    assert!(out.is_empty(), "orders' opaque session got: {out}");
    let out = opaque_session(
        ledger.proxy.inbound,
        &mesh.identity_dir,
        &spiffe("shop", "payments"),
        port,
    )
    .await;
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "payments' opaque session got: {out}"
    );

    // Decisions in metrics, by policy.
    let deny = ledger
        .proxy
        .metric_sum(
            "mesh_authz_total",
            &["decision=\"deny\"", "policy=\"ledger-callers\""],
        )
        .await;
    let allow = ledger
        .proxy
        .metric_sum(
            "mesh_authz_total",
            &["decision=\"allow\"", "policy=\"ledger-callers\""],
        )
        .await;
    assert!(deny >= 4.0 && allow >= 3.0, "deny {deny}, allow {allow}");
    assert!(
        ledger
            .proxy
            .metric_sum("mesh_proxy_errors_total", &["reason=\"unauthorized\""])
            .await
            >= 1.0
    );

    // …and in the access log and the proxy's log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !ledger.proxy.proc.log_text().contains("\"path\":\"/steal\"") && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let lines = log_lines(&ledger.proxy);
    let denied = lines
        .iter()
        .find(|l| l["path"] == "/steal")
        .unwrap_or_else(|| panic!("no line for the denied request: {lines:?}"));
    assert_eq!(denied["status"], 403);
    assert_eq!(denied["flags"], "DENY");
    assert_eq!(denied["policy"], "ledger-callers");
    assert_eq!(denied["client_id"], spiffe("shop", "orders"));
    let allowed = lines
        .iter()
        .find(|l| l["path"] == "/pay")
        .expect("/pay line");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["policy"], "ledger-callers");
    let log = ledger
        .proxy
        .proc
        .wait_log(
            &["denied by ledger-callers", "ns/shop/sa/orders"],
            Duration::from_secs(5),
        )
        .await;
    assert!(
        log.contains("denied by ledger-callers") && log.contains("ns/shop/sa/orders"),
        "no log of the opaque denial:\n{log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_may_read_the_balance_but_not_transfer() {
    let mesh = Mesh::start("1h").await;
    let _ledger = ledger(&mesh).await;
    let payments = mesh.proxy("shop", "payments", "payments-1").await;
    let orders = mesh.proxy("shop", "orders", "orders-1").await;
    mesh.write(
        "policy.yaml",
        &allow_policy(
            "ledger-access",
            "  - from:\n    - serviceAccounts: [payments]\n  - from:\n    - identities: [\"spiffe://cluster.local/ns/shop/sa/orders\"]\n    to:\n    - methods: [GET]\n      paths: [{exact: /balance}]\n",
        ),
    );
    until_status(&orders, "/other", 403, Duration::from_secs(5)).await;
    assert_eq!(status(&orders, "GET", "/balance").await.0, 200);
    assert_eq!(
        status(&orders, "POST", "/transfer").await,
        (403, "unauthorized".into())
    );
    assert_eq!(status(&orders, "POST", "/balance").await.0, 403);
    assert_eq!(status(&orders, "GET", "/balance/history").await.0, 403);
    assert_eq!(status(&payments, "POST", "/transfer").await.0, 200);
    // Paths are matched (and forwarded) normalized: dot segments, doubled
    // slashes and encoded letters do not get around a rule.
    assert_eq!(status(&orders, "GET", "/x/../balance").await.0, 200);
    for sneaky in [
        "/balance/../transfer",
        "//transfer",
        "/%74ransfer",
        "/./transfer",
    ] {
        assert_eq!(status(&orders, "POST", sneaky).await.0, 403, "{sneaky}");
    }
    mesh.write(
        "deny.yaml",
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: no-admin, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: ledger}\n  action: deny\n  rules:\n  - to: [{paths: [{prefix: /admin}]}]\n",
    );
    until_status(&payments, "/admin", 403, Duration::from_secs(5)).await;
    for sneaky in [
        "/public/../admin",
        "//admin/x",
        "/%61dmin",
        "/public/%2e%2e/admin",
    ] {
        assert_eq!(status(&payments, "GET", sneaky).await.0, 403, "{sneaky}");
    }
    assert_eq!(
        status(&payments, "GET", "/admin%2Fx").await,
        (400, "bad path".into())
    );
    assert_eq!(status(&payments, "GET", "/public/x").await.0, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_change_applies_within_two_seconds_without_dropping_connections() {
    let mesh = Mesh::start("1h").await;
    let ledger = ledger(&mesh).await;
    let payments = mesh.proxy("shop", "payments", "payments-1").await;
    let orders = mesh.proxy("shop", "orders", "orders-1").await;
    let both = allow_policy(
        "ledger-callers",
        "  - from:\n    - serviceAccounts: [payments, orders]\n",
    );
    mesh.write("policy.yaml", &both);
    // In force once a third caller is refused.
    let third = mesh.proxy("shop", "audit", "audit-1").await;
    until_status(&third, "/", 403, Duration::from_secs(5)).await;
    assert_eq!(status(&orders, "GET", "/").await.0, 200);

    // Payments keeps one HTTP/2 connection busy through the change.
    let h2 = client::http2(payments.outbound);
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut ok, mut failed) = (0u32, Vec::new());
            let deadline = Instant::now() + Duration::from_secs(20);
            while !stop.load(Ordering::SeqCst) && Instant::now() < deadline {
                match client::get(&h2, &format!("{LEDGER}/long")).await {
                    Ok(r) if r.status == 200 => ok += 1,
                    Ok(r) => failed.push(format!("{}", r.status)),
                    Err(e) => failed.push(e.to_string()),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ok, failed)
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let opened = ledger
        .proxy
        .metric_sum("mesh_tcp_open_total", &["direction=\"inbound\""])
        .await;

    mesh.write("policy.yaml", &only_payments());
    let took = until_status(&orders, "/", 403, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::SeqCst);
    let (ok, failed) = load.await.unwrap();
    assert!(failed.is_empty(), "payments' requests failed: {failed:?}");
    assert!(ok > 10, "only {ok} requests on the long connection");
    // Payments' proxy-to-proxy connection was kept: no new connection for it
    // (orders' requests reuse its own earlier one).
    let reopened = ledger
        .proxy
        .metric_sum("mesh_tcp_open_total", &["direction=\"inbound\""])
        .await;
    assert_eq!(
        reopened, opened,
        "connections were re-opened after the change"
    );
    println!("policy change applied in {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_trust_domain_is_refused_in_strict_and_permissive_modes() {
    let mesh = Mesh::start("1h").await;
    let ledger = ledger(&mesh).await;
    let port = ledger.echo.addr.port();
    let foreign = tempfile::tempdir().unwrap();
    mesh_identity::files::init_dir(foreign.path(), "other.example", false).unwrap();
    let foreign_id = "spiffe://other.example/ns/shop/sa/payments";
    for mode in ["strict", "permissive"] {
        mesh.write(
            "mtls.yaml",
            &format!(
                "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata:\n  name: ledger-mtls\n  namespace: shop\nspec:\n  selector: {{matchLabels: {{app: ledger}}}}\n  mtls: {mode}\n"
            ),
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Control: a certificate of this mesh gets through.
        let out = opaque_session(
            ledger.proxy.inbound,
            &mesh.identity_dir,
            &spiffe("shop", "payments"),
            port,
        )
        .await;
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "{mode}: mesh client refused: {out}"
        );
        let out = opaque_session(ledger.proxy.inbound, foreign.path(), foreign_id, port).await;
        assert!(
            !out.contains("200"),
            "{mode}: a client of another trust domain got through: {out}"
        );
        // The same identity signed by this mesh's own CA: the handshake
        // succeeds, the trust domain still does not match.
        let out = opaque_session(ledger.proxy.inbound, &mesh.identity_dir, foreign_id, port).await;
        assert!(
            out.is_empty(),
            "{mode}: another trust domain signed by our CA got through: {out}"
        );
    }
    assert_eq!(ledger.echo.hits.load(Ordering::SeqCst), 2);
    let needle =
        "client spiffe://other.example/ns/shop/sa/payments is not in this mesh's trust domain";
    let log = ledger
        .proxy
        .proc
        .wait_log(&[needle], Duration::from_secs(5))
        .await;
    assert!(log.contains(needle), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_opaque_session_is_closed_when_a_policy_denies_it() {
    let mesh = Mesh::start("1h").await;
    let ledger = ledger(&mesh).await;
    let port = ledger.echo.addr.port();
    let both = allow_policy(
        "ledger-callers",
        "  - from:\n    - serviceAccounts: [payments, orders]\n",
    );
    mesh.write("policy.yaml", &both);
    let third = mesh.proxy("shop", "audit", "audit-1").await;
    until_status(&third, "/", 403, Duration::from_secs(5)).await;

    // Orders keeps an opaque session (HTTP/1.1 keep-alive as raw bytes).
    let orders = spiffe("shop", "orders");
    let mut tls = opaque_tls(ledger.proxy.inbound, &mesh.identity_dir, &orders, port)
        .await
        .expect("handshake");
    let mut buf = vec![0u8; 4096];
    for _ in 0..2 {
        tls.write_all(b"GET /k HTTP/1.1\r\nHost: ledger\r\n\r\n")
            .await
            .unwrap();
        let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf))
            .await
            .expect("answer in time")
            .unwrap();
        assert!(
            buf[..n].starts_with(b"HTTP/1.1 200"),
            "{:?}",
            String::from_utf8_lossy(&buf[..n])
        );
    }

    mesh.write("policy.yaml", &only_payments());
    let changed = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf))
        .await
        .expect("the denied session was not closed within 2 s")
        .unwrap_or(0);
    assert_eq!(n, 0, "the session still carried bytes after the change");
    println!("session closed {:?} after the change", changed.elapsed());
    assert!(
        ledger
            .proxy
            .metric_sum(
                "mesh_authz_total",
                &["decision=\"deny\"", "policy=\"ledger-callers\""]
            )
            .await
            >= 1.0
    );
}
