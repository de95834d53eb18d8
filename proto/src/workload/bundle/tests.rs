use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, SanType,
    PKCS_ECDSA_P256_SHA256,
};

/// A self-signed anchor: (PEM, issuer for signing leaves).
fn anchor(name: &str) -> (String, rcgen::Issuer<'static, KeyPair>) {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(params, key))
}

/// A leaf for `id` signed by `issuer`, DER.
fn leaf(issuer: &rcgen::Issuer<'static, KeyPair>, id: &str) -> CertificateDer<'static> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(id.to_string().try_into().unwrap())];
    params.signed_by(&key, issuer).unwrap().der().clone()
}

#[test]
fn parses_anchors_and_the_renewal_directive() {
    let (a, _) = anchor("root a");
    let (b, _) = anchor("root b");
    let pem = format!(
        "{a}\n{}\n{b}",
        renewal_directive(
            UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            Duration::from_secs(30)
        )
    );
    let bundle = Bundle::parse(&pem).unwrap();
    let subjects: Vec<_> = bundle
        .anchors()
        .iter()
        .map(|a| a.subject.as_str())
        .collect();
    assert_eq!(subjects, ["CN=root a", "CN=root b"]);
    assert_eq!(bundle.anchors()[0].fingerprint.len(), 64);
    assert_ne!(
        bundle.anchors()[0].fingerprint,
        bundle.anchors()[1].fingerprint
    );
    assert!(bundle.anchors()[0].not_after > SystemTime::now());
    assert_eq!(
        bundle.renewal(),
        Some(Renewal {
            before: UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            spread: Duration::from_secs(30),
        })
    );
    assert_eq!(Bundle::parse(&a).unwrap().renewal(), None);
}

#[test]
fn garbage_empty_and_oversized_bundles_are_refused() {
    for bad in [
        "",
        "hello",
        "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n",
    ] {
        let err = Bundle::parse(bad).unwrap_err().to_string();
        assert!(err.starts_with("trust anchors:"), "{bad:?}: {err}");
    }
    let (a, _) = anchor("root");
    let many = a.repeat(MAX_ANCHORS + 1);
    let err = Bundle::parse(&many).unwrap_err().to_string();
    assert!(err.contains("more than 32 anchors"), "{err}");
    assert_eq!(
        Bundle::parse(&a.repeat(MAX_ANCHORS))
            .unwrap()
            .anchors()
            .len(),
        MAX_ANCHORS
    );
    // A malformed directive is ignored, not an error.
    let odd = format!("# mesh.dev/renew-issued-before: soon\n{a}");
    assert_eq!(Bundle::parse(&odd).unwrap().renewal(), None);
}

#[test]
fn chains_verify_against_the_bundle_in_force_only() {
    let (a, issuer_a) = anchor("root a");
    let (b, issuer_b) = anchor("root b");
    let leaf_a = leaf(&issuer_a, "spiffe://cluster.local/ns/x/sa/y");
    let leaf_b = leaf(&issuer_b, "spiffe://cluster.local/ns/x/sa/y");
    let shared = TrustBundle::from_pem(&a).unwrap();
    let mut changes = shared.subscribe();
    assert!(shared
        .current()
        .verify_chain(std::slice::from_ref(&leaf_a))
        .is_ok());
    assert!(shared
        .current()
        .verify_chain(std::slice::from_ref(&leaf_b))
        .is_err());
    assert!(shared.current().verify_chain(&[]).is_err());

    shared.replace(Bundle::parse(&format!("{a}{b}")).unwrap());
    assert!(changes.has_changed().unwrap());
    changes.mark_unchanged();
    assert!(shared
        .current()
        .verify_chain(std::slice::from_ref(&leaf_a))
        .is_ok());
    assert!(shared
        .current()
        .verify_chain(std::slice::from_ref(&leaf_b))
        .is_ok());

    shared.replace(Bundle::parse(&b).unwrap());
    assert!(changes.has_changed().unwrap());
    assert!(shared.current().verify_chain(&[leaf_a]).is_err());
    assert!(shared.current().verify_chain(&[leaf_b]).is_ok());
}

#[tokio::test]
async fn a_watched_file_reloads_and_keeps_the_last_good_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bundle.pem");
    let (a, _) = anchor("root a");
    let (b, _) = anchor("root b");
    std::fs::write(&path, &a).unwrap();
    let shared = TrustBundle::from_pem(&a).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let task = tokio::spawn(watch_file(
        shared.clone(),
        path.clone(),
        Duration::from_millis(20),
        move |r| {
            let _ = tx.send(match r {
                Reload::Replaced(b) => Ok(b.anchors().len()),
                Reload::Rejected(e) => Err(e),
            });
        },
    ));
    async fn next(
        rx: &mut tokio::sync::mpsc::UnboundedReceiver<Result<usize, String>>,
    ) -> Result<usize, String> {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("no reload reported")
            .unwrap()
    }

    // Replaced by rename, as a kubelet or `mesh identity rotate` does.
    let tmp_path = tmp.path().join("bundle.tmp");
    std::fs::write(&tmp_path, format!("{a}{b}")).unwrap();
    std::fs::rename(&tmp_path, &path).unwrap();
    assert_eq!(next(&mut rx).await, Ok(2));
    assert_eq!(shared.current().anchors().len(), 2);

    // Garbage: refused with a reason, the last good bundle stays.
    std::fs::write(&path, "garbage").unwrap();
    let err = next(&mut rx).await.unwrap_err();
    assert!(err.contains("no certificate found"), "{err}");
    assert_eq!(shared.current().anchors().len(), 2);

    // Gone: the same, said once.
    std::fs::remove_file(&path).unwrap();
    let err = next(&mut rx).await.unwrap_err();
    assert!(err.contains("bundle.pem"), "{err}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rx.try_recv().is_err(), "a missing file is reported once");

    // A good file again.
    std::fs::write(&path, &b).unwrap();
    assert_eq!(next(&mut rx).await, Ok(1));
    assert_eq!(shared.current().anchors()[0].subject, "CN=root b");
    task.abort();
}
