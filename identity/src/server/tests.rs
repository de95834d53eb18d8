use std::sync::Arc;
use std::time::Duration;

use mesh_proto::identity::identity_client::IdentityClient;
use mesh_proto::identity::CertifyRequest;
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;
use crate::ca::{generate_issuer, generate_trust_anchor};
use crate::token;

const TD: &str = "cluster.local";

struct Running {
    client: IdentityClient<Channel>,
    service: IdentityService,
    token_key: TokenKey,
    anchors: String,
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), ServeError>>,
    admin_addr: std::net::SocketAddr,
}

async fn start() -> Running {
    let (anchor, anchor_key) = generate_trust_anchor(TD).unwrap();
    let (cert, key) = generate_issuer(&anchor, &anchor_key, TD).unwrap();
    let issuer = Arc::new(Issuer::load(&cert, &key, &anchor).unwrap());
    let token_key = TokenKey::generate().unwrap();
    let service = IdentityService::new(issuer, token_key.clone(), TD, Duration::from_secs(3600));

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin_addr = admin.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let config = ServeConfig {
        listener,
        admin_listener: Some(admin),
        service: service.clone(),
    };
    let task = tokio::spawn(serve(config, async {
        let _ = stopped.await;
    }));

    crate::install_crypto_provider();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&anchor))
        .domain_name("localhost");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    // The in-cluster name verifies too.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&anchor))
        .domain_name("identity.mesh-system.svc.cluster.local");
    Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    // ...and a name the serving certificate does not carry does not.
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(&anchor))
        .domain_name("other.example");
    let wrong = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await;
    assert!(
        wrong.is_err(),
        "TLS must fail for a name not in the certificate"
    );
    Running {
        client: IdentityClient::new(channel),
        service,
        token_key,
        anchors: anchor,
        stop: Some(stop),
        task,
        admin_addr,
    }
}

fn csr_for(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn request(identity: &str, token: &str, csr: Vec<u8>) -> CertifyRequest {
    CertifyRequest {
        identity: identity.to_string(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr,
    }
}

#[tokio::test]
async fn certify_over_tls_issues_a_verifiable_leaf() {
    let mut r = start().await;
    let id = spiffe::spiffe_id(TD, "default", "web");
    let token = token::mint(&r.token_key, "default", "web", Duration::from_secs(600));
    let resp = r
        .client
        .certify(request(&id, &token, csr_for(&id)))
        .await
        .unwrap()
        .into_inner();

    let leaf = X509Certificate::from_der(&resp.leaf_certificate).unwrap().1;
    assert_eq!(resp.intermediate_certificates.len(), 1);
    let issuer = X509Certificate::from_der(&resp.intermediate_certificates[0])
        .unwrap()
        .1;
    leaf.verify_signature(Some(issuer.public_key())).unwrap();
    let anchor_der = rustls_pemfile::certs(&mut r.anchors.as_bytes())
        .next()
        .unwrap()
        .unwrap();
    let anchor = X509Certificate::from_der(&anchor_der).unwrap().1;
    issuer.verify_signature(Some(anchor.public_key())).unwrap();
    assert_eq!(
        resp.valid_until_unix_seconds,
        leaf.validity().not_after.timestamp()
    );
    let san = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert_eq!(
        san.general_names,
        vec![x509_parser::extensions::GeneralName::URI(&id)]
    );
    assert_eq!(r.service.issued_total(), 1);
    assert_eq!(r.service.errors_total(), 0);

    // The admin endpoint is up alongside.
    let mut s = tokio::net::TcpStream::connect(r.admin_addr).await.unwrap();
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    s.write_all(b"GET /ready HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    // ...with the metrics.
    let mut s = tokio::net::TcpStream::connect(r.admin_addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(
        out.lines()
            .any(|l| l == "mesh_identity_certificates_issued_total 1"),
        "{out}"
    );

    if let Some(stop) = r.stop.take() {
        stop.send(()).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(10), r.task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}

#[tokio::test]
async fn bad_token_is_unauthenticated() {
    let mut r = start().await;
    let id = spiffe::spiffe_id(TD, "default", "web");
    let other_key = TokenKey::generate().unwrap();
    let forged = token::mint(&other_key, "default", "web", Duration::from_secs(600));
    for token in [forged.as_str(), "garbage", ""] {
        let err = r
            .client
            .certify(request(&id, token, csr_for(&id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token}: {err:?}");
        assert!(err.message().starts_with("token "), "{}", err.message());
    }
    assert_eq!(r.service.errors_total(), 3);
    assert_eq!(r.service.issued_total(), 0);
}

#[tokio::test]
async fn token_for_another_account_is_permission_denied() {
    let mut r = start().await;
    let asked = spiffe::spiffe_id(TD, "default", "b");
    let token = token::mint(&r.token_key, "default", "a", Duration::from_secs(600));
    let err = r
        .client
        .certify(request(&asked, &token, csr_for(&asked)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "token is for spiffe://cluster.local/ns/default/sa/a but the request asks for \
         spiffe://cluster.local/ns/default/sa/b"
    );
}

#[tokio::test]
async fn bad_csr_or_identity_is_invalid_argument() {
    let mut r = start().await;
    let id = spiffe::spiffe_id(TD, "default", "web");
    let token = token::mint(&r.token_key, "default", "web", Duration::from_secs(600));

    let err = r
        .client
        .certify(request(&id, &token, b"garbage".to_vec()))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("CSR"), "{}", err.message());

    let other = spiffe::spiffe_id(TD, "default", "admin");
    let err = r
        .client
        .certify(request(&id, &token, csr_for(&other)))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    assert!(err.message().contains("SAN mismatch"), "{}", err.message());

    for bad_id in ["not-a-spiffe-id", "spiffe://other.domain/ns/default/sa/web"] {
        let err = r
            .client
            .certify(request(bad_id, &token, csr_for(bad_id)))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{bad_id}: {err:?}");
    }
}
