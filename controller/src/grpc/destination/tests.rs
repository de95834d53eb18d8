use std::collections::{BTreeMap, HashMap};

use super::*;
use mesh_proto::destination::WeightedAddr;

fn ep(addr: &str, sa: &str) -> WeightedAddr {
    WeightedAddr {
        addr: addr.into(),
        weight: 10_000,
        metric_labels: HashMap::from([("serviceaccount".into(), sa.into())]),
        tls: None,
        protocol_hint: 0,
    }
}

fn set(eps: &[WeightedAddr]) -> Resolution {
    Resolution::Endpoints(EndpointSet {
        metric_labels: HashMap::from([("service".into(), "web".into())]),
        endpoints: eps
            .iter()
            .map(|e| (e.addr.clone(), e.clone()))
            .collect::<BTreeMap<_, _>>(),
    })
}

fn added(u: &Update) -> Vec<&str> {
    match &u.update {
        Some(update::Update::Add(s)) => {
            assert_eq!(s.metric_labels["service"], "web");
            s.endpoints.iter().map(|e| e.addr.as_str()).collect()
        }
        other => panic!("expected add, got {other:?}"),
    }
}

fn removed(u: &Update) -> Vec<&str> {
    match &u.update {
        Some(update::Update::Remove(s)) => s.addrs.iter().map(String::as_str).collect(),
        other => panic!("expected remove, got {other:?}"),
    }
}

fn no_eps(u: &Update) -> bool {
    match &u.update {
        Some(update::Update::NoEndpoints(n)) => n.exists,
        other => panic!("expected no_endpoints, got {other:?}"),
    }
}

#[test]
fn initial_state() {
    assert!(!no_eps(&initial(&Resolution::Unknown)));
    assert!(no_eps(&initial(&Resolution::Empty)));
    let a = ep("10.0.0.1:80", "a");
    let b = ep("10.0.0.2:80", "b");
    assert_eq!(
        added(&initial(&set(&[a, b]))),
        ["10.0.0.1:80", "10.0.0.2:80"]
    );
}

#[test]
fn endpoint_diffs() {
    let (a, b, c) = (
        ep("10.0.0.1:80", "a"),
        ep("10.0.0.2:80", "b"),
        ep("10.0.0.3:80", "c"),
    );
    let before = set(&[a.clone(), b.clone()]);
    assert!(diff(&before, &before).is_empty());

    let after = set(&[b.clone(), c.clone()]);
    let d = diff(&before, &after);
    assert_eq!(d.len(), 2);
    assert_eq!(removed(&d[0]), ["10.0.0.1:80"]);
    assert_eq!(added(&d[1]), ["10.0.0.3:80"]);

    // Changed metadata re-adds the endpoint under the same addr.
    let b2 = ep("10.0.0.2:80", "other");
    let d = diff(&after, &set(&[b2, c.clone()]));
    assert_eq!(d.len(), 1);
    assert_eq!(added(&d[0]), ["10.0.0.2:80"]);

    // Pure removal.
    let d = diff(&after, &set(&[c]));
    assert_eq!(d.len(), 1);
    assert_eq!(removed(&d[0]), ["10.0.0.2:80"]);
}

#[test]
fn existence_transitions() {
    let some = set(&[ep("10.0.0.1:80", "a")]);
    let (unknown, empty) = (Resolution::Unknown, Resolution::Empty);
    assert!(diff(&unknown, &unknown).is_empty());
    assert!(diff(&empty, &empty).is_empty());

    let d = diff(&some, &empty);
    assert_eq!(d.len(), 1);
    assert!(no_eps(&d[0]));
    let d = diff(&some, &unknown);
    assert_eq!(d.len(), 1);
    assert!(!no_eps(&d[0]));
    let d = diff(&unknown, &empty);
    assert!(no_eps(&d[0]));
    let d = diff(&empty, &unknown);
    assert!(!no_eps(&d[0]));

    for from in [&unknown, &empty] {
        let d = diff(from, &some);
        assert_eq!(d.len(), 1);
        assert_eq!(added(&d[0]), ["10.0.0.1:80"]);
    }
}
