//! The real `mesh-identity` binary refuses bad tokens and foreign CSRs with
//! the documented gRPC codes, and signs a good request.

use mesh_integration::{fixture::spiffe, Mesh};
use mesh_proto::identity::{identity_client::IdentityClient, CertifyRequest};
use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use tonic::{
    transport::{Certificate, ClientTlsConfig, Endpoint},
    Code,
};

fn csr(identity: &str) -> Vec<u8> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params.subject_alt_names = vec![SanType::URI(identity.to_string().try_into().unwrap())];
    params.serialize_request(&key).unwrap().der().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_refuses_bad_tokens_and_foreign_identities() {
    let mesh = Mesh::start("1h").await;
    let anchors = std::fs::read_to_string(mesh.anchors_path()).unwrap();
    let channel = Endpoint::from_shared(format!("https://{}", mesh.identity_addr))
        .unwrap()
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(anchors))
                .domain_name("identity.mesh-system.svc.cluster.local"),
        )
        .unwrap()
        .connect()
        .await
        .expect("TLS connection to identity");
    let mut client = IdentityClient::new(channel);
    let web = spiffe("demo", "web");
    let api = spiffe("demo", "api");

    // A good request is signed.
    let rsp = client
        .certify(CertifyRequest {
            identity: web.clone(),
            token: mesh.token("demo", "web").into_bytes(),
            certificate_signing_request: csr(&web),
        })
        .await
        .expect("good request")
        .into_inner();
    assert!(!rsp.leaf_certificate.is_empty());
    assert_eq!(rsp.intermediate_certificates.len(), 1);

    // A bad token.
    let err = client
        .certify(CertifyRequest {
            identity: web.clone(),
            token: b"v1.not.a-token".to_vec(),
            certificate_signing_request: csr(&web),
        })
        .await
        .expect_err("bad token");
    assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");

    // A valid token for `web` asking for `api`.
    let err = client
        .certify(CertifyRequest {
            identity: api.clone(),
            token: mesh.token("demo", "web").into_bytes(),
            certificate_signing_request: csr(&api),
        })
        .await
        .expect_err("other identity");
    assert_eq!(err.code(), Code::PermissionDenied, "{err:?}");
    assert!(
        err.message().contains(&web) && err.message().contains(&api),
        "{err:?}"
    );

    // The right identity, but a CSR for another one.
    let err = client
        .certify(CertifyRequest {
            identity: web.clone(),
            token: mesh.token("demo", "web").into_bytes(),
            certificate_signing_request: csr(&api),
        })
        .await
        .expect_err("csr for another identity");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");

    // Garbage CSR.
    let err = client
        .certify(CertifyRequest {
            identity: web.clone(),
            token: mesh.token("demo", "web").into_bytes(),
            certificate_signing_request: b"garbage".to_vec(),
        })
        .await
        .expect_err("garbage csr");
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_with_a_bad_token_never_becomes_ready() {
    let mesh = Mesh::start("1h").await;
    let (outbound, inbound, admin) = (
        mesh_integration::process::free_addr(),
        mesh_integration::process::free_addr(),
        mesh_integration::process::free_addr(),
    );
    let mut cmd = std::process::Command::new(mesh_integration::process::bin("mesh-proxy"));
    cmd.env("MESH_PROXY_OUTBOUND_ADDR", outbound.to_string())
        .env("MESH_PROXY_INBOUND_ADDR", inbound.to_string())
        .env("MESH_PROXY_ADMIN_ADDR", admin.to_string())
        .env(
            "MESH_PROXY_DESTINATION_ADDR",
            mesh.controller_addr.to_string(),
        )
        .env("MESH_PROXY_IDENTITY_ADDR", mesh.identity_addr.to_string())
        .env("MESH_PROXY_TRUST_ANCHORS_FILE", mesh.anchors_path())
        // A token for another service account.
        .env("MESH_PROXY_IDENTITY_TOKEN", mesh.token("demo", "web"))
        .env("MESH_PROXY_NAMESPACE", "demo")
        .env("MESH_PROXY_SERVICE_ACCOUNT", "api");
    let log = mesh.root.path().join("bad-proxy.log");
    let mut p = mesh_integration::process::Proc::spawn("bad proxy", cmd, log);
    tokio::time::sleep(std::time::Duration::from_secs(3)).await;
    p.assert_running();
    let ready = mesh_integration::fixture::admin_get(admin, "/ready").await;
    assert_eq!(ready.map(|r| r.0), Some(503), "{}", p.log_text());
    assert!(
        p.log_text().contains("PermissionDenied"),
        "{}",
        p.log_text()
    );
}
