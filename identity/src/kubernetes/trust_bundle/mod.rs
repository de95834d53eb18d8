//! Publishing the trust bundle: ConfigMap `mesh-trust-roots` (key `ca-bundle.pem`, the
//! names the injector mounts) holding the trust anchors, in every namespace but the
//! Kubernetes system ones, labelled `app.kubernetes.io/managed-by: mesh-identity`.
//!
//! A reconciler: Namespaces and the managed ConfigMaps (label selector) are watched into
//! caches; after each change [`plan`] computes the missing and stale ConfigMaps and
//! [`apply`] creates (POST) or merge-patches (PATCH) them, recording what it wrote so
//! the next plan does not repeat it. Failed calls are retried after [`RETRY_DELAY`].
//! Only the leader ([`super::lease`]) plans and writes; the others keep their caches
//! warm so that a new leader reconciles at once.

mod cache;
mod plan;

pub use plan::{plan, Action};

use std::collections::BTreeMap;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Patch, PatchParams, PostParams};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client};
use mesh_proto::net::retry::with_backoff;
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use self::cache::Cache;
use super::lease;
use super::{MANAGED_BY, MANAGED_BY_LABEL, TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY};

/// Delay before failed calls are tried again.
pub const RETRY_DELAY: Duration = Duration::from_secs(5);
/// The field manager named in writes.
const FIELD_MANAGER: &str = "mesh-identity";

/// An event of either watch.
enum Update {
    Namespace(Result<Event<Namespace>, watcher::Error>),
    ConfigMap(Result<Event<ConfigMap>, watcher::Error>),
}

/// Runs the reconciler for as long as the task lives. Every replica watches; only the
/// leader (`leader` reads true, see [`super::lease`]) plans and writes, and it plans at
/// once when it becomes the leader.
pub async fn run(client: Client, bundle: String, mut leader: watch::Receiver<bool>) {
    let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
    let namespace_events = with_backoff(
        Box::pin(watcher::watcher(
            Api::<Namespace>::all(client.clone()),
            watcher::Config::default(),
        )),
        super::expired,
    )
    .map(Update::Namespace);
    let config_map_events = with_backoff(
        Box::pin(watcher::watcher(
            Api::<ConfigMap>::all(client.clone()),
            watcher::Config::default().labels(&selector),
        )),
        super::expired,
    )
    .map(Update::ConfigMap);
    let updates = futures::stream::select(namespace_events, config_map_events);
    futures::pin_mut!(updates);

    let mut namespaces = Cache::<Namespace>::default();
    let mut config_maps = Cache::<ConfigMap>::default();
    let mut retry_at: Option<Instant> = None;
    let mut leading = lease::is_leader(&leader);
    // Whether the elector still runs (else this replica never leads again).
    let mut electing = true;
    loop {
        let retry = async {
            match retry_at {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        let changed = tokio::select! {
            update = updates.next() => match update {
                None => return,
                Some(Update::Namespace(Ok(event))) => namespaces.apply(event),
                Some(Update::ConfigMap(Ok(event))) => config_maps.apply(event),
                Some(Update::Namespace(Err(error)) | Update::ConfigMap(Err(error))) => {
                    warn!(%error, "trust bundle watch failed; retrying");
                    false
                }
            },
            () = retry => true,
            gone = leader.changed(), if electing => {
                electing = gone.is_ok();
                let was = leading;
                leading = electing && *leader.borrow_and_update();
                leading && !was
            }
        };
        if !leading {
            retry_at = None;
        }
        if !changed || !leading || !namespaces.listed() || !config_maps.listed() {
            continue;
        }
        let actions = plan(namespaces.values(), config_maps.values(), &bundle);
        let mut failed = 0;
        for action in &actions {
            if !lease::is_leader(&leader) {
                debug!("no longer the leader: trust bundle writes stopped");
                break;
            }
            match apply(&client, &bundle, action).await {
                Ok(written) => config_maps.insert(written),
                Err(error) => {
                    warn!(?action, %error, "cannot publish the trust bundle; will retry");
                    failed += 1;
                }
            }
        }
        retry_at = (failed > 0).then(|| Instant::now() + RETRY_DELAY);
    }
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
