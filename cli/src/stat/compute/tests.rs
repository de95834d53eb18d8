use super::*;

fn sample(name: &str, labels: &[(&str, &str)], value: f64) -> Sample {
    Sample {
        name: name.into(),
        labels: labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        value,
    }
}

fn target(workload: &str) -> BTreeMap<String, String> {
    [
        ("job", "mesh-proxy"),
        ("namespace", "demo"),
        ("workload", workload),
        ("pod", workload),
    ]
    .iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn query(field: Field, metric: &'static str, agg: Agg) -> Query {
    Query {
        field,
        metric,
        matchers: vec![("direction", Matcher::Eq("inbound".into()))],
        group: vec!["dst_namespace", "dst_workload"],
        agg,
    }
}

fn key(w: &str) -> Key {
    vec!["demo".into(), w.into()]
}

const IN: (&str, &str) = ("direction", "inbound");

/// api-1 served 100 requests in 10 s (20 failed); api-2's counter reset
/// (restart) and counts 30 since; an outbound series is not selected.
fn scrapes() -> Vec<Scrapes> {
    let l1 = |c: &'static str| {
        vec![
            IN,
            ("dst_namespace", "demo"),
            ("dst_workload", "api-1"),
            ("classification", c),
        ]
    };
    let l2 = vec![
        IN,
        ("dst_namespace", "demo"),
        ("dst_workload", "api-2"),
        ("classification", "success"),
    ];
    let out = [
        ("direction", "outbound"),
        ("dst_namespace", "demo"),
        ("dst_workload", "api-1"),
    ];
    vec![
        Scrapes {
            target: target("api-1"),
            before: vec![
                sample("mesh_responses_total", &l1("success"), 20.0),
                sample("mesh_responses_total", &l1("failure"), 5.0),
                sample("mesh_requests_total", &out, 7.0),
            ],
            after: vec![
                sample("mesh_responses_total", &l1("success"), 100.0),
                sample("mesh_responses_total", &l1("failure"), 25.0),
                sample("mesh_requests_total", &out, 1007.0),
                sample("mesh_identity_cert_renewals_total", &[], 1.0),
            ],
            elapsed: 10.0,
        },
        Scrapes {
            target: target("api-2"),
            before: vec![sample("mesh_responses_total", &l2, 500.0)],
            after: vec![
                sample("mesh_responses_total", &l2, 30.0),
                sample("mesh_identity_cert_renewals_total", &[], 1.0),
            ],
            elapsed: 10.0,
        },
    ]
}

#[test]
fn rates_with_counter_resets_and_matchers() {
    let s = scrapes();
    let all = eval(
        &s,
        &query(Field::Responses, "mesh_responses_total", Agg::Rate),
    )
    .unwrap();
    assert_eq!(all[&key("api-1")], 10.0);
    assert_eq!(all[&key("api-2")], 3.0);
    let mut q = query(Field::Successes, "mesh_responses_total", Agg::Rate);
    q.matchers
        .push(("classification", Matcher::Eq("success".into())));
    let ok = eval(&s, &q).unwrap();
    assert_eq!(ok[&key("api-1")], 8.0);
    let q = query(Field::Requests, "mesh_requests_total", Agg::Rate);
    assert!(eval(&s, &q).unwrap().is_empty(), "outbound series selected");
    assert_eq!(increase(Some(5.0), 7.0), 2.0);
    assert_eq!(increase(Some(5.0), 3.0), 3.0);
    assert_eq!(increase(None, 4.0), 4.0);
}

#[test]
fn regex_matchers_are_anchored_and_missing_labels_are_empty() {
    let s = scrapes();
    let mut q = query(Field::Responses, "mesh_responses_total", Agg::Rate);
    q.matchers
        .push(("dst_workload", Matcher::Re("api-1".into())));
    assert_eq!(eval(&s, &q).unwrap().len(), 1);
    q.matchers.pop();
    q.matchers.push(("dst_workload", Matcher::Re("api".into())));
    assert!(eval(&s, &q).unwrap().is_empty());
    q.matchers.pop();
    q.matchers.push(("route", Matcher::Eq("".into())));
    assert_eq!(eval(&s, &q).unwrap().len(), 2);
}

#[test]
fn pods_and_rows() {
    let s = scrapes();
    let mut meshed = query(
        Field::Meshed,
        "mesh_identity_cert_renewals_total",
        Agg::Pods,
    );
    meshed.matchers = vec![("job", Matcher::Eq("mesh-proxy".into()))];
    meshed.group = vec!["namespace", "workload"];
    let mut ok = query(Field::Successes, "mesh_responses_total", Agg::Rate);
    ok.matchers
        .push(("classification", Matcher::Eq("success".into())));
    let qs = [
        query(Field::Requests, "mesh_responses_total", Agg::Rate),
        query(Field::Responses, "mesh_responses_total", Agg::Rate),
        ok,
        meshed,
    ];
    let answers: Vec<(Query, Answer)> = qs
        .iter()
        .map(|q| (q.clone(), eval(&s, q).unwrap()))
        .collect();
    let rows = rows(&answers, |k| (k[1].clone(), k[0].clone(), None));
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].name, "api-1");
    assert_eq!(rows[0].meshed, 1);
    assert_eq!(rows[0].success, Some(0.8));
    assert_eq!(rows[0].rps, 10.0);
    assert_eq!(rows[0].latency_ms_p50, None);
    assert_eq!(rows[1].success, Some(1.0));
}

#[test]
fn quantiles_interpolate_like_prometheus() {
    let b = [
        (0.001, 10.0),
        (0.01, 60.0),
        (0.1, 100.0),
        (f64::INFINITY, 100.0),
    ];
    // rank 50 falls in (0.001, 0.01]: 0.001 + 0.009 * 40/50.
    let p50 = histogram_quantile(0.5, &b).unwrap();
    assert!((p50 - 0.0082).abs() < 1e-12, "{p50}");
    // rank 5 in the first bucket, interpolated from 0.
    assert!((histogram_quantile(0.05, &b).unwrap() - 0.0005).abs() < 1e-12);
    // rank 99 in (0.01, 0.1].
    let p99 = histogram_quantile(0.99, &b).unwrap();
    assert!((p99 - (0.01 + 0.09 * 39.0 / 40.0)).abs() < 1e-12, "{p99}");
    // Only +Inf above: the highest finite bound.
    let tail = [(0.001, 1.0), (0.01, 2.0), (f64::INFINITY, 10.0)];
    assert_eq!(histogram_quantile(0.9, &tail), Some(0.01));
    // Empty buckets in between do not move the answer; unsorted input is fine.
    let gaps = [(f64::INFINITY, 4.0), (0.5, 4.0), (0.1, 4.0), (0.05, 0.0)];
    assert!((histogram_quantile(0.5, &gaps).unwrap() - 0.075).abs() < 1e-12);
    // No observations, no +Inf, one bucket: no answer.
    assert_eq!(
        histogram_quantile(0.5, &[(0.1, 0.0), (f64::INFINITY, 0.0)]),
        None
    );
    assert_eq!(histogram_quantile(0.5, &[(0.1, 1.0), (0.2, 2.0)]), None);
    assert_eq!(histogram_quantile(0.5, &[(f64::INFINITY, 2.0)]), None);
}

#[test]
fn quantiles_from_two_snapshots() {
    let le = |le: &'static str| {
        vec![
            IN,
            ("dst_namespace", "demo"),
            ("dst_workload", "api-1"),
            ("le", le),
        ]
    };
    let m = "mesh_response_latency_seconds_bucket";
    let before = vec![
        sample(m, &le("0.01"), 100.0),
        sample(m, &le("0.1"), 100.0),
        sample(m, &le("+Inf"), 100.0),
    ];
    let after = vec![
        sample(m, &le("0.01"), 100.0),
        sample(m, &le("0.1"), 200.0),
        sample(m, &le("+Inf"), 200.0),
    ];
    let s = [Scrapes {
        target: target("api-1"),
        before,
        after,
        elapsed: 5.0,
    }];
    let q = query(
        Field::Latency(0),
        "mesh_response_latency_seconds",
        Agg::Quantile(0.5),
    );
    let a = eval(&s, &q).unwrap();
    // Every new observation is in (0.01, 0.1]: the median is its middle.
    assert!((a[&key("api-1")] - 0.055).abs() < 1e-12, "{a:?}");
}
