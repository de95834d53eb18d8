use super::*;

#[test]
fn pem_blocks_keep_certificates_and_drop_directives() {
    let (a, _) = ca::generate_trust_anchor("cluster.local").unwrap();
    let (b, _) = ca::generate_trust_anchor("cluster.local").unwrap();
    let text = format!(
        "{}\n{a}\n\n{b}",
        renewal_directive(SystemTime::now(), Duration::from_secs(5))
    );
    let blocks = pem_blocks(&text);
    assert_eq!(blocks.len(), 2);
    assert_eq!(fp_of(&blocks[0]), fp_of(&a));
    assert_eq!(fp_of(&blocks[1]), fp_of(&b));
    assert!(pem_blocks("junk").is_empty());
}

#[test]
fn laggards_are_named_with_why() {
    let holding = |issuer: &str| Holding {
        anchors: BTreeSet::new(),
        leaf_issuer: Some(issuer.to_string()),
    };
    let members = vec![
        Member {
            name: "demo/a".into(),
            state: Ok(holding("new")),
        },
        Member {
            name: "demo/b".into(),
            state: Ok(holding("old")),
        },
        Member {
            name: "demo/c".into(),
            state: Err("connection refused".into()),
        },
    ];
    let late = lagging(&members, |h| h.leaf_issuer.as_deref() == Some("new"));
    assert_eq!(late, ["demo/b", "demo/c (unreachable: connection refused)"]);
    let err = refuse_unless(
        false,
        "step 3 (remove-old)",
        "still hold an old certificate",
        &late,
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.starts_with("step 3 (remove-old) refused: 2 of the workloads"),
        "{err}"
    );
    assert!(err.contains("demo/b") && err.contains("--force"), "{err}");
    refuse_unless(true, "step 3", "x", &late).unwrap();
    refuse_unless(false, "step 3", "x", &[]).unwrap();
}

#[test]
fn the_anchor_that_signed_the_issuer_is_found() {
    let (a, a_key) = ca::generate_trust_anchor("cluster.local").unwrap();
    let (b, _) = ca::generate_trust_anchor("cluster.local").unwrap();
    let (issuer, _) = ca::generate_issuer(&a, &a_key, "cluster.local").unwrap();
    assert!(ca::is_signed_by(&issuer, &a));
    assert!(!ca::is_signed_by(&issuer, &b), "same name, other key");
    assert!(!ca::is_signed_by("junk", &a));
}
