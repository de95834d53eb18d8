//! Label sets, initial series and the text encoding of the controller's metrics.

use super::*;

fn render(m: &Metrics) -> String {
    m.render(&ObjectCounts::default())
}

#[test]
fn every_family_is_rendered_with_its_type_and_initial_series() {
    let m = Metrics::new();
    // A family without series is not rendered; a source creates its series at start.
    let _ = m.source_events(Source::Dir, "file");
    let text = render(&m);
    for (family, kind) in [
        ("source_events", "counter"),
        ("index_updates", "counter"),
        ("index_rebuild_seconds", "histogram"),
        ("index_objects", "gauge"),
        ("streams_open", "gauge"),
        ("streams", "counter"),
        ("updates_sent", "counter"),
        ("push_latency_seconds", "histogram"),
        ("errors", "counter"),
    ] {
        let line = format!("# TYPE mesh_controller_{family} {kind}");
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    for line in [
        "mesh_controller_index_updates_total 0",
        "mesh_controller_streams_open{api=\"destination\"} 0",
        "mesh_controller_streams_total{api=\"policy\"} 0",
        "mesh_controller_updates_sent_total{api=\"inbound\"} 0",
        "mesh_controller_push_latency_seconds_count{api=\"destination\"} 0",
        "mesh_controller_errors_total{reason=\"invalid_target\"} 0",
        "mesh_controller_errors_total{reason=\"invalid_resource\"} 0",
        "mesh_controller_errors_total{reason=\"watch_failed\"} 0",
        "mesh_controller_index_objects{kind=\"Service\"} 0",
        "mesh_controller_source_events_total{source=\"dir\",kind=\"file\",event=\"relist\"} 0",
        "# UNIT mesh_controller_push_latency_seconds seconds",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
    }
    assert!(text.ends_with("# EOF\n"), "{text}");
}

#[test]
fn source_events_carry_source_kind_and_event() {
    let m = Metrics::new();
    let files = m.source_events(Source::Dir, "file");
    files.applied();
    files.applied();
    files.deleted();
    files.invalid();
    let services = m.source_events(Source::Kubernetes, "Service");
    services.relisted();
    services.watch_failed();
    let text = render(&m);
    let series = |source: &str, kind: &str, event: &str| {
        let s = format!(
            "mesh_controller_source_events_total{{source=\"{source}\",kind=\"{kind}\",event=\"{event}\"}}"
        );
        sample(&text, &s)
    };
    assert_eq!(series("dir", "file", "apply"), Some(2.0));
    assert_eq!(series("dir", "file", "delete"), Some(1.0));
    assert_eq!(series("dir", "file", "relist"), Some(0.0));
    assert_eq!(series("dir", "file", "error"), Some(1.0));
    assert_eq!(series("kubernetes", "Service", "relist"), Some(1.0));
    assert_eq!(series("kubernetes", "Service", "error"), Some(1.0));
    let errors = |reason: &str| {
        sample(
            &text,
            &format!("mesh_controller_errors_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(errors("invalid_resource"), Some(1.0));
    assert_eq!(errors("watch_failed"), Some(1.0));
    assert_eq!(errors("invalid_target"), Some(0.0));
}

#[test]
fn streams_open_follows_handles_and_latency_counts_changes_only() {
    let m = Metrics::new();
    let api = m.api(Api::Destination);
    let first = api.stream_opened();
    let second = api.stream_opened();
    assert_eq!(first.index_changed_at(), None);
    first.sent(None);
    m.index_changed(Duration::from_micros(300));
    let at = first.index_changed_at();
    assert!(at.is_some());
    first.sent(at);
    second.sent(at);
    api.invalid_target();
    drop(second);
    let text = render(&m);
    let get = |s: &str| sample(&text, s);
    assert_eq!(
        get("mesh_controller_streams_open{api=\"destination\"}"),
        Some(1.0)
    );
    assert_eq!(
        get("mesh_controller_streams_total{api=\"destination\"}"),
        Some(2.0)
    );
    assert_eq!(
        get("mesh_controller_streams_total{api=\"policy\"}"),
        Some(0.0)
    );
    assert_eq!(
        get("mesh_controller_updates_sent_total{api=\"destination\"}"),
        Some(3.0)
    );
    assert_eq!(
        get("mesh_controller_push_latency_seconds_count{api=\"destination\"}"),
        Some(2.0)
    );
    assert!(
        get("mesh_controller_push_latency_seconds_bucket{le=\"0.0001\",api=\"destination\"}")
            .is_some(),
        "the first bucket is 100 µs:\n{text}"
    );
    assert_eq!(get("mesh_controller_index_updates_total"), Some(1.0));
    assert_eq!(
        get("mesh_controller_index_rebuild_seconds_count"),
        Some(1.0)
    );
    assert_eq!(
        get("mesh_controller_index_rebuild_seconds_bucket{le=\"0.0005\"}"),
        Some(1.0)
    );
    assert_eq!(
        get("mesh_controller_index_rebuild_seconds_bucket{le=\"0.00025\"}"),
        Some(0.0)
    );
    assert_eq!(
        get("mesh_controller_errors_total{reason=\"invalid_target\"}"),
        Some(1.0)
    );
    drop(first);
    let text = render(&m);
    assert_eq!(
        sample(&text, "mesh_controller_streams_open{api=\"destination\"}"),
        Some(0.0)
    );
}

#[test]
fn object_gauges_follow_the_counts_given_at_scrape_time() {
    let m = Metrics::new();
    let counts = ObjectCounts {
        services: 3,
        workloads: 5,
        http_routes: 2,
        endpoint_slices: 4,
        authorization_policies: 6,
        ..ObjectCounts::default()
    };
    let text = m.render(&counts);
    let kind = |k: &str| {
        sample(
            &text,
            &format!("mesh_controller_index_objects{{kind=\"{k}\"}}"),
        )
    };
    assert_eq!(kind("Service"), Some(3.0));
    assert_eq!(kind("WorkloadEntry"), Some(5.0));
    assert_eq!(kind("HTTPRoute"), Some(2.0));
    assert_eq!(kind("GRPCRoute"), Some(0.0));
    assert_eq!(kind("TrafficPolicy"), Some(0.0));
    assert_eq!(kind("HTTPFault"), Some(0.0));
    assert_eq!(kind("EndpointSlice"), Some(4.0));
    assert_eq!(kind("AuthorizationPolicy"), Some(6.0));
    let text = m.render(&ObjectCounts::default());
    assert_eq!(
        sample(&text, "mesh_controller_index_objects{kind=\"Service\"}"),
        Some(0.0)
    );
}
