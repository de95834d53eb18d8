//! In-process applications behind the proxies: an HTTP echo server
//! (HTTP/1.1 and h2c, with upgrade support) and a gRPC server.

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

/// How an echo app misbehaves; changeable while it runs.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Answer this status instead of 200 to this share of requests, spread
    /// evenly (below 50 % two failures are never adjacent, so a retry of a
    /// lone client lands on a healthy slot).
    pub fail_percent: u32,
    /// The failure status (default 503).
    pub fail_status: Option<u16>,
    /// Wait this long before answering.
    pub delay: std::time::Duration,
}

/// A running echo application.
pub struct EchoApp {
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicU64>,
    /// Its current behaviour.
    pub behaviour: Arc<std::sync::Mutex<Behaviour>>,
    task: tokio::task::JoinHandle<()>,
}

impl Behaviour {
    /// Answers every request after `ms` milliseconds.
    pub fn delayed(ms: u64) -> Self {
        Behaviour {
            delay: std::time::Duration::from_millis(ms),
            ..Default::default()
        }
    }

    /// Fails `percent` % of requests with 503.
    pub fn failing(percent: u32) -> Self {
        Behaviour {
            fail_percent: percent,
            ..Default::default()
        }
    }
}

impl EchoApp {
    /// Changes how the app behaves from now on.
    pub fn set(&self, b: Behaviour) {
        *self.behaviour.lock().unwrap() = b;
    }

    /// Requests served so far.
    pub fn count(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }
}

impl Drop for EchoApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts an echo app named `name` on a free loopback port. It answers every
/// request with 200, headers `x-app-name`, `x-seen-client-id` (the
/// `x-mesh-client-id` it received), `x-seen-version`, and echoes the body.
/// A request with `Upgrade: echo` is switched to a raw byte echo.
pub async fn echo(name: &str) -> EchoApp {
    echo_with(name, Behaviour::default()).await
}

/// Starts an echo app that misbehaves as `behaviour` says.
pub async fn echo_with(name: &str, behaviour: Behaviour) -> EchoApp {
    echo_on(std::net::Ipv4Addr::LOCALHOST.into(), name, behaviour).await
}

/// Starts an echo app listening on `ip` only (a free port).
pub async fn echo_on(ip: std::net::IpAddr, name: &str, behaviour: Behaviour) -> EchoApp {
    let listener = TcpListener::bind(SocketAddr::new(ip, 0))
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let behaviour = Arc::new(std::sync::Mutex::new(behaviour));
    let b = behaviour.clone();
    let name: Arc<str> = Arc::from(name);
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let name = name.clone();
            let hits = h.clone();
            let b = b.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let n = hits.fetch_add(1, Ordering::Relaxed);
                    let now = b.lock().unwrap().clone();
                    misbehave(name.clone(), req, n, now)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    EchoApp {
        addr,
        hits,
        behaviour,
        task,
    }
}

async fn misbehave(
    name: Arc<str>,
    req: Request<Incoming>,
    n: u64,
    b: Behaviour,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if !b.delay.is_zero() {
        tokio::time::sleep(b.delay).await;
    }
    let p = u64::from(b.fail_percent.min(100));
    if (n + 1) * p / 100 > n * p / 100 {
        let status = StatusCode::from_u16(b.fail_status.unwrap_or(503)).unwrap();
        let rsp = Response::builder()
            .status(status)
            .header("x-app-name", &*name)
            .body(Full::new(Bytes::from_static(b"injected failure")))
            .expect("response");
        return Ok(rsp);
    }
    handle(name, req).await
}

async fn handle(
    name: Arc<str>,
    mut req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let seen_id = req
        .headers()
        .get("x-mesh-client-id")
        .map(|v| v.to_str().unwrap_or("<non-utf8>").to_string())
        .unwrap_or_default();
    let version = format!("{:?}", req.version());
    if req.headers().get("upgrade").is_some_and(|v| v == "echo") {
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                let mut io = TokioIo::new(up);
                let mut buf = [0u8; 1024];
                while let Ok(n) = io.read(&mut buf).await {
                    if n == 0 || io.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                }
            }
        });
        let rsp = Response::builder()
            .status(StatusCode::SWITCHING_PROTOCOLS)
            .header("upgrade", "echo")
            .header("connection", "upgrade")
            .header("x-seen-client-id", seen_id)
            .body(Full::new(Bytes::new()))
            .expect("response");
        return Ok(rsp);
    }
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let rsp = Response::builder()
        .header("x-app-name", &*name)
        .header("x-seen-client-id", seen_id)
        .header("x-seen-version", version)
        .body(Full::new(body))
        .expect("response");
    Ok(rsp)
}

/// A running gRPC app (the `Identity` service, reused as a test API: it
/// answers `Certify` with the app name and the caller's mesh identity; the
/// request's `identity` field `unavailable-odd`, `invalid` or `slow` makes
/// it fail every other call, always fail, or answer after 300 ms).
pub struct GrpcApp {
    pub addr: SocketAddr,
    /// Calls received.
    pub calls: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for GrpcApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Echo(String, Arc<AtomicU64>);

#[tonic::async_trait]
impl mesh_proto::identity::identity_server::Identity for Echo {
    async fn certify(
        &self,
        req: tonic::Request<mesh_proto::identity::CertifyRequest>,
    ) -> Result<tonic::Response<mesh_proto::identity::CertifyResponse>, tonic::Status> {
        let n = self.1.fetch_add(1, Ordering::Relaxed);
        // The request's `identity` field selects a misbehaviour.
        match req.get_ref().identity.as_str() {
            "unavailable-odd" if n.is_multiple_of(2) => {
                return Err(tonic::Status::unavailable("odd call fails"));
            }
            "invalid" => return Err(tonic::Status::invalid_argument("always invalid")),
            "slow" => tokio::time::sleep(std::time::Duration::from_millis(300)).await,
            _ => {}
        }
        let seen = req
            .metadata()
            .get("x-mesh-client-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        Ok(tonic::Response::new(
            mesh_proto::identity::CertifyResponse {
                leaf_certificate: self.0.clone().into_bytes(),
                intermediate_certificates: vec![seen.into_bytes()],
                valid_until_unix_seconds: 0,
            },
        ))
    }
}

/// Starts a gRPC app on a free loopback port.
pub async fn grpc(name: &str) -> GrpcApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let calls = Arc::new(AtomicU64::new(0));
    let svc = mesh_proto::identity::identity_server::IdentityServer::new(Echo(
        name.to_string(),
        calls.clone(),
    ));
    let task = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        let _ = tonic::transport::Server::builder()
            .add_service(svc)
            .serve_with_incoming(incoming)
            .await;
    });
    GrpcApp { addr, calls, task }
}

/// A running forwarding app: a middle tier that calls another service
/// through its own proxy for every request it serves.
pub struct ForwardApp {
    pub addr: SocketAddr,
    /// Requests served.
    pub hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ForwardApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a forwarding app on a free loopback port. Each request becomes a
/// GET of the same path on `http://<to>` (or on the host in the request's
/// `x-forward-to` header) sent through `via`, its proxy's outbound listener
/// (explicit mode); the answer's status, `x-app-name` and body come back,
/// or a 502 when there was none.
pub async fn forwarder(via: SocketAddr, to: &str) -> ForwardApp {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let hits = Arc::new(AtomicU64::new(0));
    let client = crate::client::http1(via);
    let to: Arc<str> = Arc::from(to);
    let h = hits.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                continue;
            };
            let (client, to, hits) = (client.clone(), to.clone(), h.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    hits.fetch_add(1, Ordering::Relaxed);
                    forward(client.clone(), to.clone(), req)
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    ForwardApp { addr, hits, task }
}

async fn forward(
    client: crate::client::ProxyClient,
    to: Arc<str>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let host = req
        .headers()
        .get("x-forward-to")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(&to)
        .to_string();
    let path = req
        .uri()
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let rsp = match crate::client::get(&client, &format!("http://{host}{path}")).await {
        Ok(r) => Response::builder()
            .status(r.status)
            .header("x-app-name", r.header("x-app-name"))
            .body(Full::new(r.body)),
        Err(e) => Response::builder()
            .status(StatusCode::BAD_GATEWAY)
            .body(Full::new(Bytes::from(e.to_string()))),
    };
    Ok(rsp.expect("response"))
}
