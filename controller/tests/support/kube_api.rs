//! A fake Kubernetes API server on a loopback port, speaking the list/watch JSON the real
//! one does for the collections a test declares: lists carry a resourceVersion, watches
//! stream `ADDED`/`MODIFIED`/`DELETED` lines, and `expire()` ends every open watch with a
//! `410 Gone` error event so clients must relist. Every request is recorded.

#![allow(dead_code)]

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

/// One recorded request: method, path, and whether it was a watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub watch: bool,
}

#[derive(Default)]
struct Collection {
    /// Objects by `namespace/name`.
    objects: BTreeMap<String, Value>,
    /// Open watch streams.
    watchers: Vec<mpsc::UnboundedSender<Bytes>>,
}

#[derive(Default)]
struct State {
    version: u64,
    collections: BTreeMap<String, Collection>,
    calls: Vec<Call>,
}

/// The fake API server.
#[derive(Clone)]
pub struct KubeApi {
    state: Arc<Mutex<State>>,
    pub addr: SocketAddr,
}

fn obj_key(obj: &Value) -> String {
    let m = &obj["metadata"];
    format!(
        "{}/{}",
        m["namespace"].as_str().unwrap_or_default(),
        m["name"].as_str().unwrap_or_default()
    )
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
                        async move { Ok::<_, Infallible>(s.handle(req)) }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        api
    }

    /// The requests seen so far.
    pub fn calls(&self) -> Vec<Call> {
        self.state.lock().unwrap().calls.clone()
    }

    fn stamp(state: &mut State, obj: &mut Value) {
        state.version += 1;
        obj["metadata"]["resourceVersion"] = json!(state.version.to_string());
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
        if let Some(obj) = c.objects.remove(&format!("{namespace}/{name}")) {
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

    /// Ends every open watch with `410 Gone`.
    pub fn expire(&self) {
        let mut state = self.state.lock().unwrap();
        let gone = json!({"type": "ERROR", "object": {
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": "too old resource version", "reason": "Expired", "code": 410}});
        for c in state.collections.values_mut() {
            for w in c.watchers.drain(..) {
                let _ = w.send(Bytes::from(format!("{gone}\n")));
            }
        }
    }

    fn handle(&self, req: Request<hyper::body::Incoming>) -> Response<BoxBody<Bytes, Infallible>> {
        let path = req.uri().path().to_string();
        let watch = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"));
        let mut state = self.state.lock().unwrap();
        state.calls.push(Call {
            method: req.method().to_string(),
            path: path.clone(),
            watch,
        });
        let version = state.version;
        let Some(c) = state.collections.get_mut(&path) else {
            let body = json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "NotFound", "code": 404,
                "message": format!("the server could not find the requested resource ({path})")});
            return Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(Full::new(Bytes::from(body.to_string())).boxed())
                .unwrap();
        };
        if watch {
            let (tx, rx) = mpsc::unbounded_channel();
            c.watchers.push(tx);
            let stream = futures::stream::unfold(rx, |mut rx| async move {
                let chunk = rx.recv().await?;
                Some((Ok::<_, Infallible>(Frame::data(chunk)), rx))
            });
            return Response::builder()
                .header("content-type", "application/json")
                .body(BodyExt::boxed(StreamBody::new(stream)))
                .unwrap();
        }
        let items: Vec<Value> = c.objects.values().cloned().collect();
        let list = json!({"apiVersion": "v1", "kind": "List",
            "metadata": {"resourceVersion": version.to_string()}, "items": items});
        Response::builder()
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(list.to_string())).boxed())
            .unwrap()
    }
}

fn broadcast(c: &mut Collection, kind: &str, obj: &Value) {
    let line = Bytes::from(format!("{}\n", json!({"type": kind, "object": obj})));
    c.watchers.retain(|w| w.send(line.clone()).is_ok());
}
