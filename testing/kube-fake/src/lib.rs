//! A fake Kubernetes API server on a loopback port, speaking the JSON the real one does
//! for the collections a test declares, for the controller's and the identity service's
//! tests (the Kubernetes API is the one thing the tests do not run for real). Lists carry a resourceVersion; watches stream `ADDED`/`MODIFIED`/`DELETED`
//! lines; namespaced paths (`/api/v1/namespaces/<ns>/<resource>[/<name>]`), field
//! selectors on `metadata.name`/`metadata.namespace` and equality label selectors filter
//! both; `GET` of a named object returns it (404 if absent). `POST` creates (409 if the
//! object exists) unless the test installed a reactor for the collection (e.g.
//! TokenReviews); `PATCH` applies a JSON merge patch; `PUT` replaces an object (404 if
//! absent), refusing with 409 Conflict a body whose `metadata.resourceVersion` is not the
//! stored one (optimistic concurrency, as leader election uses it). Every request is
//! recorded with its body.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{json, Value};
use tokio::sync::mpsc;

mod pod_proxy;
use pod_proxy::pod_proxy_path;

/// The collections `mesh-controller --source kubernetes` lists and watches.
pub const CONTROLLER_PATHS: &[&str] = &[
    "/api/v1/services",
    "/api/v1/pods",
    "/api/v1/namespaces",
    "/apis/discovery.k8s.io/v1/endpointslices",
    "/apis/gateway.networking.k8s.io/v1/httproutes",
    "/apis/gateway.networking.k8s.io/v1/grpcroutes",
    "/apis/policy.mesh.dev/v1alpha1/trafficpolicies",
    "/apis/policy.mesh.dev/v1alpha1/httpfaults",
    "/apis/policy.mesh.dev/v1alpha1/workloadentries",
    "/apis/policy.mesh.dev/v1alpha1/authorizationpolicies",
];

/// One recorded request.
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// `GET`, `POST`, `PATCH`, `PUT`…
    pub method: String,
    /// The path, without the query.
    pub path: String,
    /// Whether it was a watch.
    pub watch: bool,
    /// The raw query string.
    pub query: String,
    /// The JSON body, if any.
    pub body: Option<Value>,
}

/// Answers a `POST` to a collection: `(status code, JSON body)`.
pub type Reactor = Arc<dyn Fn(&Value) -> (u16, Value) + Send + Sync>;

/// What a list or watch asks for.
#[derive(Clone, Debug, Default)]
struct Filter {
    namespace: Option<String>,
    fields: Vec<(String, String)>,
    labels: Vec<(String, String)>,
}

impl Filter {
    fn matches(&self, obj: &Value) -> bool {
        let m = &obj["metadata"];
        let ns = m["namespace"].as_str().unwrap_or_default();
        if self.namespace.as_deref().is_some_and(|want| want != ns) {
            return false;
        }
        let fields_ok = self.fields.iter().all(|(k, v)| match k.as_str() {
            "metadata.name" => m["name"].as_str() == Some(v),
            "metadata.namespace" => ns == v,
            other => panic!("unsupported field selector {other}"),
        });
        let labels_ok = self
            .labels
            .iter()
            .all(|(k, v)| m["labels"][k].as_str() == Some(v));
        fields_ok && labels_ok
    }
}

struct Watcher {
    filter: Filter,
    /// Each line with the moment it may be delivered.
    tx: mpsc::UnboundedSender<(tokio::time::Instant, Bytes)>,
    /// How late events reach this watch (see [`KubeApi::set_watch_lag`]).
    lag: std::time::Duration,
}

impl Watcher {
    /// Queues `line`, to be delivered after the watch's lag; false once it is closed.
    fn send(&self, line: Bytes) -> bool {
        self.tx
            .send((tokio::time::Instant::now() + self.lag, line))
            .is_ok()
    }
}

#[derive(Default)]
struct Collection {
    /// Objects by `namespace/name`.
    objects: BTreeMap<String, Value>,
    /// Open watch streams.
    watchers: Vec<Watcher>,
    /// Answers POSTs instead of creating objects.
    reactor: Option<Reactor>,
    /// Every event sent, with its resourceVersion: a watch that resumes from a version
    /// gets what it missed since, as from etcd's history.
    history: Vec<(u64, Value, Bytes)>,
    /// How late new watches deliver events.
    lag: std::time::Duration,
}

#[derive(Default)]
struct State {
    version: u64,
    collections: BTreeMap<String, Collection>,
    calls: Vec<Call>,
    /// An outage: every request is answered 503 and open watches are cut.
    down: bool,
    /// Watches from a resourceVersion older than this get `410 Gone` (etcd
    /// compacted the history they would need).
    compacted: u64,
    /// Where the pod proxy (`pods/<name>:<port>/proxy/...`) forwards, by
    /// `namespace/name:port`.
    pod_proxies: BTreeMap<String, SocketAddr>,
}

impl State {
    /// Records `call`; during an outage, the `503` to answer instead.
    fn admit(&mut self, call: Call) -> Option<Response<BoxBody<Bytes, Infallible>>> {
        self.calls.push(call);
        self.down.then(|| {
            respond(
                503,
                &status(503, "ServiceUnavailable", "the API server is away".into()),
            )
        })
    }
}

/// The fake API server.
#[derive(Clone)]
pub struct KubeApi {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
}

/// A request path taken apart: the collection it addresses, its namespace and name.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    /// API group (`""` for core).
    pub group: String,
    /// Resource (plural).
    pub resource: String,
    /// The collection's path, e.g. `/api/v1/configmaps`.
    pub collection: String,
    /// Namespace of a namespaced path.
    pub namespace: Option<String>,
    /// Name of a single object.
    pub name: Option<String>,
}

/// Parses `/api/v1/...` and `/apis/<group>/<version>/...` paths.
pub fn parse_path(path: &str) -> Option<Target> {
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    let (group, prefix, rest) = match segs.as_slice() {
        ["api", "v1", rest @ ..] => ("", "/api/v1".to_string(), rest),
        ["apis", g, v, rest @ ..] => (*g, format!("/apis/{g}/{v}"), rest),
        _ => return None,
    };
    let (resource, namespace, name) = match rest {
        [res] => (*res, None, None),
        ["namespaces", ns, res] => (*res, Some(*ns), None),
        ["namespaces", ns, res, name] => (*res, Some(*ns), Some(*name)),
        [res, name] => (*res, None, Some(*name)),
        _ => return None,
    };
    Some(Target {
        group: group.to_string(),
        resource: resource.to_string(),
        collection: format!("{prefix}/{resource}"),
        namespace: namespace.map(str::to_string),
        name: name.map(str::to_string),
    })
}

fn obj_key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default()
    )
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
                out.push(u8::from_str_radix(hex, 16).unwrap());
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).unwrap()
}

fn selector(s: &str) -> Vec<(String, String)> {
    s.split(',')
        .filter(|t| !t.is_empty())
        .map(|term| {
            let (k, v) = term
                .split_once("==")
                .or_else(|| term.split_once('='))
                .unwrap_or_else(|| panic!("unsupported selector term {term}"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

/// JSON merge patch (RFC 7386).
fn merge(target: &mut Value, patch: &Value) {
    match patch {
        Value::Object(p) => {
            if !target.is_object() {
                *target = json!({});
            }
            let t = target.as_object_mut().unwrap();
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        other => *target = other.clone(),
    }
}

fn status(code: u16, reason: &str, message: String) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "reason": reason, "code": code, "message": message})
}

fn respond(code: u16, body: &Value) -> Response<BoxBody<Bytes, Infallible>> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())).boxed())
        .unwrap()
}

impl KubeApi {
    /// Serves the given collection paths (e.g. `/api/v1/services`), all empty.
    pub async fn start(paths: &[&str]) -> KubeApi {
        let mut state = State::default();
        for p in paths {
            state
                .collections
                .insert(p.to_string(), Collection::default());
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let api = KubeApi {
            state: Arc::new(Mutex::new(state)),
            addr: listener.local_addr().unwrap(),
        };
        let server = api.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let s = server.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let s = s.clone();
                        async move { Ok::<_, Infallible>(s.handle(req).await) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        api
    }

    /// A client of this server.
    pub fn client(&self) -> kube::Client {
        kube::Client::try_from(self.config()).unwrap()
    }

    /// A client configuration for this server (kube's defaults).
    pub fn config(&self) -> kube::Config {
        kube::Config::new(format!("http://{}", self.addr).parse().unwrap())
    }

    /// Writes a kubeconfig for this server at `path` (for commands that take
    /// `KUBECONFIG`).
    pub fn write_kubeconfig(&self, path: &std::path::Path) -> std::io::Result<()> {
        std::fs::write(
            path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: fake\n\
                 clusters: [{{name: fake, cluster: {{server: 'http://{}'}}}}]\n\
                 users: [{{name: fake, user: {{}}}}]\n\
                 contexts: [{{name: fake, context: {{cluster: fake, user: fake}}}}]\n",
                self.addr
            ),
        )
    }

    /// Answers POSTs to `path` with `reactor` instead of creating objects.
    pub fn on_post(
        &self,
        path: &str,
        reactor: impl Fn(&Value) -> (u16, Value) + Send + Sync + 'static,
    ) {
        let mut state = self.state.lock().unwrap();
        let c = state.collections.get_mut(path).expect("declared path");
        c.reactor = Some(Arc::new(reactor));
    }

    /// Makes the pod proxy forward `GET`s for `namespace/pod:port` to `to` (plain
    /// HTTP/1.1), as the API server reaches a pod's port. Pods without one answer `503`.
    pub fn proxy_pod(&self, namespace: &str, pod: &str, port: u16, to: SocketAddr) {
        self.state
            .lock()
            .unwrap()
            .pod_proxies
            .insert(format!("{namespace}/{pod}:{port}"), to);
    }

    /// The requests seen so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    /// The objects of a collection.
    pub fn objects(&self, path: &str) -> Vec<Value> {
        let state = self.state.lock().unwrap();
        state.collections[path].objects.values().cloned().collect()
    }

    /// One object of a collection.
    pub fn get(&self, path: &str, namespace: &str, name: &str) -> Option<Value> {
        let state = self.state.lock().unwrap();
        state.collections[path]
            .objects
            .get(&format!("{namespace}/{name}"))
            .cloned()
    }

    fn stamp(state: &mut State, obj: &mut Value) {
        state.version += 1;
        obj["metadata"]["resourceVersion"] = json!(state.version.to_string());
        if obj["metadata"]["uid"].is_null() {
            obj["metadata"]["uid"] = json!(format!("uid-{}", state.version));
        }
    }

    /// Creates or replaces an object, sending `ADDED`/`MODIFIED` to watchers.
    pub fn apply(&self, path: &str, mut obj: Value) {
        let mut state = self.state.lock().unwrap();
        Self::stamp(&mut state, &mut obj);
        let c = state.collections.get_mut(path).expect("declared path");
        let kind = if c.objects.insert(obj_key(&obj), obj.clone()).is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        broadcast(c, kind, &obj);
    }

    /// Deletes an object, sending `DELETED` to watchers.
    pub fn delete(&self, path: &str, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        let c = state.collections.get_mut(path).expect("declared path");
        if let Some(mut obj) = c.objects.remove(&format!("{namespace}/{name}")) {
            // A deletion is a new version too.
            Self::stamp(&mut state, &mut obj);
            let c = state.collections.get_mut(path).expect("declared path");
            broadcast(c, "DELETED", &obj);
        }
    }

    /// Changes an object without telling watchers (what they miss while expired).
    pub fn apply_silently(&self, path: &str, mut obj: Value) {
        let mut state = self.state.lock().unwrap();
        Self::stamp(&mut state, &mut obj);
        let c = state.collections.get_mut(path).expect("declared path");
        c.objects.insert(obj_key(&obj), obj);
    }

    /// Deletes an object without telling watchers.
    pub fn delete_silently(&self, path: &str, namespace: &str, name: &str) {
        let mut state = self.state.lock().unwrap();
        let c = state.collections.get_mut(path).expect("declared path");
        c.objects.remove(&format!("{namespace}/{name}"));
    }

    /// Starts (`true`) or ends an outage: while down, every request gets `503` and the
    /// open watches are cut, as when the API server or etcd is away.
    pub fn set_down(&self, down: bool) {
        let mut state = self.state.lock().unwrap();
        state.down = down;
        if down {
            for c in state.collections.values_mut() {
                c.watchers.clear();
            }
        }
    }

    /// Delays the events of `path`'s watches opened from now on by `lag` (in order), as
    /// a busy API server does: a client's own write reaches its watch after the write
    /// returned, and after events of other kinds sent later.
    pub fn set_watch_lag(&self, path: &str, lag: std::time::Duration) {
        let mut state = self.state.lock().unwrap();
        state.collections.get_mut(path).expect("declared path").lag = lag;
    }

    /// Compacts the history: a watch resuming from any resourceVersion issued so far is
    /// answered `410 Gone` (what an API server does after a long enough outage), so the
    /// client must list again.
    pub fn compact(&self) {
        let mut state = self.state.lock().unwrap();
        state.compacted = state.version + 1;
    }

    /// Ends every open watch with `410 Gone`.
    pub fn expire(&self) {
        let mut state = self.state.lock().unwrap();
        let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version".into())});
        for c in state.collections.values_mut() {
            for w in c.watchers.drain(..) {
                w.send(Bytes::from(format!("{gone}\n")));
            }
        }
    }

    async fn handle(
        &self,
        req: Request<hyper::body::Incoming>,
    ) -> Response<BoxBody<Bytes, Infallible>> {
        let method = req.method().to_string();
        let path = req.uri().path().to_string();
        let query = req.uri().query().unwrap_or_default().to_string();
        let params: Vec<(String, String)> = query
            .split('&')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), percent_decode(v)))
            .collect();
        let param = |k: &str| params.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        let watch = matches!(param("watch").as_deref(), Some("true" | "1"));
        let bytes = req
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        let body: Option<Value> =
            (!bytes.is_empty()).then(|| serde_json::from_slice(&bytes).unwrap());

        let call = Call {
            method: method.clone(),
            path: path.clone(),
            watch,
            query: query.clone(),
            body: body.clone(),
        };
        // The pod proxy: looked up under the lock, forwarded without it.
        if let Some((key, rest)) = pod_proxy_path(&path) {
            let to = {
                let mut state = self.state.lock().unwrap();
                if let Some(away) = state.admit(call) {
                    return away;
                }
                state.pod_proxies.get(&key).copied()
            };
            return self.pod_proxy(to, key, rest).await;
        }
        let mut state = self.state.lock().unwrap();
        if let Some(away) = state.admit(call) {
            return away;
        }
        let target = parse_path(&path);
        let not_found = status(
            404,
            "NotFound",
            format!("the server could not find the requested resource ({path})"),
        );
        let Some(target) = target else {
            return respond(404, &not_found);
        };
        if !state.collections.contains_key(&target.collection) {
            return respond(404, &not_found);
        }
        let key = |name: &str| format!("{}/{name}", target.namespace.clone().unwrap_or_default());
        match (method.as_str(), &target.name) {
            ("GET", None) => {
                let filter = Filter {
                    namespace: target.namespace.clone(),
                    fields: param("fieldSelector")
                        .map(|s| selector(&s))
                        .unwrap_or_default(),
                    labels: param("labelSelector")
                        .map(|s| selector(&s))
                        .unwrap_or_default(),
                };
                let version = state.version;
                let compacted = state.compacted;
                let c = state.collections.get_mut(&target.collection).unwrap();
                let lag = c.lag;
                if watch {
                    let (tx, rx) = mpsc::unbounded_channel();
                    let from: Option<u64> = param("resourceVersion").and_then(|v| v.parse().ok());
                    if from.is_some_and(|v| v < compacted) {
                        let gone = json!({"type": "ERROR", "object": status(410, "Expired", "too old resource version".into())});
                        let _ = tx.send((
                            tokio::time::Instant::now(),
                            Bytes::from(format!("{gone}\n")),
                        ));
                        drop(tx);
                    } else {
                        let watcher = Watcher { filter, tx, lag };
                        if let Some(from) = from {
                            for (_, obj, line) in c.history.iter().filter(|(v, _, _)| *v > from) {
                                if watcher.filter.matches(obj) {
                                    watcher.send(line.clone());
                                }
                            }
                        }
                        c.watchers.push(watcher);
                    }
                    let stream = futures::stream::unfold(rx, |mut rx| async move {
                        let (at, chunk) = rx.recv().await?;
                        tokio::time::sleep_until(at).await;
                        Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
                    });
                    return Response::builder()
                        .header("content-type", "application/json")
                        .body(BodyExt::boxed(StreamBody::new(stream)))
                        .unwrap();
                }
                let items: Vec<Value> = c
                    .objects
                    .values()
                    .filter(|o| filter.matches(o))
                    .cloned()
                    .collect();
                let list = json!({"apiVersion": "v1", "kind": "List",
                    "metadata": {"resourceVersion": version.to_string()}, "items": items});
                respond(200, &list)
            }
            ("GET", Some(name)) => {
                match state.collections[&target.collection]
                    .objects
                    .get(&key(name))
                {
                    Some(obj) => respond(200, obj),
                    None => respond(404, &not_found),
                }
            }
            ("POST", None) => {
                let mut obj = body.unwrap_or_default();
                let reactor = state.collections[&target.collection].reactor.clone();
                if let Some(reactor) = reactor {
                    drop(state);
                    let (code, answer) = reactor(&obj);
                    return respond(code, &answer);
                }
                if let Some(ns) = &target.namespace {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                let name = obj["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                if state.collections[&target.collection]
                    .objects
                    .contains_key(&key(&name))
                {
                    let conflict = status(
                        409,
                        "AlreadyExists",
                        format!("{} \"{name}\" already exists", target.resource),
                    );
                    return respond(409, &conflict);
                }
                Self::stamp(&mut state, &mut obj);
                let c = state.collections.get_mut(&target.collection).unwrap();
                c.objects.insert(obj_key(&obj), obj.clone());
                broadcast(c, "ADDED", &obj);
                respond(201, &obj)
            }
            ("PATCH", Some(name)) => {
                let Some(mut obj) = state.collections[&target.collection]
                    .objects
                    .get(&key(name))
                    .cloned()
                else {
                    return respond(404, &not_found);
                };
                merge(&mut obj, &body.unwrap_or_default());
                Self::stamp(&mut state, &mut obj);
                let c = state.collections.get_mut(&target.collection).unwrap();
                c.objects.insert(obj_key(&obj), obj.clone());
                broadcast(c, "MODIFIED", &obj);
                respond(200, &obj)
            }
            ("PUT", Some(name)) => {
                let Some(current) = state.collections[&target.collection]
                    .objects
                    .get(&key(name))
                    .cloned()
                else {
                    return respond(404, &not_found);
                };
                let mut obj = body.unwrap_or_default();
                if obj["metadata"]["name"].as_str() != Some(name.as_str()) {
                    let message = format!("the name of the object does not match {name}");
                    return respond(400, &status(400, "BadRequest", message));
                }
                let stored = &current["metadata"]["resourceVersion"];
                let sent = &obj["metadata"]["resourceVersion"];
                if !sent.is_null() && sent != stored {
                    let conflict = status(
                        409,
                        "Conflict",
                        format!(
                            "Operation cannot be fulfilled on {} \"{name}\": the object has been \
                             modified; please apply your changes to the latest version and try again",
                            target.resource
                        ),
                    );
                    return respond(409, &conflict);
                }
                if let Some(ns) = &target.namespace {
                    obj["metadata"]["namespace"] = json!(ns);
                }
                obj["metadata"]["uid"] = current["metadata"]["uid"].clone();
                Self::stamp(&mut state, &mut obj);
                let c = state.collections.get_mut(&target.collection).unwrap();
                c.objects.insert(obj_key(&obj), obj.clone());
                broadcast(c, "MODIFIED", &obj);
                respond(200, &obj)
            }
            _ => respond(
                405,
                &status(405, "MethodNotAllowed", format!("{method} {path}")),
            ),
        }
    }
}

fn broadcast(c: &mut Collection, kind: &str, obj: &Value) {
    let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
    let version = obj["metadata"]["resourceVersion"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .unwrap_or_default();
    c.history.push((version, obj.clone(), line.clone()));
    c.watchers
        .retain(|w| !w.filter.matches(obj) || w.send(line.clone()));
}
