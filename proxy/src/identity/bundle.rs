//! The trust bundle in force: reloaded when its file changes (a garbage file
//! keeps the last good bundle, and says why), exported as metrics.

use crate::metrics::{AnchorLabels, BundleLabels, Metrics, ReloadLabels};
use mesh_proto::workload::{watch_file, Bundle, Reload, TrustBundle};
use std::{path::PathBuf, sync::Arc, time::Duration, time::UNIX_EPOCH};

/// Watches `path` for as long as the task lives.
pub async fn watch(bundle: Arc<TrustBundle>, path: PathBuf, poll: Duration, metrics: Arc<Metrics>) {
    export(&bundle.current(), &metrics);
    let shown = path.display().to_string();
    watch_file(bundle, path, poll, |reload| match reload {
        Reload::Replaced(b) => {
            metrics
                .trust_bundle_reloads
                .get_or_create(&ReloadLabels { result: "ok" })
                .inc();
            export(&b, &metrics);
            let fingerprints: Vec<&str> = b
                .anchors()
                .iter()
                .map(|a| &a.fingerprint[..16])
                .collect();
            tracing::info!(file = %shown, bundle = %b.id(), anchors = ?fingerprints, "trust bundle reloaded");
        }
        Reload::Rejected(error) => {
            metrics
                .trust_bundle_reloads
                .get_or_create(&ReloadLabels { result: "rejected" })
                .inc();
            tracing::warn!(file = %shown, %error, "trust bundle file refused; keeping the last good bundle");
        }
    })
    .await;
}

/// Replaces the bundle series with `bundle`'s.
pub fn export(bundle: &Bundle, metrics: &Metrics) {
    metrics.trust_bundle.clear();
    metrics
        .trust_bundle
        .get_or_create(&BundleLabels {
            bundle: bundle.id(),
        })
        .set(1);
    metrics.trust_anchor_expiry.clear();
    for anchor in bundle.anchors() {
        let expiry = anchor
            .not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        metrics
            .trust_anchor_expiry
            .get_or_create(&AnchorLabels {
                fingerprint: anchor.fingerprint.clone(),
            })
            .set(expiry);
    }
}
