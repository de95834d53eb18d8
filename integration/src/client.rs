//! Clients that send traffic to a proxy's outbound listener the way an
//! application in explicit (`HTTP_PROXY`) mode does.

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{connect::Connected, Client},
    rt::{TokioExecutor, TokioIo},
};
use std::{net::SocketAddr, time::Duration};
use tokio::net::TcpStream;

/// A TCP stream that tells the pooled client it talks to a proxy, so
/// HTTP/1 requests go out in absolute form, as `HTTP_PROXY` clients send them.
pub struct ProxyConn(TokioIo<TcpStream>);

impl hyper_util::client::legacy::connect::Connection for ProxyConn {
    fn connected(&self) -> Connected {
        Connected::new().proxy(true)
    }
}

impl hyper::rt::Read for ProxyConn {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for ProxyConn {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::pin::Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

type Connector = tower::util::BoxCloneSyncService<
    http::Uri,
    ProxyConn,
    Box<dyn std::error::Error + Send + Sync>,
>;

/// A pooled client whose every connection goes to `proxy`.
pub type ProxyClient = Client<Connector, Full<Bytes>>;

fn connector(proxy: SocketAddr) -> Connector {
    tower::util::BoxCloneSyncService::new(tower::service_fn(move |_uri: http::Uri| async move {
        let tcp = TcpStream::connect(proxy).await?;
        tcp.set_nodelay(true)?;
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>(ProxyConn(TokioIo::new(tcp)))
    }))
}

/// An HTTP/1.1 client through `proxy`.
pub fn http1(proxy: SocketAddr) -> ProxyClient {
    Client::builder(TokioExecutor::new()).build(connector(proxy))
}

/// An HTTP/2 (prior knowledge, h2c) client through `proxy`.
pub fn http2(proxy: SocketAddr) -> ProxyClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(connector(proxy))
}

/// A response read in full.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }
}

/// Sends `req` and reads the whole response, bounded by 10 s.
pub async fn send(client: &ProxyClient, req: Request<Full<Bytes>>) -> anyhow::Result<Reply> {
    let fut = async {
        let rsp = client.request(req).await?;
        let status = rsp.status();
        let headers = rsp.headers().clone();
        let body = rsp.into_body().collect().await?.to_bytes();
        Ok::<_, anyhow::Error>(Reply {
            status,
            headers,
            body,
        })
    };
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .map_err(|_| anyhow::anyhow!("request timed out"))?
}

/// `GET uri` through `client`.
pub async fn get(client: &ProxyClient, uri: &str) -> anyhow::Result<Reply> {
    let req = Request::get(uri).body(Full::new(Bytes::new()))?;
    send(client, req).await
}

/// What a batch of requests produced.
#[derive(Debug, Default)]
pub struct Tally {
    /// Responses by status.
    pub statuses: std::collections::BTreeMap<u16, u64>,
    /// 2xx responses by the `x-app-name` that served them.
    pub apps: std::collections::BTreeMap<String, u64>,
    /// Requests that got no response at all.
    pub errors: Vec<String>,
}

impl Tally {
    /// Responses with this status.
    pub fn status(&self, s: u16) -> u64 {
        self.statuses.get(&s).copied().unwrap_or(0)
    }

    /// All requests sent.
    pub fn total(&self) -> u64 {
        self.statuses.values().sum::<u64>() + self.errors.len() as u64
    }

    /// 2xx responses from `app`.
    pub fn from(&self, app: &str) -> u64 {
        self.apps.get(app).copied().unwrap_or(0)
    }
}

/// Sends `n` GETs to `url` through `proxy` over `concurrency` HTTP/1.1
/// connections, adding `headers`; bounded by `n` and by 60 s.
pub async fn blast(
    proxy: SocketAddr,
    url: &str,
    n: u64,
    concurrency: u64,
    headers: &[(&str, &str)],
) -> Tally {
    let tally = std::sync::Arc::new(std::sync::Mutex::new(Tally::default()));
    let next = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let headers: Vec<(String, String)> = headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (tally, next, url, headers) = (
            tally.clone(),
            next.clone(),
            url.to_string(),
            headers.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let c = http1(proxy);
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < n
                && std::time::Instant::now() < deadline
            {
                let mut req = Request::get(&url);
                for (k, v) in &headers {
                    req = req.header(k, v);
                }
                let r = send(&c, req.body(Full::new(Bytes::new())).expect("request")).await;
                let mut t = tally.lock().unwrap();
                match r {
                    Ok(r) => {
                        *t.statuses.entry(r.status.as_u16()).or_default() += 1;
                        if r.status.is_success() {
                            *t.apps
                                .entry(r.header("x-app-name").to_string())
                                .or_default() += 1;
                        }
                    }
                    Err(e) => t.errors.push(e.to_string()),
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let out = std::mem::take(&mut *tally.lock().unwrap());
    out
}
