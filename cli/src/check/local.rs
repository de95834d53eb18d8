//! The local-mode checks of `mesh check --local DIR` (a `mesh demo` directory, or any
//! mesh run from a targets file and an identity directory): the control plane answers,
//! the trust anchors and the issuer are valid long enough and the issuer chains to the
//! anchors, and every proxy is ready with a valid certificate.

use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_identity::files::{ISSUER_CERT, ISSUER_KEY, TRUST_ANCHORS};

use super::Check;
use crate::file_sd::{self, Target, JOB_CONTROLLER, JOB_IDENTITY, JOB_PROXY};
use crate::http::{client, get, HttpClient};

const CONTROL_PLANE: &str = "local-control-plane";
const IDENTITY: &str = "local-identity";
const PROXIES: &str = "local-proxies";

/// How long certificates must stay valid.
pub const MIN_VALIDITY: Duration = Duration::from_secs(60 * 86_400);

/// Where the local mesh is described.
#[derive(Clone, Debug)]
pub struct Settings {
    /// The file-SD targets file (admin addresses of identity, controller, proxies).
    pub targets: PathBuf,
    /// The identity directory (`trust-anchors.pem`, `issuer.crt`, `issuer.key`).
    pub identity_dir: PathBuf,
}

/// Runs every local check.
pub async fn checks(s: &Settings) -> Vec<Check> {
    let targets = match file_sd::read(&s.targets) {
        Ok(t) => t,
        Err(e) => {
            return vec![Check::fail(
                CONTROL_PLANE,
                "the targets file can be read",
                format!("{e:#}"),
                "run `mesh demo --dir DIR` and pass `--local DIR` (or --targets FILE)",
            )]
        }
    };
    let c = client();
    let mut out = Vec::new();
    for (job, name) in [
        (JOB_IDENTITY, "mesh-identity"),
        (JOB_CONTROLLER, "mesh-controller"),
    ] {
        out.push(component(&c, &targets, job, name).await);
    }
    out.extend(identity_files(s, SystemTime::now()));
    out.extend(running_issuer(&c, &targets).await);
    let anchors = std::fs::read_to_string(s.identity_dir.join(TRUST_ANCHORS)).ok();
    for t in targets.iter().filter(|t| t.label("job") == JOB_PROXY) {
        out.extend(proxy(&c, t, anchors.as_deref()).await);
    }
    out
}

async fn component(c: &HttpClient, targets: &[Target], job: &str, name: &str) -> Check {
    let desc = format!("{name} is running and ready");
    let Some(t) = targets.iter().find(|t| t.label("job") == job) else {
        return Check::fail(
            CONTROL_PLANE,
            desc,
            "not in the targets file",
            "the targets file lists every component; regenerate it",
        );
    };
    match get(c, &format!("http://{}/ready", t.addr)).await {
        Ok((200, _)) => Check::ok(CONTROL_PLANE, desc),
        Ok((status, body)) => Check::fail(
            CONTROL_PLANE,
            desc,
            format!("/ready answered {status}: {}", body.trim()),
            format!("look at {name}'s log"),
        ),
        Err(e) => Check::fail(
            CONTROL_PLANE,
            desc,
            format!("{e:#}"),
            format!("start {name} (admin address {})", t.addr),
        ),
    }
}

/// Pure: the anchors and issuer files are valid for [`MIN_VALIDITY`] from `now`, and the
/// issuer is signed by an anchor.
pub fn identity_files(s: &Settings, now: SystemTime) -> Vec<Check> {
    let read = |name: &str| std::fs::read_to_string(s.identity_dir.join(name));
    let hint_rotate = "rotate: `mesh identity init DIR --force` makes a new anchor and issuer";
    let mut out = Vec::new();
    let anchors = match read(TRUST_ANCHORS) {
        Ok(a) => a,
        Err(e) => {
            return vec![Check::fail(
                IDENTITY,
                "trust anchors can be read",
                format!("{}: {e}", s.identity_dir.join(TRUST_ANCHORS).display()),
                "pass the identity directory with --identity-dir",
            )]
        }
    };
    out.push(validity_check(
        IDENTITY,
        "trust anchors are valid for at least 60 days",
        &anchors,
        now,
        hint_rotate,
    ));
    let (cert, key) = match (read(ISSUER_CERT), read(ISSUER_KEY)) {
        (Ok(c), Ok(k)) => (c, k),
        (Err(e), _) | (_, Err(e)) => {
            out.push(Check::fail(
                IDENTITY,
                "the issuer can be read",
                e.to_string(),
                "pass the identity directory with --identity-dir",
            ));
            return out;
        }
    };
    out.push(validity_check(
        IDENTITY,
        "issuer certificate is valid for at least 60 days",
        &cert,
        now,
        hint_rotate,
    ));
    out.push(
        match mesh_identity::ca::Issuer::load(&cert, &key, &anchors) {
            Ok(_) => Check::ok(IDENTITY, "issuer is signed by a trust anchor"),
            // An expired issuer fails the check above; here only the chain counts.
            Err(e)
                if e.to_string().contains("expired") || e.to_string().contains("not yet valid") =>
            {
                Check::ok(IDENTITY, "issuer is signed by a trust anchor")
            }
            Err(e) => Check::fail(
                IDENTITY,
                "issuer is signed by a trust anchor",
                e.to_string(),
                "issue the issuer from the anchor (`mesh identity init`), or fix the file",
            ),
        },
    );
    out
}

/// Every certificate in `pem` is valid now and for [`MIN_VALIDITY`].
pub fn validity_check(
    group: &'static str,
    desc: &str,
    pem: &str,
    now: SystemTime,
    hint: &str,
) -> Check {
    let mut soonest: Option<i64> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let parsed = block.ok().and_then(|b| {
            b.parse_x509()
                .ok()
                .map(|c| c.validity().not_after.timestamp())
        });
        match parsed {
            Some(t) => soonest = Some(soonest.map_or(t, |s| s.min(t))),
            None => return Check::fail(group, desc, "not a PEM certificate", hint),
        }
    }
    let Some(not_after) = soonest else {
        return Check::fail(group, desc, "no certificate found", hint);
    };
    let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() as i64;
    let left = not_after - now;
    if left <= 0 {
        Check::fail(
            group,
            desc,
            format!("expired {} days ago", -left / 86_400),
            hint,
        )
    } else if left < MIN_VALIDITY.as_secs() as i64 {
        Check::fail(
            group,
            desc,
            format!("expires in {} days", left / 86_400),
            hint,
        )
    } else {
        Check::ok(group, desc)
    }
}

/// The DER certificates of a PEM text.
fn ders(pem: &str) -> Result<Vec<Vec<u8>>, String> {
    x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes())
        .map(|p| p.map(|p| p.contents).map_err(|e| e.to_string()))
        .collect()
}

/// Whether `leaf` is signed by one of `cas` (names and signature).
fn signed_by_der(leaf: &[u8], cas: &[Vec<u8>]) -> Result<(), String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(leaf).map_err(|e| e.to_string())?;
    for der in cas {
        let Ok((_, ca)) = x509_parser::parse_x509_certificate(der) else {
            continue;
        };
        if ca.subject().as_raw() == leaf.issuer().as_raw()
            && leaf.verify_signature(Some(ca.public_key())).is_ok()
        {
            return Ok(());
        }
    }
    Err(format!(
        "{} is not signed by any of the given certificates",
        leaf.subject()
    ))
}

/// Whether the first certificate of `cert_pem` is signed by a certificate of `ca_pem`.
pub fn signed_by(cert_pem: &str, ca_pem: &str) -> Result<(), String> {
    let leaf = ders(cert_pem)?.into_iter().next().ok_or("no certificate")?;
    signed_by_der(&leaf, &ders(ca_pem)?)
}

/// Whether a chain (leaf first, then its issuer) leads to one of `anchors_pem`.
pub fn chains_to(chain_pem: &str, anchors_pem: &str) -> Result<(), String> {
    let chain = ders(chain_pem)?;
    let anchors = ders(anchors_pem)?;
    match chain.as_slice() {
        [] => Err("no certificate".into()),
        [leaf] => signed_by_der(leaf, &anchors),
        [leaf, issuer, ..] => {
            signed_by_der(leaf, std::slice::from_ref(issuer))?;
            signed_by_der(issuer, &anchors)
        }
    }
}

/// The issuer the running identity service signs with, from its metrics.
async fn running_issuer(c: &HttpClient, targets: &[Target]) -> Option<Check> {
    let t = targets.iter().find(|t| t.label("job") == JOB_IDENTITY)?;
    let (_, body) = get(c, &format!("http://{}/metrics", t.addr)).await.ok()?;
    let expiry = metric(&body, "mesh_identity_issuer_expiry_timestamp_seconds")?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .ok()?
        .as_secs_f64();
    let desc = "the running issuer is valid for at least 60 days";
    Some(if expiry - now >= MIN_VALIDITY.as_secs_f64() {
        Check::ok(IDENTITY, desc)
    } else {
        Check::fail(
            IDENTITY,
            desc,
            format!("expires in {:.0} days", (expiry - now) / 86_400.0),
            "put a new issuer in place; mesh-identity reloads it (Kubernetes) or restart it",
        )
    })
}

/// The first sample of `name` in Prometheus text.
pub(super) fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))?
        .rsplit(' ')
        .next()?
        .parse()
        .ok()
}

async fn proxy(c: &HttpClient, t: &Target, anchors: Option<&str>) -> Vec<Check> {
    let pod = match t.label("pod") {
        "" => t.addr.to_string(),
        p => p.to_string(),
    };
    let ready = format!("proxy {pod} is ready");
    match get(c, &format!("http://{}/ready", t.addr)).await {
        Ok((200, _)) => {}
        Ok((status, _)) => {
            return vec![Check::fail(
                PROXIES,
                ready,
                format!("/ready answered {status} (no certificate yet?)"),
                format!("look at the proxy's log; is mesh-identity reachable from {pod}?"),
            )]
        }
        Err(e) => {
            return vec![Check::fail(
                PROXIES,
                ready,
                format!("{e:#}"),
                format!("the proxy of {pod} is not running"),
            )]
        }
    }
    let mut out = vec![Check::ok(PROXIES, ready)];
    let desc = format!("proxy {pod} has a valid certificate");
    let body = get(c, &format!("http://{}/metrics", t.addr))
        .await
        .map(|(_, b)| b)
        .unwrap_or_default();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64();
    out.push(
        match metric(&body, "mesh_identity_cert_expiry_timestamp_seconds") {
            Some(exp) if exp > now => Check::ok(PROXIES, desc),
            Some(_) => Check::fail(
                PROXIES,
                desc,
                "its certificate has expired",
                "renewal is failing: look at the proxy's log and mesh-identity",
            ),
            None => Check::fail(
                PROXIES,
                desc,
                "no certificate expiry in its metrics",
                "is this a mesh-proxy?",
            ),
        },
    );
    if let Some(anchors) = anchors {
        let desc = format!("proxy {pod}'s certificate chains to the trust anchors");
        let chain = get(c, &format!("http://{}/certificate", t.addr))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        out.push(match chains_to(&chain, anchors) {
            Ok(()) => Check::ok(PROXIES, desc),
            Err(e) => Check::fail(
                PROXIES,
                desc,
                e,
                "the proxy holds a certificate from another CA: restart it to get a new one",
            ),
        });
        let bundle = get(c, &format!("http://{}/trust-bundle", t.addr))
            .await
            .map(|(_, b)| b)
            .unwrap_or_default();
        out.push(trust_check(&pod, &bundle, &chain, anchors));
    }
    out
}

/// Which anchors a proxy trusts and which certificate issued its leaf, checked against
/// the directory's bundle (a proxy on another bundle missed a reload).
fn trust_check(pod: &str, bundle_pem: &str, chain_pem: &str, anchors_pem: &str) -> Check {
    use crate::identity::pem_fingerprints;
    let short = |fp: &String| fp.chars().take(16).collect::<String>();
    let trusted = pem_fingerprints(bundle_pem);
    let issuer = pem_fingerprints(chain_pem)
        .get(1)
        .map_or_else(|| "?".to_string(), short);
    let names: Vec<String> = trusted.iter().map(short).collect();
    let desc = format!(
        "proxy {pod} trusts anchor(s) {}; its certificate was issued by {issuer}",
        if names.is_empty() {
            "?".to_string()
        } else {
            names.join(", ")
        }
    );
    let mut want = pem_fingerprints(anchors_pem);
    let mut have = trusted;
    want.sort();
    have.sort();
    if want == have {
        Check::ok(PROXIES, desc)
    } else {
        Check::fail(
            PROXIES,
            desc,
            "its trust bundle is not the directory's trust-anchors.pem",
            "it has not reloaded the file: look for `trust bundle file refused` in its log",
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_is_reported_and_compared_with_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        mesh_identity::files::init_dir(dir.path(), "cluster.local", false).unwrap();
        let anchors = std::fs::read_to_string(dir.path().join(TRUST_ANCHORS)).unwrap();
        let issuer = std::fs::read_to_string(dir.path().join("issuer.crt")).unwrap();
        let (other, _) = mesh_identity::ca::generate_trust_anchor("cluster.local").unwrap();
        let chain = format!("{issuer}{issuer}"); // leaf position unused: issuer second
        let ok = trust_check("demo/a", &anchors, &chain, &anchors);
        assert_eq!(ok.result, super::super::Status::Success, "{ok:?}");
        let fp = |pem: &str| crate::identity::pem_fingerprints(pem)[0][..16].to_string();
        assert!(ok.description.contains(&fp(&anchors)), "{ok:?}");
        assert!(
            ok.description
                .ends_with(&format!("issued by {}", fp(&issuer))),
            "{ok:?}"
        );
        let stale = trust_check("demo/a", &format!("{anchors}{other}"), &chain, &anchors);
        assert_eq!(stale.result, super::super::Status::Error, "{stale:?}");
    }

    #[test]
    fn reads_the_first_sample() {
        let text = "# HELP x y\nmesh_identity_cert_expiry_timestamp_seconds 1700000000\nmesh_identity_cert_expiry_timestamp_seconds_x 1\n";
        assert_eq!(
            metric(text, "mesh_identity_cert_expiry_timestamp_seconds"),
            Some(1_700_000_000.0)
        );
        assert_eq!(metric(text, "nope"), None);
    }

    #[test]
    fn identity_files_of_a_fresh_directory_pass_and_age_out() {
        let dir = tempfile::tempdir().unwrap();
        mesh_identity::files::init_dir(dir.path(), "cluster.local", false).unwrap();
        let s = Settings {
            targets: dir.path().join("t.json"),
            identity_dir: dir.path().to_path_buf(),
        };
        let now = SystemTime::now();
        let fresh = identity_files(&s, now);
        assert!(
            fresh
                .iter()
                .all(|c| c.result == super::super::Status::Success),
            "{fresh:?}"
        );
        // Far in the future the issuer has run out.
        let later = identity_files(&s, now + Duration::from_secs(20 * 365 * 86_400));
        let issuer = later
            .iter()
            .find(|c| c.description.starts_with("issuer certificate"))
            .unwrap();
        assert_eq!(issuer.result, super::super::Status::Error);
        assert!(
            issuer.error.as_deref().unwrap().starts_with("expired"),
            "{issuer:?}"
        );
        // Another anchor: the issuer does not chain.
        let other = tempfile::tempdir().unwrap();
        mesh_identity::files::init_dir(other.path(), "cluster.local", false).unwrap();
        std::fs::copy(
            other.path().join(TRUST_ANCHORS),
            dir.path().join(TRUST_ANCHORS),
        )
        .unwrap();
        let foreign = identity_files(&s, now);
        let chain = foreign
            .iter()
            .find(|c| c.description == "issuer is signed by a trust anchor")
            .unwrap();
        assert_eq!(chain.result, super::super::Status::Error, "{foreign:?}");
    }
}
