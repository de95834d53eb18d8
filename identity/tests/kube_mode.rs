//! `--source kubernetes` against a fake API server at the HTTP layer: TokenReview
//! decides who gets a certificate (real `Certify` calls over TLS), the issuer Secret is
//! reloaded without a restart (and a bad one refused with an Event), the trust bundle
//! is published into every namespace and repaired when stale, only by the replica that
//! holds the leader Lease, and every API call is one the RBAC rules grant (every rule
//! used).

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use mesh_identity::ca::{generate_issuer, generate_trust_anchor};
use mesh_identity::kubernetes::{
    self, lease, KubeMode, KubeSettings, LeaseSettings, TokenReviewer, CLUSTER_RULES,
    NAMESPACE_RULES,
};
use mesh_identity::metrics::Metrics;
use mesh_identity::server::{
    serve, AuthError, Authenticator, IdentityService, ServeConfig, ServiceConfig,
};
use mesh_identity::spiffe::spiffe_id;
use mesh_kube_fake::{parse_path, KubeApi};
use mesh_proto::identity::identity_client::IdentityClient;
use mesh_proto::identity::{CertifyRequest, CertifyResponse};
use rcgen::{CertificateParams, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};
use tonic::{Code, Status};
use x509_parser::prelude::{FromDer, X509Certificate};

const TD: &str = "cluster.local";
const CONTROL_NS: &str = "mesh-system";
const SECRET: &str = "mesh-identity-issuer";
const TOKEN_REVIEWS: &str = "/apis/authentication.k8s.io/v1/tokenreviews";
const SECRETS: &str = "/api/v1/secrets";
const EVENTS: &str = "/api/v1/events";
const NAMESPACES: &str = "/api/v1/namespaces";
const CONFIG_MAPS: &str = "/api/v1/configmaps";
const LEASES: &str = "/apis/coordination.k8s.io/v1/leases";
const PATHS: &[&str] = &[
    TOKEN_REVIEWS,
    SECRETS,
    EVENTS,
    NAMESPACES,
    CONFIG_MAPS,
    LEASES,
];
/// The holder identity of the replica under test.
const ME: &str = "mesh-identity-0";

// === fixtures ===

/// A trust anchor (certificate, key).
struct Anchor {
    cert: String,
    key: String,
}

fn anchor() -> Anchor {
    let (cert, key) = generate_trust_anchor(TD).unwrap();
    Anchor { cert, key }
}

/// A fresh issuer under `anchor`: (certificate, key).
fn issuer(anchor: &Anchor) -> (String, String) {
    generate_issuer(&anchor.cert, &anchor.key, TD).unwrap()
}

fn issuer_secret((cert, key): &(String, String)) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/tls",
        "metadata": {"name": SECRET, "namespace": CONTROL_NS},
        "data": {"tls.crt": STANDARD.encode(cert), "tls.key": STANDARD.encode(key)}})
}

/// The leader Lease held by `holder`, renewed at `renewed` for `seconds`.
fn lease_held_by(holder: &str, renewed: Timestamp, seconds: i32) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": "mesh-identity", "namespace": CONTROL_NS},
        "spec": {"holderIdentity": holder, "leaseDurationSeconds": seconds,
            "renewTime": MicroTime(renewed), "acquireTime": MicroTime(renewed),
            "leaseTransitions": 0}})
}

/// Settings for the replica under test: short Lease timings (1 s, renewed every 200 ms).
fn settings(anchor: &Anchor, startup_timeout: Duration) -> KubeSettings {
    let ms = Duration::from_millis;
    KubeSettings {
        namespace: CONTROL_NS.to_string(),
        issuer_secret: SECRET.to_string(),
        trust_anchors_pem: anchor.cert.clone(),
        startup_timeout,
        lease: LeaseSettings::with_timings(ME, ms(1000), ms(200), ms(100)).unwrap(),
    }
}

fn namespace(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name},
        "status": {"phase": "Active"}})
}

/// The API server's TokenReview answers: `web-token` is shop/web's projected token,
/// `api-token` is bound to another audience, `down` makes the API server fail, anything
/// else is not authenticated.
fn review(body: &Value) -> (u16, Value) {
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
async fn cluster(anchor: &Anchor) -> (KubeApi, (String, String)) {
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
struct Running {
    service: IdentityService,
    client: IdentityClient<Channel>,
    addr: SocketAddr,
    admin: SocketAddr,
    kube: KubeMode,
}

async fn start(api: &KubeApi, anchor: &Anchor) -> Running {
    mesh_identity::install_crypto_provider();
    let metrics = Arc::new(Metrics::new());
    let settings = settings(anchor, Duration::from_secs(10));
    let kube = kubernetes::start(api.client(), settings, metrics.clone())
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
async fn connect(addr: SocketAddr, anchors: &str) -> IdentityClient<Channel> {
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

fn csr_for(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(identity.try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

async fn certify(
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
fn der(pem: &str) -> Vec<u8> {
    rustls_pemfile::certs(&mut pem.as_bytes())
        .next()
        .unwrap()
        .unwrap()
        .to_vec()
}

/// Checks that `resp`'s leaf is signed by `issuer_pem`, which it carries as its chain.
fn assert_signed_by(resp: &CertifyResponse, issuer_pem: &str) {
    let issuer_der = der(issuer_pem);
    assert_eq!(resp.intermediate_certificates, vec![issuer_der.clone()]);
    let issuer = X509Certificate::from_der(&issuer_der).unwrap().1;
    let leaf = X509Certificate::from_der(&resp.leaf_certificate).unwrap().1;
    leaf.verify_signature(Some(issuer.public_key()))
        .expect("the leaf is signed by the expected issuer");
}

/// The certificate chain the server presents to a new TLS connection (DER).
async fn serving_chain(addr: SocketAddr, anchors: &str) -> Vec<Vec<u8>> {
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

async fn metrics(admin: SocketAddr) -> String {
    let mut s = tokio::net::TcpStream::connect(admin).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200 OK\r\n"), "{out}");
    out
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

/// Polls `check` every 20 ms for up to 10 s.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..500 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

fn roots(api: &KubeApi, ns: &str) -> Option<Value> {
    api.get(CONFIG_MAPS, ns, "mesh-trust-roots")
}

// === tests ===

#[tokio::test]
async fn token_review_decides_who_gets_a_certificate() {
    let anchor = anchor();
    let (api, first) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let web = spiffe_id(TD, "shop", "web");

    // Authenticated, audience-bound, for the requested account: a leaf from the issuer.
    let resp = certify(&mut r.client, "web-token", &web).await.unwrap();
    assert_signed_by(&resp, &first.0);
    let reviews: Vec<Value> = api
        .calls()
        .into_iter()
        .filter(|c| c.method == "POST" && c.path == TOKEN_REVIEWS)
        .map(|c| c.body.unwrap())
        .collect();
    assert_eq!(reviews.len(), 1);
    assert_eq!(reviews[0]["spec"]["token"], "web-token");
    assert_eq!(
        reviews[0]["spec"]["audiences"],
        json!(["identity.mesh.dev"])
    );

    // Not authenticated: UNAUTHENTICATED, saying why.
    let err = certify(&mut r.client, "stolen", &web).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert_eq!(
        err.message(),
        "token rejected: the API server did not authenticate it: invalid bearer token"
    );
    // Authenticated but for another audience: refused too.
    let err = certify(&mut r.client, "api-token", &web).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    assert!(
        err.message().contains("do not include identity.mesh.dev"),
        "{err:?}"
    );

    // A valid token for shop/web asking for another account: PERMISSION_DENIED.
    let admin = spiffe_id(TD, "shop", "admin");
    let err = certify(&mut r.client, "web-token", &admin)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert_eq!(
        err.message(),
        "token is for spiffe://cluster.local/ns/shop/sa/web but the request asks for \
         spiffe://cluster.local/ns/shop/sa/admin"
    );

    // The API server failing: UNAVAILABLE, naming it.
    let err = certify(&mut r.client, "down", &web).await.unwrap_err();
    assert_eq!(err.code(), Code::Unavailable, "{err:?}");
    assert!(
        err.message().contains(
            "the Kubernetes API refused the TokenReview (500 InternalError): etcd is unhappy"
        ),
        "{err:?}"
    );

    let text = metrics(r.admin).await;
    for line in [
        "mesh_identity_certificates_issued_total 1",
        "mesh_identity_certify_errors_total{code=\"UNAUTHENTICATED\"} 2",
        "mesh_identity_certify_errors_total{code=\"PERMISSION_DENIED\"} 1",
        "mesh_identity_certify_errors_total{code=\"UNAVAILABLE\"} 1",
        "mesh_identity_issuer_reloads_total{result=\"ok\"} 1",
    ] {
        assert!(has_line(&text, line), "{line} missing in\n{text}");
    }
    assert_eq!(r.service.issued_total(), 1);
    assert_eq!(r.service.errors_total(), 4);
}

#[tokio::test]
async fn an_unreachable_api_server_is_unavailable() {
    // A port nothing listens on.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    let reviewer = TokenReviewer::new(kube::Client::try_from(config).unwrap());
    let err = reviewer.authenticate(b"web-token").await.unwrap_err();
    assert!(
        matches!(&err, AuthError::Unavailable(m) if m.contains("cannot reach the Kubernetes API")),
        "{err:?}"
    );
    assert_eq!(Status::from(err).code(), Code::Unavailable);
}

#[tokio::test]
async fn a_changed_issuer_secret_is_signing_without_a_restart() {
    let anchor = anchor();
    let (api, first) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let web = spiffe_id(TD, "shop", "web");
    assert_signed_by(
        &certify(&mut r.client, "web-token", &web).await.unwrap(),
        &first.0,
    );

    // MODIFIED: a new issuer under the same anchor.
    let second = issuer(&anchor);
    api.apply(SECRETS, issuer_secret(&second));
    let want = der(&second.0);
    let service = r.service.clone();
    eventually("the new issuer is loaded", || {
        service.issuer().issuer_cert_der() == want.as_slice()
    })
    .await;
    // The same connection, the same process: leaves now chain to the new issuer.
    assert_signed_by(
        &certify(&mut r.client, "web-token", &web).await.unwrap(),
        &second.0,
    );
    // New connections are served with a certificate from the new issuer too.
    let chain = serving_chain(r.addr, &anchor.cert).await;
    assert_eq!(chain.len(), 2);
    assert_eq!(
        chain[1], want,
        "the serving certificate comes from the new issuer"
    );
    let mut fresh = connect(r.addr, &anchor.cert).await;
    assert_signed_by(
        &certify(&mut fresh, "web-token", &web).await.unwrap(),
        &second.0,
    );

    let text = metrics(r.admin).await;
    assert!(
        has_line(&text, "mesh_identity_issuer_reloads_total{result=\"ok\"} 2"),
        "{text}"
    );
    let not_after = X509Certificate::from_der(&want)
        .unwrap()
        .1
        .validity()
        .not_after
        .timestamp();
    assert!(
        has_line(
            &text,
            &format!("mesh_identity_issuer_expiry_timestamp_seconds {not_after}")
        ),
        "{text}"
    );
    eventually("an IssuerUpdated event is posted", || {
        api.objects(EVENTS)
            .iter()
            .any(|e| e["reason"] == "IssuerUpdated" && e["type"] == "Normal")
    })
    .await;
}

#[tokio::test]
async fn an_issuer_that_does_not_chain_to_the_anchors_is_refused() {
    let anchor = anchor();
    let (api, first) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let web = spiffe_id(TD, "shop", "web");

    let foreign = issuer(&self::anchor());
    api.apply(SECRETS, issuer_secret(&foreign));
    eventually("an IssuerRejected event is posted", || {
        api.objects(EVENTS)
            .iter()
            .any(|e| e["reason"] == "IssuerRejected")
    })
    .await;
    let events = api.objects(EVENTS);
    let event = events
        .iter()
        .find(|e| e["reason"] == "IssuerRejected")
        .unwrap();
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["metadata"]["namespace"], CONTROL_NS);
    assert_eq!(event["involvedObject"]["kind"], "Secret");
    assert_eq!(event["involvedObject"]["name"], SECRET);
    assert_eq!(event["involvedObject"]["namespace"], CONTROL_NS);
    let message = event["message"].as_str().unwrap();
    assert!(
        message.contains("keeping the current issuer")
            && message.contains("is not signed by any of the 1 trust anchor(s)"),
        "{message}"
    );
    assert!(api.calls().iter().any(|c| c.method == "POST"
        && c.path == "/api/v1/namespaces/mesh-system/events"
        && c.body.as_ref().unwrap()["reason"] == "IssuerRejected"));

    // The old issuer keeps signing.
    assert_eq!(
        r.service.issuer().issuer_cert_der(),
        der(&first.0).as_slice()
    );
    assert_signed_by(
        &certify(&mut r.client, "web-token", &web).await.unwrap(),
        &first.0,
    );
    let text = metrics(r.admin).await;
    for line in [
        "mesh_identity_issuer_reloads_total{result=\"ok\"} 1",
        "mesh_identity_issuer_reloads_total{result=\"rejected\"} 1",
    ] {
        assert!(has_line(&text, line), "{line} missing in\n{text}");
    }
}

#[tokio::test]
async fn startup_fails_clearly_without_a_valid_issuer() {
    let anchor = anchor();
    let api = KubeApi::start(PATHS).await;
    let settings = settings(&anchor, Duration::from_millis(1500));
    let metrics = Arc::new(Metrics::new());
    let err = kubernetes::start(api.client(), settings.clone(), metrics.clone())
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no valid issuer in Secret mesh-system/mesh-identity-issuer within 1.5s: \
         Secret mesh-system/mesh-identity-issuer not found"
    );

    let foreign = issuer(&self::anchor());
    api.apply(SECRETS, issuer_secret(&foreign));
    let err = kubernetes::start(api.client(), settings, metrics)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("is not signed by any of the 1 trust anchor(s)"),
        "{err}"
    );
}

#[tokio::test]
async fn the_trust_bundle_is_published_to_every_namespace_and_kept_current() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    // A namespace holding an unmanaged copy (no label): the create conflicts, and the
    // copy is adopted with a patch.
    api.apply(NAMESPACES, namespace("legacy"));
    api.apply(
        CONFIG_MAPS,
        json!({"apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "mesh-trust-roots", "namespace": "legacy"},
            "data": {"ca-bundle.pem": "hand-made"}}),
    );
    let r = start(&api, &anchor).await;
    // A lone replica leads from the start.
    assert!(lease::is_leader(&r.kube.leader));
    let bundle = anchor.cert.trim().to_string() + "\n";
    eventually("the unmanaged copy is adopted", || {
        roots(&api, "legacy").unwrap()["data"]["ca-bundle.pem"] == bundle.as_str()
    })
    .await;
    assert_eq!(
        roots(&api, "legacy").unwrap()["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "mesh-identity"
    );

    for ns in ["default", "shop", CONTROL_NS] {
        eventually(&format!("the bundle is in {ns}"), || {
            roots(&api, ns).is_some()
        })
        .await;
        let cm = roots(&api, ns).unwrap();
        assert_eq!(cm["data"]["ca-bundle.pem"], bundle.as_str(), "{ns}");
        assert_eq!(
            cm["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "mesh-identity"
        );
    }
    // A namespace that appears gets it.
    api.apply(NAMESPACES, namespace("late"));
    eventually("the bundle is in a new namespace", || {
        roots(&api, "late").is_some()
    })
    .await;
    // A stale copy is patched back.
    let mut stale = roots(&api, "shop").unwrap();
    stale["data"]["ca-bundle.pem"] = json!("stale");
    api.apply(CONFIG_MAPS, stale);
    eventually("the stale bundle is patched", || {
        roots(&api, "shop").unwrap()["data"]["ca-bundle.pem"] == bundle.as_str()
    })
    .await;
    assert!(api
        .calls()
        .iter()
        .any(|c| c.method == "PATCH"
            && c.path == "/api/v1/namespaces/shop/configmaps/mesh-trust-roots"));
    // Each ConfigMap was created once (no create raced a cached state).
    for ns in ["default", "shop", CONTROL_NS, "late"] {
        let path = format!("/api/v1/namespaces/{ns}/configmaps");
        let posts = api
            .calls()
            .iter()
            .filter(|c| c.method == "POST" && c.path == path)
            .count();
        assert_eq!(posts, 1, "{ns}");
    }
    // System namespaces never get it.
    for ns in ["kube-system", "kube-public"] {
        assert!(roots(&api, ns).is_none(), "{ns}");
    }
    // The ConfigMap watch is restricted to the managed ones.
    assert!(api.calls().iter().any(|c| c.path == CONFIG_MAPS
        && c.query
            .contains("labelSelector=app.kubernetes.io%2Fmanaged-by%3Dmesh-identity")));
}

#[tokio::test]
async fn a_replica_that_does_not_lead_writes_nothing_until_it_takes_over() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    // Another replica holds a live lease (for an hour).
    api.apply(
        LEASES,
        lease_held_by("mesh-identity-1", Timestamp::now(), 3600),
    );
    let mut r = start(&api, &anchor).await;
    assert!(!lease::is_leader(&r.kube.leader));

    // It serves, and it watches the Secret: a refused issuer is counted...
    let web = spiffe_id(TD, "shop", "web");
    certify(&mut r.client, "web-token", &web).await.unwrap();
    api.apply(SECRETS, issuer_secret(&issuer(&self::anchor())));
    let rejected = "mesh_identity_issuer_reloads_total{result=\"rejected\"} 1";
    for _ in 0..500 {
        if has_line(&metrics(r.admin).await, rejected) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let text = metrics(r.admin).await;
    assert!(has_line(&text, rejected), "{text}");
    assert!(has_line(&text, "mesh_identity_leader 0"), "{text}");
    // ...and it watches namespaces and ConfigMaps, several election rounds long...
    eventually("the trust bundle watches run", || {
        let calls = api.calls();
        [NAMESPACES, CONFIG_MAPS]
            .iter()
            .all(|p| calls.iter().any(|c| c.path == *p && c.watch))
    })
    .await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    // ...but it writes nothing: no ConfigMap, no Event, no Lease.
    let writes = |api: &KubeApi| -> Vec<String> {
        api.calls()
            .iter()
            .filter(|c| c.method != "GET" && c.path != TOKEN_REVIEWS)
            .map(|c| format!("{} {}", c.method, c.path))
            .collect()
    };
    assert_eq!(writes(&api), Vec::<String>::new());
    assert!(api.objects(EVENTS).is_empty());
    assert!(roots(&api, "shop").is_none());
    assert!(
        api.calls()
            .iter()
            .filter(|c| c.method == "GET" && c.path.ends_with("/leases/mesh-identity"))
            .count()
            >= 2,
        "it keeps trying"
    );

    // The other replica stopped renewing long ago: this one takes over, and publishes
    // the bundle at once.
    let long_ago = Timestamp::now() - k8s_openapi::jiff::SignedDuration::from_secs(60);
    api.apply(LEASES, lease_held_by("mesh-identity-1", long_ago, 15));
    eventually("it leads", || lease::is_leader(&r.kube.leader)).await;
    let held = api.get(LEASES, CONTROL_NS, "mesh-identity").unwrap();
    assert_eq!(held["spec"]["holderIdentity"], ME);
    assert_eq!(held["spec"]["leaseTransitions"], 1);
    for ns in ["default", "shop", CONTROL_NS] {
        eventually(&format!("the bundle is in {ns}"), || {
            roots(&api, ns).is_some()
        })
        .await;
    }
    assert!(has_line(&metrics(r.admin).await, "mesh_identity_leader 1"));
}

#[tokio::test]
async fn every_api_call_is_granted_and_every_rule_is_used() {
    let anchor = anchor();
    let (api, _) = cluster(&anchor).await;
    let mut r = start(&api, &anchor).await;
    let bundle = anchor.cert.trim().to_string() + "\n";

    // TokenReview (create tokenreviews).
    certify(&mut r.client, "web-token", &spiffe_id(TD, "shop", "web"))
        .await
        .unwrap();
    // A refused issuer (create events).
    api.apply(SECRETS, issuer_secret(&issuer(&self::anchor())));
    eventually("the refusal is recorded", || {
        api.calls()
            .iter()
            .any(|c| c.method == "POST" && c.path.ends_with("/events"))
    })
    .await;
    // The bundle created (create configmaps) and patched (patch configmaps).
    eventually("the bundle is published", || roots(&api, "shop").is_some()).await;
    let mut stale = roots(&api, "shop").unwrap();
    stale["data"]["ca-bundle.pem"] = json!("stale");
    api.apply(CONFIG_MAPS, stale);
    eventually("the bundle is patched", || {
        roots(&api, "shop").unwrap()["data"]["ca-bundle.pem"] == bundle.as_str()
    })
    .await;
    // The Lease read (get leases), created (create leases) and renewed (update leases).
    eventually("the lease is renewed", || {
        api.calls()
            .iter()
            .any(|c| c.method == "PUT" && c.path.contains("/leases/"))
    })
    .await;

    let mut used = BTreeSet::new();
    for call in api.calls() {
        let t = parse_path(&call.path).unwrap_or_else(|| panic!("unexpected path {}", call.path));
        let verb = match (call.method.as_str(), &t.name, call.watch) {
            ("GET", None, true) => "watch",
            ("GET", None, false) => "list",
            ("GET", Some(_), _) => "get",
            ("POST", None, _) => "create",
            ("PATCH", Some(_), _) => "patch",
            ("PUT", Some(_), _) => "update",
            (m, _, _) => panic!("unexpected {m} {}", call.path),
        };
        let grants = |rules: &[kubernetes::ApiRule]| {
            rules.iter().any(|r| {
                r.group == t.group
                    && r.resources.contains(&t.resource.as_str())
                    && r.verbs.contains(&verb)
            })
        };
        let scope = if grants(CLUSTER_RULES) {
            "cluster"
        } else if t.namespace.as_deref() == Some(CONTROL_NS) && grants(NAMESPACE_RULES) {
            "namespace"
        } else {
            panic!(
                "{verb} {}/{} ({:?}) is not granted by CLUSTER_RULES or NAMESPACE_RULES",
                t.group, t.resource, t.namespace
            )
        };
        // Namespace-scoped rules may only be needed in the control-plane namespace.
        used.insert((scope, t.group.clone(), t.resource.clone(), verb));
    }
    for (scope, rules) in [("cluster", CLUSTER_RULES), ("namespace", NAMESPACE_RULES)] {
        for rule in rules {
            for resource in rule.resources {
                for verb in rule.verbs {
                    assert!(
                        used.contains(&(scope, rule.group.to_string(), resource.to_string(), *verb)),
                        "{scope} rule grants {verb} {}/{resource} but nothing calls it; calls: {used:?}",
                        rule.group
                    );
                }
            }
        }
    }
}
