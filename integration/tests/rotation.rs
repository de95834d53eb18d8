//! Certificates are renewed under steady traffic with no failed request.

use mesh_integration::{apps, client, Mesh};
use std::time::{Duration, Instant};

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} missing in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_renew_short_lived_certificates_under_traffic() {
    let mesh = Mesh::start("20s").await;
    let echo = apps::echo("api-1").await;
    let api = mesh.proxy("demo", "api", "api-1").await;
    mesh.serve_api("api", echo.addr.port(), &api).await;
    let web = mesh.proxy("demo", "web", "web-1").await;

    let first_expiry = metric(
        &web.metrics().await,
        "mesh_identity_cert_expiry_timestamp_seconds",
    );
    let (mut ok, mut failed) = (0u64, Vec::new());
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_secs(60) {
        // A new client every 50 requests, so fresh connections (and fresh
        // handshakes on the app side) happen throughout the run.
        let c = client::http1(web.outbound);
        for _ in 0..50 {
            n += 1;
            match client::get(&c, &format!("http://api.demo.svc.cluster.local/{n}")).await {
                Ok(r) if r.status == 200 => ok += 1,
                other => failed.push(format!("{:?}: {other:?}", start.elapsed())),
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    assert!(
        failed.is_empty(),
        "{} failed: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    assert!(ok > 1000, "too little traffic: {ok}");

    for (name, p) in [("web", &web), ("api", &api)] {
        let m = p.metrics().await;
        let renewals = metric(&m, "mesh_identity_cert_renewals_total");
        // The first certificate plus at least two renewals.
        assert!(renewals >= 3.0, "{name} renewed {} times", renewals - 1.0);
        assert_eq!(
            metric(&m, "mesh_identity_cert_renewal_failures_total"),
            0.0,
            "{name}"
        );
    }
    let last_expiry = metric(
        &web.metrics().await,
        "mesh_identity_cert_expiry_timestamp_seconds",
    );
    assert!(
        last_expiry >= first_expiry + 28.0,
        "expiry moved only from {first_expiry} to {last_expiry}"
    );
}
