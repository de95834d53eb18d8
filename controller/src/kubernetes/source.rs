//! `--source kubernetes`: one kube-runtime watcher per kind feeds the index, each object
//! stored under its own key (`k8s/<Kind>/<namespace>/<name>`) through the same
//! conversions and validation as manifest files. A watcher's initial list (and every
//! relist, e.g. after `410 Gone`) is applied as one batch that also drops the objects the
//! list no longer holds, so restarts, bookmarks and deletions leave the index exact. An
//! invalid object is logged and its last good version kept. Every watcher event is counted
//! in `mesh_controller_source_events_total{source="kubernetes",kind=<Kind>}`.

use std::collections::{HashMap, HashSet};
use std::fmt::Debug;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ApiResource, DynamicObject};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use kube::{Api, Client, ResourceExt};
use mesh_proto::kubernetes::watch;

use super::freshness::Freshness;
use serde::de::DeserializeOwned;
use tokio::task::JoinHandle;

use super::convert;
use crate::index::IndexWriter;
use crate::metrics::{ErrorReason, Source};
use crate::resources::Resource;
use crate::webhook::NamespaceAnnotations;

/// A kind the manifest parser understands, watched as a dynamic object.
struct ParsedKind {
    group: &'static str,
    version: &'static str,
    kind: &'static str,
    plural: &'static str,
}

const PARSED_KINDS: &[ParsedKind] = &[
    ParsedKind {
        group: "",
        version: "v1",
        kind: "Service",
        plural: "services",
    },
    ParsedKind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "HTTPRoute",
        plural: "httproutes",
    },
    ParsedKind {
        group: "gateway.networking.k8s.io",
        version: "v1",
        kind: "GRPCRoute",
        plural: "grpcroutes",
    },
    ParsedKind {
        group: "policy.mesh.dev",
        version: "v1alpha1",
        kind: "TrafficPolicy",
        plural: "trafficpolicies",
    },
    ParsedKind {
        group: "policy.mesh.dev",
        version: "v1alpha1",
        kind: "HTTPFault",
        plural: "httpfaults",
    },
    ParsedKind {
        group: "policy.mesh.dev",
        version: "v1alpha1",
        kind: "WorkloadEntry",
        plural: "workloadentries",
    },
    ParsedKind {
        group: "policy.mesh.dev",
        version: "v1alpha1",
        kind: "AuthorizationPolicy",
        plural: "authorizationpolicies",
    },
];

/// Converts one object to the resources stored under its key.
type Convert<K> = Box<dyn Fn(&K) -> Result<Vec<Resource>, String> + Send + Sync>;

/// The running watchers; dropping it stops them.
pub struct KubeSource {
    tasks: Vec<JoinHandle<()>>,
    namespaces: Store<Namespace>,
    namespaces_current: Arc<Freshness>,
    namespace_api: Api<Namespace>,
}

impl Debug for KubeSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeSource")
            .field("watchers", &self.tasks.len())
            .finish()
    }
}

impl Drop for KubeSource {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

impl KubeSource {
    /// Starts every watcher and waits (at most `init_timeout`) until each has delivered
    /// its first list, so the first answers the servers give are complete. A kind whose
    /// API is missing (e.g. Gateway API CRDs not installed) is logged and retried in the
    /// background.
    pub async fn start(client: Client, writer: IndexWriter, init_timeout: Duration) -> Self {
        let metrics = Arc::clone(writer.metrics());
        let writer = Arc::new(writer);
        let mut tasks = Vec::new();
        let mut ready = Vec::new();
        let mut spawn =
            |task: Box<dyn FnOnce(tokio::sync::oneshot::Sender<()>) -> JoinHandle<()>>| {
                let (tx, rx) = tokio::sync::oneshot::channel();
                tasks.push(task(tx));
                ready.push(rx);
            };
        for k in PARSED_KINDS {
            let ar = ApiResource {
                group: k.group.into(),
                version: k.version.into(),
                api_version: api_version(k.group, k.version),
                kind: k.kind.into(),
                plural: k.plural.into(),
            };
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            let (av, kind) = (ar.api_version.clone(), k.kind);
            let convert: Convert<DynamicObject> = Box::new(move |o| {
                let json = serde_json::to_value(o).map_err(|e| e.to_string())?;
                convert::object(&av, kind, json).map_err(|e| e.to_string())
            });
            let w = writer.clone();
            spawn(Box::new(move |tx| {
                tokio::spawn(run(api, kind, convert, w, tx))
            }));
        }
        let pods: Api<Pod> = Api::all(client.clone());
        let w = writer.clone();
        spawn(Box::new(move |tx| {
            let convert: Convert<Pod> = Box::new(|p| {
                Ok(convert::pod_entries(p)
                    .into_iter()
                    .map(Resource::WorkloadEntry)
                    .collect())
            });
            tokio::spawn(run(pods, "Pod", convert, w, tx))
        }));
        let slices: Api<EndpointSlice> = Api::all(client.clone());
        let w = writer.clone();
        spawn(Box::new(move |tx| {
            let convert: Convert<EndpointSlice> = Box::new(|s| {
                Ok(convert::endpoint_slice(s)
                    .map(Resource::EndpointSlice)
                    .into_iter()
                    .collect())
            });
            tokio::spawn(run(slices, "EndpointSlice", convert, w, tx))
        }));

        let (store, store_writer) = reflector::store();
        // Whether the namespace cache is known to be current: false until the first
        // list, and from a watch error until the relist after it.
        let namespaces_current = Arc::new(Freshness::default());
        let namespace_api: Api<Namespace> = Api::all(client.clone());
        let ns_api: Api<Namespace> = Api::all(client);
        let ns_stream = watch(ns_api, watcher::Config::default())
            .reflect(store_writer)
            .for_each({
                let current = Arc::clone(&namespaces_current);
                move |e| {
                    current.observe(&e);
                    if let Err(error) = e {
                        // Namespaces feed the webhook, not the index: an error, not a
                        // source event.
                        tracing::warn!(%error, "namespace watch failed; retrying");
                        metrics.error(ErrorReason::WatchFailed);
                    }
                    std::future::ready(())
                }
            });
        tasks.push(tokio::spawn(ns_stream));

        let all = futures::future::join_all(ready);
        if tokio::time::timeout(init_timeout, all).await.is_err() {
            tracing::warn!(
                "not every kind was listed within {init_timeout:?}; serving what is known"
            );
        }
        KubeSource {
            tasks,
            namespaces: store,
            namespaces_current,
            namespace_api,
        }
    }

    /// The namespaces' annotations, for the injector webhook.
    pub fn namespaces(&self) -> Arc<dyn NamespaceAnnotations> {
        Arc::new(KubeNamespaces {
            cache: self.namespaces.clone(),
            current: Arc::clone(&self.namespaces_current),
            api: self.namespace_api.clone(),
        })
    }
}

fn api_version(group: &str, version: &str) -> String {
    if group.is_empty() {
        version.to_string()
    } else {
        format!("{group}/{version}")
    }
}

/// Namespace annotations from the watched Namespace cache while it is current, and
/// from a GET for a namespace the cache has not seen yet or while its watch is down
/// (annotations changed meanwhile would be missed).
struct KubeNamespaces {
    cache: Store<Namespace>,
    current: Arc<Freshness>,
    api: Api<Namespace>,
}

impl NamespaceAnnotations for KubeNamespaces {
    fn annotations(&self, namespace: &str) -> Option<std::collections::BTreeMap<String, String>> {
        if !self.current.is_current() {
            return None;
        }
        let ns = self.cache.get(&ObjectRef::new(namespace))?;
        Some(ns.metadata.annotations.clone().unwrap_or_default())
    }

    fn lookup<'a>(
        &'a self,
        namespace: &'a str,
    ) -> futures::future::BoxFuture<
        'a,
        Result<Option<std::collections::BTreeMap<String, String>>, String>,
    > {
        Box::pin(async move {
            if let Some(known) = self.annotations(namespace) {
                return Ok(Some(known));
            }
            match self.api.get_opt(namespace).await {
                Ok(ns) => Ok(ns.map(|ns| ns.metadata.annotations.unwrap_or_default())),
                Err(e) => Err(e.to_string()),
            }
        })
    }
}

/// The index key of an object.
fn key(kind: &str, namespace: &str, name: &str) -> PathBuf {
    PathBuf::from(format!("k8s/{kind}/{namespace}/{name}"))
}

/// Runs one kind's watcher for as long as the source lives.
async fn run<K>(
    api: Api<K>,
    kind: &'static str,
    convert: Convert<K>,
    writer: Arc<IndexWriter>,
    ready: tokio::sync::oneshot::Sender<()>,
) where
    K: kube::Resource + Clone + DeserializeOwned + Debug + Send + 'static,
{
    let events = writer.metrics().source_events(Source::Kubernetes, kind);
    let mut ready = Some(ready);
    let mut known: HashSet<PathBuf> = HashSet::new();
    // During a (re)list: each listed key, with its resources or `None` if invalid.
    let mut listing: Option<HashMap<PathBuf, Option<Vec<Resource>>>> = None;
    let stream = watch(api, watcher::Config::default());
    futures::pin_mut!(stream);
    let convert_one = |obj: &K| -> Option<(PathBuf, Vec<Resource>)> {
        let (ns, name) = (obj.namespace().unwrap_or_default(), obj.name_any());
        match convert(obj) {
            Ok(resources) => Some((key(kind, &ns, &name), resources)),
            Err(error) => {
                tracing::warn!(kind, namespace = %ns, %name, %error, "invalid object; keeping its last good version");
                events.invalid();
                None
            }
        }
    };
    while let Some(event) = stream.next().await {
        match event {
            Ok(Event::Init) => listing = Some(HashMap::new()),
            Ok(Event::InitApply(obj)) => {
                let entry = listing.get_or_insert_with(HashMap::new);
                match convert_one(&obj) {
                    Some((k, r)) => {
                        entry.insert(k, Some(r));
                    }
                    None => {
                        // Still listed but invalid: the index keeps its last good version.
                        let k = key(kind, &obj.namespace().unwrap_or_default(), &obj.name_any());
                        entry.insert(k, None);
                    }
                }
            }
            Ok(Event::InitDone) => {
                let listed = listing.take().unwrap_or_default();
                let gone: Vec<PathBuf> = known
                    .iter()
                    .filter(|k| !listed.contains_key(*k))
                    .cloned()
                    .collect();
                known = listed
                    .iter()
                    .filter(|(k, r)| r.is_some() || known.contains(*k))
                    .map(|(k, _)| k.clone())
                    .collect();
                let n = listed.len();
                let apply: Vec<(PathBuf, Vec<Resource>)> = listed
                    .into_iter()
                    .filter_map(|(k, r)| Some((k, r?)))
                    .collect();
                // Counted first: whoever sees the change also sees the event counted.
                events.relisted();
                writer.update(|idx| idx.apply_batch(apply, gone));
                tracing::info!(kind, objects = n, "listed");
                if let Some(tx) = ready.take() {
                    let _ = tx.send(());
                }
            }
            Ok(Event::Apply(obj)) => {
                if let Some((k, r)) = convert_one(&obj) {
                    known.insert(k.clone());
                    events.applied();
                    writer.update(|idx| idx.apply_file(k, r));
                }
            }
            Ok(Event::Delete(obj)) => {
                let k = key(kind, &obj.namespace().unwrap_or_default(), &obj.name_any());
                known.remove(&k);
                events.deleted();
                writer.update(|idx| idx.remove_file(&k));
            }
            Err(watcher::Error::WatchError(status)) if status.code == 410 => {
                // The resource version expired: routine, not a failure. The watcher lists
                // again (counted as `relist`).
                tracing::info!(kind, "watch expired (410 Gone); relisting");
            }
            Err(error) => {
                tracing::warn!(kind, %error, "watch failed; retrying with backoff");
                events.watch_failed();
            }
        }
    }
}
