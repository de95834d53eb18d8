//! The gRPC API over a real loopback socket, fed by a real watched directory: what a proxy
//! sees when manifests are added, changed and deleted, and what the admin server's
//! `/metrics` says about it.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use mesh_controller::admin::Scrape;
use mesh_controller::index::{IndexConfig, IndexWriter};
use mesh_controller::metrics::Metrics;
use mesh_controller::resources::parse_documents;
use mesh_controller::source::{DirOptions, DirWatch};
use mesh_proto::destination::destination_client::DestinationClient;
use mesh_proto::destination::{update, GetDestination, Update};
use mesh_proto::policy::inbound_policy_client::InboundPolicyClient;
use mesh_proto::policy::{Action, InboundTarget, Protocol, TlsMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Streaming;

mod support;

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec:\n  selector: {app: web}\n  ports: [{port: 80, targetPort: http, appProtocol: http}, {port: 5432, appProtocol: tcp}]\n";

fn workload(name: &str, ip: &str) -> String {
    format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata: {{name: {name}, namespace: prod, labels: {{app: web}}}}\nspec: {{address: {ip}, ports: {{http: 8080}}, serviceAccount: web}}\n"
    )
}

/// A controller serving a temporary manifest directory on loopback ports (gRPC and admin),
/// as `main` wires it: one metrics handle for the writer, the services and the admin.
struct Fixture {
    dir: tempfile::TempDir,
    watch: Option<DirWatch>,
    channel: Channel,
    admin: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<()>,
}

impl Fixture {
    async fn start(files: &[(&str, &str)]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        for (name, text) in files {
            write(dir.path(), name, text);
        }
        let metrics = Arc::new(Metrics::new());
        let writer = IndexWriter::with_metrics(IndexConfig::default(), Arc::clone(&metrics));
        let reader = writer.subscribe();
        let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let admin = admin_listener.local_addr().unwrap();
        let scrape = Scrape {
            metrics: Arc::clone(&metrics),
            index: reader.clone(),
            certs: None,
            stopping: None,
            bundle: None,
        };
        tokio::spawn(mesh_controller::admin::serve(
            admin_listener,
            scrape,
            std::future::pending(),
        ));
        let opts = DirOptions {
            debounce: Duration::from_millis(50),
            resync: Duration::from_secs(3600),
        };
        let watch = DirWatch::start(dir.path(), writer, opts).await.unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let pki = support::Pki::new();
        let (addr, server) = support::serve(&pki, reader, metrics, Default::default(), async {
            let _ = stopped.await;
        })
        .await;
        let channel = pki.channel(addr, "spiffe://cluster.local/ns/prod/sa/web");
        Self {
            dir,
            watch: Some(watch),
            channel,
            admin,
            stop: Some(stop),
            server,
        }
    }

    /// `GET /metrics` from the admin server, over HTTP/1.1.
    async fn scrape(&self) -> Scraped {
        let mut conn = tokio::net::TcpStream::connect(self.admin).await.unwrap();
        conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
            .await
            .unwrap();
        let mut response = String::new();
        conn.read_to_string(&mut response).await.unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("content-type: application/openmetrics-text"),
            "{head}"
        );
        Scraped(body.to_string())
    }

    async fn get(&self, target: &str) -> Result<Streaming<Update>, tonic::Status> {
        let mut client = DestinationClient::new(self.channel.clone());
        let req = GetDestination {
            target: target.into(),
            context: "test".into(),
        };
        client.get(req).await.map(|r| r.into_inner())
    }
}

/// A `/metrics` body.
struct Scraped(String);

impl Scraped {
    /// The value of `series` (name and labels exactly as rendered).
    fn get(&self, series: &str) -> f64 {
        self.0
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{series} missing in\n{}", self.0))
    }

    fn source_events(&self, event: &str) -> f64 {
        self.get(&format!(
            "mesh_controller_source_events_total{{source=\"dir\",kind=\"file\",event=\"{event}\"}}"
        ))
    }

    fn errors(&self, reason: &str) -> f64 {
        self.get(&format!(
            "mesh_controller_errors_total{{reason=\"{reason}\"}}"
        ))
    }
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

/// The next message, within 5 s.
async fn next<T>(stream: &mut Streaming<T>) -> T {
    tokio::time::timeout(Duration::from_secs(5), stream.message())
        .await
        .expect("no message within 5s")
        .expect("stream failed")
        .expect("stream ended")
}

/// Whether the stream ends cleanly within 5 s.
async fn ended<T>(stream: &mut Streaming<T>) -> bool {
    let end = tokio::time::timeout(Duration::from_secs(5), stream.message()).await;
    matches!(end, Ok(Ok(None)))
}

fn added(u: &Update) -> Vec<&str> {
    match &u.update {
        Some(update::Update::Add(set)) => set.endpoints.iter().map(|e| e.addr.as_str()).collect(),
        other => panic!("expected add, got {other:?}"),
    }
}

fn removed(u: &Update) -> Vec<&str> {
    match &u.update {
        Some(update::Update::Remove(set)) => set.addrs.iter().map(String::as_str).collect(),
        other => panic!("expected remove, got {other:?}"),
    }
}

fn no_endpoints(u: &Update) -> bool {
    match &u.update {
        Some(update::Update::NoEndpoints(n)) => n.exists,
        other => panic!("expected no_endpoints, got {other:?}"),
    }
}

#[tokio::test]
async fn get_sends_full_state_then_diffs() {
    let w1 = workload("w1", "10.0.0.1");
    let fx = Fixture::start(&[("svc.yaml", SERVICE), ("w1.yaml", &w1)]).await;
    let mut stream = fx.get("web.prod.svc.cluster.local:80").await.unwrap();

    let first = next(&mut stream).await;
    assert_eq!(added(&first), ["10.0.0.1:8080"]);
    let Some(update::Update::Add(set)) = &first.update else {
        unreachable!()
    };
    assert_eq!(set.metric_labels["service"], "web");
    let ep = &set.endpoints[0];
    assert_eq!(
        ep.tls.as_ref().unwrap().identity,
        "spiffe://cluster.local/ns/prod/sa/web"
    );
    assert_eq!(ep.tls.as_ref().unwrap().proxy_addr, "10.0.0.1:4143");
    assert_eq!(
        ep.protocol_hint(),
        mesh_proto::destination::ProtocolHint::Http
    );

    write(fx.dir.path(), "w2.yaml", &workload("w2", "10.0.0.2"));
    assert_eq!(added(&next(&mut stream).await), ["10.0.0.2:8080"]);

    std::fs::remove_file(fx.dir.path().join("w2.yaml")).unwrap();
    assert_eq!(removed(&next(&mut stream).await), ["10.0.0.2:8080"]);

    std::fs::remove_file(fx.dir.path().join("w1.yaml")).unwrap();
    assert!(
        no_endpoints(&next(&mut stream).await),
        "the Service still exists"
    );
}

#[tokio::test]
async fn unknown_and_empty_targets() {
    let fx = Fixture::start(&[("svc.yaml", SERVICE)]).await;
    let mut unknown = fx.get("api.prod.svc.cluster.local:80").await.unwrap();
    assert!(!no_endpoints(&next(&mut unknown).await));
    let mut empty = fx.get("web.prod:80").await.unwrap();
    assert!(no_endpoints(&next(&mut empty).await));
    let mut by_ip = fx.get("10.0.0.7:8080").await.unwrap();
    assert!(!no_endpoints(&next(&mut by_ip).await));

    // A workload appears: the empty Service and its address both get an add; the
    // unknown target's stream gets nothing.
    write(fx.dir.path(), "w7.yaml", &workload("w7", "10.0.0.7"));
    assert_eq!(added(&next(&mut empty).await), ["10.0.0.7:8080"]);
    assert_eq!(added(&next(&mut by_ip).await), ["10.0.0.7:8080"]);
    let quiet = tokio::time::timeout(Duration::from_millis(300), unknown.message()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");

    // The unknown Service is created: it becomes known (empty: nothing selects it).
    let api = SERVICE
        .replace("name: web", "name: api")
        .replace("app: web", "app: api");
    write(fx.dir.path(), "api.yaml", &api);
    assert!(no_endpoints(&next(&mut unknown).await));
}

#[tokio::test]
async fn malformed_target_is_invalid_argument() {
    let fx = Fixture::start(&[]).await;
    assert_eq!(fx.scrape().await.errors("invalid_target"), 0.0);
    for target in ["web.prod.svc.cluster.local", "web.prod:http", "10.0.0.1:0"] {
        let status = fx.get(target).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::InvalidArgument, "{target}");
        assert!(status.message().contains(target), "{}", status.message());
    }
    let mut client = DestinationClient::new(fx.channel.clone());
    let bad = GetDestination {
        target: "web.prod:0".into(),
        context: String::new(),
    };
    let status = client.get_policy(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let m = fx.scrape().await;
    assert_eq!(m.errors("invalid_target"), 4.0);
    assert_eq!(m.errors("invalid_resource"), 0.0);
    // Refused streams are not streams served.
    assert_eq!(
        m.get("mesh_controller_streams_total{api=\"destination\"}"),
        0.0
    );
    assert_eq!(m.get("mesh_controller_streams_total{api=\"policy\"}"), 0.0);
}

#[tokio::test]
async fn metrics_follow_streams_updates_and_manifest_changes() {
    let w1 = workload("w1", "10.0.0.1");
    let fx = Fixture::start(&[("svc.yaml", SERVICE), ("w1.yaml", &w1)]).await;
    let before = fx.scrape().await;
    assert_eq!(before.source_events("apply"), 2.0, "the initial load");
    assert_eq!(
        before.get("mesh_controller_index_objects{kind=\"Service\"}"),
        1.0
    );
    assert_eq!(
        before.get("mesh_controller_index_objects{kind=\"WorkloadEntry\"}"),
        1.0
    );
    let updates_before = before.get("mesh_controller_index_updates_total");
    assert!(updates_before >= 1.0, "the initial load is an index update");

    let mut stream = fx.get("web.prod.svc.cluster.local:80").await.unwrap();
    assert_eq!(added(&next(&mut stream).await), ["10.0.0.1:8080"]);
    write(fx.dir.path(), "w2.yaml", &workload("w2", "10.0.0.2"));
    assert_eq!(added(&next(&mut stream).await), ["10.0.0.2:8080"]);

    let m = fx.scrape().await;
    let dst = |family: &str| m.get(&format!("mesh_controller_{family}{{api=\"destination\"}}"));
    assert_eq!(dst("streams_open"), 1.0);
    assert_eq!(dst("streams_total"), 1.0);
    assert_eq!(
        dst("updates_sent_total"),
        2.0,
        "the initial state and one diff"
    );
    // Only the diff was caused by an index change.
    assert_eq!(dst("push_latency_seconds_count"), 1.0);
    assert!(dst("push_latency_seconds_sum") < 5.0);
    assert_eq!(
        m.get("mesh_controller_push_latency_seconds_bucket{le=\"+Inf\",api=\"destination\"}"),
        1.0
    );
    assert_eq!(m.get("mesh_controller_streams_open{api=\"policy\"}"), 0.0);
    assert!(m.source_events("apply") >= 3.0, "w2.yaml was applied");
    assert!(m.get("mesh_controller_index_updates_total") > updates_before);
    assert_eq!(
        m.get("mesh_controller_index_rebuild_seconds_count"),
        m.get("mesh_controller_index_updates_total")
    );
    assert_eq!(
        m.get("mesh_controller_index_objects{kind=\"WorkloadEntry\"}"),
        2.0
    );

    // A deleted file and an invalid one.
    std::fs::remove_file(fx.dir.path().join("w2.yaml")).unwrap();
    assert_eq!(removed(&next(&mut stream).await), ["10.0.0.2:8080"]);
    write(
        fx.dir.path(),
        "bad.yaml",
        "kind: Service\napiVersion: v1\nspec: [",
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let m = loop {
        let m = fx.scrape().await;
        if m.source_events("error") >= 1.0 {
            break m;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no error event in 5s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(m.source_events("delete"), 1.0);
    assert_eq!(m.errors("invalid_resource"), m.source_events("error"));
    assert_eq!(dst_sent(&m), 3.0);

    // The client leaves: the stream is no longer open.
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while fx
        .scrape()
        .await
        .get("mesh_controller_streams_open{api=\"destination\"}")
        != 0.0
    {
        assert!(tokio::time::Instant::now() < deadline, "stream still open");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        fx.scrape()
            .await
            .get("mesh_controller_streams_total{api=\"destination\"}"),
        1.0
    );
}

fn dst_sent(m: &Scraped) -> f64 {
    m.get("mesh_controller_updates_sent_total{api=\"destination\"}")
}

#[tokio::test]
async fn policy_and_inbound_streams_are_counted_per_api() {
    let fx = Fixture::start(&[("svc.yaml", SERVICE)]).await;
    let mut client = DestinationClient::new(fx.channel.clone());
    let req = GetDestination {
        target: "web.prod:80".into(),
        context: String::new(),
    };
    let mut policy = client.get_policy(req).await.unwrap().into_inner();
    assert!(!next(&mut policy).await.opaque);
    let mut inbound = InboundPolicyClient::new(fx.channel.clone())
        .watch(InboundTarget {
            workload: "prod/w1".into(),
            port: 8080,
        })
        .await
        .unwrap()
        .into_inner();
    next(&mut inbound).await;
    write(
        fx.dir.path(),
        "svc.yaml",
        &SERVICE.replace("appProtocol: http", "appProtocol: opaque"),
    );
    assert!(next(&mut policy).await.opaque);

    let m = fx.scrape().await;
    let get =
        |family: &str, api: &str| m.get(&format!("mesh_controller_{family}{{api=\"{api}\"}}"));
    assert_eq!(get("streams_open", "policy"), 1.0);
    assert_eq!(get("streams_open", "inbound"), 1.0);
    assert_eq!(get("streams_open", "destination"), 0.0);
    assert_eq!(get("updates_sent_total", "policy"), 2.0);
    assert_eq!(get("push_latency_seconds_count", "policy"), 1.0);
    assert_eq!(get("updates_sent_total", "inbound"), 1.0);
    assert_eq!(get("push_latency_seconds_count", "inbound"), 0.0);
}

#[tokio::test]
async fn get_policy_sends_default_policy() {
    let fx = Fixture::start(&[("svc.yaml", SERVICE)]).await;
    let mut client = DestinationClient::new(fx.channel.clone());
    let req = |t: &str| GetDestination {
        target: t.into(),
        context: String::new(),
    };
    let mut http = client
        .get_policy(req("web.prod.svc.cluster.local:80"))
        .await
        .unwrap()
        .into_inner();
    let p = next(&mut http).await;
    assert_eq!(p.service, "web.prod");
    assert!(!p.opaque);
    assert_eq!(
        p.default_route.unwrap().backends[0].target,
        "web.prod.svc.cluster.local:80"
    );
    assert_eq!(p.retry_budget.unwrap().min_retries_per_second, 10);

    let mut tcp = client
        .get_policy(req("web.prod:5432"))
        .await
        .unwrap()
        .into_inner();
    assert!(next(&mut tcp).await.opaque);

    // Index changes that leave the policy as it was send nothing.
    write(fx.dir.path(), "w1.yaml", &workload("w1", "10.0.0.1"));
    let quiet = tokio::time::timeout(Duration::from_millis(400), http.message()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");
    // The port becomes opaque: a new snapshot.
    write(
        fx.dir.path(),
        "svc.yaml",
        &SERVICE.replace("appProtocol: http", "appProtocol: opaque"),
    );
    assert!(next(&mut http).await.opaque);
}

#[tokio::test]
async fn inbound_policy_default_and_stream_stays_open() {
    let fx = Fixture::start(&[]).await;
    let mut client = InboundPolicyClient::new(fx.channel.clone());
    let target = InboundTarget {
        workload: "prod/w1".into(),
        port: 8080,
    };
    let mut stream = client.watch(target).await.unwrap().into_inner();
    let p = next(&mut stream).await;
    assert_eq!(p.protocol(), Protocol::Detect);
    assert_eq!(p.tls_mode(), TlsMode::Default);
    assert!(p.policies.is_empty());
    let open = tokio::time::timeout(Duration::from_millis(300), stream.message()).await;
    assert!(open.is_err(), "stream did not stay open: {open:?}");

    let bad = InboundTarget {
        workload: "prod/w1".into(),
        port: 70_000,
    };
    let status = client.watch(bad).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    // A name no Kubernetes object can have is refused, not kept as a topic.
    let long = InboundTarget {
        workload: format!("prod/{}", "w".repeat(100_000)),
        port: 8080,
    };
    let status = client.watch(long).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
}

/// An AuthorizationPolicy on port 80 of Service `web` (the workload's `http` port, 8080).
fn authz(action: &str, namespaces: &str) -> String {
    format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: web-callers, namespace: prod}}\nspec:\n  targetRef: {{kind: Service, name: web, port: 80}}\n  action: {action}\n  mtls: strict\n  rules:\n    - from: [{{namespaces: [{namespaces}]}}]\n      to: [{{methods: [get]}}]\n"
    )
}

#[tokio::test]
async fn inbound_policy_follows_authorization_policy_changes() {
    let w1 = workload("w1", "10.0.0.1");
    let fx = Fixture::start(&[
        ("svc.yaml", SERVICE),
        ("w1.yaml", &w1),
        ("authz.yaml", &authz("allow", "prod")),
    ])
    .await;
    let mut client = InboundPolicyClient::new(fx.channel.clone());
    let watch = |port| InboundTarget {
        workload: "prod/w1".into(),
        port,
    };
    let mut stream = client.watch(watch(8080)).await.unwrap().into_inner();
    let p = next(&mut stream).await;
    assert_eq!(p.protocol(), Protocol::Detect);
    assert_eq!(p.tls_mode(), TlsMode::Strict);
    assert_eq!(p.tls_mode_source, "prod/web-callers");
    assert_eq!(p.policies.len(), 1, "{p:?}");
    assert_eq!(p.policies[0].name, "web-callers");
    assert_eq!(p.policies[0].action(), Action::Allow);
    assert_eq!(p.policies[0].rules[0].from[0].namespaces, ["prod"]);
    assert_eq!(p.policies[0].rules[0].to[0].methods, ["GET"]);

    // Another port of the same workload is not the Service port's target.
    let mut other = client.watch(watch(9999)).await.unwrap().into_inner();
    let p = next(&mut other).await;
    assert_eq!(p.tls_mode(), TlsMode::Default);
    assert!(p.policies.is_empty());

    // The policy changes: the stream sends the new one.
    write(fx.dir.path(), "authz.yaml", &authz("DENY", "\"*\""));
    let p = next(&mut stream).await;
    assert_eq!(p.policies[0].action(), Action::Deny);
    assert_eq!(p.policies[0].rules[0].from[0].namespaces, ["*"]);

    // An invalid edit keeps the last good version: nothing is sent.
    write(fx.dir.path(), "authz.yaml", &authz("permit", "prod"));
    let quiet = tokio::time::timeout(Duration::from_millis(400), stream.message()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");

    // The policy goes away: back to the default.
    std::fs::remove_file(fx.dir.path().join("authz.yaml")).unwrap();
    let p = next(&mut stream).await;
    assert_eq!(p.tls_mode(), TlsMode::Default);
    assert!(p.policies.is_empty());
    let quiet = tokio::time::timeout(Duration::from_millis(300), other.message()).await;
    assert!(quiet.is_err(), "port 9999 changed: {quiet:?}");
}

#[tokio::test]
async fn streams_end_and_server_stops_on_shutdown() {
    let mut fx = Fixture::start(&[("svc.yaml", SERVICE)]).await;
    let mut get = fx.get("web.prod:80").await.unwrap();
    next(&mut get).await;
    let mut inbound = InboundPolicyClient::new(fx.channel.clone())
        .watch(InboundTarget {
            workload: "prod/w1".into(),
            port: 80,
        })
        .await
        .unwrap()
        .into_inner();
    next(&mut inbound).await;

    // What main does on SIGTERM: stop the source, then the server.
    drop(fx.watch.take());
    if let Some(stop) = fx.stop.take() {
        let _ = stop.send(());
    }
    assert!(ended(&mut get).await, "Get stream still open");
    assert!(ended(&mut inbound).await, "Watch stream still open");
    let server = tokio::time::timeout(Duration::from_secs(5), &mut fx.server).await;
    assert!(
        matches!(server, Ok(Ok(()))),
        "server did not stop: {server:?}"
    );
}

#[tokio::test]
async fn streams_release_their_state_when_clients_leave() {
    let writer = IndexWriter::new(IndexConfig::default());
    let resources = parse_documents(SERVICE).unwrap().resources;
    writer.update(|index| index.apply_file("/svc.yaml", resources));
    let pki = support::Pki::new();
    let (addr, server) = support::serve(
        &pki,
        writer.subscribe(),
        Arc::clone(writer.metrics()),
        Default::default(),
        std::future::pending(),
    )
    .await;
    let mut client =
        DestinationClient::new(pki.channel(addr, "spiffe://cluster.local/ns/prod/sa/web"));
    let req = GetDestination {
        target: "web.prod:80".into(),
        context: String::new(),
    };
    // Once a call was answered the server holds its own readers; count from there.
    let mut warm = client.get(req.clone()).await.unwrap().into_inner();
    next(&mut warm).await;
    let with_one = writer.reader_count();
    drop(warm);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while writer.reader_count() != with_one - 1 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "warm-up stream held"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = writer.reader_count();

    let mut get = client.get(req.clone()).await.unwrap().into_inner();
    let mut policy = client.get_policy(req).await.unwrap().into_inner();
    next(&mut get).await;
    next(&mut policy).await;
    assert_eq!(writer.reader_count(), idle + 2);

    drop(get);
    drop(policy);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while writer.reader_count() != idle {
        assert!(
            tokio::time::Instant::now() < deadline,
            "streams still held after 5s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
}

fn split_route(v1: u32, v2: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{name: split, namespace: prod}}\nspec:\n  parentRefs: [{{kind: Service, name: web, port: 80}}]\n  rules:\n    - backendRefs: [{{name: web-v1, port: 80, weight: {v1}}}, {{name: web-v2, port: 80, weight: {v2}}}]\n      timeouts: {{request: 2s}}\n"
    )
}

#[tokio::test]
async fn get_policy_streams_route_changes() {
    let fx = Fixture::start(&[("svc.yaml", SERVICE), ("route.yaml", &split_route(90, 10))]).await;
    let mut client = DestinationClient::new(fx.channel.clone());
    let req = GetDestination {
        target: "web.prod.svc.cluster.local:80".into(),
        context: String::new(),
    };
    let mut stream = client.get_policy(req).await.unwrap().into_inner();
    let weights = |p: &mesh_proto::destination::ServicePolicy| -> Vec<(String, u32)> {
        assert_eq!(p.routes.len(), 1, "{p:?}");
        assert_eq!(p.routes[0].name, "httproute/prod/split/0");
        assert_eq!(p.routes[0].request_timeout_ms, 2_000);
        p.routes[0]
            .backends
            .iter()
            .map(|b| (b.target.clone(), b.weight))
            .collect()
    };
    let first = next(&mut stream).await;
    assert_eq!(
        weights(&first),
        [
            ("web-v1.prod.svc.cluster.local:80".to_string(), 90),
            ("web-v2.prod.svc.cluster.local:80".to_string(), 10)
        ]
    );
    assert_eq!(
        first.default_route.unwrap().backends[0].target,
        "web.prod.svc.cluster.local:80"
    );

    write(fx.dir.path(), "route.yaml", &split_route(50, 50));
    let changed = tokio::time::timeout(Duration::from_secs(2), stream.message())
        .await
        .expect("no new snapshot within 2s")
        .unwrap()
        .unwrap();
    let w: Vec<u32> = weights(&changed).into_iter().map(|(_, w)| w).collect();
    assert_eq!(w, [50, 50]);

    // An invalid edit changes nothing: no snapshot.
    write(
        fx.dir.path(),
        "route.yaml",
        &split_route(50, 50).replace("2s", "2 seconds"),
    );
    let quiet = tokio::time::timeout(Duration::from_millis(400), stream.message()).await;
    assert!(quiet.is_err(), "unexpected message: {quiet:?}");

    // The route goes away: back to no routes.
    std::fs::remove_file(fx.dir.path().join("route.yaml")).unwrap();
    assert!(next(&mut stream).await.routes.is_empty());
}
