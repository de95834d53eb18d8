//! The Kubernetes source against a fake API server speaking list/watch JSON: watch events
//! and a `410 Gone` relist reach a live `Destination.Get` stream, AuthorizationPolicy
//! events reach a live `InboundPolicy.Watch` stream, and every API call the source makes
//! is one the RBAC rules grant (and every rule is used).

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use mesh_controller::index::{IndexConfig, IndexWriter};
use mesh_controller::kubernetes::rbac::CONTROLLER_RULES;
use mesh_controller::kubernetes::source::KubeSource;
use mesh_controller::metrics::Metrics;
use mesh_kube_fake::KubeApi;
use mesh_proto::destination::destination_client::DestinationClient;
use mesh_proto::destination::{update, GetDestination, Update};
use mesh_proto::policy::inbound_policy_client::InboundPolicyClient;
use mesh_proto::policy::{Action, InboundTarget, ServerPolicy, TlsMode};
use serde_json::{json, Value};

const SERVICES: &str = "/api/v1/services";
const PODS: &str = "/api/v1/pods";
const NAMESPACES: &str = "/api/v1/namespaces";
const SLICES: &str = "/apis/discovery.k8s.io/v1/endpointslices";
const AUTHZ: &str = "/apis/policy.mesh.dev/v1alpha1/authorizationpolicies";
use mesh_kube_fake::CONTROLLER_PATHS as PATHS;
fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "web", "namespace": "shop", "uid": "s1"},
        "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.20",
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}})
}

fn pod(name: &str, ip: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "shop", "uid": name, "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web",
            "containers": [{"name": "app"}, {"name": "mesh-proxy"}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]}})
}

fn slice(pods: &[(&str, &str)]) -> Value {
    let endpoints: Vec<Value> = pods
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "name": name, "namespace": "shop"}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-abc", "namespace": "shop", "uid": "e1",
            "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": endpoints})
}

/// `mesh_controller_source_events_total{source="kubernetes",kind="Service",event}`.
fn service_events(metrics: &Metrics, event: &str) -> f64 {
    source_events(metrics, "Service", event)
}

/// `mesh_controller_source_events_total{source="kubernetes",kind,event}`.
fn source_events(metrics: &Metrics, kind: &str, event: &str) -> f64 {
    let text = metrics.render(&Default::default());
    let series = format!(
        "mesh_controller_source_events_total{{source=\"kubernetes\",kind=\"{kind}\",event=\"{event}\"}} "
    );
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{series} missing in\n{text}"))
}

async fn next(stream: &mut tonic::Streaming<Update>) -> update::Update {
    let msg = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("an update within 10 s")
        .expect("stream ok")
        .expect("stream open");
    msg.update.expect("update set")
}

fn added(u: &update::Update) -> Vec<(String, String)> {
    match u {
        update::Update::Add(set) => set
            .endpoints
            .iter()
            .map(|e| {
                let id = e
                    .tls
                    .as_ref()
                    .map(|t| t.identity.clone())
                    .unwrap_or_default();
                (e.addr.clone(), id)
            })
            .collect(),
        other => panic!("expected add, got {other:?}"),
    }
}

fn removed(u: &update::Update) -> Vec<String> {
    match u {
        update::Update::Remove(set) => set.addrs.clone(),
        other => panic!("expected remove, got {other:?}"),
    }
}

#[tokio::test]
async fn watch_events_and_a_relist_reach_a_live_destination_stream() {
    let api = KubeApi::start(PATHS).await;
    api.apply(SERVICES, service());
    api.apply(PODS, pod("web-1", "10.0.0.1"));
    api.apply(SLICES, slice(&[("web-1", "10.0.0.1")]));
    api.apply(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "shop", "annotations": {"mesh.dev/inject": "enabled"}}}),
    );

    let config = kube::Config::new(format!("http://{}", api.addr).parse().unwrap());
    let client = kube::Client::try_from(config).unwrap();
    let writer = IndexWriter::new(IndexConfig::default());
    let reader = writer.subscribe();
    let metrics = Arc::clone(writer.metrics());
    let source = KubeSource::start(client, writer, Duration::from_secs(10)).await;
    // Every kind was listed once before `start` returned.
    assert_eq!(service_events(&metrics, "relist"), 1.0);
    assert_eq!(service_events(&metrics, "apply"), 0.0);

    let pki = support::Pki::new();
    let (addr, _server) = support::serve(
        &pki,
        reader,
        Arc::clone(&metrics),
        Default::default(),
        std::future::pending(),
    )
    .await;
    let mut client =
        DestinationClient::new(pki.channel(addr, "spiffe://cluster.local/ns/shop/sa/web"));
    let get = |target: &str| GetDestination {
        target: target.into(),
        context: "test".into(),
    };
    let mut stream = client
        .get(get("web.shop.svc.cluster.local:80"))
        .await
        .unwrap()
        .into_inner();
    let id = "spiffe://cluster.local/ns/shop/sa/web".to_string();
    assert_eq!(
        added(&next(&mut stream).await),
        [("10.0.0.1:8080".to_string(), id.clone())]
    );

    // ADDED pod, MODIFIED slice: a second endpoint appears.
    api.apply(PODS, pod("web-2", "10.0.0.2"));
    api.apply(
        SLICES,
        slice(&[("web-1", "10.0.0.1"), ("web-2", "10.0.0.2")]),
    );
    assert_eq!(
        added(&next(&mut stream).await),
        [("10.0.0.2:8080".to_string(), id.clone())]
    );
    // MODIFIED slice without web-1, DELETED pod: it goes.
    api.apply(SLICES, slice(&[("web-2", "10.0.0.2")]));
    assert_eq!(removed(&next(&mut stream).await), ["10.0.0.1:8080"]);
    api.delete(PODS, "shop", "web-1");

    // Changes the watch misses, then 410 Gone: the relist makes the index exact.
    api.apply_silently(PODS, pod("web-3", "10.0.0.3"));
    api.apply_silently(SLICES, slice(&[("web-3", "10.0.0.3")]));
    api.delete_silently(PODS, "shop", "web-2");
    api.expire();
    // Kinds relist independently, so intermediate states may show (web-2 briefly
    // without its pod); the stream must converge on exactly web-3.
    let mut state: BTreeMap<String, String> =
        BTreeMap::from([("10.0.0.2:8080".to_string(), id.clone())]);
    let want = BTreeMap::from([("10.0.0.3:8080".to_string(), id.clone())]);
    while state != want {
        match next(&mut stream).await {
            u @ update::Update::Add(_) => state.extend(added(&u)),
            u @ update::Update::Remove(_) => {
                for a in removed(&u) {
                    state.remove(&a);
                }
            }
            update::Update::NoEndpoints(_) => state.clear(),
        }
    }
    // Lookups by cluster IP and by pod IP answer from the same index.
    let mut by_ip = client.get(get("10.96.0.20:80")).await.unwrap().into_inner();
    assert_eq!(
        added(&next(&mut by_ip).await),
        [("10.0.0.3:8080".to_string(), id.clone())]
    );
    let mut by_pod = client.get(get("10.0.0.3:9999")).await.unwrap().into_inner();
    assert_eq!(
        added(&next(&mut by_pod).await),
        [("10.0.0.3:9999".to_string(), id.clone())]
    );

    // The 410 made the Service watcher list again (not an error), then watch again: wait
    // for that watch, so the deletion below reaches it as a DELETED event.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while api
        .calls()
        .iter()
        .filter(|c| c.path == SERVICES && c.watch)
        .count()
        < 2
    {
        assert!(
            tokio::time::Instant::now() < deadline,
            "Service not watched again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(service_events(&metrics, "relist"), 2.0);

    // DELETED Service: the target is gone.
    api.delete(SERVICES, "shop", "web");
    loop {
        match next(&mut stream).await {
            update::Update::NoEndpoints(ne) => {
                assert!(!ne.exists);
                break;
            }
            update::Update::Remove(_) => continue,
            other => panic!("unexpected {other:?}"),
        }
    }

    assert_eq!(service_events(&metrics, "delete"), 1.0);
    assert_eq!(service_events(&metrics, "error"), 0.0);

    // The webhook's namespace lookup reads the watched Namespaces.
    let namespaces = source.namespaces();
    assert_eq!(
        namespaces.annotations("shop").unwrap()["mesh.dev/inject"],
        "enabled"
    );
    assert!(namespaces.annotations("nowhere").is_none());
    // A namespace the watch has not delivered (created a moment ago, or while the API
    // was away) is looked up with a GET rather than taken as "no annotations".
    api.apply_silently(
        NAMESPACES,
        json!({"apiVersion": "v1", "kind": "Namespace",
            "metadata": {"name": "late", "annotations": {"mesh.dev/inject": "enabled"}}}),
    );
    assert!(namespaces.annotations("late").is_none());
    let late = namespaces.lookup("late").await.unwrap().unwrap();
    assert_eq!(late["mesh.dev/inject"], "enabled");
    assert_eq!(namespaces.lookup("nowhere").await.unwrap(), None);

    // Every call is granted by the RBAC rules, and every rule is used.
    let mut used = BTreeSet::new();
    for call in api.calls() {
        assert_eq!(call.method, "GET", "{call:?}");
        let (group, resource, named) = match call.path.split('/').collect::<Vec<_>>()[..] {
            ["", "api", "v1", resource] => ("", resource, false),
            ["", "api", "v1", resource, _name] => ("", resource, true),
            ["", "apis", group, _version, resource] => (group, resource, false),
            _ => panic!("unexpected path {}", call.path),
        };
        let verb = match (named, call.watch) {
            (true, _) => "get",
            (false, true) => "watch",
            (false, false) => "list",
        };
        let granted = CONTROLLER_RULES.iter().any(|r| {
            r.group == group && r.resources.contains(&resource) && r.verbs.contains(&verb)
        });
        assert!(
            granted,
            "{verb} {group}/{resource} is not in CONTROLLER_RULES"
        );
        used.insert((group.to_string(), resource.to_string(), verb));
    }
    for rule in CONTROLLER_RULES {
        for resource in rule.resources {
            for verb in rule.verbs {
                assert!(
                    used.contains(&(rule.group.to_string(), resource.to_string(), *verb)),
                    "RBAC grants {verb} {}/{resource} but the source never calls it",
                    rule.group
                );
            }
        }
    }
    drop(source);
}

fn authorization_policy(action: &str) -> Value {
    json!({"apiVersion": "policy.mesh.dev/v1alpha1", "kind": "AuthorizationPolicy",
        "metadata": {"name": "web-callers", "namespace": "shop", "uid": "a1"},
        "spec": {"targetRef": {"kind": "Service", "name": "web", "port": "http"},
            "action": action, "mtls": "strict",
            "rules": [{"from": [{"serviceAccounts": ["web", "ops/deployer"]}],
                "to": [{"paths": [{"prefix": "/api/"}]}]}]}})
}

async fn next_policy(stream: &mut tonic::Streaming<ServerPolicy>) -> ServerPolicy {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a policy within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn authorization_policy_events_reach_a_live_inbound_policy_stream() {
    let api = KubeApi::start(PATHS).await;
    api.apply(SERVICES, service());
    api.apply(PODS, pod("web-1", "10.0.0.1"));
    let writer = IndexWriter::new(IndexConfig::default());
    let reader = writer.subscribe();
    let metrics = Arc::clone(writer.metrics());
    let source = KubeSource::start(api.client(), writer, Duration::from_secs(10)).await;
    let pki = support::Pki::new();
    let (addr, _server) = support::serve(
        &pki,
        reader,
        Arc::clone(&metrics),
        Default::default(),
        std::future::pending(),
    )
    .await;
    let mut client =
        InboundPolicyClient::new(pki.channel(addr, "spiffe://cluster.local/ns/shop/sa/web"));
    // The pod's index name is the pod name; Service port `http` sends to 8080.
    let mut stream = client
        .watch(InboundTarget {
            workload: "shop/web-1".into(),
            port: 8080,
        })
        .await
        .unwrap()
        .into_inner();
    let p = next_policy(&mut stream).await;
    assert_eq!(p.tls_mode(), TlsMode::Default);
    assert!(p.policies.is_empty());

    // ADDED: compiled through the same parser as manifest files.
    api.apply(AUTHZ, authorization_policy("allow"));
    let p = next_policy(&mut stream).await;
    assert_eq!(p.tls_mode(), TlsMode::Strict);
    assert_eq!(p.tls_mode_source, "shop/web-callers");
    assert_eq!(p.policies.len(), 1, "{p:?}");
    assert_eq!(p.policies[0].name, "web-callers");
    assert_eq!(p.policies[0].action(), Action::Allow);
    assert_eq!(
        p.policies[0].rules[0].from[0].service_accounts,
        ["shop/web", "ops/deployer"]
    );

    // MODIFIED.
    api.apply(AUTHZ, authorization_policy("Deny"));
    assert_eq!(
        next_policy(&mut stream).await.policies[0].action(),
        Action::Deny
    );

    // MODIFIED to an invalid object: counted, and the last good version stays.
    api.apply(AUTHZ, authorization_policy("permit"));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while source_events(&metrics, "AuthorizationPolicy", "error") < 1.0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "invalid object not counted"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let quiet = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");

    // DELETED: back to the default policy.
    api.delete(AUTHZ, "shop", "web-callers");
    let p = next_policy(&mut stream).await;
    assert_eq!(p.tls_mode(), TlsMode::Default);
    assert!(p.policies.is_empty());
    assert_eq!(source_events(&metrics, "AuthorizationPolicy", "apply"), 2.0);
    assert_eq!(
        source_events(&metrics, "AuthorizationPolicy", "delete"),
        1.0
    );
    drop(source);
}

fn shop_namespace(inject: Option<&str>) -> Value {
    let annotations: BTreeMap<&str, &str> =
        inject.map(|v| ("mesh.dev/inject", v)).into_iter().collect();
    json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "shop", "annotations": annotations}})
}

#[tokio::test]
async fn after_an_api_outage_the_index_is_current_within_seconds() {
    let api = KubeApi::start(PATHS).await;
    api.apply(NAMESPACES, shop_namespace(None));
    api.apply(SERVICES, service());
    api.apply(PODS, pod("web-1", "10.0.0.1"));
    api.apply(SLICES, slice(&[("web-1", "10.0.0.1")]));
    let writer = IndexWriter::new(IndexConfig::default());
    let reader = writer.subscribe();
    // The client the controller builds (kube's own retries would hide the outage).
    let client = mesh_controller::kubernetes::client(api.config()).unwrap();
    let source = KubeSource::start(client, writer, Duration::from_secs(10)).await;
    let endpoints = |reader: &mesh_controller::index::IndexReader| -> Vec<String> {
        let index = reader.borrow();
        let target = index.parse_target("web.shop.svc.cluster.local:80").unwrap();
        match index.resolve(&target) {
            mesh_controller::index::Resolution::Endpoints(set) => {
                set.endpoints.keys().cloned().collect()
            }
            _ => Vec::new(),
        }
    };
    assert_eq!(endpoints(&reader), ["10.0.0.1:8080"]);

    let namespaces = source.namespaces();
    assert_eq!(namespaces.annotations("shop"), Some(BTreeMap::new()));

    // Six seconds without the API server: every watcher keeps failing (its backoff
    // grows meanwhile) and the world moves on without it.
    api.set_down(true);
    tokio::time::sleep(Duration::from_secs(6)).await;
    // The injector does not trust a namespace cache whose watch is failing: it asks
    // the API server (which cannot answer now, so the review fails, see the webhook).
    assert_eq!(namespaces.annotations("shop"), None);
    assert!(namespaces.lookup("shop").await.is_err());
    api.apply_silently(PODS, pod("web-2", "10.0.0.2"));
    api.apply_silently(SLICES, slice(&[("web-2", "10.0.0.2")]));
    api.apply_silently(NAMESPACES, shop_namespace(Some("enabled")));
    // Back, with its history compacted: resuming watches get 410 Gone.
    api.compact();
    api.set_down(false);
    let back = std::time::Instant::now();
    while endpoints(&reader) != ["10.0.0.2:8080"] {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "still {:?} {:?} after the API came back",
            endpoints(&reader),
            back.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("index current {:?} after the API came back", back.elapsed());
    // The annotation made during the outage is seen, from the API or the relisted cache.
    let annotations = namespaces.lookup("shop").await.unwrap().unwrap();
    assert_eq!(annotations["mesh.dev/inject"], "enabled");
    while namespaces.annotations("shop").is_none() {
        assert!(
            back.elapsed() < Duration::from_secs(5),
            "namespace cache still stale"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        namespaces.annotations("shop").unwrap()["mesh.dev/inject"],
        "enabled"
    );
    drop(source);
}
