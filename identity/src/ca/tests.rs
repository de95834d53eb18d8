use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose, SanType,
    PKCS_ECDSA_P256_SHA256, PKCS_ECDSA_P384_SHA384, PKCS_ED25519,
};
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::*;

const ID: &str = "spiffe://cluster.local/ns/default/sa/web";

struct Fixture {
    anchor_pem: String,
    anchor_key: String,
    issuer: Issuer,
}

fn fixture() -> Fixture {
    let (anchor_pem, anchor_key) = generate_trust_anchor("cluster.local").unwrap();
    let (cert, key) = generate_issuer(&anchor_pem, &anchor_key, "cluster.local").unwrap();
    let issuer = Issuer::load(&cert, &key, &anchor_pem).unwrap();
    Fixture {
        anchor_pem,
        anchor_key,
        issuer,
    }
}

fn csr(alg: &'static rcgen::SignatureAlgorithm, uris: &[&str]) -> Vec<u8> {
    let key = KeyPair::generate_for(alg).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = uris
        .iter()
        .map(|u| SanType::URI((*u).try_into().unwrap()))
        .collect();
    params.serialize_request(&key).unwrap().der().to_vec()
}

fn der_of(pem: &str) -> Vec<u8> {
    parse_certs_pem("test", pem).unwrap().remove(0).to_vec()
}

fn parse(der: &[u8]) -> X509Certificate<'_> {
    X509Certificate::from_der(der).unwrap().1
}

#[test]
fn leaf_has_exactly_the_uri_san_and_leaf_usages() {
    let f = fixture();
    let leaf = f
        .issuer
        .sign_csr(
            &csr(&PKCS_ECDSA_P256_SHA256, &[ID]),
            ID,
            Duration::from_secs(3600),
        )
        .unwrap();
    let cert = parse(&leaf.leaf_der);

    let san = cert.subject_alternative_name().unwrap().unwrap();
    assert_eq!(san.value.general_names, vec![GeneralName::URI(ID)]);
    assert!(san.critical, "SAN must be critical with an empty subject");
    assert!(cert.subject().iter().next().is_none(), "subject is empty");

    let bc = cert.basic_constraints().unwrap().unwrap();
    assert!(!bc.value.ca);
    let ku = cert.key_usage().unwrap().unwrap().value;
    assert!(ku.digital_signature() && ku.key_encipherment());
    assert!(!ku.key_cert_sign() && !ku.crl_sign());
    let eku = cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.server_auth && eku.client_auth);
    assert!(!eku.any && !eku.code_signing);
}

#[test]
fn validity_window_honours_lifetime() {
    let f = fixture();
    let before = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let leaf = f
        .issuer
        .sign_csr(
            &csr(&PKCS_ECDSA_P256_SHA256, &[ID]),
            ID,
            Duration::from_secs(20),
        )
        .unwrap();
    let cert = parse(&leaf.leaf_der);
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    assert!(
        (nb - (before - 10)).abs() <= 1,
        "not_before {nb} vs now {before}"
    );
    assert!(
        (na - (before + 20)).abs() <= 1,
        "not_after {na} vs now {before}"
    );
    let reported = leaf
        .valid_until
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    assert_eq!(reported, na);
}

#[test]
fn chain_verifies_leaf_to_issuer_to_anchor() {
    let f = fixture();
    let leaf = f
        .issuer
        .sign_csr(
            &csr(&PKCS_ECDSA_P256_SHA256, &[ID]),
            ID,
            Duration::from_secs(3600),
        )
        .unwrap();
    assert_eq!(
        leaf.intermediates_der,
        vec![f.issuer.issuer_cert_der().to_vec()]
    );
    let leaf_cert = parse(&leaf.leaf_der);
    let issuer_cert = parse(&leaf.intermediates_der[0]);
    let anchor_der = der_of(&f.anchor_pem);
    let anchor = parse(&anchor_der);

    assert_eq!(leaf_cert.issuer().as_raw(), issuer_cert.subject().as_raw());
    leaf_cert
        .verify_signature(Some(issuer_cert.public_key()))
        .unwrap();
    assert_eq!(issuer_cert.issuer().as_raw(), anchor.subject().as_raw());
    issuer_cert
        .verify_signature(Some(anchor.public_key()))
        .unwrap();
    anchor.verify_signature(None).unwrap();
    // The leaf is not signed by the anchor directly.
    assert!(leaf_cert
        .verify_signature(Some(anchor.public_key()))
        .is_err());

    assert_eq!(
        anchor.subject().to_string(),
        "CN=root.cluster.local",
        "anchor CN"
    );
    let abc = anchor.basic_constraints().unwrap().unwrap().value;
    assert!(abc.ca && abc.path_len_constraint.is_none());
    assert_eq!(
        issuer_cert.subject().to_string(),
        "CN=identity.mesh-system.cluster.local"
    );
    assert!(issuer_cert.basic_constraints().unwrap().unwrap().value.ca);
}

#[test]
fn csr_with_another_san_is_refused() {
    let f = fixture();
    let other = "spiffe://cluster.local/ns/default/sa/admin";
    for uris in [&[other][..], &[ID, other][..], &[][..]] {
        let err = f
            .issuer
            .sign_csr(
                &csr(&PKCS_ECDSA_P256_SHA256, uris),
                ID,
                Duration::from_secs(60),
            )
            .unwrap_err();
        assert!(matches!(err, SignError::SanMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("SAN mismatch"));
    }
}

#[test]
fn non_p256_keys_are_refused() {
    let f = fixture();
    for alg in [&PKCS_ED25519, &PKCS_ECDSA_P384_SHA384] {
        let err = f
            .issuer
            .sign_csr(&csr(alg, &[ID]), ID, Duration::from_secs(60))
            .unwrap_err();
        assert!(matches!(err, SignError::KeyType(_)), "{err:?}");
    }
}

#[test]
fn garbage_and_bad_signatures_are_refused() {
    let f = fixture();
    let err = f
        .issuer
        .sign_csr(b"definitely not DER", ID, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, SignError::BadCsr(_)), "{err:?}");

    let mut der = csr(&PKCS_ECDSA_P256_SHA256, &[ID]);
    let last = der.len() - 2;
    der[last] ^= 0xff; // corrupt the signature
    let err = f
        .issuer
        .sign_csr(&der, ID, Duration::from_secs(60))
        .unwrap_err();
    assert!(matches!(err, SignError::BadCsr(_)), "{err:?}");
}

#[test]
fn issuer_not_signed_by_the_anchor_is_refused() {
    let f = fixture();
    // Another anchor with the very same subject name: only the signature differs.
    let (other_anchor, other_key) = generate_trust_anchor("cluster.local").unwrap();
    let (cert, key) = generate_issuer(&other_anchor, &other_key, "cluster.local").unwrap();
    let err = Issuer::load(&cert, &key, &f.anchor_pem).unwrap_err();
    assert!(matches!(err, CaError::Untrusted { .. }), "{err:?}");
    // The message names the issuer and every anchor, by fingerprint.
    let text = err.to_string();
    assert!(text.contains("not signed by any trust anchor"), "{text}");
    let fp = |pem: &str| {
        let der = super::parse_certs_pem("x", pem).unwrap().remove(0);
        mesh_proto::workload::fingerprint(&der)
    };
    assert!(text.contains(&fp(&cert)), "{text}");
    assert!(text.contains(&fp(&f.anchor_pem)), "{text}");
    assert!(text.contains("CN=root.cluster.local"), "{text}");

    // Accepted once its anchor is among several.
    let both = format!("{}{}", f.anchor_pem, other_anchor);
    Issuer::load(&cert, &key, &both).unwrap();
}

#[test]
fn mismatched_key_non_ca_and_expired_issuers_are_refused() {
    let f = fixture();
    let (cert, _) = generate_issuer(&f.anchor_pem, &f.anchor_key, "cluster.local").unwrap();
    let (_, other_key) = generate_issuer(&f.anchor_pem, &f.anchor_key, "cluster.local").unwrap();
    let err = Issuer::load(&cert, &other_key, &f.anchor_pem).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch), "{err:?}");

    // A leaf signed by the anchor is not an issuer.
    let anchor_key = KeyPair::from_pem(&f.anchor_key).unwrap();
    let anchor = rcgen::Issuer::from_ca_cert_pem(&f.anchor_pem, anchor_key).unwrap();
    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&leaf_key, &anchor)
        .unwrap();
    let err = Issuer::load(&leaf.pem(), &leaf_key.serialize_pem(), &f.anchor_pem).unwrap_err();
    assert!(matches!(err, CaError::NotCa(_)), "{err:?}");

    // An expired intermediate.
    let mut params = CertificateParams::default();
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    params.not_before = (SystemTime::now() - Duration::from_secs(7200)).into();
    params.not_after = (SystemTime::now() - Duration::from_secs(3600)).into();
    let old_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let old = params.signed_by(&old_key, &anchor).unwrap();
    let err = Issuer::load(&old.pem(), &old_key.serialize_pem(), &f.anchor_pem).unwrap_err();
    assert!(matches!(err, CaError::NotValidNow { .. }), "{err:?}");

    let err = Issuer::load("garbage", "garbage", &f.anchor_pem).unwrap_err();
    assert!(matches!(err, CaError::Pem { .. }), "{err:?}");
}

#[test]
fn serving_cert_has_names_and_chain() {
    let f = fixture();
    let (chain, key) = f
        .issuer
        .issue_serving_cert(
            &["localhost".to_string()],
            &["127.0.0.1".parse().unwrap()],
            "spiffe://cluster.local/ns/mesh-system/sa/mesh-identity",
            Duration::from_secs(3600),
        )
        .unwrap();
    let certs = parse_certs_pem("chain", &chain).unwrap();
    assert_eq!(certs.len(), 2);
    assert_eq!(certs[1].as_ref(), f.issuer.issuer_cert_der());
    let leaf = parse(&certs[0]);
    let names = leaf.subject_alternative_name().unwrap().unwrap().value;
    assert!(names
        .general_names
        .contains(&GeneralName::DNSName("localhost")));
    assert!(names
        .general_names
        .contains(&GeneralName::IPAddress(&[127, 0, 0, 1])));
    let key = KeyPair::from_pem(&key).unwrap();
    assert_eq!(
        key.public_key_raw(),
        leaf.public_key().subject_public_key.data.as_ref()
    );
}

#[test]
fn leaf_never_outlives_the_issuer() {
    let f = fixture();
    let leaf = f
        .issuer
        .sign_csr(
            &csr(&PKCS_ECDSA_P256_SHA256, &[ID]),
            ID,
            Duration::from_secs(100 * 365 * 86_400),
        )
        .unwrap();
    assert!(leaf.valid_until <= f.issuer.not_after());
}
