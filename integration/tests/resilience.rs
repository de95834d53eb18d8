//! Retries within budgets, latency-aware balancing, outlier ejection and
//! per-endpoint request limits, against misbehaving backends.

use mesh_integration::{
    apps::Behaviour,
    client::{self, blast},
    fixture::{retry_route, service},
    Mesh,
};
use std::time::{Duration, Instant};

const URL: &str = "http://api.demo.svc.cluster.local/";

fn traffic_policy(spec: &str) -> String {
    format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: TrafficPolicy\nmetadata:\n  name: api\n  namespace: demo\nspec:\n  targetRef:\n    kind: Service\n    name: api\n{spec}"
    )
}

/// Sends requests until the proxy has the route (its retry counter moves).
async fn wait_for_retries(web: &mesh_integration::Proxy) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while web.metric_sum("mesh_retries_total", &[]).await == 0.0 {
        assert!(Instant::now() < deadline, "retries never started");
        blast(web.outbound, URL, 20, 1, &[]).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_hide_a_flaky_backend_and_their_absence_does_not() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let flaky = Behaviour::failing(30);
    let _api = mesh.replica("api", "api-1", flaky).await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;

    // No retry policy: the failures reach the client.
    let t = blast(web.outbound, URL, 1000, 1, &[]).await;
    let failed = t.status(503);
    assert!(
        (250..=350).contains(&failed),
        "expected ~30 % failures: {t:?}"
    );

    // attempts: 2 on 5xx, with a budget that affords a 30 % failure rate.
    mesh.write("route.yaml", &retry_route(2));
    mesh.write(
        "policy.yaml",
        &traffic_policy(
            "  retryBudget:\n    ratio: 0.5\n    minRetriesPerSecond: 10\n    ttl: 10s\n",
        ),
    );
    wait_for_retries(&web).await;
    let t = blast(web.outbound, URL, 2000, 1, &[]).await;
    let ok = t.status(200);
    println!("with retries: {ok}/2000 succeeded");
    assert!(ok * 1000 >= 2000 * 995, "only {ok}/2000 succeeded: {t:?}");
    let retries = web
        .metric_sum(
            "mesh_retries_total",
            &["route=\"httproute/demo/api-retry/0\""],
        )
        .await;
    assert!(retries >= 500.0, "retry counter: {retries}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let api = mesh.replica("api", "api-1", Behaviour::failing(100)).await;
    mesh.write("route.yaml", &retry_route(2));
    // A 1 s window keeps the initial reserve (min/s × ttl) small.
    mesh.write(
        "policy.yaml",
        &traffic_policy(
            "  retryBudget:\n    ratio: 0.2\n    minRetriesPerSecond: 10\n    ttl: 1s\n",
        ),
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    wait_for_retries(&web).await;

    let before = api.app.count();
    let start = Instant::now();
    let t = blast(web.outbound, URL, 3000, 4, &[]).await;
    let secs = start.elapsed().as_secs_f64();
    let attempts = (api.app.count() - before) as f64;
    let requests = t.total() as f64;
    let bound = requests * 1.2 + 10.0 * (secs + 1.0);
    println!("{requests} requests in {secs:.1} s made {attempts} attempts (bound {bound:.0})");
    assert_eq!(t.status(503), t.total(), "{t:?}");
    assert!(
        attempts <= bound * 1.02,
        "{attempts} attempts > budget {bound:.0}"
    );
    assert!(
        attempts > requests * 1.1,
        "budget unused: {attempts} attempts"
    );
    assert!(
        web.metric_sum("mesh_retries_skipped_total", &["reason=\"budget\""])
            .await
            > 0.0,
        "no retry was refused by the budget"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_little_traffic() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let a = mesh.replica("api", "api-1", Behaviour::default()).await;
    let b = mesh.replica("api", "api-2", Behaviour::default()).await;
    let slow = mesh
        .replica("api", "api-slow", Behaviour::delayed(200))
        .await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 3)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let t = blast(web.outbound, URL, 3000, 4, &[]).await;
    assert_eq!(t.status(200), 3000, "{t:?}");
    let share = slow.app.count() as f64 / 3000.0;
    println!(
        "api-1 {} api-2 {} api-slow {} ({:.1} %)",
        a.app.count(),
        b.app.count(),
        slow.app.count(),
        share * 100.0
    );
    assert!(share < 0.10, "slow endpoint got {:.1} %", share * 100.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_endpoint_is_ejected_and_readmitted_when_it_recovers() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write(
        "policy.yaml",
        &traffic_policy(
            "  outlierDetection:\n    consecutiveFailures: 3\n    baseEjectionTime: 1s\n    maxEjectionTime: 2s\n    maxEjectionPercent: 50\n",
        ),
    );
    let _a = mesh.replica("api", "api-1", Behaviour::default()).await;
    let _b = mesh.replica("api", "api-2", Behaviour::default()).await;
    let bad = mesh
        .replica("api", "api-bad", Behaviour::failing(100))
        .await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 3)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;

    // Until ejected, the bad endpoint fails some requests (no retries here).
    // The deadline is generous: CI runs these meshes side by side on 2 cores.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sent = 0;
    while web.metric_sum("mesh_endpoint_ejections_total", &[]).await == 0.0 {
        if Instant::now() > deadline {
            let metrics = web.metrics().await;
            let relevant: Vec<&str> = metrics
                .lines()
                .filter(|l| {
                    l.starts_with("mesh_balancer")
                        || l.starts_with("mesh_endpoint")
                        || l.starts_with("mesh_control")
                })
                .collect();
            panic!(
                "never ejected after {sent} requests ({} to api-bad)\n{}\n--- web proxy log ---\n{}",
                bad.app.count(),
                relevant.join("\n"),
                web.proc.log_text()
            );
        }
        blast(web.outbound, URL, 30, 1, &[]).await;
        sent += 30;
    }
    assert_eq!(
        web.metric_sum("mesh_balancer_endpoints", &["state=\"ejected\""])
            .await,
        1.0
    );
    assert_eq!(
        web.metric_sum("mesh_balancer_endpoints", &["state=\"ready\""])
            .await,
        2.0
    );
    let t = blast(web.outbound, URL, 1000, 2, &[]).await;
    let ok = t.status(200);
    println!("after ejection: {ok}/1000 succeeded");
    assert!(ok >= 990, "{t:?}");

    // It recovers: after its penalty a probe succeeds and traffic returns.
    bad.app.set(Behaviour::default());
    let before = bad.app.count();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let t = blast(web.outbound, URL, 100, 2, &[]).await;
        assert_eq!(t.status(200), 100, "{t:?}");
        if bad.app.count() > before + 20 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "recovered endpoint gets no traffic"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_at_its_request_limit_fails_fast() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write(
        "policy.yaml",
        &traffic_policy("  limits:\n    maxRequestsPerEndpoint: 2\n"),
    );
    let _slow = mesh.replica("api", "api-1", Behaviour::delayed(1500)).await;
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    // Warm up (discovery, policy, connection) with one slow request.
    let c = client::http1(web.outbound);
    assert_eq!(client::get(&c, URL).await.unwrap().status, 200);

    let held: Vec<_> = (0..2)
        .map(|_| {
            let c = client::http1(web.outbound);
            tokio::spawn(async move { client::get(&c, URL).await.map(|r| r.status) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let start = Instant::now();
    let r = client::get(&client::http1(web.outbound), URL)
        .await
        .unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-mesh-proxy-error"), "breaker open");
    assert!(took < Duration::from_millis(100), "not fast: {took:?}");
    for h in held {
        assert_eq!(h.await.unwrap().unwrap(), 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_holds_for_an_unmeshed_endpoint() {
    let mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    mesh.write(
        "policy.yaml",
        &traffic_policy("  limits:\n    maxConnections: 1\n"),
    );
    // A plain app with no proxy of its own.
    let slow = mesh_integration::apps::echo_with("plain-1", Behaviour::delayed(1500)).await;
    mesh.write(
        "plain-1.yaml",
        &format!(
            "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: plain-1\n  namespace: demo\n  labels:\n    app: api\nspec:\n  address: 127.0.0.1\n  meshed: false\n  ports:\n    http: {}\n",
            slow.addr.port()
        ),
    );
    mesh.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
        .await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let c = client::http1(web.outbound);
    let first = client::get(&c, URL).await.unwrap();
    assert_eq!(first.status, 200, "{first:?}");
    assert_eq!(
        first.header("x-seen-client-id"),
        "",
        "unmeshed: no identity"
    );

    let held = {
        let c = client::http1(web.outbound);
        tokio::spawn(async move { client::get(&c, URL).await.map(|r| r.status) })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let r = client::get(&client::http1(web.outbound), URL)
        .await
        .unwrap();
    assert_eq!(r.status, 503, "{r:?}");
    assert_eq!(r.header("x-mesh-proxy-error"), "breaker open");
    assert_eq!(held.await.unwrap().unwrap(), 200);
}
