//! Attacks on the real binaries (issue 12): what a peer holding a valid mesh
//! certificate, an application, or any process that reaches a proxy's ports
//! may try, and what must come of it. Loopback only.

use mesh_integration::{
    apps, client,
    fixture::{admin_get, service, spiffe, workload},
    process::rss_mib,
    tls::{client_cert, tls_exchange, tls_request, transport_header},
    Mesh,
};
use std::{
    net::{IpAddr, Ipv4Addr},
    time::{Duration, Instant},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// An HTTP/1.1 request for `host` after a transport header naming `port`.
fn header_then_get(protocol: u8, port: u16, host: &str) -> Vec<u8> {
    let mut bytes = transport_header(protocol, port, "");
    bytes.extend_from_slice(
        format!("GET /metrics HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    );
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_reaches_only_the_apps_ports() {
    let mesh = Mesh::start("1h").await;
    // 127.0.0.2 stands for the pod IP: the app listens there, a private
    // socket on 127.0.0.1 only.
    let pod_ip: IpAddr = Ipv4Addr::new(127, 0, 0, 2).into();
    let app = apps::echo_on(pod_ip, "server", Default::default()).await;
    let private = apps::echo_on(Ipv4Addr::LOCALHOST.into(), "private", Default::default()).await;
    let server = mesh
        .proxy_env(
            "demo",
            "server",
            "server-1",
            &[("MESH_PROXY_APP_IP", "127.0.0.2")],
        )
        .await;
    let attacker = spiffe("demo", "attacker");
    let cert = || Some(client_cert(&mesh.identity_dir, &attacker));

    // Control: the app's port is served, so the refusals below are about ports.
    let out = tls_request(server.inbound, cert(), app.addr.port()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "app port refused: {out}");
    assert_eq!(app.count(), 1);

    // The proxy's own listeners, under every protocol a header can name.
    for port in [
        server.outbound.port(),
        server.admin.port(),
        server.inbound.port(),
    ] {
        for protocol in [0u8, 1, 2] {
            let bytes = header_then_get(protocol, port, "web.demo.svc.cluster.local");
            let out = tls_exchange(server.inbound, cert(), &bytes).await;
            assert!(out.is_empty(), "port {port}, protocol {protocol}: {out}");
        }
    }
    // A socket bound to localhost only is out of reach: the app IP is not loopback.
    let out = tls_request(server.inbound, cert(), private.addr.port()).await;
    assert!(
        out.starts_with("HTTP/1.1 502") && out.contains("x-mesh-proxy-error: app failed"),
        "{out}"
    );
    assert_eq!(private.count(), 0, "the localhost-only socket was reached");
    assert_eq!(app.count(), 1);
    let refused = server
        .metric_sum(
            "mesh_proxy_errors_total",
            &["direction=\"inbound\"", "reason=\"proxy port\""],
        )
        .await;
    assert_eq!(refused, 9.0, "each refusal counted");
    assert!(
        server
            .proc
            .wait_log(&[&attacker], Duration::from_secs(5))
            .await
            .contains(&attacker),
        "refusals are logged with the peer's identity"
    );

    // On a shared loopback (local mode) the declared ports are the only ones.
    let mine = apps::echo("mine").await;
    let neighbour = apps::echo("neighbour").await;
    let port = mine.addr.port().to_string();
    let local = mesh
        .proxy_env(
            "demo",
            "server",
            "server-2",
            &[("MESH_PROXY_INBOUND_PORTS", &port)],
        )
        .await;
    let out = tls_request(local.inbound, cert(), mine.addr.port()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    for port in [neighbour.addr.port(), local.outbound.port()] {
        let out = tls_request(local.inbound, cert(), port).await;
        assert!(out.is_empty(), "port {port}: {out}");
    }
    assert_eq!(neighbour.count(), 0);
    assert_eq!(
        local
            .metric_sum("mesh_proxy_errors_total", &["reason=\"undeclared port\""])
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_denied_caller_cannot_borrow_the_servers_identity() {
    let mesh = Mesh::start("1h").await;
    // ledger: only `server` may call it.
    let ledger_app = apps::echo("ledger-1").await;
    let ledger = mesh.proxy("shop", "ledger", "ledger-1").await;
    mesh.write(
        "ledger.yaml",
        &format!(
            "{}---\n{}---\n{}",
            service("ledger", "shop", &[("http", 80, "http", "http")]),
            workload(
                "ledger-1",
                "shop",
                "ledger",
                "ledger",
                &[("http", ledger_app.addr.port())],
                ledger.inbound,
            ),
            "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: ledger-callers, namespace: shop}\nspec:\n  targetRef: {kind: Service, name: ledger}\n  action: allow\n  rules:\n  - from: [{identities: [\"spiffe://cluster.local/ns/shop/sa/server\"]}]\n"
        ),
    );
    mesh.wait_for_endpoints("ledger.shop.svc.cluster.local:80", 1)
        .await;
    // `server`, whose app ports are not declared (the widest case).
    let server_app = apps::echo("server-1").await;
    let server = mesh.proxy("shop", "server", "server-1").await;

    // Control: the server's own calls reach ledger.
    let r = client::get(
        &client::http1(server.outbound),
        "http://ledger.shop.svc.cluster.local/",
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-seen-client-id"),
        "spiffe://cluster.local/ns/shop/sa/server"
    );
    assert_eq!(ledger_app.count(), 1);

    let attacker = spiffe("shop", "orders");
    let cert = || Some(client_cert(&mesh.identity_dir, &attacker));
    // Directly: denied.
    let out = tls_request(ledger.inbound, cert(), ledger_app.addr.port()).await;
    assert!(out.starts_with("HTTP/1.1 403"), "{out}");
    // Through any port of the server's pod but its app's: nothing.
    for port in [
        server.outbound.port(),
        server.admin.port(),
        server.inbound.port(),
    ] {
        for protocol in [0u8, 1, 2] {
            let bytes = header_then_get(protocol, port, "ledger.shop.svc.cluster.local");
            let out = tls_exchange(server.inbound, cert(), &bytes).await;
            assert!(out.is_empty(), "port {port}, protocol {protocol}: {out}");
        }
    }
    assert_eq!(ledger_app.count(), 1, "ledger served the attacker");
    assert_eq!(server_app.count(), 0);
}

/// Completes when the peer closed `tcp` (EOF or an error), reading and
/// discarding whatever it sent first.
async fn closed(mut tcp: TcpStream) {
    let mut buf = [0u8; 512];
    while let Ok(n) = tcp.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_clients_are_closed_and_starve_nothing() {
    // Two sides of each connection live on this machine: the test's and
    // the proxy's descriptors.
    let limit = mesh_proxy::serve::raise_fd_limit().unwrap_or(1024) as usize;
    let per_port = 3000.min(limit.saturating_sub(500) / 3);
    if per_port < 3000 {
        println!("NOTE: open-files limit {limit}: {per_port} idle connections per port, not 3000");
    }
    let header = Duration::from_secs(3);
    let mesh = Mesh::start("1h").await;
    let app = apps::echo("web-1").await;
    let proxy = mesh
        .proxy_env(
            "demo",
            "web",
            "web-1",
            &[("MESH_PROXY_HEADER_TIMEOUT_MS", "3000")],
        )
        .await;
    let pid = proxy.proc.pid();
    let before = rss_mib(pid);

    // Idle connections to the app-facing, admin and peer listeners.
    let opened = Instant::now();
    let mut waits = Vec::new();
    for addr in [proxy.outbound, proxy.admin, proxy.inbound] {
        for _ in 0..per_port {
            let tcp = TcpStream::connect(addr).await.expect("connect");
            waits.push(tokio::spawn(closed(tcp)));
        }
    }
    // Slow clients: a request head trickling in, a byte every 200 ms.
    for _ in 0..200 {
        let mut tcp = TcpStream::connect(proxy.outbound).await.expect("connect");
        waits.push(tokio::spawn(async move {
            let _ = tcp.write_all(b"GET / HTTP/1.1\r\nHost: web").await;
            for _ in 0..200 {
                if tcp.write_all(b"x").await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }));
    }
    // A peer that completes the handshake and header, then never sends the
    // HTTP/2 preface.
    let cert = client_cert(&mesh.identity_dir, &spiffe("demo", "peer"));
    let header_only = transport_header(1, app.addr.port(), "");
    let inbound = proxy.inbound;
    let silent_h2 = tokio::spawn(async move {
        let start = Instant::now();
        let _ = tls_exchange(inbound, Some(cert), &header_only).await;
        start.elapsed()
    });
    println!(
        "opened {} idle and 200 slow connections in {:?}",
        3 * per_port,
        opened.elapsed()
    );

    // The proxy stays ready, serves new peers and stays small while they are
    // open.
    let mut ready_checks = 0;
    while opened.elapsed() < header - Duration::from_millis(500) {
        let ready = admin_get(proxy.admin, "/ready").await;
        assert_eq!(
            ready.map(|r| r.0),
            Some(200),
            "/ready failed under the flood"
        );
        let cert = client_cert(&mesh.identity_dir, &spiffe("demo", "peer"));
        let out = tls_request(proxy.inbound, Some(cert), app.addr.port()).await;
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "a new peer was not served: {out}"
        );
        ready_checks += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let peak = rss_mib(pid);
    println!("proxy RSS {before:.1} MiB before, {peak:.1} MiB with the connections open ({ready_checks} /ready checks and mTLS requests, all 200)");
    assert!(peak < 64.0, "RSS {peak:.1} MiB");

    // All of them closed by the proxy within the header timeout.
    let all = async {
        for w in waits {
            let _ = w.await;
        }
    };
    tokio::time::timeout(header + Duration::from_secs(3), all)
        .await
        .expect("connections still open well after the header timeout");
    // (It gets the server's SETTINGS, then the close; the exchange gives up
    // by itself after 5 s.)
    let took = silent_h2.await.unwrap();
    assert!(
        took < header + Duration::from_millis(1500),
        "a session that never sent the HTTP/2 preface stayed open {took:?}"
    );
    println!(
        "every connection closed {:?} after opening",
        opened.elapsed()
    );
    // And the proxy still serves.
    let r = client::get(&client::http1(proxy.outbound), "http://127.0.0.1:9/")
        .await
        .expect("response");
    assert_eq!(r.status, 502, "{r:?}");
    let m = proxy.metrics().await;
    assert!(
        m.contains("mesh_listener_dropped_total{listener=\"admin\",reason=\"shed\"}"),
        "{m}"
    );
    println!("RSS after: {:.1} MiB", rss_mib(pid));
}

/// Sends raw bytes to `addr` and returns the answer (until close, ≤ 5 s).
async fn raw(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let tcp = TcpStream::connect(addr).await.expect("connect");
    mesh_integration::tls::exchange(tcp, bytes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_are_client_errors() {
    let mesh = Mesh::start("1h").await;
    let api = mesh
        .replica("api", "api-1", apps::Behaviour::default())
        .await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    const HOST: &str = "api.demo.svc.cluster.local";

    // Control: a well-formed chunked request goes through.
    let ok = format!(
        "POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n5\r\nhello\r\n0\r\n\r\n"
    );
    let out = raw(web.outbound, ok.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(out.ends_with("hello"), "{out}");

    let big = "a".repeat(100 * 1024);
    let cases: Vec<(&str, String, u16, &str)> = vec![
        (
            "malformed chunk size",
            format!("POST / HTTP/1.1\r\nHost: {HOST}\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n"),
            400,
            "bad request body",
        ),
        (
            "100 KB header",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {big}\r\nConnection: close\r\n\r\n"),
            431,
            "headers too large",
        ),
        (
            "CONNECT",
            format!("CONNECT {HOST}:443 HTTP/1.1\r\nHost: {HOST}:443\r\n\r\n"),
            405,
            "method not allowed",
        ),
        (
            "two Host headers",
            format!("GET / HTTP/1.1\r\nHost: {HOST}\r\nHost: 127.0.0.1:9\r\nConnection: close\r\n\r\n"),
            400,
            "bad request",
        ),
    ];
    for (what, request, status, reason) in &cases {
        let out = raw(web.outbound, request.as_bytes()).await;
        assert!(
            out.starts_with(&format!("HTTP/1.1 {status}")),
            "{what}: {}",
            &out[..out.len().min(300)]
        );
        assert!(
            out.to_lowercase()
                .contains(&format!("x-mesh-proxy-error: {reason}")),
            "{what}: {out}"
        );
        let counted = web
            .metric_sum(
                "mesh_proxy_errors_total",
                &[&format!("reason=\"{reason}\"")],
            )
            .await;
        assert!(counted >= 1.0, "{what}: not counted as {reason}");
    }
    let m = web.metrics().await;
    for upstream in ["upstream failed", "app failed", "connect failed"] {
        assert!(
            !m.contains(&format!("reason=\"{upstream}\"")),
            "counted as {upstream}:\n{m}"
        );
    }
    assert!(
        !api.proxy.metrics().await.contains("reason=\"app failed\""),
        "the server's proxy blamed its app"
    );
    // Nothing above reached the app but the control and maybe the head of
    // the malformed body (its body never completes).
    assert!(api.app.count() <= 2, "{}", api.app.count());
}

/// Reads one HTTP/1.1 response (head and a `content-length` body) from
/// `tcp`; returns its status line.
async fn read_response(tcp: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        if tcp.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        buf.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&buf).to_string();
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    tcp.read_exact(&mut body).await.ok()?;
    head.lines().next().map(str::to_string)
}

/// Sends `n` requests through `proxy` as an app would: 8 kept-alive
/// connections, each request with the `Host` `host(i)`. Returns how many
/// got an answer.
async fn distinct_hosts(proxy: std::net::SocketAddr, n: usize, host: fn(usize) -> String) -> usize {
    let mut tasks = Vec::new();
    for worker in 0..8 {
        tasks.push(tokio::spawn(async move {
            let mut tcp = TcpStream::connect(proxy).await.expect("connect");
            let mut answered = 0;
            for i in (worker..n).step_by(8) {
                let req = format!("GET / HTTP/1.1\r\nHost: {}\r\n\r\n", host(i));
                if tcp.write_all(req.as_bytes()).await.is_err() {
                    tcp = TcpStream::connect(proxy).await.expect("connect");
                    continue;
                }
                match read_response(&mut tcp).await {
                    Some(_) => answered += 1,
                    None => tcp = TcpStream::connect(proxy).await.expect("reconnect"),
                }
            }
            answered
        }));
    }
    let mut answered = 0;
    for t in tasks {
        answered += t.await.unwrap();
    }
    answered
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_names_do_not_grow_metrics_or_discovery() {
    let mesh = Mesh::start("1h").await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let pid = web.proc.pid();
    // 5,000 targets nobody declared, all on loopback (nothing listens on
    // port 9: each answer is a quick 502).
    let started = Instant::now();
    let n = 5_000;
    let answered = distinct_hosts(web.outbound, n, |i| {
        format!(
            "127.{}.{}.{}:9",
            1 + i / 62_500,
            (i / 250) % 250,
            1 + i % 250
        )
    })
    .await;
    assert_eq!(answered, n);
    let m = web.metrics().await;
    let rss = rss_mib(pid);
    println!(
        "5000 made-up targets in {:?}: /metrics {} bytes, RSS {rss:.1} MiB",
        started.elapsed(),
        m.len()
    );
    assert!(m.len() < 2 * 1024 * 1024, "/metrics is {} bytes", m.len());
    assert!(rss < 64.0, "RSS {rss:.1} MiB");
    assert!(!m.contains("127.1."), "a made-up name became a label");
    assert!(m.contains("dst_service=\"external:9\""), "{m}");
    // The controller holds no stream per made-up name either.
    let (_, controller) = admin_get(mesh.controller_admin, "/metrics")
        .await
        .expect("controller metrics");
    let open: f64 = controller
        .lines()
        .filter(|l| l.starts_with("mesh_controller_streams_open"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    println!("controller streams open: {open}");
    assert!(open <= 2_100.0, "{open} streams open at the controller");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_transport_header_names_are_not_labels() {
    let mesh = Mesh::start("1h").await;
    let app = apps::echo("api-1").await;
    let api = mesh.proxy("demo", "api", "api-1").await;
    mesh.serve_api("api", app.addr.port(), &api).await;
    let pid = api.proc.pid();
    let port = app.addr.port();
    let inbound = api.inbound;
    let dir = mesh.identity_dir.clone();
    let mut tasks = Vec::new();
    for worker in 0..4 {
        let cert = client_cert(&dir, &spiffe("demo", "peer"));
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for i in (worker..2_000).step_by(4) {
                let mut bytes = transport_header(0, port, &format!("made-up-{i}.example:80"));
                bytes
                    .extend_from_slice(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
                let out = tls_exchange(inbound, Some(cert.clone()), &bytes).await;
                if out.starts_with("HTTP/1.1 200") {
                    ok += 1;
                }
            }
            ok
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap();
    }
    assert_eq!(ok, 2_000);
    // The name a client proxy really uses is still a label.
    let mut bytes = transport_header(0, port, "api.demo.svc.cluster.local:80");
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    let cert = client_cert(&dir, &spiffe("demo", "peer"));
    assert!(tls_exchange(inbound, Some(cert), &bytes)
        .await
        .starts_with("HTTP/1.1 200"));
    let m = api.metrics().await;
    let rss = rss_mib(pid);
    println!(
        "2000 made-up transport-header names: /metrics {} bytes, RSS {rss:.1} MiB",
        m.len()
    );
    assert!(m.len() < 2 * 1024 * 1024, "/metrics is {} bytes", m.len());
    assert!(rss < 64.0, "RSS {rss:.1} MiB");
    assert!(
        !m.contains("made-up-"),
        "a peer's made-up name became a label"
    );
    assert!(
        m.contains("dst_service=\"api.demo.svc.cluster.local:80\""),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_serves_only_workloads_of_the_mesh() {
    use mesh_proto::destination::{destination_client::DestinationClient, GetDestination};
    use mesh_proto::policy::{inbound_policy_client::InboundPolicyClient, InboundTarget};
    let mesh = Mesh::start("1h").await;
    let app = apps::echo("api-1").await;
    let api = mesh.proxy("demo", "api", "api-1").await;
    // Control: a mesh workload (the fixture's certificate) is served.
    mesh.serve_api("api", app.addr.port(), &api).await;
    let get = || GetDestination {
        target: "api.demo.svc.cluster.local:80".into(),
        context: "attacker".into(),
    };

    // Plaintext h2c, anonymous: no endpoints, no policy.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{}", mesh.controller_addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3));
    match plain.connect().await {
        Err(_) => {}
        Ok(channel) => {
            let got = DestinationClient::new(channel.clone()).get(get()).await;
            assert!(got.is_err(), "plaintext Get served: {got:?}");
            let watched = InboundPolicyClient::new(channel)
                .watch(InboundTarget {
                    workload: "demo/api-1".into(),
                    port: u32::from(app.addr.port()),
                })
                .await;
            assert!(watched.is_err(), "plaintext Watch served");
        }
    }
    // TLS without a client certificate, and with one from another CA: the
    // server never gets to say anything in HTTP/2.
    let preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
    let out = tls_exchange(mesh.controller_addr, None, preface).await;
    assert!(
        out.is_empty() || out.starts_with("handshake failed"),
        "{out:?}"
    );
    let other = tempfile::tempdir().unwrap();
    mesh_identity::files::init_dir(other.path(), "cluster.local", false).unwrap();
    let foreign = client_cert(other.path(), &spiffe("demo", "web"));
    let out = tls_exchange(mesh.controller_addr, Some(foreign), preface).await;
    assert!(
        out.is_empty() || out.starts_with("handshake failed"),
        "{out:?}"
    );
    // The mesh still works: the proxies reach the controller over mTLS.
    let web = mesh.proxy("demo", "web", "web-1").await;
    let r = client::get(
        &client::http1(web.outbound),
        "http://api.demo.svc.cluster.local/",
    )
    .await
    .expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(
        r.header("x-seen-client-id"),
        "spiffe://cluster.local/ns/demo/sa/web"
    );
}
