//! Leader election against the fake API server: two replicas race for the Lease and
//! exactly one leads; when the leader stops renewing, the other takes over once the
//! lease has expired, counting a transition. Short timings: a 1 s lease renewed every
//! 200 ms.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::PostParams;
use kube::Api;
use mesh_identity::kubernetes::lease::{self, is_leader, LEASE_NAME};
use mesh_identity::kubernetes::LeaseSettings;
use mesh_identity::metrics::Metrics;
use mesh_kube_fake::KubeApi;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio::task::JoinHandle;

const NS: &str = "mesh-system";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
const LEASE_SECONDS: i64 = 1;

/// One replica's elector.
struct Replica {
    identity: &'static str,
    leader: watch::Receiver<bool>,
    task: JoinHandle<()>,
    metrics: Arc<Metrics>,
}

fn replica(api: &KubeApi, identity: &'static str) -> Replica {
    let ms = Duration::from_millis;
    let settings =
        LeaseSettings::with_timings(identity, ms(1000), ms(200), ms(100)).expect("valid timings");
    let metrics = Arc::new(Metrics::new());
    let (leader, task) = lease::start(api.client(), NS, settings, metrics.clone());
    Replica {
        identity,
        leader,
        task,
        metrics,
    }
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn stored(api: &KubeApi) -> Value {
    api.get(LEASES, NS, LEASE_NAME).expect("the lease exists")
}

fn time(v: &Value) -> Timestamp {
    v.as_str().expect("a time").parse().expect("RFC 3339")
}

/// The specs written (POST or PUT bodies), in order, with their holder.
fn written(api: &KubeApi) -> Vec<(String, Value)> {
    api.calls()
        .into_iter()
        .filter(|c| matches!(c.method.as_str(), "POST" | "PUT"))
        .filter_map(|c| {
            let spec = c.body?["spec"].clone();
            Some((spec["holderIdentity"].as_str()?.to_string(), spec))
        })
        .collect()
}

/// Waits until exactly one of `a` and `b` leads, checks it stays so over a few
/// renewals, and returns (leader, follower).
async fn one_leads(api: &KubeApi, a: Replica, b: Replica) -> (Replica, Replica) {
    eventually("one replica leads", || {
        is_leader(&a.leader) || is_leader(&b.leader)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(
        is_leader(&a.leader) != is_leader(&b.leader),
        "exactly one leads"
    );
    let (leader, follower) = if is_leader(&a.leader) { (a, b) } else { (b, a) };
    assert_eq!(stored(api)["spec"]["holderIdentity"], leader.identity);
    let gauge = |r: &Replica| r.metrics.render(std::time::UNIX_EPOCH);
    assert!(gauge(&leader).contains("mesh_identity_leader 1"));
    assert!(gauge(&follower).contains("mesh_identity_leader 0"));
    let by = |identity: &str| {
        written(api)
            .iter()
            .filter(|(holder, _)| holder == identity)
            .count()
    };
    let renewals = by(leader.identity);
    assert!(renewals >= 3, "renewed every 200 ms: {renewals}");
    // The follower tried once at most (a create or takeover that lost), then waited.
    assert!(by(follower.identity) <= 1, "{:?}", written(api));
    (leader, follower)
}

/// Stops `leader` and checks `follower` takes over only once the lease has expired.
async fn takes_over(api: &KubeApi, leader: Replica, follower: Replica, transitions: i64) {
    leader.task.abort();
    assert!(leader.task.await.unwrap_err().is_cancelled());
    assert!(
        !is_leader(&leader.leader),
        "a stopped elector does not lead"
    );
    let last_renewal = written(api)
        .iter()
        .rev()
        .find(|(holder, _)| holder == leader.identity)
        .map(|(_, spec)| time(&spec["renewTime"]))
        .expect("the leader renewed");

    eventually("the follower takes over", || is_leader(&follower.leader)).await;
    let spec = stored(api)["spec"].clone();
    assert_eq!(spec["holderIdentity"], follower.identity);
    assert_eq!(spec["leaseTransitions"], transitions);
    assert_eq!(spec["acquireTime"], spec["renewTime"]);
    let (_, first) = written(api)
        .into_iter()
        .find(|(holder, spec)| {
            holder == follower.identity && time(&spec["renewTime"]) > last_renewal
        })
        .expect("the follower wrote the lease");
    let waited = time(&first["renewTime"]).duration_since(last_renewal);
    assert!(
        waited >= SignedDuration::from_secs(LEASE_SECONDS),
        "took over {waited:?} after the last renewal, before the lease expired"
    );
    follower.task.abort();
}

#[tokio::test]
async fn two_replicas_race_for_a_new_lease_and_one_takes_over_from_the_other() {
    let api = KubeApi::start(&[LEASES]).await;
    let a = replica(&api, "mesh-identity-a");
    let b = replica(&api, "mesh-identity-b");
    let (leader, follower) = one_leads(&api, a, b).await;
    let spec = stored(&api)["spec"].clone();
    assert_eq!(spec["leaseTransitions"], 0);
    assert_eq!(spec["leaseDurationSeconds"], LEASE_SECONDS);
    takes_over(&api, leader, follower, 1).await;
}

#[tokio::test]
async fn two_replicas_race_for_an_expired_lease() {
    let api = KubeApi::start(&[LEASES]).await;
    let long_ago = Timestamp::now() - SignedDuration::from_secs(60);
    let stamp = serde_json::to_value(MicroTime(long_ago)).unwrap();
    api.apply(
        LEASES,
        json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
            "metadata": {"name": LEASE_NAME, "namespace": NS},
            "spec": {"holderIdentity": "gone", "leaseDurationSeconds": 15,
                "renewTime": stamp, "acquireTime": stamp, "leaseTransitions": 4}}),
    );
    let a = replica(&api, "mesh-identity-a");
    let b = replica(&api, "mesh-identity-b");
    let (leader, follower) = one_leads(&api, a, b).await;
    assert_eq!(stored(&api)["spec"]["leaseTransitions"], 5);
    assert!(
        !api.calls().iter().any(|c| c.method == "POST"),
        "the lease exists: replaced, not created"
    );
    takes_over(&api, leader, follower, 6).await;
}

#[tokio::test]
async fn a_replace_with_a_stale_resource_version_conflicts() {
    let api = KubeApi::start(&[LEASES]).await;
    let leases: Api<Lease> = Api::namespaced(api.client(), NS);
    let mut lease = Lease::default();
    lease.metadata.name = Some(LEASE_NAME.to_string());
    let created = leases.create(&PostParams::default(), &lease).await.unwrap();
    let mut first = created.clone();
    first
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("a".into());
    let replaced = leases
        .replace(LEASE_NAME, &PostParams::default(), &first)
        .await
        .unwrap();
    assert_ne!(
        replaced.metadata.resource_version,
        created.metadata.resource_version
    );
    // Written from what was read before that replace: refused.
    let mut stale = created;
    stale
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("b".into());
    let err = leases
        .replace(LEASE_NAME, &PostParams::default(), &stale)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 409),
        "{err:?}"
    );
    assert_eq!(stored(&api)["spec"]["holderIdentity"], "a");
    // A missing object cannot be replaced.
    let err = Api::<Lease>::namespaced(api.client(), "elsewhere")
        .replace(LEASE_NAME, &PostParams::default(), &replaced)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, kube::Error::Api(s) if s.code == 404),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stopping_leader_hands_the_lease_back_at_once() {
    let api = KubeApi::start(&[LEASES]).await;
    let ms = Duration::from_millis;
    // A long lease: the standby could only take over after 30 s without the release.
    let settings = |id| LeaseSettings::with_timings(id, ms(30_000), ms(200), ms(100)).unwrap();
    let (mut leader_rx, task, release) =
        lease::start_releasable(api.client(), NS, settings("a"), Arc::new(Metrics::new()));
    eventually("a leads", || *leader_rx.borrow_and_update()).await;
    let b = lease::start(api.client(), NS, settings("b"), Arc::new(Metrics::new()));
    tokio::time::sleep(ms(300)).await;
    assert!(!*b.0.borrow(), "b may not lead while a holds the lease");

    let released = std::time::Instant::now();
    release.release();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the election ends")
        .unwrap();
    assert!(!*leader_rx.borrow(), "a no longer leads");
    let b_leader = b.0.clone();
    eventually("b takes over", || *b_leader.borrow()).await;
    let took = released.elapsed();
    println!("b leads {took:?} after a stepped down");
    assert!(took < Duration::from_secs(3), "{took:?}");
    assert_eq!(stored(&api)["spec"]["holderIdentity"], "b");
    b.1.abort();
}
