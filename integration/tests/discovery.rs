//! Endpoint changes propagate to traffic without failed requests, and the
//! data plane keeps serving while the controller is down.

use mesh_integration::{
    apps, client,
    fixture::{service, workload},
    Mesh, Proxy,
};
use std::{
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

const URL: &str = "http://api.demo.svc.cluster.local/";

struct Replica {
    app: apps::EchoApp,
    proxy: Proxy,
}

async fn replica(mesh: &Mesh, name: &str) -> Replica {
    let app = apps::echo(name).await;
    let proxy = mesh
        .proxy_for_ports("demo", "api", name, &[app.addr.port()])
        .await;
    Replica { app, proxy }
}

fn entry(name: &str, r: &Replica) -> String {
    workload(
        name,
        "demo",
        "api",
        "api",
        &[("http", r.app.addr.port())],
        r.proxy.inbound,
    )
}

/// Steady traffic from two client loops until stopped (bounded: 60 s).
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(web: &Proxy) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for _ in 0..2 {
            let c = client::http1(web.outbound);
            let (stop, ok, failed, errors) =
                (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            tasks.push(tokio::spawn(async move {
                let deadline = Instant::now() + Duration::from_secs(60);
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    match client::get(&c, URL).await {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors.lock().unwrap().push(format!("{other:?}"));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }));
        }
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    async fn stop(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let errors = self.errors.lock().unwrap().clone();
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            errors,
        )
    }
}

async fn wait_until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "{what} did not happen within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_a_replica_shifts_traffic_without_failures() {
    let mesh = Mesh::start("1h").await;
    let one = replica(&mesh, "api-1").await;
    let two = replica(&mesh, "api-2").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write("api-1.yaml", &entry("api-1", &one));
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;

    let load = Load::start(&web);
    wait_until("traffic to api-1", Duration::from_secs(5), || {
        one.app.hits.load(Ordering::Relaxed) > 20
    })
    .await;
    assert_eq!(two.app.hits.load(Ordering::Relaxed), 0);

    mesh.write("api-2.yaml", &entry("api-2", &two));
    let took = wait_until("traffic to api-2", Duration::from_secs(2), || {
        two.app.hits.load(Ordering::Relaxed) > 0
    })
    .await;
    println!("second replica got traffic after {took:?}");
    // Both replicas serve.
    let (a, b) = (
        one.app.hits.load(Ordering::Relaxed),
        two.app.hits.load(Ordering::Relaxed),
    );
    wait_until("both replicas serving", Duration::from_secs(2), || {
        one.app.hits.load(Ordering::Relaxed) > a + 10
            && two.app.hits.load(Ordering::Relaxed) > b + 10
    })
    .await;

    mesh.remove("api-2.yaml");
    // After the removal propagates, api-2 gets nothing more.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let frozen = two.app.hits.load(Ordering::Relaxed);
    let before = one.app.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        two.app.hits.load(Ordering::Relaxed),
        frozen,
        "removed replica still gets traffic"
    );
    assert!(
        one.app.hits.load(Ordering::Relaxed) > before + 10,
        "remaining replica idle"
    );

    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 200, "too little traffic: {ok}");
    let _ = (&two.proxy, &one.proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_keep_serving_without_the_controller_and_resume_after() {
    let mut mesh = Mesh::start("1h").await;
    let one = replica(&mesh, "api-1").await;
    let two = replica(&mesh, "api-2").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write("api-1.yaml", &entry("api-1", &one));
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let load = Load::start(&web);
    wait_until("traffic", Duration::from_secs(5), || {
        one.app.hits.load(Ordering::Relaxed) > 20
    })
    .await;

    mesh.kill_controller();
    let before = one.app.hits.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Fresh connections work too, on the last known endpoints.
    let fresh = client::http1(web.outbound);
    for _ in 0..20 {
        let r = client::get(&fresh, URL)
            .await
            .expect("request while controller down");
        assert_eq!(r.status, 200, "{r:?}");
    }
    assert!(
        one.app.hits.load(Ordering::Relaxed) > before + 100,
        "traffic stalled without the controller"
    );
    let m = web.metrics().await;
    assert!(
        m.contains("mesh_control_connected{component=\"destination\"} 0"),
        "{m}"
    );

    // A change made while it was down propagates once it is back.
    mesh.write("api-2.yaml", &entry("api-2", &two));
    mesh.start_controller();
    wait_until(
        "traffic to api-2 after restart",
        Duration::from_secs(10),
        || two.app.hits.load(Ordering::Relaxed) > 0,
    )
    .await;

    let (ok, failed, errors) = load.stop().await;
    assert_eq!(failed, 0, "failed requests: {errors:?}");
    assert!(ok > 200);
}
