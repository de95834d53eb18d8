//! The trust-anchors file of Kubernetes mode (the `mesh-identity-trust-roots` ConfigMap,
//! mounted; the kubelet swaps in new contents): read every [`POLL`], and a new valid
//! bundle — anchors, and the directives `mesh identity rotate` adds — is sent to the
//! issuer check and the publisher as written. A file that is not a valid bundle is
//! logged once and the last good bundle stays.

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

/// How often the file is read.
pub const POLL: Duration = Duration::from_secs(1);

/// Watches `path` until every receiver of `bundle` is gone.
pub async fn watch(path: PathBuf, bundle: watch::Sender<String>, poll: Duration) {
    let mut seen: Option<Vec<u8>> = None;
    loop {
        tokio::time::sleep(poll).await;
        if bundle.is_closed() {
            return;
        }
        let read = tokio::fs::read(&path).await;
        let bytes = match read {
            Ok(b) => b,
            Err(error) => {
                if seen.take().is_some() {
                    warn!(file = %path.display(), %error, "cannot read the trust anchors; keeping the last good bundle");
                }
                continue;
            }
        };
        if seen.as_deref() == Some(bytes.as_slice()) {
            continue;
        }
        seen = Some(bytes.clone());
        let text = match String::from_utf8(bytes) {
            Ok(t) => t.trim().to_string() + "\n",
            Err(e) => {
                warn!(file = %path.display(), error = %e, "trust anchors refused; keeping the last good bundle");
                continue;
            }
        };
        if *bundle.borrow() == text {
            continue;
        }
        match mesh_proto::workload::Bundle::parse(&text) {
            Ok(parsed) => {
                info!(file = %path.display(), bundle = %parsed.id(), anchors = parsed.anchors().len(), "trust anchors changed");
                bundle.send_replace(text);
            }
            Err(error) => {
                warn!(file = %path.display(), %error, "trust anchors refused; keeping the last good bundle")
            }
        }
    }
}
