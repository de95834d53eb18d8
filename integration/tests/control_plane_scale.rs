//! The control-plane load of `make bench-control-plane`, scaled down (100 Services, 1,000
//! pods, 200 proxies × 3 streams): the real controller on a fake Kubernetes API; every
//! endpoint change reaches every stream that watches its Service, and only those (the
//! policy and inbound streams hear nothing of endpoint changes), with no stream dropped.

use std::time::Duration;

use mesh_integration::control_plane::{objects::Shape, run, Config};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoint_changes_reach_exactly_the_streams_that_watch_them() {
    let cfg = Config {
        shape: Shape {
            namespaces: 4,
            services: 100,
            pods_per_service: 10,
        },
        proxies: 200,
        single: 5,
        burst: 100,
        burst_window: Duration::from_millis(500),
        deadline: Duration::from_secs(30),
    };
    let report = run(cfg).await.expect("load run");
    println!("{}", report.render());
    assert_eq!(report.streams, 600);
    assert_eq!(report.missing, 0, "some change never reached a stream");
    assert_eq!(report.dropped, 0, "streams ended");
    assert_eq!(
        report.single.n,
        5 * 2,
        "each single change reaches its 2 watchers"
    );
    assert_eq!(report.burst.n, report.burst_expected);
    // A change is one removal and one addition, sent to the Service's watchers only.
    let [get, policy, inbound] = report.burst_updates;
    assert!(
        get >= report.burst_expected as u64 && get <= 2 * report.burst_expected as u64,
        "{get} endpoint updates for {} deliveries",
        report.burst_expected
    );
    assert_eq!(policy, 0, "endpoint changes woke policy streams");
    assert_eq!(inbound, 0, "endpoint changes woke inbound streams");
    // Loose bounds: a debug build on a shared CI machine (make bench-control-plane
    // measures the release build).
    assert!(report.single.max < 2_000.0, "{:?}", report.single);
    assert!(report.burst.p99 < 5_000.0, "{:?}", report.burst);
}
