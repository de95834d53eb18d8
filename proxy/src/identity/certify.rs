//! Calls `Certify` and keeps the certificate fresh: renew at 70 % of the
//! lifetime, retry with capped exponential backoff, and never drop the
//! current certificate while a renewal is failing.

use super::LocalKey;
use crate::{config::TokenSource, metrics::Metrics, tls::CertStore};
use mesh_proto::identity::{identity_client, CertifyRequest};
use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// A client of the identity service for one workload identity.
pub struct IdentityClient {
    client: identity_client::IdentityClient<Channel>,
    identity: String,
    token: TokenSource,
    key: LocalKey,
}

/// A freshly issued certificate.
#[derive(Debug)]
pub struct Issued {
    /// When it expires.
    pub valid_until: SystemTime,
    /// How long it is valid from now.
    pub lifetime: Duration,
}

impl IdentityClient {
    /// Prepares a TLS channel to the identity service (connected lazily).
    pub fn new(
        url: &str,
        server_name: &str,
        anchors_pem: &str,
        identity: String,
        token: TokenSource,
    ) -> anyhow::Result<Self> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(anchors_pem))
            .domain_name(server_name);
        let channel = Endpoint::from_shared(url.to_string())?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let key = LocalKey::generate(&identity).map_err(anyhow::Error::msg)?;
        Ok(IdentityClient {
            client: identity_client::IdentityClient::new(channel),
            identity,
            token,
            key,
        })
    }

    fn token(&self) -> anyhow::Result<Vec<u8>> {
        match &self.token {
            TokenSource::Inline(t) => Ok(t.as_bytes().to_vec()),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().as_bytes().to_vec())
                .map_err(|e| anyhow::anyhow!("reading token {}: {e}", p.display())),
        }
    }

    /// Requests a certificate and installs it in `store`.
    pub async fn certify(&mut self, store: &CertStore) -> anyhow::Result<Issued> {
        let req = CertifyRequest {
            identity: self.identity.clone(),
            token: self.token()?,
            certificate_signing_request: self.key.csr().to_vec(),
        };
        let rsp = self
            .client
            .certify(req)
            .await
            .map_err(|s| anyhow::anyhow!("certify: {:?}: {}", s.code(), s.message()))?
            .into_inner();
        let mut chain = Vec::with_capacity(1 + rsp.intermediate_certificates.len());
        chain.push(rsp.leaf_certificate);
        chain.extend(rsp.intermediate_certificates);
        let valid_until =
            UNIX_EPOCH + Duration::from_secs(rsp.valid_until_unix_seconds.max(0) as u64);
        let lifetime = valid_until
            .duration_since(SystemTime::now())
            .map_err(|_| anyhow::anyhow!("certify: issued certificate is already expired"))?;
        store.set(self.key.certified(chain));
        Ok(Issued {
            valid_until,
            lifetime,
        })
    }
}

/// When to renew a certificate valid for `lifetime` from now.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.7)
}

/// Backoff after the `n`-th consecutive failure, capped and never later than
/// the time left before expiry allows.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << n.min(6))).min(Duration::from_secs(30))
}

/// Obtains the first certificate, then renews forever. `ready` is told once
/// the first certificate is installed.
pub async fn run(
    mut client: IdentityClient,
    store: Arc<CertStore>,
    metrics: Arc<Metrics>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let mut failures = 0u32;
    loop {
        match client.certify(&store).await {
            Ok(issued) => {
                failures = 0;
                let expiry = issued
                    .valid_until
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs() as i64)
                    .unwrap_or(0);
                metrics.cert_expiry.set(expiry);
                metrics.cert_renewals.inc();
                let _ = ready.send(true);
                let wait = renew_after(issued.lifetime);
                tracing::info!(
                    identity = %client.identity,
                    expires_in = ?issued.lifetime,
                    renew_in = ?wait,
                    "certificate issued"
                );
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                failures += 1;
                metrics.cert_renewal_failures.inc();
                let wait = backoff(failures);
                tracing::warn!(%error, retry_in = ?wait, "certificate request failed; keeping the current certificate");
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renews_at_seventy_percent() {
        assert_eq!(
            renew_after(Duration::from_secs(24 * 3600)),
            Duration::from_secs(60480)
        );
        assert_eq!(
            renew_after(Duration::from_secs(20)),
            Duration::from_secs(14)
        );
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        assert_eq!(backoff(1), Duration::from_secs(1));
        assert!(backoff(2) > backoff(1));
        assert_eq!(backoff(30), Duration::from_secs(30));
    }
}
