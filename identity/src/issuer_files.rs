//! Local mode keeps its issuer current: the trust anchors, issuer certificate and issuer
//! key files are read every [`POLL`]. A set that changed is loaded once it has stayed the
//! same for one more read (a rotation writes the files one by one), checked as at
//! startup, and replaces the issuer for every later `Certify` (and the serving
//! certificate). A set that does not load is logged and counted, and the issuer in
//! force keeps signing.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::ca::{Issuer, SharedIssuer};
use crate::files::IssuerPaths;
use crate::metrics::{Metrics, ReloadResult};

/// How often the files are read.
pub const POLL: Duration = Duration::from_millis(500);

/// The three files' contents.
type Contents = [Vec<u8>; 3];

fn read(paths: &IssuerPaths) -> Result<Contents, String> {
    let one = |p: &Path| std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()));
    Ok([
        one(&paths.trust_anchors)?,
        one(&paths.issuer_cert)?,
        one(&paths.issuer_key)?,
    ])
}

fn load(contents: &Contents) -> Result<Issuer, String> {
    let text = |b: &[u8]| String::from_utf8(b.to_vec()).map_err(|e| format!("not UTF-8: {e}"));
    let [anchors, cert, key] = contents;
    Issuer::load(&text(cert)?, &text(key)?, &text(anchors)?).map_err(|e| e.to_string())
}

/// Watches `paths` every `poll` for as long as the task lives.
pub async fn watch(
    paths: IssuerPaths,
    issuer: SharedIssuer,
    metrics: Arc<Metrics>,
    poll: Duration,
) {
    // The files of the issuer in force: learnt from the first read that loads to it.
    let mut in_force: Option<Contents> = None;
    let mut pending: Option<Contents> = None;
    let mut refused: Option<Contents> = None;
    let mut unreadable = false;
    loop {
        tokio::time::sleep(poll).await;
        let now = match read(&paths) {
            Ok(now) => {
                unreadable = false;
                now
            }
            Err(error) => {
                if !unreadable {
                    warn!(%error, "cannot read the issuer files; the current issuer keeps signing");
                    unreadable = true;
                }
                continue;
            }
        };
        if in_force.as_ref() == Some(&now) || refused.as_ref() == Some(&now) {
            pending = None;
            continue;
        }
        if pending.as_ref() != Some(&now) {
            pending = Some(now);
            continue; // read once more: the set must be stable
        }
        pending = None;
        match load(&now) {
            Ok(new)
                if new.issuer_cert_der() == issuer.current().issuer_cert_der()
                    && new.bundle_id() == issuer.current().bundle_id() =>
            {
                in_force = Some(now);
                refused = None;
            }
            Ok(new) => {
                let valid_until_unix = unix_secs(new.not_after());
                let bundle = new.bundle_id().to_string();
                let anchors = new.anchors().len();
                issuer.replace(Arc::new(new));
                metrics.issuer_reload(ReloadResult::Ok);
                info!(valid_until_unix, %bundle, anchors, "issuer files reloaded");
                in_force = Some(now);
                refused = None;
            }
            Err(error) => {
                metrics.issuer_reload(ReloadResult::Rejected);
                warn!(%error, "issuer files refused; the current issuer keeps signing");
                refused = Some(now);
            }
        }
    }
}

/// Unix seconds, for logs.
fn unix_secs(t: std::time::SystemTime) -> u64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests;
