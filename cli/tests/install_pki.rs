//! Tests of the certificates `mesh install` renders: the webhook's `caBundle` verifies its
//! serving certificate as the API server would, the identity issuer chains to the trust
//! anchors, and supplied issuer files are checked before anything is rendered.

mod common;

use std::path::Path;
use std::sync::Arc;

use common::{documents, install, mesh_install, object, pem_certs};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use mesh_identity::ca;
use rustls::client::danger::ServerCertVerifier;
use rustls::pki_types::{ServerName, UnixTime};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

fn secret_text(secret: &Secret, key: &str) -> String {
    let data = secret.data.as_ref().expect("secret data");
    String::from_utf8(data[key].0.clone()).expect("PEM text")
}

#[test]
fn ca_bundle_verifies_the_webhook_serving_certificate() {
    let docs = documents(&install(&[]));
    let secret: Secret = object(&docs, "Secret", "mesh-webhook-tls");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let config: MutatingWebhookConfiguration =
        object(&docs, "MutatingWebhookConfiguration", "mesh-proxy-injector");
    let webhook = &config.webhooks.unwrap()[0];
    let ca_bundle = String::from_utf8(webhook.client_config.ca_bundle.clone().unwrap().0).unwrap();
    assert_eq!(secret_text(&secret, "ca.crt"), ca_bundle);

    // Verified as the API server does: chain to caBundle, name, usage, validity.
    let mut roots = rustls::RootCertStore::empty();
    for der in pem_certs(&ca_bundle) {
        roots.add(der).unwrap();
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let leaf = pem_certs(&secret_text(&secret, "tls.crt")).remove(0);
    let service = webhook.client_config.service.as_ref().unwrap();
    let host = format!("{}.{}.svc", service.name, service.namespace);
    assert_eq!(host, mesh_controller::webhook::WEBHOOK_DNS_NAME);
    verifier
        .verify_server_cert(
            &leaf,
            &[],
            &ServerName::try_from(host).unwrap(),
            &[],
            UnixTime::now(),
        )
        .expect("the caBundle verifies the serving certificate");

    // ECDSA P-256, and the Secret's key is the certificate's.
    let (_, cert) = X509Certificate::from_der(&leaf).unwrap();
    let spki = cert.public_key();
    assert_eq!(
        spki.algorithm
            .parameters
            .as_ref()
            .unwrap()
            .as_oid()
            .unwrap(),
        x509_parser::oid_registry::OID_EC_P256
    );
    let key = rcgen::KeyPair::from_pem(&secret_text(&secret, "tls.key")).unwrap();
    assert_eq!(key.public_key_raw(), spki.subject_public_key.data.as_ref());
    let sans = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(
        sans.value.general_names,
        [GeneralName::DNSName("mesh-controller.mesh-system.svc")]
    );

    // Served on 9443 behind the Service's 443, at /inject, only for pod creations.
    let service_doc: Service = object(&docs, "Service", "mesh-controller");
    let port = service_doc
        .spec
        .unwrap()
        .ports
        .unwrap()
        .into_iter()
        .find(|p| p.port == 443)
        .unwrap();
    assert_eq!(port.target_port, Some(IntOrString::Int(9443)));
    assert_eq!(service.path.as_deref(), Some("/inject"));
    assert_eq!(webhook.side_effects, "None");
    assert_eq!(webhook.admission_review_versions, ["v1"]);
    let rule = &webhook.rules.as_ref().unwrap()[0];
    assert_eq!(
        rule.operations.as_deref(),
        Some(&["CREATE".to_string()][..])
    );
    assert_eq!(rule.resources.as_deref(), Some(&["pods".to_string()][..]));
    let selector = webhook.namespace_selector.as_ref().unwrap();
    let expr = &selector.match_expressions.as_ref().unwrap()[0];
    assert_eq!(expr.key, "kubernetes.io/metadata.name");
    assert_eq!(expr.operator, "NotIn");
    assert_eq!(
        expr.values.as_deref(),
        Some(&["kube-system".to_string(), "mesh-system".to_string()][..])
    );
}

#[test]
fn identity_issuer_chains_to_the_trust_anchors() {
    let docs = documents(&install(&[]));
    let secret: Secret = object(&docs, "Secret", "mesh-identity-issuer");
    assert_eq!(secret.type_.as_deref(), Some("kubernetes.io/tls"));
    let roots: ConfigMap = object(&docs, "ConfigMap", "mesh-identity-trust-roots");
    let anchors = roots.data.unwrap()["ca-bundle.crt"].clone();
    assert_eq!(secret_text(&secret, "ca.crt"), anchors);

    let issuer_der = pem_certs(&secret_text(&secret, "tls.crt")).remove(0);
    let anchor_der = pem_certs(&anchors).remove(0);
    let (_, issuer) = X509Certificate::from_der(&issuer_der).unwrap();
    let (_, anchor) = X509Certificate::from_der(&anchor_der).unwrap();
    assert_eq!(issuer.issuer(), anchor.subject());
    issuer
        .verify_signature(Some(anchor.public_key()))
        .expect("the issuer is signed by the anchor");
    assert!(issuer.is_ca() && anchor.is_ca());
    // And mesh-identity accepts it: CA, valid now, key matching, signed by an anchor.
    ca::Issuer::load(
        &secret_text(&secret, "tls.crt"),
        &secret_text(&secret, "tls.key"),
        &anchors,
    )
    .expect("mesh-identity loads the issuer");
}

// === supplied issuer ===

/// Writes a trust anchor and an issuer into `dir`, the issuer signed by another anchor
/// when `foreign`; returns the three flags with their paths (at indexes 1, 3 and 5).
fn supplied_files(dir: &Path, foreign: bool) -> Vec<String> {
    let (anchor, anchor_key) = ca::generate_trust_anchor("cluster.local").unwrap();
    let (issuer, issuer_key) = if foreign {
        let (other, other_key) = ca::generate_trust_anchor("cluster.local").unwrap();
        ca::generate_issuer(&other, &other_key, "cluster.local").unwrap()
    } else {
        ca::generate_issuer(&anchor, &anchor_key, "cluster.local").unwrap()
    };
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    vec![
        "--identity-trust-anchors-file".to_string(),
        write("anchors.pem", &anchor),
        "--identity-issuer-certificate-file".to_string(),
        write("issuer.crt", &issuer),
        "--identity-issuer-key-file".to_string(),
        write("issuer.key", &issuer_key),
    ]
}

fn strs(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

#[test]
fn supplied_issuer_is_rendered() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = supplied_files(tmp.path(), false);
    let out = mesh_install(&strs(&flags));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.stderr.is_empty(),
        "no note about a generated anchor: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let docs = documents(std::str::from_utf8(&out.stdout).unwrap());
    let secret: Secret = object(&docs, "Secret", "mesh-identity-issuer");
    let read = |i: usize| std::fs::read_to_string(&flags[i]).unwrap();
    assert_eq!(secret_text(&secret, "ca.crt"), read(1));
    assert_eq!(secret_text(&secret, "tls.crt"), read(3));
    assert_eq!(secret_text(&secret, "tls.key"), read(5));
    let roots: ConfigMap = object(&docs, "ConfigMap", "mesh-identity-trust-roots");
    assert_eq!(roots.data.unwrap()["ca-bundle.crt"], read(1));
}

#[test]
fn supplied_issuer_not_signed_by_the_anchors_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let flags = supplied_files(tmp.path(), true);
    let out = mesh_install(&strs(&flags));
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "nothing rendered");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("the issuer does not chain to the trust anchors"),
        "{err}"
    );
    assert!(err.contains(&flags[3]) && err.contains(&flags[1]), "{err}");
}

#[test]
fn unreadable_or_invalid_supplied_files_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mut flags = supplied_files(tmp.path(), false);

    let missing = tmp.path().join("missing.key").display().to_string();
    let mut args = flags.clone();
    args[5] = missing.clone();
    let out = mesh_install(&strs(&args));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--identity-issuer-key-file") && err.contains(&missing),
        "{err}"
    );

    std::fs::write(&flags[3], "not a certificate\n").unwrap();
    let out = mesh_install(&strs(&flags));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("issuer certificate") && err.contains(&flags[3]),
        "{err}"
    );

    // A key that is not the issuer's.
    flags = supplied_files(tmp.path(), false);
    std::fs::write(
        &flags[5],
        rcgen::KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let out = mesh_install(&strs(&flags));
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match"), "{err}");

    let out = mesh_install(&["--identity-trust-anchors-file", &flags[1]]);
    assert!(!out.status.success(), "the three files go together");
}
