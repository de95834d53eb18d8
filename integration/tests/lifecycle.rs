//! Zero-downtime lifecycle and overload (issue 13): a replica's proxy that
//! stops under load — gracefully (SIGTERM) or not (SIGKILL) — fails no
//! request that could have gone to the other replica, the requests it was
//! serving finish, and a proxy with more requests than its cap sheds the
//! excess at once.

use mesh_integration::{
    apps::{self, Behaviour},
    client,
    fixture::{admin_get, service, spiffe, Replica},
    process::rss_mib,
    tls::{client_cert, client_config, tls_exchange, tls_request, transport_header},
    Mesh, Proxy,
};
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

const API: &str = "http://api.demo.svc.cluster.local/";

/// `api` with two replicas and a client proxy.
async fn two_replicas() -> (Mesh, Replica, Replica, Proxy) {
    let mesh = Mesh::start("1h").await;
    let one = mesh.replica("api", "api-1", Behaviour::default()).await;
    let two = mesh.replica("api", "api-2", Behaviour::default()).await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 2)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    (mesh, one, two, web)
}

/// What the load saw: every answer, with when it came.
#[derive(Default)]
struct Seen {
    ok: u64,
    /// (time since the load started, what went wrong).
    failed: Vec<(Duration, String)>,
}

/// Four clients sending requests through `web` until stopped (bounded:
/// 60 s); each on its own kept-alive connection.
struct Load {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
    started: Instant,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(web: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let started = Instant::now();
        let tasks = (0..4)
            .map(|_| {
                let (stop, seen) = (stop.clone(), seen.clone());
                let c = client::http1(web.outbound);
                tokio::spawn(async move {
                    let deadline = started + Duration::from_secs(60);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                        let r = client::get(&c, API).await;
                        let mut s = seen.lock().unwrap();
                        match r {
                            Ok(r) if r.status == 200 => s.ok += 1,
                            Ok(r) => s.failed.push((
                                started.elapsed(),
                                format!("{} {}", r.status, r.header("x-mesh-proxy-error")),
                            )),
                            Err(e) => s.failed.push((started.elapsed(), e.to_string())),
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            seen,
            started,
            tasks,
        }
    }

    async fn stop(self) -> Seen {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        std::mem::take(&mut *self.seen.lock().unwrap())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_proxy_stopped_gracefully_fails_no_request() {
    let (mesh, one, mut two, web) = two_replicas().await;
    let load = Load::start(&web);
    tokio::time::sleep(Duration::from_millis(800)).await;

    // Slow requests in flight on api-2 when its proxy is told to stop.
    two.app.set(Behaviour::delayed(1_500));
    let cert = client_cert(&mesh.identity_dir, &spiffe("demo", "web"));
    let (inbound, port) = (two.proxy.inbound, two.app.addr.port());
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let cert = cert.clone();
            tokio::spawn(async move { tls_request(inbound, Some(cert), port).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let stopped = Instant::now();
    two.proxy.proc.signal("TERM");
    // Not ready any more, at once.
    let mut unready = None;
    while stopped.elapsed() < Duration::from_secs(1) {
        match admin_get(two.proxy.admin, "/ready").await {
            Some((200, _)) => tokio::time::sleep(Duration::from_millis(20)).await,
            _ => {
                unready = Some(stopped.elapsed());
                break;
            }
        }
    }
    let unready = unready.expect("/ready still 200 a second after SIGTERM");
    println!("api-2 unready {unready:?} after SIGTERM");

    for s in slow {
        let out = s.await.unwrap();
        assert!(
            out.starts_with("HTTP/1.1 200"),
            "a request in flight on the stopping proxy failed: {out}"
        );
    }
    let status = two
        .proxy
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy did not exit within its grace period");
    println!(
        "api-2's proxy exited {:?} after SIGTERM: {status}",
        stopped.elapsed()
    );
    assert!(status.success(), "{status}\n{}", two.proxy.proc.log_text());

    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = load.stop().await;
    println!(
        "graceful stop under load: {} requests, {} failed",
        seen.ok + seen.failed.len() as u64,
        seen.failed.len()
    );
    assert!(seen.failed.is_empty(), "failed: {:?}", seen.failed);
    assert!(seen.ok > 100, "too little load: {}", seen.ok);
    assert!(one.app.count() > 0);
}

/// Dials `inbound` with mTLS as `cert` and sends the transport header for an
/// HTTP/2 session to `port`; returns the HTTP/2 sender and the connection task.
async fn h2_session(
    inbound: std::net::SocketAddr,
    cert: (String, String),
    port: u16,
) -> (
    hyper::client::conn::http2::SendRequest<http_body_util::Empty<bytes::Bytes>>,
    tokio::task::JoinHandle<()>,
) {
    use tokio::io::AsyncWriteExt;
    let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("proxy.mesh.local").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(client_config(Some(cert)))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.write_all(&transport_header(1, port, "")).await.unwrap();
    let (sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    let task = tokio::spawn(async move {
        let _ = conn.await;
    });
    (sender, task)
}

fn get_x() -> http::Request<http_body_util::Empty<bytes::Bytes>> {
    http::Request::get("http://api.demo.svc.cluster.local/x")
        .body(http_body_util::Empty::new())
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_proxy_ends_each_protocol_cleanly() {
    let (mesh, _one, mut two, _web) = two_replicas().await;
    two.app.set(Behaviour::delayed(1_500));
    let cert = client_cert(&mesh.identity_dir, &spiffe("demo", "web"));
    let (inbound, port) = (two.proxy.inbound, two.app.addr.port());

    // In flight when the proxy is told to stop: a kept-alive HTTP/1.1 request, an
    // opaque session, and a request on an HTTP/2 session.
    let started = Instant::now();
    let http1 = {
        let cert = cert.clone();
        tokio::spawn(async move {
            let mut bytes = transport_header(0, port, "");
            bytes.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: api\r\n\r\n");
            let out = tls_exchange(inbound, Some(cert), &bytes).await;
            (out, started.elapsed())
        })
    };
    let opaque = {
        let cert = cert.clone();
        tokio::spawn(async move {
            let mut bytes = transport_header(2, port, "");
            bytes.extend_from_slice(b"GET /x HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
            tls_exchange(inbound, Some(cert), &bytes).await
        })
    };
    let (mut h2, h2_conn) = h2_session(inbound, cert.clone(), port).await;
    let h2_in_flight = tokio::spawn(h2.send_request(get_x()));
    tokio::time::sleep(Duration::from_millis(300)).await;

    two.proxy.proc.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    // HTTP/2: GOAWAY came, so the client opens no new stream on this session...
    let after = h2.send_request(get_x()).await;
    assert!(after.is_err(), "a new stream after GOAWAY: {after:?}");
    // ...while the one in flight completes.
    let rsp = h2_in_flight
        .await
        .unwrap()
        .expect("in-flight HTTP/2 request");
    assert_eq!(rsp.status(), 200);
    tokio::time::timeout(Duration::from_secs(3), h2_conn)
        .await
        .expect("the HTTP/2 session was not closed after its last stream")
        .unwrap();
    // HTTP/1.1: answered, with `Connection: close`, and closed right after (not
    // when the client's 5 s read timeout ends).
    let (out, took) = http1.await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    assert!(
        out.to_ascii_lowercase()
            .contains("\r\nconnection: close\r\n"),
        "{out}"
    );
    assert!(took < Duration::from_secs(4), "closed only after {took:?}");
    // Opaque: the session runs to its end.
    let out = opaque.await.unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200"),
        "opaque session cut: {out:?}"
    );

    let status = two
        .proxy
        .proc
        .wait_exit(Duration::from_secs(10))
        .expect("the proxy did not exit within its grace period");
    assert!(status.success(), "{status}");
    println!(
        "drained HTTP/1.1, HTTP/2 and opaque in {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_proxy_killed_fails_only_what_it_held() {
    let (_mesh, _one, two, web) = two_replicas().await;
    let load = Load::start(&web);
    tokio::time::sleep(Duration::from_millis(800)).await;
    let killed = load.started.elapsed();
    two.proxy.proc.signal("KILL");
    tokio::time::sleep(Duration::from_secs(3)).await;
    let seen = load.stop().await;
    println!(
        "killed replica under load: {} requests, {} failed: {:?}",
        seen.ok + seen.failed.len() as u64,
        seen.failed.len(),
        seen.failed
    );
    // At most the requests in flight on the dead connection (one per
    // client), and none once the connections are known dead.
    assert!(seen.failed.len() <= 4, "{:?}", seen.failed);
    for (at, what) in &seen.failed {
        assert!(
            *at < killed + Duration::from_secs(1),
            "failed {:?} after the kill: {what}",
            *at - killed
        );
    }
    assert!(seen.ok > 100, "too little load: {}", seen.ok);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_over_the_cap_are_shed_at_once() {
    let mesh = Mesh::start("1h").await;
    let slow = apps::echo_with("api-1", Behaviour::delayed(800)).await;
    let api = mesh
        .proxy_env("demo", "api", "api-1", &[("MESH_PROXY_MAX_IN_FLIGHT", "4")])
        .await;
    mesh.serve_api("api", slow.addr.port(), &api).await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let start = Instant::now();
    let tasks: Vec<_> = (0..20)
        .map(|_| {
            let c = client::http1(web.outbound);
            tokio::spawn(async move {
                let r = client::get(&c, API).await.expect("response");
                (
                    r.status.as_u16(),
                    r.header("x-mesh-proxy-error").to_string(),
                    start.elapsed(),
                )
            })
        })
        .collect();
    let mut ok = 0;
    let mut shed = Vec::new();
    for t in tasks {
        let (status, reason, took) = t.await.unwrap();
        match status {
            200 => ok += 1,
            503 => {
                assert_eq!(reason, "overloaded");
                shed.push(took);
            }
            other => panic!("unexpected {other} {reason}"),
        }
    }
    println!(
        "20 concurrent requests, cap 4: {ok} served, {} shed",
        shed.len()
    );
    assert_eq!(ok, 4, "the cap lets exactly 4 in");
    assert_eq!(shed.len(), 16);
    assert!(
        shed.iter().all(|t| *t < Duration::from_millis(700)),
        "shedding waited: {shed:?}"
    );
    assert_eq!(
        api.metric_sum(
            "mesh_proxy_errors_total",
            &["direction=\"inbound\"", "reason=\"overloaded\""]
        )
        .await,
        16.0
    );

    // Sustained: 10 waves of 200 concurrent requests against the same cap. The excess
    // is refused, not queued, so memory stays flat.
    let pid = api.proc.pid();
    let before = rss_mib(pid);
    let mut shed = 0;
    for _ in 0..10 {
        let wave: Vec<_> = (0..200)
            .map(|_| {
                let c = client::http1(web.outbound);
                tokio::spawn(async move { client::get(&c, API).await.map(|r| r.status.as_u16()) })
            })
            .collect();
        for t in wave {
            if let Ok(503) = t.await.unwrap() {
                shed += 1;
            }
        }
    }
    let after = rss_mib(pid);
    let at_api = api
        .metric_sum(
            "mesh_proxy_errors_total",
            &["direction=\"inbound\"", "reason=\"overloaded\""],
        )
        .await
        - 16.0;
    println!(
        "2000 requests over 10 waves: {shed} got 503, {at_api} shed by the capped proxy; \
         RSS {before:.1} -> {after:.1} MiB"
    );
    // Every 503 is the cap's (the client proxy did not give up on the endpoint), and
    // most of the load was over it (4 in flight per 800 ms lets few through).
    assert_eq!(at_api, shed as f64);
    assert!(shed >= 1000, "only {shed} of 2000 over the cap");
    assert!(
        after < before + 16.0,
        "memory grew under overload: {before:.1} -> {after:.1} MiB"
    );
}

/// A TCP "Service address" in front of controller replicas: each new
/// connection goes to the first of `backends` that accepts it, as kube-proxy
/// sends it to a ready endpoint.
async fn service_vip(backends: Vec<std::net::SocketAddr>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut downstream, _)) = listener.accept().await {
            let backends = backends.clone();
            tokio::spawn(async move {
                for b in backends {
                    if let Ok(mut upstream) = tokio::net::TcpStream::connect(b).await {
                        let _ = tokio::io::copy_bidirectional(&mut downstream, &mut upstream).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_replica_drains_and_proxies_move_to_the_other() {
    use mesh_integration::process::free_addr;
    let mut mesh = Mesh::start("1h").await;
    let (b_grpc, b_admin) = (free_addr(), free_addr());
    let _b = mesh.spawn_controller(b_grpc, b_admin);
    let vip = service_vip(vec![mesh.controller_addr, b_grpc]).await;
    let vip_s = vip.to_string();
    let env = [("MESH_PROXY_DESTINATION_ADDR", vip_s.as_str())];

    let app1 = apps::echo("api-1").await;
    let api1 = mesh.proxy_env("demo", "api", "api-1", &env).await;
    mesh.serve_api("api", app1.addr.port(), &api1).await;
    let web = mesh.proxy_env("demo", "web", "web-1", &env).await;
    let load = Load::start(&web);
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Controller A (the fixture's) is told to stop.
    let a_admin = mesh.controller_admin;
    let a = mesh.controller.as_mut().unwrap();
    let stopped = Instant::now();
    a.signal("TERM");
    let mut unready = false;
    while stopped.elapsed() < Duration::from_secs(1) {
        if admin_get(a_admin, "/ready").await.map(|r| r.0) != Some(200) {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(unready, "controller A still ready a second after SIGTERM");
    let status = a
        .wait_exit(Duration::from_secs(15))
        .expect("controller A did not exit within its grace period");
    println!(
        "controller A exited {:?} after SIGTERM: {status}",
        stopped.elapsed()
    );
    assert!(status.success(), "{status}");

    // Updates now come from B: a second replica appears and gets traffic.
    let app2 = apps::echo("api-2").await;
    let api2 = mesh.proxy_env("demo", "api", "api-2", &env).await;
    mesh.write(
        "api-2.yaml",
        &mesh_integration::fixture::workload(
            "api-2",
            "demo",
            "api",
            "api",
            &[("http", app2.addr.port())],
            api2.inbound,
        ),
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while app2.count() == 0 {
        assert!(
            Instant::now() < deadline,
            "the new replica got no traffic: updates stopped with controller A"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let seen = load.stop().await;
    println!(
        "controller failover under load: {} requests, {} failed",
        seen.ok + seen.failed.len() as u64,
        seen.failed.len()
    );
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
    // The proxies saw their streams end cleanly (not broken) and reconnected.
    let log = web
        .proc
        .wait_log(&["stream ended; reconnecting"], Duration::from_secs(5))
        .await;
    assert!(
        log.contains("stream ended; reconnecting"),
        "no clean end of stream in the proxy's log:\n{log}"
    );
    mesh.controller = None;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_stops_cleanly_and_the_mesh_keeps_serving() {
    let (mut mesh, _one, _two, web) = two_replicas().await;
    let load = Load::start(&web);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stopped = Instant::now();
    mesh.identity.signal("TERM");
    let status = mesh
        .identity
        .wait_exit(Duration::from_secs(10))
        .expect("identity did not exit");
    println!(
        "identity exited {:?} after SIGTERM: {status}",
        stopped.elapsed()
    );
    assert!(status.success(), "{status}\n{}", mesh.identity.log_text());
    assert!(
        mesh.identity.log_text().contains("stopping: not ready"),
        "{}",
        mesh.identity.log_text()
    );
    // Certificates already issued keep the mesh going.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let seen = load.stop().await;
    assert!(seen.failed.is_empty(), "{:?}", seen.failed);
    assert!(seen.ok > 50);
}
