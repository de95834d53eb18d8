//! The demo's applications, run inside the `mesh demo` process: `api`
//! answers with its replica name and the caller identity it was given;
//! `web` calls `api` through its own proxy and wraps the answer.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{convert::Infallible, net::SocketAddr, sync::Arc};
use tokio::net::TcpListener;

/// Serves `handler` on `listener` until the task is aborted.
async fn serve<F, Fut>(listener: TcpListener, handler: F)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let h = handler.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| {
                let h = h.clone();
                async move { Ok::<_, Infallible>(h(req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tcp), svc)
                .await;
        });
    }
}

fn client_id<B>(req: &Request<B>) -> String {
    req.headers()
        .get("x-mesh-client-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("(none: not meshed)")
        .to_string()
}

/// A running `api` replica.
pub struct Api {
    pub addr: SocketAddr,
    /// Requests it failed on purpose.
    pub failed: Arc<std::sync::atomic::AtomicU64>,
    _task: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self._task.abort();
    }
}

/// Starts an `api` replica. With `fail_every = n > 0` it answers every
/// n-th request with 503, so the demo can show retries hiding the fault.
pub async fn api(replica: &'static str, fail_every: u64) -> anyhow::Result<Api> {
    use std::sync::atomic::{AtomicU64, Ordering};
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let failed = Arc::new(AtomicU64::new(0));
    let seen = Arc::new(AtomicU64::new(0));
    let f = failed.clone();
    let task = tokio::spawn(serve(listener, move |req: Request<_>| {
        let n = seen.fetch_add(1, Ordering::Relaxed) + 1;
        let fail = fail_every > 0 && n.is_multiple_of(fail_every);
        if fail {
            f.fetch_add(1, Ordering::Relaxed);
        }
        let body = serde_json::json!({ "replica": replica, "caller": client_id(&req) });
        async move {
            let mut rsp = Response::new(Full::new(Bytes::from(body.to_string())));
            if fail {
                *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            }
            rsp
        }
    }));
    Ok(Api {
        addr,
        failed,
        _task: task,
    })
}

/// Starts the `web` app, which calls `api_url` through `proxy` (explicit
/// proxy mode: absolute URI, as an `HTTP_PROXY` client would).
pub async fn web(
    proxy: SocketAddr,
    api_url: &'static str,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let client: Arc<Client<HttpConnector, Full<Bytes>>> =
        Arc::new(Client::builder(TokioExecutor::new()).build(HttpConnector::new()));
    let task = tokio::spawn(serve(listener, move |req: Request<_>| {
        let client = client.clone();
        let caller = client_id(&req);
        async move {
            // Dial the proxy, ask for the api by its mesh name.
            let upstream = Request::get(format!("http://{proxy}/"))
                .header("host", api_url)
                .body(Full::new(Bytes::new()));
            let result = match upstream {
                Ok(r) => client.request(r).await.map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            match result {
                Ok(rsp) if rsp.status().is_success() => {
                    let body = rsp.into_body().collect().await.map(|b| b.to_bytes());
                    let api: serde_json::Value = body
                        .ok()
                        .and_then(|b| serde_json::from_slice(&b).ok())
                        .unwrap_or_default();
                    let out = serde_json::json!({ "caller": caller, "api": api });
                    Response::new(Full::new(Bytes::from(out.to_string())))
                }
                Ok(rsp) => {
                    let mut r = Response::new(Full::new(Bytes::from("api failed")));
                    *r.status_mut() = rsp.status();
                    r
                }
                Err(e) => {
                    let mut r = Response::new(Full::new(Bytes::from(e)));
                    *r.status_mut() = StatusCode::BAD_GATEWAY;
                    r
                }
            }
        }
    }));
    Ok((addr, task))
}
