use super::*;

fn ann(pairs: &[(&str, &str)]) -> Result<RouteAnnotations, Invalid> {
    let map = pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    RouteAnnotations::parse(&map)
}

#[test]
fn status_lists() {
    let set = parse_statuses("5xx, 429,503 ,500-504,4XX", "p").unwrap();
    assert_eq!(set.codes, [429, 503]);
    assert_eq!(
        set.ranges,
        [
            StatusRange { min: 500, max: 599 },
            StatusRange { min: 500, max: 504 },
            StatusRange { min: 400, max: 499 },
        ]
    );
    for bad in ["", " , ", "6xx", "0xx", "abc", "504-500", "99", "5xx,1000"] {
        let err = parse_statuses(bad, "p").unwrap_err();
        assert_eq!(err.path, "p", "{bad}");
    }
}

#[test]
fn annotations() {
    assert_eq!(ann(&[("other", "x")]).unwrap(), RouteAnnotations::default());
    assert!(!RouteAnnotations::default().has_retry());
    let a = ann(&[
        (RETRY_LIMIT, " 0 "),
        (TIMEOUT_REQUEST, "1m"),
        (TIMEOUT_BACKEND_REQUEST, "250ms"),
    ])
    .unwrap();
    assert_eq!(a.limit, Some(0));
    assert!(a.has_retry());
    assert_eq!(a.request_timeout_ms, Some(60_000));
    assert_eq!(a.backend_request_timeout_ms, Some(250));
    for (key, value) in [
        (RETRY_LIMIT, "-1"),
        (RETRY_LIMIT, "101"),
        (RETRY_GRPC, ""),
        (RETRY_GRPC, "unavailable,nope"),
        (RETRY_HTTP, "teapot"),
        (TIMEOUT_BACKEND_REQUEST, "forever"),
    ] {
        let err = ann(&[(key, value)]).unwrap_err();
        assert_eq!(
            err.path,
            format!("metadata.annotations[{key:?}]"),
            "{value}"
        );
    }
}

#[test]
fn attempts_count_the_first_try() {
    let none = RouteAnnotations::default();
    let gw = |attempts| GatewayRetry {
        attempts,
        ..GatewayRetry::default()
    };
    let attempts = |g: &GatewayRetry<'_>, a: &RouteAnnotations| {
        rule_retry(Some(g), a, false, "r")
            .unwrap()
            .unwrap()
            .attempts
    };
    assert_eq!(attempts(&gw(Some(0)), &none), 1);
    assert_eq!(attempts(&gw(Some(1)), &none), 2);
    assert_eq!(attempts(&gw(Some(100)), &none), 101);
    assert_eq!(attempts(&gw(None), &none), 2);
    let limit = RouteAnnotations {
        limit: Some(4),
        ..RouteAnnotations::default()
    };
    assert_eq!(attempts(&gw(None), &limit), 5);
    assert_eq!(
        attempts(&gw(Some(1)), &limit),
        2,
        "the rule's own field wins"
    );
    let err = rule_retry(Some(&gw(Some(101))), &none, false, "spec.rules[2]").unwrap_err();
    assert_eq!(err.path, "spec.rules[2].retry.attempts");
    // No retry block and no retry annotation: no retries.
    assert_eq!(rule_retry(None, &none, false, "r"), Ok(None));
    assert_eq!(
        rule_retry(None, &limit, false, "r")
            .unwrap()
            .unwrap()
            .attempts,
        5
    );
}

#[test]
fn timeouts() {
    let none = RouteAnnotations::default();
    assert_eq!(rule_timeouts(None, None, &none, "r"), Ok((0, 0)));
    assert_eq!(
        rule_timeouts(Some("2s"), Some("2s"), &none, "r"),
        Ok((2_000, 2_000))
    );
    // 0s disables a timeout; a disabled request timeout bounds nothing.
    assert_eq!(
        rule_timeouts(Some("0s"), Some("5s"), &none, "r"),
        Ok((0, 5_000))
    );
    assert_eq!(
        rule_timeouts(Some("1s"), Some("0s"), &none, "r"),
        Ok((1_000, 0))
    );
    let err = rule_timeouts(Some("1s"), Some("1001ms"), &none, "spec.rules[0]").unwrap_err();
    assert_eq!(err.path, "spec.rules[0].timeouts.backendRequest");
    let ann = RouteAnnotations {
        request_timeout_ms: Some(9),
        backend_request_timeout_ms: Some(3),
        ..RouteAnnotations::default()
    };
    assert_eq!(rule_timeouts(Some("1s"), None, &ann, "r"), Ok((1_000, 3)));
}
