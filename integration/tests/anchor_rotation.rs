//! Trust-anchor rotation (issue 14): `mesh identity rotate` replaces the anchor of a
//! running mesh — identity, controller and four proxies in two services — while HTTP/1.1,
//! HTTP/2 and a long-lived opaque session run through it, with no failed request; its
//! steps refuse to run early; a garbage bundle file is refused by the proxy.

use mesh_cli::identity::pem_fingerprints as fingerprints;
use mesh_integration::{
    apps::Behaviour,
    client,
    fixture::{admin_get, service, spiffe, Replica},
    process::bin,
    prometheus::write_file_sd,
    tls::{client_cert, client_config, tls_exchange, transport_header},
    Mesh, Proxy,
};
use std::{
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The first certificate's fingerprint in a file of `dir`.
fn file_fp(dir: &Path, name: &str) -> String {
    fingerprints(&std::fs::read_to_string(dir.join(name)).unwrap()).remove(0)
}

/// `api` and `web`, two replicas each.
async fn two_services(mesh: &Mesh) -> Vec<Replica> {
    let mut replicas = Vec::new();
    for (app, name) in [
        ("api", "api-1"),
        ("api", "api-2"),
        ("web", "web-1"),
        ("web", "web-2"),
    ] {
        replicas.push(mesh.replica(app, name, Behaviour::default()).await);
    }
    for app in ["api", "web"] {
        mesh.write(
            &format!("svc-{app}.yaml"),
            &service(app, "demo", &[("http", 80, "http", "")]),
        );
    }
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 2)
        .await;
    mesh.wait_for_endpoints("web.demo.svc.cluster.local:80", 2)
        .await;
    replicas
}

/// Requests sent and failed, with the first failures.
#[derive(Default)]
struct Counts {
    ok: AtomicU64,
    failed: Mutex<Vec<String>>,
}

impl Counts {
    fn record(&self, what: &str, outcome: Result<u16, String>) {
        match outcome {
            Ok(200) => {
                self.ok.fetch_add(1, Ordering::Relaxed);
            }
            Ok(status) => self
                .failed
                .lock()
                .unwrap()
                .push(format!("{what}: {status}")),
            Err(e) => self.failed.lock().unwrap().push(format!("{what}: {e}")),
        }
    }
}

/// A loop of requests through `proxy` to `url` until `stop` (bounded: 3 min), on a new
/// connection every 50 requests so that new connections happen throughout.
fn load(
    what: &'static str,
    proxy: &Proxy,
    url: &'static str,
    http2: bool,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> tokio::task::JoinHandle<()> {
    let outbound = proxy.outbound;
    tokio::spawn(async move {
        let deadline = Instant::now() + Duration::from_secs(180);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let c = if http2 {
                client::http2(outbound)
            } else {
                client::http1(outbound)
            };
            for _ in 0..50 {
                let r = client::get(&c, url).await;
                counts.record(
                    what,
                    r.map(|r| r.status.as_u16()).map_err(|e| e.to_string()),
                );
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
    })
}

/// One opaque session (mutual TLS straight to `inbound`, with a certificate from the
/// issuer in force now) carrying a kept-alive HTTP/1.1 request every 100 ms until `stop`.
fn opaque_session(
    mesh: &Mesh,
    inbound: std::net::SocketAddr,
    port: u16,
    stop: Arc<AtomicBool>,
    counts: Arc<Counts>,
) -> tokio::task::JoinHandle<()> {
    let cert = client_cert(&mesh.identity_dir, &spiffe("demo", "opaque-client"));
    tokio::spawn(async move {
        let tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("proxy.mesh.local").unwrap();
        let mut tls = tokio_rustls::TlsConnector::from(client_config(Some(cert)))
            .connect(name, tcp)
            .await
            .expect("opaque handshake");
        tls.write_all(&transport_header(2, port, "")).await.unwrap();
        let mut buf = vec![0u8; 4096];
        let deadline = Instant::now() + Duration::from_secs(180);
        while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
            let sent = tls
                .write_all(b"GET /opaque HTTP/1.1\r\nHost: api\r\n\r\n")
                .await;
            let read = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut buf)).await;
            let outcome = match (sent, read) {
                (Ok(()), Ok(Ok(n))) if buf[..n].starts_with(b"HTTP/1.1 200") => Ok(200),
                (Ok(()), Ok(Ok(0))) => Err("opaque session closed".to_string()),
                (Ok(()), Ok(Ok(n))) => Err(String::from_utf8_lossy(&buf[..n]).into_owned()),
                (Ok(()), Ok(Err(e))) | (Err(e), _) => Err(e.to_string()),
                (Ok(()), Err(_)) => Err("no answer in 5 s".to_string()),
            };
            let closed = outcome.is_err();
            counts.record("opaque", outcome);
            if closed {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

/// Runs `mesh identity rotate` with `args`; (success, stdout, stderr).
fn rotate(mesh: &Mesh, targets: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(bin("mesh"))
        .args(["identity", "rotate", "--dir"])
        .arg(&mesh.identity_dir)
        .arg("--targets")
        .arg(targets)
        .args(["--timeout", "60s", "--spread", "2s"])
        .args(args)
        .output()
        .expect("mesh identity rotate");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A proxy's bundle and chain fingerprints.
async fn holding(p: &Proxy) -> (Vec<String>, Vec<String>) {
    let bundle = admin_get(p.admin, "/trust-bundle").await.expect("bundle").1;
    let chain = admin_get(p.admin, "/certificate").await.expect("chain").1;
    (fingerprints(&bundle), fingerprints(&chain))
}

/// A copy of the identity directory's CA files as they are now (to make certificates
/// from the issuer in force later).
fn snapshot_ca(mesh: &Mesh) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for f in ["trust-anchors.pem", "issuer.crt", "issuer.key"] {
        std::fs::copy(mesh.identity_dir.join(f), tmp.path().join(f)).unwrap();
    }
    tmp
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_trust_anchor_rotates_under_load_with_no_failed_request() {
    let mesh = Mesh::start("1h").await;
    let replicas = two_services(&mesh).await;
    let proxies: Vec<&Proxy> = replicas.iter().map(|r| &r.proxy).collect();
    let targets = mesh.root.path().join("targets.json");
    write_file_sd(&targets, &mesh.file_sd_targets(&proxies)).unwrap();
    let dir = &mesh.identity_dir;
    let old_anchor = file_fp(dir, "trust-anchors.pem");
    let old_ca = snapshot_ca(&mesh);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let (api1, api2, web1, web2) = (
        &replicas[0].proxy,
        &replicas[1].proxy,
        &replicas[2].proxy,
        &replicas[3].proxy,
    );
    let api = "http://api.demo.svc.cluster.local/";
    let web = "http://web.demo.svc.cluster.local/";
    let tasks = vec![
        load(
            "web-1 http/1.1",
            web1,
            api,
            false,
            stop.clone(),
            counts.clone(),
        ),
        load(
            "web-2 http/2",
            web2,
            api,
            true,
            stop.clone(),
            counts.clone(),
        ),
        load(
            "api-1 http/1.1",
            api1,
            web,
            false,
            stop.clone(),
            counts.clone(),
        ),
        opaque_session(
            &mesh,
            api2.inbound,
            replicas[1].app.addr.port(),
            stop.clone(),
            counts.clone(),
        ),
    ];
    tokio::time::sleep(Duration::from_secs(1)).await;

    // One command, three steps.
    let started = Instant::now();
    let (ok, out, err) = rotate(&mesh, &targets, &[]);
    print!("{out}");
    assert!(ok, "{out}\n{err}");
    println!(
        "rotation took {:.1} s under load",
        started.elapsed().as_secs_f64()
    );
    assert_eq!(out.matches("step ").count(), 3, "{out}");
    tokio::time::sleep(Duration::from_secs(1)).await;

    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let failed = counts.failed.lock().unwrap().clone();
    let ok = counts.ok.load(Ordering::Relaxed);
    println!(
        "anchor rotation: {} requests, {} failed",
        ok + failed.len() as u64,
        failed.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 1000, "too little traffic: {ok}");

    // Every leaf from the new issuer under the new anchor; the old anchor gone everywhere.
    let new_anchor = file_fp(dir, "trust-anchors.pem");
    assert_ne!(new_anchor, old_anchor);
    assert!(!dir.join("next-anchor.pem").exists());
    let issuer = file_fp(dir, "issuer.crt");
    for p in &proxies {
        let (bundle, chain) = holding(p).await;
        assert_eq!(bundle, std::slice::from_ref(&new_anchor), "{}", p.workload);
        assert_eq!(chain.get(1), Some(&issuer), "{}", p.workload);
    }
    let controller_bundle = admin_get(mesh.controller_admin, "/trust-bundle")
        .await
        .unwrap()
        .1;
    assert_eq!(
        fingerprints(&controller_bundle),
        std::slice::from_ref(&new_anchor)
    );
    let controller_chain = admin_get(mesh.controller_admin, "/certificate")
        .await
        .unwrap()
        .1;
    assert_eq!(fingerprints(&controller_chain).get(1), Some(&issuer));

    // New handshakes use the new bundle: a new proxy (new anchor only) reaches both
    // services, and a client with a certificate from the old issuer is refused.
    let fresh = mesh.proxy("demo", "web", "web-3").await;
    let c = client::http1(fresh.outbound);
    for url in [api, web] {
        let r = client::get(&c, url).await.expect("through a new proxy");
        assert_eq!(r.status, 200, "{url}");
    }
    let stale = client_cert(old_ca.path(), &spiffe("demo", "web"));
    let mut bytes = transport_header(0, replicas[0].app.addr.port(), "");
    bytes.extend_from_slice(b"GET / HTTP/1.1\r\nHost: api\r\nConnection: close\r\n\r\n");
    let out = tls_exchange(api1.inbound, Some(stale), &bytes).await;
    assert!(
        !out.contains("HTTP/1.1 200"),
        "a client of the old anchor was served: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_steps_refuse_to_run_early_and_a_garbage_bundle_is_refused() {
    let mesh = Mesh::start("1h").await;
    let a = mesh.proxy("demo", "api", "api-1").await;
    let b = mesh.proxy("demo", "web", "web-1").await;
    let echo = mesh_integration::apps::echo("api-1").await;
    mesh.serve_api("api", echo.addr.port(), &a).await;
    let targets = mesh.root.path().join("targets.json");
    write_file_sd(&targets, &mesh.file_sd_targets(&[&a, &b])).unwrap();
    let dir = mesh.identity_dir.clone();

    // Step 2 before step 1.
    let (ok, _, err) = rotate(&mesh, &targets, &["--step", "switch-issuer"]);
    assert!(!ok, "{err}");
    assert!(err.contains("--step add-anchor` first"), "{err}");

    let (ok, out, err) = rotate(&mesh, &targets, &["--step", "add-anchor"]);
    assert!(ok, "{out}\n{err}");
    assert!(out.contains("step 1/3 add-anchor"), "{out}");

    // The issuer switched by hand, without asking anyone to renew: step 3 would remove
    // the anchor every leaf still chains to. Refused, naming who is on the old chain.
    let next = std::fs::read_to_string(dir.join("next-anchor.pem")).unwrap();
    let next_key = std::fs::read_to_string(dir.join("next-anchor.key")).unwrap();
    let (cert, key) =
        mesh_identity::ca::generate_issuer(&next, &next_key, "cluster.local").unwrap();
    std::fs::write(dir.join("issuer.key"), key).unwrap();
    std::fs::write(dir.join("issuer.crt"), cert).unwrap();
    let (ok, _, err) = rotate(&mesh, &targets, &["--step", "remove-old"]);
    assert!(!ok, "{err}");
    assert!(err.contains("step 3 (remove-old) refused"), "{err}");
    for name in ["demo/api-1", "demo/web-1", "mesh-controller"] {
        assert!(err.contains(name), "{name} not named: {err}");
    }
    assert!(
        err.contains("still hold a certificate from an old issuer"),
        "{err}"
    );
    let (bundle, _) = holding(&a).await;
    assert_eq!(bundle.len(), 2, "nothing removed");

    // A garbage bundle file: the proxies keep their last good bundle and say why.
    let good = std::fs::read_to_string(dir.join("trust-anchors.pem")).unwrap();
    std::fs::write(dir.join("trust-anchors.pem"), "garbage\n").unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !a.proc.log_text().contains("trust bundle file refused") {
        assert!(Instant::now() < deadline, "{}", a.proc.log_text());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let log = a
        .proc
        .wait_log(
            &["keeping the last good bundle", "no certificate found"],
            Duration::from_secs(5),
        )
        .await;
    assert!(log.contains("keeping the last good bundle"), "{log}");
    assert!(log.contains("no certificate found"), "{log}");
    assert_eq!(holding(&a).await.0.len(), 2);
    assert!(
        a.metric_sum("mesh_trust_bundle_reloads_total", &["result=\"rejected\""])
            .await
            >= 1.0
    );
    // Still serving on it, to a new connection too.
    let c = client::http1(b.outbound);
    let r = client::get(&c, "http://api.demo.svc.cluster.local/")
        .await
        .unwrap();
    assert_eq!(r.status, 200);
    std::fs::write(dir.join("trust-anchors.pem"), good).unwrap();
}
