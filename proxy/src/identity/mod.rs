//! The workload's certificate: a key generated in memory, a CSR for the
//! workload's SPIFFE ID, `Certify` calls to the identity service, and renewal
//! at 70 % of the lifetime while the old certificate keeps serving (the
//! client is `mesh_proto::workload::IdentityClient`); here, what the proxy
//! reports of it.

pub mod bundle;

pub use mesh_proto::workload::{IdentityClient, Issued, LocalKey};

use crate::{metrics::Metrics, tls::CertStore};
use std::{sync::Arc, time::UNIX_EPOCH};

/// Obtains the first certificate, then renews forever. `ready` is told once
/// the first certificate is installed.
pub async fn run(
    client: IdentityClient,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let identity = client.identity().to_string();
    client
        .keep_renewed(&store, |outcome, wait| match outcome {
            Ok(issued) => {
                let expiry = issued
                    .valid_until
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                metrics.cert_expiry.set(expiry);
                metrics.cert_renewals.inc();
                let _ = ready.send(true);
                tracing::info!(
                    %identity,
                    expires_in = ?issued.lifetime,
                    renew_in = ?wait,
                    "certificate issued"
                );
            }
            Err(error) => {
                metrics.cert_renewal_failures.inc();
                // How long the current certificate still serves: the warning to act on.
                let expires_in = store
                    .not_after()
                    .map(|t| t.duration_since(std::time::SystemTime::now()).unwrap_or_default());
                match expires_in {
                    Some(left) if left.is_zero() => tracing::error!(%error, retry_in = ?wait, "certificate request failed and the certificate has expired: not ready"),
                    Some(left) => tracing::warn!(%error, retry_in = ?wait, expires_in = ?left, "certificate request failed; keeping the current certificate"),
                    None => tracing::warn!(%error, retry_in = ?wait, "certificate request failed"),
                }
            }
        })
        .await;
}
