use super::*;
use crate::ca::{generate_issuer, generate_trust_anchor};
use crate::files::{init_dir, ANCHOR_KEY, ISSUER_CERT, ISSUER_KEY, TRUST_ANCHORS};

/// Waits until `cond` holds (at most 5 s).
async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn issuer_files_reload_only_when_they_chain_to_the_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    init_dir(dir, "cluster.local", false).unwrap();
    let paths = IssuerPaths::in_dir(dir);
    let first = Arc::new(paths.load().unwrap());
    let issuer = SharedIssuer::new(first.clone());
    let metrics = Arc::new(Metrics::new());
    let task = tokio::spawn(watch(
        paths.clone(),
        issuer.clone(),
        metrics.clone(),
        Duration::from_millis(20),
    ));
    let write = |name: &str, text: &str| std::fs::write(dir.join(name), text).unwrap();

    // An issuer from an anchor the bundle does not hold: refused, the first keeps signing.
    let (new_anchor, new_anchor_key) = generate_trust_anchor("cluster.local").unwrap();
    let (cert, key) = generate_issuer(&new_anchor, &new_anchor_key, "cluster.local").unwrap();
    write(ISSUER_KEY, &key);
    write(ISSUER_CERT, &cert);
    until("refused", || {
        metrics.reloads_total(ReloadResult::Rejected) == 1
    })
    .await;
    assert!(Arc::ptr_eq(&issuer.current(), &first));

    // The new anchor joins the bundle: the same files now load.
    let old_anchor = std::fs::read_to_string(dir.join(TRUST_ANCHORS)).unwrap();
    write(TRUST_ANCHORS, &format!("{old_anchor}{new_anchor}"));
    until("reloaded", || metrics.reloads_total(ReloadResult::Ok) == 1).await;
    let current = issuer.current();
    assert_eq!(current.issuer_cert_pem().trim(), cert.trim());
    assert_eq!(current.anchors().len(), 2);

    // Only the bundle changes (step 3 of a rotation): reloaded, same issuer certificate.
    write(TRUST_ANCHORS, &new_anchor);
    until("bundle reloaded", || {
        metrics.reloads_total(ReloadResult::Ok) == 2
    })
    .await;
    assert_eq!(issuer.current().anchors().len(), 1);
    assert_ne!(issuer.current().bundle_id(), current.bundle_id());

    // Garbage anchors: refused, nothing changes, and no retry loop on the same bytes.
    write(TRUST_ANCHORS, "garbage");
    until("garbage refused", || {
        metrics.reloads_total(ReloadResult::Rejected) == 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(metrics.reloads_total(ReloadResult::Rejected), 2);
    assert_eq!(issuer.current().anchors().len(), 1);
    assert!(dir.join(ANCHOR_KEY).exists());
    task.abort();
}
