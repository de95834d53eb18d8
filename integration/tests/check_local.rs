//! `mesh check --local`: all green on a healthy local mesh, and a specific `×` with a
//! hint for each broken thing: an issuer about to expire, a proxy that is gone, the
//! identity service down.

use mesh_integration::{fixture::service, process::bin, prometheus::write_file_sd, Mesh};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
use std::{path::Path, process::Command};

fn check(targets: &Path, identity_dir: &Path, json: bool) -> (i32, String) {
    let mut cmd = Command::new(bin("mesh"));
    cmd.arg("check")
        .arg("--targets")
        .arg(targets)
        .arg("--identity-dir")
        .arg(identity_dir);
    if json {
        cmd.args(["-o", "json"]);
    }
    let out = cmd.output().expect("run mesh check");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// An identity directory whose issuer (signed by its anchor) expires in 10 days.
fn short_lived_identity(dir: &Path) {
    let ca = |cn: &str, days: i64| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
        p.not_after = time::OffsetDateTime::now_utc() + time::Duration::days(days);
        p
    };
    let anchor_key = KeyPair::generate().unwrap();
    let anchor_params = ca("root.cluster.local", 3650);
    let anchor = anchor_params.self_signed(&anchor_key).unwrap();
    let issuer_key = KeyPair::generate().unwrap();
    let anchor_issuer = rcgen::Issuer::from_params(&anchor_params, &anchor_key);
    let issuer = ca("identity.mesh-system.cluster.local", 10)
        .signed_by(&issuer_key, &anchor_issuer)
        .unwrap();
    std::fs::write(dir.join("trust-anchors.pem"), anchor.pem()).unwrap();
    std::fs::write(dir.join("issuer.crt"), issuer.pem()).unwrap();
    std::fs::write(dir.join("issuer.key"), issuer_key.serialize_pem()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_checks_pass_then_name_each_broken_thing() {
    let mut mesh = Mesh::start("1h").await;
    mesh.write(
        "svc.yaml",
        &service("api", "demo", &[("http", 80, "http", "")]),
    );
    let api = mesh
        .replica("api", "api-1", mesh_integration::apps::Behaviour::default())
        .await;
    let mut web = mesh.proxy("demo", "web", "web-1").await;
    let targets = mesh.root.path().join("targets.json");
    write_file_sd(&targets, &mesh.file_sd_targets(&[&api.proxy, &web])).unwrap();

    // Healthy.
    let (code, out) = check(&targets, &mesh.identity_dir, false);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains('×'), "{out}");
    for line in [
        "√ mesh-identity is running and ready",
        "√ mesh-controller is running and ready",
        "√ issuer is signed by a trust anchor",
        "√ the running issuer is valid for at least 60 days",
        "√ proxy web-1 is ready",
        "√ proxy api-1 has a valid certificate",
        "√ proxy web-1's certificate chains to the trust anchors",
    ] {
        assert!(out.contains(line), "{line:?} missing:\n{out}");
    }
    let (_, json) = check(&targets, &mesh.identity_dir, true);
    let v: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert_eq!(v["success"], true);

    // An issuer that expires in 10 days.
    let short = tempfile::tempdir().unwrap();
    short_lived_identity(short.path());
    let (code, out) = check(&targets, short.path(), false);
    assert_eq!(code, 1, "{out}");
    let expiring = ["9", "10"].iter().any(|d| {
        out.contains(&format!(
            "× issuer certificate is valid for at least 60 days\n    expires in {d} days"
        ))
    });
    assert!(expiring, "{out}");
    assert!(out.contains("hint: rotate"), "{out}");

    // A proxy that is gone.
    web.proc.kill();
    let (code, out) = check(&targets, &mesh.identity_dir, false);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("× proxy web-1 is ready"), "{out}");
    assert!(
        out.contains("hint: the proxy of web-1 is not running"),
        "{out}"
    );
    assert!(out.contains("√ proxy api-1 is ready"), "{out}");

    // The identity service down.
    mesh.identity.kill();
    let (code, out) = check(&targets, &mesh.identity_dir, false);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("× mesh-identity is running and ready"),
        "{out}"
    );
    assert!(out.contains("hint: start mesh-identity"), "{out}");
    mesh.kill_controller();
}
