//! Fixtures of the Kubernetes-mode tests: a fake API server holding the issuer Secret,
//! namespaces and TokenReview answers, the identity service started against it, and
//! helpers to call and inspect it.

#![allow(dead_code, unused_imports)]

pub use std::collections::BTreeSet;
pub use std::net::SocketAddr;
pub use std::sync::Arc;
pub use std::time::Duration;

pub use base64::engine::general_purpose::STANDARD;
pub use base64::Engine;
pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
pub use k8s_openapi::jiff::Timestamp;
pub use mesh_identity::ca::{generate_issuer, generate_trust_anchor};
pub use mesh_identity::kubernetes::{
    self, lease, KubeMode, KubeSettings, LeaseSettings, TokenReviewer, CLUSTER_RULES,
    NAMESPACE_RULES,
};
pub use mesh_identity::metrics::Metrics;
pub use mesh_identity::server::{
    serve, AuthError, Authenticator, IdentityService, ServeConfig, ServiceConfig,
};
pub use mesh_identity::spiffe::spiffe_id;
pub use mesh_kube_fake::{parse_path, KubeApi};
pub use mesh_proto::identity::identity_client::IdentityClient;
pub use mesh_proto::identity::{CertifyRequest, CertifyResponse};
pub use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
pub use serde_json::{json, Value};
pub use tokio::io::{AsyncReadExt, AsyncWriteExt};
pub use tonic::transport::{Certificate, Channel, ClientTlsConfig};
pub use tonic::{Code, Status};
pub use x509_parser::prelude::{FromDer, X509Certificate};

pub const TD: &str = "cluster.local";
pub const CONTROL_NS: &str = "mesh-system";
pub const SECRET: &str = "mesh-identity-issuer";
pub const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
pub const SECRETS: &str = "/api/v1/secrets";
pub const EVENTS: &str = "/apis/events.k8s.io/v1/events";
pub const NAMESPACES: &str = "/api/v1/namespaces";
pub const CONFIG_MAPS: &str = "/api/v1/configmaps";
pub const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
pub const PATHS: &[&str] = &[
    TOKEN_REVIEWS,
    SECRETS,
    EVENTS,
    NAMESPACES,
    CONFIG_MAPS,
    LEASES,
];
/// The holder identity of the replica under test.
pub const ME: &str = "mesh-identity-0";

// === fixtures ===

/// A trust anchor (certificate, key).
pub struct Anchor {
    pub cert: String,
    pub key: String,
}

pub fn anchor() -> Anchor {
    let (cert, key) = generate_trust_anchor(TD).unwrap();
    Anchor { cert, key }
}

/// A fresh issuer under `anchor`: (certificate, key).
pub fn issuer(anchor: &Anchor) -> (String, String) {
    generate_issuer(&anchor.cert, &anchor.key, TD).unwrap()
}

pub fn issuer_secret((cert, key): &(String, String)) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": CONTROL_NS},
        "data": {"tls.crt": STANDARD.encode(cert), "tls.key": STANDARD.encode(key)}})
}

/// The leader Lease held by `holder`, renewed at `renewed` for `seconds`.
pub fn lease_held_by(holder: &str, renewed: Timestamp, seconds: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "mesh-identity", "namespace": CONTROL_NS},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds,
            "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed),
            "leaseTransitions": 0}})
}

/// Settings for the replica under test: short Lease timings (1 s, renewed every 200 ms).
pub fn settings(anchor: &Anchor, startup_timeout: Duration) -> KubeSettings {
    let ms = Duration::from_millis;
    KubeSettings {
        namespace: CONTROL_NS.to_string(),
        issuer_secret: SECRET.to_string(),
        trust_anchors_pem: anchor.cert.clone(),
        trust_anchors_file: None,
        startup_timeout,
        lease: LeaseSettings::with_timings(ME, ms(1000), ms(200), ms(100)).unwrap(),
    }
}

pub fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        "status": {"phase": "Active"}})
}

/// The API server's TokenReview answers: `web-token` is shop/web's projected token,
/// `api-token` is bound to another audience, `down` makes the API server fail, anything
/// else is not authenticated.
pub fn review(body: &Value) -> (u16, Value) {
    let status = match body["spec"]["token"].as_str().unwrap_or_default() {
        "web-token" => json!({"authenticated": true, "audiences": ["identity.mesh.dev"],
            "user": {"username": "system:serviceaccount:shop:web", "uid": "u1"}}),
        "api-token" => json!({"authenticated": true,
            "audiences": ["https://kubernetes.default.svc"],
            "user": {"username": "system:serviceaccount:shop:web"}}),
        // (Not 503: the client retries those itself, until our own timeout.)
        "down" => {
            return (
                500,
                json!({"kind": "Status", "apiVersion": "v1", "metadata": {},
                "status": "Failure", "reason": "InternalError", "code": 500,
                "message": "etcd is unhappy"}),
            )
        }
        _ => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    let mut answer = body.clone();
    answer["status"] = status;
    (201, answer)
}

/// A fake API server holding the issuer Secret and a few namespaces.
pub async fn cluster(anchor: &Anchor) -> (KubeApi, (String, String)) {
    let api = KubeApi::start(PATHS).await;
    api.on_post(TOKEN_REVIEWS, review);
    let first = issuer(anchor);
    api.apply(SECRETS, issuer_secret(&first));
    for ns in ["default", "kube-system", "kube-public", "shop", CONTROL_NS] {
        api.apply(NAMESPACES, namespace(ns));
    }
    (api, first)
}

/// `mesh-identity --source kubernetes` against `api`, serving on loopback.
pub struct Running {
    pub service: IdentityService,
    pub client: IdentityClient<Channel>,
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub kube: KubeMode,
}

pub async fn start(api: &KubeApi, anchor: &Anchor) -> Running {
    mesh_identity::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let settings = settings(anchor, Duration::from_secs(10));
    let client = kubernetes::client(api.config()).unwrap();
    let kube = kubernetes::start(client, settings, metrics.clone())
        .await
        .unwrap();
    let service = IdentityService::with_config(ServiceConfig {
        issuer: kube.issuer.clone(),
        authenticator: kube.authenticator.clone(),
        trust_domain: TD.to_string(),
        lifetime: Duration::from_secs(3600),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let admin_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = admin_listener.local_addr().unwrap();
    let config = ServeConfig {
        listener,
        admin_listener: Some(admin_listener),
        service: service.clone(),
    };
    tokio::spawn(serve(config, std::future::pending()));
    Running {
        service,
        client: connect(addr, &anchor.cert).await,
        addr,
        admin,
        kube,
    }
}

/// A TLS client trusting `anchors`, checking the in-cluster Service name.
pub async fn connect(addr: SocketAddr, anchors: &str) -> IdentityClient<Channel> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(anchors))
        .domain_name("mesh-identity.mesh-system.svc.cluster.local");
    let channel = Channel::from_shared(format!("https://{addr}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    IdentityClient::new(channel)
}

pub fn csr_for(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

pub async fn certify(
    client: &mut IdentityClient<Channel>,
    token: &str,
    identity: &str,
) -> Result<CertifyResponse, Status> {
    let req = CertifyRequest {
        identity: identity.to_string(),
        token: token.as_bytes().to_vec(),
        certificate_signing_request: csr_for(identity),
    };
    client.certify(req).await.map(|r| r.into_inner())
}

/// The DER of the first certificate in `pem`.
pub fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Checks that `resp`'s leaf is signed by `issuer_pem`, which it carries as its chain.
pub fn assert_signed_by(resp: &CertifyResponse, issuer_pem: &str) {
    let issuer_der = der(issuer_pem);
    assert_eq!(resp.intermediate_certificates, vec![issuer_der.clone()]);
    let issuer = X509Certificate::from_der(&issuer_der).unwrap().1;
    let leaf = X509Certificate::from_der(&resp.leaf_certificate).unwrap().1;
    leaf.verify_signature(Some(issuer.public_key()))
        .expect("the leaf is signed by the expected issuer");
}

/// The certificate chain the server presents to a new TLS connection (DER).
pub async fn serving_chain(addr: SocketAddr, anchors: &str) -> Vec<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(der(anchors).into()).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .unwrap();
    tls.get_ref()
        .1
        .peer_certificates()
        .unwrap()
        .iter()
        .map(|c| c.to_vec())
        .collect()
}

pub async fn metrics(admin: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    out
}

pub fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Polls `check` every 20 ms for up to 10 s.
pub async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

pub fn roots(api: &KubeApi, ns: &str) -> Option<Value> {
    api.get(CONFIG_MAPS, ns, "mesh-trust-roots")
}
