//! `--source kubernetes` publishing state: the trust bundle goes into every namespace and
//! is repaired when stale, only by the replica holding the leader Lease, and every API call
//! is one the RBAC rules grant (every rule used).

mod support;

use support::*;

#[tokio::test]
async fn the_trust_bundle_is_published_to_every_namespace_and_kept_current() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    // A namespace holding an unmanaged copy (no label): the create conflicts, and the
    // copy is adopted with a patch.
    api.apply(NAMESPACES, namespace("legacy"));
    api.apply(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "mesh-trust-roots", "namespace": "legacy"},
            "data": {"ca-bundle.pem": "hand-made"}}),
    );
    let r = start(&api, &anchor).await;
    // A lone replica leads from the start.
    assert!(lease::is_leader(&r.kube.leader));
    let bundle = anchor.cert.trim().to_string() + "\n";
    eventually("the unmanaged copy is adopted", || {
        roots(&api, "legacy").unwrap()["data"]["ca-bundle.pem"] == bundle.as_str()
    })
    .await;
    assert_eq!(
        roots(&api, "legacy").unwrap()["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "mesh-identity"
    );

    for ns in ["default", "shop", CONTROL_NS] {
        eventually(&format!("the bundle is in {ns}"), || {
            roots(&api, ns).is_some()
        })
        .await;
        let cm = roots(&api, ns).unwrap();
        assert_eq!(cm["data"]["ca-bundle.pem"], bundle.as_str(), "{ns}");
        assert_eq!(
            cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "mesh-identity"
        );
    }
    // A namespace that appears gets it.
    api.apply(NAMESPACES, namespace("late"));
    eventually("the bundle is in a new namespace", || {
        roots(&api, "late").is_some()
    })
    .await;
    // A stale copy is patched back.
    let mut stale = roots(&api, "shop").unwrap();
    stale["data"]["ca-bundle.pem"] = json!("stale");
    api.apply(CONFIG_MAPS, stale);
    eventually("the stale bundle is patched", || {
        roots(&api, "shop").unwrap()["data"]["ca-bundle.pem"] == bundle.as_str()
    })
    .await;
    assert!(api
        .calls()
        .iter()
        .any(|c| c.method == "PATCH"
            && c.path == "/api/v1/namespaces/shop/configmaps/mesh-trust-roots"));
    // Each ConfigMap was created once (no create raced a cached state).
    for ns in ["default", "shop", CONTROL_NS, "late"] {
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let posts = api
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == path)
            .count();
        assert_eq!(posts, 1, "{ns}");
    }
    // A deleted copy is put back.
    api.delete(CONFIG_MAPS, "default", "mesh-trust-roots");
    eventually("the deleted bundle is recreated", || {
        roots(&api, "default").is_some()
    })
    .await;
    // After an API outage that outlived the watches' history (410 Gone on resume), a
    // namespace created meanwhile is served within seconds.
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    api.apply_silently(NAMESPACES, namespace("during-outage"));
    api.compact();
    api.set_down(false);
    let back = std::time::Instant::now();
    eventually(
        "the bundle reaches a namespace created during the outage",
        || roots(&api, "during-outage").is_some(),
    )
    .await;
    assert!(
        back.elapsed() < Duration::from_secs(5),
        "{:?}",
        back.elapsed()
    );
    // System namespaces never get it.
    for ns in ["kube-system", "kube-public"] {
        assert!(roots(&api, ns).is_none(), "{ns}");
    }
    // The ConfigMap watch is restricted to the managed ones.
    assert!(api.calls().iter().any(|c| c.path == CONFIG_MAPS
        && c.query
            .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmesh-identity")));
}

#[tokio::test]
async fn a_lagging_watch_does_not_make_the_reconciler_repeat_its_writes() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    // ConfigMap events reach the watch 400 ms late: the reconciler's own create is not
    // in its cache when the namespace changes again right after it.
    api.set_watch_lag(CONFIG_MAPS, Duration::from_millis(400));
    let _r = start(&api, &anchor).await;
    let posts = |ns: &str| {
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        api.calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == path)
            .count()
    };
    api.apply(NAMESPACES, namespace("busy"));
    eventually("the bundle is in busy", || posts("busy") >= 1).await;
    for i in 0..3 {
        let mut ns = namespace("busy");
        ns["metadata"]["labels"] = json!({"touch": i.to_string()});
        api.apply(NAMESPACES, ns);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert!(roots(&api, "busy").is_some());
    let writes: Vec<String> = api
        .calls()
        .iter()
        .filter(|c| c.method != "GET" && c.path.contains("/namespaces/busy/"))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert_eq!(
        writes,
        ["POST /api/v1/namespaces/busy/configmaps"],
        "one create, nothing repeated"
    );
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing_until_it_takes_over() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    // Another replica holds a live lease (for an hour).
    api.apply(
        LEASES,
        lease_held_by("mesh-identity-1", Timestamp::now(), 3600),
    );
    let mut r = start(&api, &anchor).await;
    assert!(!lease::is_leader(&r.kube.leader));

    // It serves, and it watches the Secret: a refused issuer is counted...
    let web = spiffe_id(TD, "shop", "web");
    certify(&mut r.client, "web-token", &web).await.unwrap();
    api.apply(SECRETS, issuer_secret(&issuer(&self::anchor())));
    let rejected = "mesh_identity_issuer_reloads_total{result=\"rejected\"} 1";
    for _ in 0..500 {
        if has_line(&metrics(r.admin).await, rejected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics(r.admin).await;
    assert!(has_line(&text, rejected), "{text}");
    assert!(has_line(&text, "mesh_identity_leader 0"), "{text}");
    // ...and it watches namespaces and ConfigMaps, several election rounds long...
    eventually("the trust bundle watches run", || {
        let calls = api.calls();
        [NAMESPACES, CONFIG_MAPS]
            .iter()
            .all(|p| calls.iter().any(|c| c.path == *p && c.watch))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // ...but it writes nothing: no ConfigMap, no Event, no Lease.
    let writes = |api: &KubeApi| -> Vec<String> {
        api.calls()
            .iter()
            .filter(|c| c.method != "GET" && c.path != TOKEN_REVIEWS)
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    };
    assert_eq!(writes(&api), Vec::<String>::new());
    assert!(api.objects(EVENTS).is_empty());
    assert!(roots(&api, "shop").is_none());
    assert!(
        api.calls()
            .iter()
            .filter(|c| c.method == "GET" && c.path.ends_with("/leases/mesh-identity"))
            .count()
            >= 2,
        "it keeps trying"
    );

    // The other replica stopped renewing long ago: this one takes over, and publishes
    // the bundle at once.
    let long_ago = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
    api.apply(LEASES, lease_held_by("mesh-identity-1", long_ago, 15));
    eventually("it leads", || lease::is_leader(&r.kube.leader)).await;
    let held = api.get(LEASES, CONTROL_NS, "mesh-identity").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], ME);
    assert_eq!(held["spec"]["leaseTransitions"], 1);
    for ns in ["default", "shop", CONTROL_NS] {
        eventually(&format!("the bundle is in {ns}"), || {
            roots(&api, ns).is_some()
        })
        .await;
    }
    assert!(has_line(&metrics(r.admin).await, "mesh_identity_leader 1"));
}

#[tokio::test]
async fn every_api_call_is_granted_and_every_rule_is_used() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let bundle = anchor.cert.trim().to_string() + "\n";

    // TokenReview (create tokenreviews).
    certify(&mut r.client, "web-token", &spiffe_id(TD, "shop", "web"))
        .await
        .unwrap();
    // A refused issuer (create events), seen again after a relist (patch events: the
    // repeat joins the Event's series).
    api.apply(SECRETS, issuer_secret(&issuer(&self::anchor())));
    eventually("the refusal is recorded", || {
        api.calls()
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/events"))
    })
    .await;
    api.expire();
    eventually("the repeat is recorded", || {
        api.calls()
            .iter()
            .any(|c| c.method == "PATCH" && c.path.contains("/events/"))
    })
    .await;
    // The bundle created (create configmaps) and patched (patch configmaps).
    eventually("the bundle is published", || roots(&api, "shop").is_some()).await;
    let mut stale = roots(&api, "shop").unwrap();
    stale["data"]["ca-bundle.pem"] = json!("stale");
    api.apply(CONFIG_MAPS, stale);
    eventually("the bundle is patched", || {
        roots(&api, "shop").unwrap()["data"]["ca-bundle.pem"] == bundle.as_str()
    })
    .await;
    // The Lease read (get leases), created (create leases) and renewed (update leases).
    eventually("the lease is renewed", || {
        api.calls()
            .iter()
            .any(|c| c.method == "PUT" && c.path.contains("/leases/"))
    })
    .await;

    let mut used = BTreeSet::new();
    for call in api.calls() {
        let t = parse_path(&call.path).unwrap_or_else(|| panic!("unexpected path {}", call.path));
        let verb = match (call.method.as_str(), &t.name, call.watch) {
            ("GET", None, true) => "watch",
            ("GET", None, false) => "list",
            ("GET", Some(_), _) => "get",
            ("POST", None, _) => "create",
            ("PATCH", Some(_), _) => "patch",
            ("PUT", Some(_), _) => "update",
            (m, _, _) => panic!("unexpected {m} {}", call.path),
        };
        let grants = |rules: &[kubernetes::ApiRule]| {
            rules.iter().any(|r| {
                r.group == t.group
                    && r.resources.contains(&t.resource.as_str())
                    && r.verbs.contains(&verb)
            })
        };
        let scope = if grants(CLUSTER_RULES) {
            "cluster"
        } else if t.namespace.as_deref() == Some(CONTROL_NS) && grants(NAMESPACE_RULES) {
            "namespace"
        } else {
            panic!(
                "{verb} {}/{} ({:?}) is not granted by CLUSTER_RULES or NAMESPACE_RULES",
                t.group, t.resource, t.namespace
            )
        };
        // Namespace-scoped rules may only be needed in the control-plane namespace.
        used.insert((scope, t.group.clone(), t.resource.clone(), verb));
    }
    for (scope, rules) in [("cluster", CLUSTER_RULES), ("namespace", NAMESPACE_RULES)] {
        for rule in rules {
            for resource in rule.resources {
                for verb in rule.verbs {
                    assert!(
                        used.contains(&(scope, rule.group.to_string(), resource.to_string(), *verb)),
                        "{scope} rule grants {verb} {}/{resource} but nothing calls it; calls: {used:?}",
                        rule.group
                    );
                }
            }
        }
    }
}
