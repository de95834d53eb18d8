//! Publishing the trust bundle: ConfigMap `mesh-trust-roots` (key `ca-bundle.pem`, the
//! names the injector mounts) holding the trust anchors, in every namespace but the
//! Kubernetes system ones, labelled `app.kubernetes.io/managed-by: mesh-identity`.
//!
//! A `kube::runtime::Controller` over Namespaces: a namespace is reconciled when it
//! changes, when its managed ConfigMap changes or goes (a label-selected watch mapped
//! to its namespace), and all of them when this replica becomes the leader
//! ([`super::lease`]). [`plan`] (pure) says what one namespace needs; [`apply`] creates
//! (POST) or merge-patches (PATCH) it. A failed call is retried after [`RETRY_DELAY`].
//! Every replica keeps the watches warm; only the leader writes. Watches relist at once
//! on `410 Gone` and back off only on errors (`mesh_proto::net::retry`).

mod pending;
mod plan;

pub use plan::{plan, Action};

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::controller::{self, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::{Api, Client, ResourceExt};
use mesh_proto::kubernetes::watch;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use self::pending::PendingWrites;
use super::lease;
use super::{MANAGED_BY, MANAGED_BY_LABEL, TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY};

/// Delay before a failed namespace is tried again.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);
/// The field manager named in writes.
const FIELD_MANAGER: &str = "mesh-identity";
/// How long a reconcile waits for the ConfigMap watch's first list before trying again.
const READY_WAIT: Duration = Duration::from_millis(500);
/// How often every namespace is reconciled anyway.
pub const RESYNC: Duration = Duration::from_secs(300);
/// Namespaces reconciled at once (bounds the API calls in flight after a takeover).
const CONCURRENCY: u16 = 4;

/// What every reconcile reads.
struct Context {
    client: Client,
    /// The bundle to publish, as it changes.
    bundle: watch::Receiver<String>,
    leader: watch::Receiver<bool>,
    /// The managed ConfigMaps, as watched.
    config_maps: Store<ConfigMap>,
    /// Writes the ConfigMap watch has not delivered yet.
    pending: PendingWrites,
}

/// Runs the reconciler for as long as the task lives; every namespace is reconciled
/// again when `bundle` changes.
pub async fn run(client: Client, bundle: watch::Receiver<String>, leader: watch::Receiver<bool>) {
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let (namespaces, namespace_writer) = reflector::store::<Namespace>();
    let namespace_events = watch(
        Api::<Namespace>::all(client.clone()),
        watcher::Config::default(),
    )
    .reflect(namespace_writer)
    .applied_objects();
    let (config_maps, config_map_writer) = reflector::store::<ConfigMap>();
    let config_map_events = watch(
        Api::<ConfigMap>::all(client.clone()),
        watcher::Config::default().labels(&selector),
    )
    .reflect(config_map_writer)
    // Deletions too: a deleted ConfigMap is put back.
    .touched_objects();
    let context = Arc::new(Context {
        client,
        bundle: bundle.clone(),
        leader: leader.clone(),
        config_maps,
        pending: PendingWrites::default(),
    });
    let mapper = {
        let context = Arc::clone(&context);
        move |cm: ConfigMap| {
            let namespace = cm.namespace()?;
            context
                .pending
                .seen(&namespace, cm.resource_version().as_deref());
            Some(ObjectRef::<Namespace>::new(&namespace))
        }
    };
    // Everything is reconciled on taking the lead, on a new bundle, once both watches
    // have listed (a trigger that arrives before the namespace store is filled can be
    // lost, which a loaded machine showed), and every RESYNC as a safety net.
    let listed = {
        let (namespaces, config_maps) = (namespaces.clone(), context.config_maps.clone());
        futures::stream::once(async move {
            for _ in 0..600 {
                let ready = async {
                    namespaces.wait_until_ready().await.is_ok()
                        && config_maps.wait_until_ready().await.is_ok()
                };
                if let Ok(true) = tokio::time::timeout(READY_WAIT, ready).await {
                    return;
                }
            }
        })
    };
    let resync = futures::stream::unfold((), |()| async {
        tokio::time::sleep(RESYNC).await;
        Some(((), ()))
    });
    let triggers = futures::stream::select_all([
        became_leader(leader).boxed(),
        changed(bundle).boxed(),
        listed.boxed(),
        resync.boxed(),
    ]);
    Controller::for_stream(namespace_events, namespaces)
        .watches_stream(config_map_events, mapper)
        .reconcile_all_on(triggers)
        // The watches wait after their errors themselves (and not after a 410).
        .trigger_backoff(NoWait)
        .with_config(controller::Config::default().concurrency(CONCURRENCY))
        .run(reconcile, retry_later, context)
        .for_each(|result| {
            match result {
                Ok((namespace, _)) => {
                    debug!(namespace = %namespace.name, "trust bundle reconciled")
                }
                Err(controller::Error::QueueError(error)) => {
                    warn!(%error, "trust bundle watch failed; retrying")
                }
                Err(error) => debug!(%error, "trust bundle reconcile failed"),
            }
            std::future::ready(())
        })
        .await;
}

/// Brings one namespace's trust-roots ConfigMap up to date, if this replica leads.
async fn reconcile(
    namespace: Arc<Namespace>,
    context: Arc<Context>,
) -> Result<controller::Action, kube::Error> {
    if !lease::is_leader(&context.leader) {
        return Ok(controller::Action::await_change());
    }
    let name = namespace.name_any();
    if let Some(left) = context.pending.waiting(&name) {
        // Our own write is on its way through the watch: planning now would repeat it.
        return Ok(controller::Action::requeue(left));
    }
    // Bounded: with several reconciles waiting at once, a wake-up was seen lost
    // (a reconcile parked for good); a later attempt finds the store ready at once.
    match tokio::time::timeout(READY_WAIT, context.config_maps.wait_until_ready()).await {
        Ok(Ok(())) => {}
        Ok(Err(_)) => return Ok(controller::Action::await_change()),
        Err(_) => return Ok(controller::Action::requeue(READY_WAIT)),
    }
    let existing = context
        .config_maps
        .get(&ObjectRef::new(TRUST_ROOTS_CONFIG_MAP).within(&name));
    let bundle = context.bundle.borrow().clone();
    for action in plan([namespace.as_ref()], existing.as_deref(), &bundle) {
        if !lease::is_leader(&context.leader) {
            debug!("no longer the leader: trust bundle writes stopped");
            break;
        }
        match apply(&context.client, &bundle, &action).await {
            Ok(written) => context
                .pending
                .wrote(&name, written.resource_version().unwrap_or_default()),
            Err(error) => {
                warn!(?action, %error, "cannot publish the trust bundle; will retry");
                return Err(error);
            }
        }
    }
    Ok(controller::Action::await_change())
}

/// A failed namespace is tried again after [`RETRY_DELAY`].
fn retry_later(_: Arc<Namespace>, _: &kube::Error, _: Arc<Context>) -> controller::Action {
    controller::Action::requeue(RETRY_DELAY)
}

/// One item each time `leader` turns true: reconcile everything on taking over.
fn became_leader(leader: watch::Receiver<bool>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(leader, |mut leader| async move {
        loop {
            // The elector gone: this replica never leads again.
            leader.changed().await.ok()?;
            if *leader.borrow_and_update() {
                return Some(((), leader));
            }
        }
    })
}

/// One item each time the bundle changes (ends if its sender is gone).
fn changed(bundle: watch::Receiver<String>) -> impl futures::Stream<Item = ()> + Send {
    futures::stream::unfold(bundle, |mut bundle| async move {
        bundle.changed().await.ok()?;
        Some(((), bundle))
    })
}

/// No wait between a trigger stream's error and its next poll.
struct NoWait;

impl Iterator for NoWait {
    type Item = Duration;
    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl kube::runtime::utils::Backoff for NoWait {
    fn reset(&mut self) {}
}

/// The trust-roots ConfigMap of `namespace`.
pub fn desired(namespace: &str, bundle: &str) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(TRUST_ROOTS_CONFIG_MAP.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(BTreeMap::from([(
                MANAGED_BY_LABEL.to_string(),
                MANAGED_BY.to_string(),
            )])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            TRUST_ROOTS_KEY.to_string(),
            bundle.to_string(),
        )])),
        ..ConfigMap::default()
    }
}

/// Creates or patches one ConfigMap; returns it as written. A create that finds an
/// unmanaged ConfigMap of the same name adopts it with the patch.
pub async fn apply(
    client: &Client,
    bundle: &str,
    action: &Action,
) -> Result<ConfigMap, kube::Error> {
    let (Action::Create { namespace } | Action::Patch { namespace }) = action;
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
    if let Action::Create { .. } = action {
        let params = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..PostParams::default()
        };
        match api.create(&params, &desired(namespace, bundle)).await {
            Ok(written) => {
                info!(%namespace, "trust bundle published");
                return Ok(written);
            }
            Err(kube::Error::Api(s)) if s.code == 409 => {
                info!(%namespace, "{TRUST_ROOTS_CONFIG_MAP} exists unmanaged; adopting it");
            }
            Err(e) => return Err(e),
        }
    }
    let params = PatchParams {
        field_manager: Some(FIELD_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let patch = serde_json::json!({
        "metadata": {"labels": {MANAGED_BY_LABEL: MANAGED_BY}},
        "data": {TRUST_ROOTS_KEY: bundle},
    });
    let written = api
        .patch(TRUST_ROOTS_CONFIG_MAP, &params, &Patch::Merge(&patch))
        .await?;
    info!(%namespace, "trust bundle updated");
    Ok(written)
}
