//! The controller serves only mutual TLS from workloads of its own trust domain: no
//! anonymous reads of endpoints, identities or policy, and no client can hold more than
//! its share of streams or keep a silent connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_controller::grpc::Limits;
use mesh_controller::index::{IndexConfig, IndexWriter};
use mesh_controller::resources::parse_documents;
use mesh_proto::destination::destination_client::DestinationClient;
use mesh_proto::destination::GetDestination;
use mesh_proto::workload::{client_config, CertStore, TrustBundle};
use tokio::io::AsyncReadExt;

mod support;
use support::{Pki, CONTROLLER_ID};

const SERVICE: &str = "apiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: prod}\nspec:\n  selector: {app: web}\n  ports: [{port: 80}]\n";

fn writer() -> IndexWriter {
    let writer = IndexWriter::new(IndexConfig::default());
    let resources = parse_documents(SERVICE).unwrap().resources;
    writer.update(|index| index.apply_file("/svc.yaml", resources));
    writer
}

/// A controller on a loopback port serving the test Service with `limits`.
async fn start(limits: Limits) -> (std::net::SocketAddr, Pki, IndexWriter) {
    let pki = Pki::new();
    let writer = writer();
    let (addr, _server) = support::serve(
        &pki,
        writer.subscribe(),
        Arc::clone(writer.metrics()),
        limits,
        std::future::pending(),
    )
    .await;
    (addr, pki, writer)
}

fn get() -> GetDestination {
    GetDestination {
        target: "web.prod.svc.cluster.local:80".into(),
        context: "test".into(),
    }
}

/// A TLS handshake with the controller presenting `certs` (possibly none);
/// returns the stream if the server accepted it, reading until it closes.
async fn handshake(
    addr: std::net::SocketAddr,
    pki: &Pki,
    certs: Arc<CertStore>,
) -> Result<(), String> {
    let config = client_config(
        certs,
        TrustBundle::from_pem(&pki.anchors).unwrap(),
        CONTROLLER_ID,
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = mesh_proto::workload::server_name().unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    // TLS 1.3: the server judges the client's certificate after the client
    // finished; its verdict arrives as an alert or a close on the first read.
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(2), tls.read(&mut buf)).await {
        Ok(Ok(0)) => Err("closed".into()),
        Ok(Err(e)) => Err(e.to_string()),
        _ => Ok(()),
    }
}

#[tokio::test]
async fn anonymous_and_foreign_callers_are_served_nothing() {
    let (addr, pki, writer) = start(Limits::default()).await;

    // Control: a workload of the mesh gets the endpoints.
    let mut ok = DestinationClient::new(pki.channel(addr, "spiffe://cluster.local/ns/prod/sa/web"));
    let mut stream = ok
        .get(get())
        .await
        .expect("a mesh workload is served")
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    let with_one = writer.reader_count();
    drop(stream);
    let deadline = Instant::now() + Duration::from_secs(5);
    while writer.reader_count() != with_one - 1 {
        assert!(Instant::now() < deadline, "the control stream is held");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let idle = writer.reader_count();

    // Plaintext h2c, as before the controller required TLS.
    let plain = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(3));
    let refused = match plain.connect().await {
        Err(_) => true,
        Ok(ch) => DestinationClient::new(ch).get(get()).await.is_err(),
    };
    assert!(refused, "plaintext Get was served");

    // TLS without a client certificate.
    let none = Arc::new(CertStore::default());
    assert!(
        handshake(addr, &pki, none).await.is_err(),
        "no certificate accepted"
    );

    // A certificate from another CA, with a SPIFFE ID of this trust domain.
    let other = Pki::new();
    let foreign = other.certs("spiffe://cluster.local/ns/prod/sa/web");
    assert!(
        handshake(addr, &pki, foreign).await.is_err(),
        "foreign CA accepted"
    );

    // Our CA, another trust domain: refused after the handshake.
    let outsider =
        DestinationClient::new(pki.channel(addr, "spiffe://other.example/ns/prod/sa/web"))
            .get(get())
            .await;
    assert!(outsider.is_err(), "another trust domain was served");

    // None of them got as far as a stream on the index.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        writer.reader_count(),
        idle,
        "a refused caller holds a stream"
    );
}

#[tokio::test]
async fn one_identity_holds_at_most_its_share_of_streams() {
    let limits = Limits {
        max_streams_per_identity: 3,
        ..Limits::default()
    };
    let (addr, pki, _writer) = start(limits).await;
    let greedy = pki.channel(addr, "spiffe://cluster.local/ns/prod/sa/greedy");
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut s = DestinationClient::new(greedy.clone())
            .get(get())
            .await
            .expect("within the limit")
            .into_inner();
        assert!(s.message().await.unwrap().is_some());
        held.push(s);
    }
    // Another connection of the same identity counts too.
    let again = pki.channel(addr, "spiffe://cluster.local/ns/prod/sa/greedy");
    let err = DestinationClient::new(again.clone())
        .get(get())
        .await
        .expect_err("a fourth stream");
    assert_eq!(err.code(), tonic::Code::ResourceExhausted, "{err:?}");
    // Others are not affected.
    let mut other =
        DestinationClient::new(pki.channel(addr, "spiffe://cluster.local/ns/prod/sa/web"));
    assert!(other.get(get()).await.is_ok());
    // Closing a stream gives its place back.
    drop(held.pop());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match DestinationClient::new(again.clone()).get(get()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                assert!(Instant::now() < deadline, "the place was never given back");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

#[tokio::test]
async fn a_silent_authenticated_connection_is_closed() {
    let limits = Limits {
        handshake_timeout: Duration::from_millis(500),
        ..Limits::default()
    };
    let (addr, pki, _writer) = start(limits).await;
    let config = client_config(
        pki.certs("spiffe://cluster.local/ns/prod/sa/web"),
        TrustBundle::from_pem(&pki.anchors).unwrap(),
        CONTROLLER_ID,
    )
    .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(config)
        .connect(mesh_proto::workload::server_name().unwrap(), tcp)
        .await
        .expect("handshake");
    // Never sends the HTTP/2 preface: closed after the first-stream timeout
    // and a short grace.
    let start = Instant::now();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut buf)).await;
    let took = start.elapsed();
    assert!(
        took < Duration::from_millis(2_500),
        "a silent connection stayed open {took:?}"
    );
}
