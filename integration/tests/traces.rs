//! Distributed tracing (`MESH_PROXY_TRACE_COLLECTOR`): a request through two
//! proxies yields a CLIENT span on the caller's proxy and a SERVER span on the
//! callee's, in the caller's trace (or a new one), exported over OTLP/gRPC to a
//! receiver in this test; the app sees the SERVER span as its parent.

use bytes::Bytes;
use http::Request;
use http_body_util::Full;
use mesh_integration::{client, fixture::spiffe, Mesh};
use opentelemetry_proto::tonic::{
    collector::trace::v1::{
        trace_service_server::{TraceService, TraceServiceServer},
        ExportTraceServiceRequest, ExportTraceServiceResponse,
    },
    common::v1::any_value::Value,
    trace::v1::{span::SpanKind, Span},
};
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

const URL: &str = "http://api.demo.svc.cluster.local/traced";
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// A span as received, with its resource's `service.name`.
#[derive(Clone, Debug)]
struct Received {
    service: String,
    span: Span,
}

/// An OTLP trace receiver keeping every span.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        req: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.0.lock().unwrap();
        for rs in req.into_inner().resource_spans {
            let service = rs
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| value(kv.value.as_ref().and_then(|v| v.value.as_ref())))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                spans.extend(ss.spans.into_iter().map(|span| Received {
                    service: service.clone(),
                    span,
                }));
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

impl Receiver {
    async fn start() -> (Receiver, SocketAddr) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let rx = Receiver::default();
        let svc = TraceServiceServer::new(rx.clone());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(svc)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(l)),
        );
        (rx, addr)
    }

    /// The CLIENT and SERVER spans of `trace_id`, waiting at most 5 s.
    async fn pair(&self, trace_id: &str) -> (Received, Received) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let find = |kind: SpanKind| {
                let spans = self.0.lock().unwrap();
                spans
                    .iter()
                    .find(|r| hex(&r.span.trace_id) == trace_id && r.span.kind == kind as i32)
                    .cloned()
            };
            if let (Some(c), Some(s)) = (find(SpanKind::Client), find(SpanKind::Server)) {
                return (c, s);
            }
            assert!(
                Instant::now() < deadline,
                "no CLIENT+SERVER spans for {trace_id} in 5 s; got {:?}",
                self.0.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn value(v: Option<&Value>) -> String {
    match v {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attr(span: &Span, key: &str) -> String {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .map(|kv| value(kv.value.as_ref().and_then(|v| v.value.as_ref())))
        .unwrap_or_default()
}

/// An app answering every request with the `traceparent` it received in
/// `x-seen-traceparent`.
async fn traceparent_app() -> SocketAddr {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = l.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| {
                    let seen = req
                        .headers()
                        .get("traceparent")
                        .cloned()
                        .unwrap_or(http::HeaderValue::from_static("none"));
                    async move {
                        http::Response::builder()
                            .header("x-seen-traceparent", seen)
                            .body(Full::new(Bytes::from_static(b"ok")))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tcp), svc)
                    .await;
            });
        }
    });
    addr
}

/// `traceparent` → (trace id, parent id, flags).
fn split(tp: &str) -> (String, String, String) {
    let p: Vec<&str> = tp.split('-').collect();
    assert_eq!(p.len(), 4, "{tp}");
    (p[1].into(), p[2].into(), p[3].into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_both_proxies_join_the_callers_trace() {
    let (receiver, collector) = Receiver::start().await;
    // Inherited by every proxy this test starts (one test per process).
    std::env::set_var("MESH_PROXY_TRACE_COLLECTOR", collector.to_string());
    std::env::set_var("MESH_PROXY_TRACE_BATCH_DELAY_MS", "100");
    let mesh = Mesh::start("1h").await;
    let app = traceparent_app().await;
    let api = mesh.proxy("demo", "api", "api-1").await;
    mesh.serve_api("api", app.port(), &api).await;
    let web = mesh.proxy("demo", "web", "web-1").await;
    let h1 = client::http1(web.outbound);

    // A caller's trace is continued.
    let req = Request::get(URL)
        .header("traceparent", format!("00-{TRACE_ID}-{PARENT_ID}-01"))
        .header("tracestate", "vendor=x")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(&h1, req).await.expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    let (client_span, server_span) = receiver.pair(TRACE_ID).await;
    let (c, s) = (&client_span.span, &server_span.span);
    assert_eq!(client_span.service, "mesh-proxy");
    assert_eq!(server_span.service, "mesh-proxy");
    assert_eq!(hex(&c.parent_span_id), PARENT_ID, "client span's parent");
    assert_eq!(
        hex(&s.parent_span_id),
        hex(&c.span_id),
        "server span's parent"
    );
    let (trace, parent, flags) = split(r.header("x-seen-traceparent"));
    assert_eq!(trace, TRACE_ID);
    assert_eq!(
        parent,
        hex(&s.span_id),
        "the app's parent is the server span"
    );
    assert_eq!(flags, "01");

    assert_eq!(attr(c, "mesh.direction"), "outbound");
    assert_eq!(attr(c, "http.request.method"), "GET");
    assert_eq!(attr(c, "url.path"), "/traced");
    assert_eq!(attr(c, "http.response.status_code"), "200");
    assert_eq!(attr(c, "mesh.dst_service"), "api.demo.svc.cluster.local:80");
    assert_eq!(attr(c, "mesh.client_id"), spiffe("demo", "web"));
    assert_eq!(attr(c, "mesh.server_id"), spiffe("demo", "api"));
    assert_eq!(attr(c, "network.peer.address"), "127.0.0.1");
    // The endpoint as discovered (the workload address), like the access log's `upstream`.
    assert_eq!(attr(c, "network.peer.port"), app.port().to_string());
    assert_eq!(attr(s, "mesh.direction"), "inbound");
    assert!(attr(s, "mesh.dst_service").starts_with("api.demo"), "{s:?}");
    assert_eq!(attr(s, "http.response.status_code"), "200");
    assert_eq!(attr(s, "mesh.client_id"), spiffe("demo", "web"));
    assert_eq!(attr(s, "mesh.server_id"), spiffe("demo", "api"));

    // Without a traceparent the client proxy starts a trace.
    let r = client::get(&h1, URL).await.expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    let (trace, parent, _) = split(r.header("x-seen-traceparent"));
    assert_ne!(trace, TRACE_ID);
    let (client_span, server_span) = receiver.pair(&trace).await;
    assert!(
        client_span.span.parent_span_id.is_empty(),
        "a root span: {:?}",
        client_span.span
    );
    assert_eq!(
        hex(&server_span.span.parent_span_id),
        hex(&client_span.span.span_id)
    );
    assert_eq!(parent, hex(&server_span.span.span_id));

    // A B3 caller's trace is continued too.
    let b3_trace = "80f198ee56343ba864fe8b2a57d3eff7";
    let req = Request::get(URL)
        .header("b3", format!("{b3_trace}-e457b5a2e4d86bd1-1"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = client::send(&h1, req).await.expect("response");
    assert_eq!(r.status, 200, "{r:?}");
    let (client_span, server_span) = receiver.pair(b3_trace).await;
    assert_eq!(hex(&client_span.span.parent_span_id), "e457b5a2e4d86bd1");
    assert_eq!(
        hex(&server_span.span.parent_span_id),
        hex(&client_span.span.span_id)
    );
    let (trace, parent, _) = split(r.header("x-seen-traceparent"));
    assert_eq!(trace, b3_trace);
    assert_eq!(parent, hex(&server_span.span.span_id));
}
