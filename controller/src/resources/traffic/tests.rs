use super::*;
use crate::resources::{parse_documents, ParseError, Resource};

fn parse(kind: &str, spec: &str) -> Result<Resource, ParseError> {
    let text = format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: {kind}\nmetadata: {{name: p, namespace: demo}}\nspec: {spec}\n"
    );
    parse_documents(&text).map(|mut p| p.resources.remove(0))
}

fn policy(spec: &str) -> TrafficPolicy {
    match parse("TrafficPolicy", spec) {
        Ok(Resource::TrafficPolicy(tp)) => tp,
        other => panic!("expected a TrafficPolicy, got {other:?}"),
    }
}

fn fault(spec: &str) -> Fault {
    match parse("HTTPFault", spec) {
        Ok(Resource::HttpFault(f)) => f.fault,
        other => panic!("expected an HTTPFault, got {other:?}"),
    }
}

/// `(path, message)` of the error, checking that it names the resource.
fn invalid(kind: &str, spec: &str) -> (String, String) {
    match parse(kind, spec) {
        Err(e @ ParseError::Invalid { .. }) => {
            let text = e.to_string();
            assert!(text.contains(&format!("{kind} demo/p: ")), "{text}");
            let ParseError::Invalid { path, message, .. } = e else {
                unreachable!()
            };
            (path, message)
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
}

#[test]
fn traffic_policy_defaults() {
    let tp = policy("{targetRef: {kind: Service, name: web}}");
    assert_eq!(tp.target, "web");
    assert_eq!(tp.balancer, default_balancer());
    assert_eq!(tp.balancer.ewma_decay_ms, 10_000);
    assert_eq!(tp.retry_budget, default_retry_budget());
    // Sections present but empty take every default; outlier detection is then enabled.
    let tp = policy(
        "{targetRef: {group: \"\", kind: Service, name: web}, loadBalancer: {type: PeakEWMA}, limits: {}, outlierDetection: {}, retryBudget: {}}",
    );
    assert_eq!(tp.balancer.ewma_decay_ms, 10_000);
    assert_eq!(
        (
            tp.balancer.max_connections,
            tp.balancer.max_pending_requests,
            tp.balancer.max_requests
        ),
        (0, 0, 0)
    );
    assert_eq!(
        tp.balancer.outlier_detection,
        Some(OutlierDetection {
            consecutive_failures: 5,
            base_ejection_ms: 30_000,
            max_ejection_percent: 50,
            max_ejection_ms: 300_000,
        })
    );
    assert_eq!(tp.retry_budget, default_retry_budget());
}

#[test]
fn traffic_policy_conversion() {
    let tp = policy(
        "{targetRef: {kind: Service, name: web}, loadBalancer: {type: PeakEWMA, decay: 5s}, limits: {maxConnections: 100, maxPendingRequests: 10, maxRequestsPerEndpoint: 50}, outlierDetection: {consecutiveFailures: 3, baseEjectionTime: 10s, maxEjectionPercent: 30, maxEjectionTime: 2m}, retryBudget: {ratio: 0.5, minRetriesPerSecond: 3, ttl: 30s}}",
    );
    assert_eq!(
        tp.balancer,
        Balancer {
            ewma_decay_ms: 5_000,
            max_connections: 100,
            max_pending_requests: 10,
            max_requests: 50,
            outlier_detection: Some(OutlierDetection {
                consecutive_failures: 3,
                base_ejection_ms: 10_000,
                max_ejection_percent: 30,
                max_ejection_ms: 120_000,
            }),
        }
    );
    assert_eq!(
        tp.retry_budget,
        RetryBudget {
            ratio: 0.5,
            min_retries_per_second: 3,
            ttl_ms: 30_000
        }
    );
}

#[test]
fn traffic_policy_errors() {
    let t = "targetRef: {kind: Service, name: web}";
    let cases = [
        (
            "{targetRef: {kind: Deployment, name: web}}".to_string(),
            "spec.targetRef",
            "must name a Service",
        ),
        (
            "{targetRef: {group: apps, kind: Service, name: web}}".into(),
            "spec.targetRef",
            "must name a Service",
        ),
        (
            "{targetRef: {kind: Service, name: \"\"}}".into(),
            "spec.targetRef.name",
            "empty",
        ),
        ("{}".into(), "spec", "missing field `targetRef`"),
        (
            format!("{{{t}, loadBalancer: {{type: RoundRobin}}}}"),
            "spec.loadBalancer.type",
            "unknown variant",
        ),
        (
            format!("{{{t}, loadBalancer: {{decay: 0s}}}}"),
            "spec.loadBalancer.decay",
            "longer than 0s",
        ),
        (
            format!("{{{t}, loadBalancer: {{decay: \"10\"}}}}"),
            "spec.loadBalancer.decay",
            "invalid duration",
        ),
        (
            format!("{{{t}, limits: {{maxConnections: -1}}}}"),
            "spec.limits.maxConnections",
            "invalid value",
        ),
        (
            format!("{{{t}, outlierDetection: {{consecutiveFailures: 0}}}}"),
            "spec.outlierDetection.consecutiveFailures",
            "at least 1",
        ),
        (
            format!("{{{t}, outlierDetection: {{maxEjectionPercent: 101}}}}"),
            "spec.outlierDetection.maxEjectionPercent",
            "outside 0-100",
        ),
        (
            format!("{{{t}, outlierDetection: {{baseEjectionTime: 1x}}}}"),
            "spec.outlierDetection.baseEjectionTime",
            "invalid duration",
        ),
        (
            format!("{{{t}, outlierDetection: {{baseEjectionTime: 10m}}}}"),
            "spec.outlierDetection.maxEjectionTime",
            "shorter than",
        ),
        (
            format!("{{{t}, retryBudget: {{ratio: 1.5}}}}"),
            "spec.retryBudget.ratio",
            "outside 0-1",
        ),
        (
            format!("{{{t}, retryBudget: {{ratio: -0.1}}}}"),
            "spec.retryBudget.ratio",
            "outside 0-1",
        ),
        (
            format!("{{{t}, retryBudget: {{ttl: 0s}}}}"),
            "spec.retryBudget.ttl",
            "longer than 0s",
        ),
    ];
    for (spec, want_path, want_msg) in cases {
        let (path, message) = invalid("TrafficPolicy", &spec);
        assert_eq!(path, want_path, "{spec}: {message}");
        assert!(message.contains(want_msg), "{spec}: {message}");
    }
}

#[test]
fn http_faults() {
    assert_eq!(fault("{}"), Fault::default());
    assert_eq!(
        fault("{abort: {httpStatus: 503, percent: 10.0}, delay: {fixedDelay: 200ms, percent: 50}}"),
        Fault {
            abort_status: 503,
            abort_percent: 10.0,
            delay_ms: 200,
            delay_percent: 50.0,
        }
    );
    let f = fault("{abort: {httpStatus: 500}}");
    assert_eq!(
        (f.abort_status, f.abort_percent, f.delay_ms),
        (500, 100.0, 0)
    );
    let cases = [
        (
            "{abort: {httpStatus: 700}}",
            "spec.abort.httpStatus",
            "outside 100-599",
        ),
        (
            "{abort: {httpStatus: 503, percent: 100.1}}",
            "spec.abort.percent",
            "outside 0-100",
        ),
        (
            "{abort: {percent: 10}}",
            "spec.abort",
            "missing field `httpStatus`",
        ),
        (
            "{delay: {fixedDelay: 1s, percent: -5}}",
            "spec.delay.percent",
            "outside 0-100",
        ),
        (
            "{delay: {fixedDelay: soon}}",
            "spec.delay.fixedDelay",
            "invalid duration",
        ),
    ];
    for (spec, want_path, want_msg) in cases {
        let (path, message) = invalid("HTTPFault", spec);
        assert_eq!(path, want_path, "{spec}: {message}");
        assert!(message.contains(want_msg), "{spec}: {message}");
    }
}
