//! Calls `Certify` and keeps the certificate fresh: renew at 70 % of the
//! lifetime, retry with capped exponential backoff, and never drop the
//! current certificate while a renewal is failing.

use super::{CertStore, LocalKey};
use crate::identity::{identity_client, CertifyRequest};
use std::{
    path::PathBuf,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint};

/// Where the workload's token comes from.
#[derive(Clone, Debug)]
pub enum TokenSource {
    /// Read from this file at every certificate request (tokens rotate).
    File(PathBuf),
    /// Given inline.
    Inline(String),
}

/// Why a certificate could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("reading token {path}: {err}")]
    Token { path: PathBuf, err: std::io::Error },
    #[error("certify: {:?}: {}", .0.code(), .0.message())]
    Rpc(tonic::Status),
    #[error("certify: issued certificate is already expired")]
    Expired,
    #[error("{0}")]
    Setup(String),
}

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
    /// Prepares a TLS channel to the identity service at `url` (connected
    /// lazily), which must present a certificate for `server_name` from
    /// `anchors_pem`, and a key for `identity`.
    pub fn new(
        url: &str,
        server_name: &str,
        anchors_pem: &str,
        identity: String,
        token: TokenSource,
    ) -> Result<Self, CertifyError> {
        let setup = |e: &dyn std::fmt::Display| CertifyError::Setup(e.to_string());
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(anchors_pem))
            .domain_name(server_name);
        let channel = Endpoint::from_shared(url.to_string())
            .map_err(|e| setup(&e))?
            .tls_config(tls)
            .map_err(|e| setup(&e))?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5))
            .connect_lazy();
        let key = LocalKey::generate(&identity).map_err(|e| setup(&e))?;
        Ok(IdentityClient {
            client: identity_client::IdentityClient::new(channel),
            identity,
            token,
            key,
        })
    }

    /// The SPIFFE ID asked for.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    fn token(&self) -> Result<Vec<u8>, CertifyError> {
        match &self.token {
            TokenSource::Inline(t) => Ok(t.as_bytes().to_vec()),
            TokenSource::File(p) => std::fs::read_to_string(p)
                .map(|t| t.trim().as_bytes().to_vec())
                .map_err(|err| CertifyError::Token {
                    path: p.clone(),
                    err,
                }),
        }
    }

    /// Requests a certificate and installs it in `store`.
    pub async fn certify(&mut self, store: &CertStore) -> Result<Issued, CertifyError> {
        let req = CertifyRequest {
            identity: self.identity.clone(),
            token: self.token()?,
            certificate_signing_request: self.key.csr().to_vec(),
        };
        let rsp = self
            .client
            .certify(req)
            .await
            .map_err(CertifyError::Rpc)?
            .into_inner();
        let mut chain = Vec::with_capacity(1 + rsp.intermediate_certificates.len());
        chain.push(rsp.leaf_certificate);
        chain.extend(rsp.intermediate_certificates);
        let valid_until =
            UNIX_EPOCH + Duration::from_secs(rsp.valid_until_unix_seconds.max(0) as u64);
        let lifetime = valid_until
            .duration_since(SystemTime::now())
            .map_err(|_| CertifyError::Expired)?;
        store.set(self.key.certified(chain));
        Ok(Issued {
            valid_until,
            lifetime,
        })
    }

    /// Obtains the first certificate, then renews forever, calling
    /// `observe` with each outcome (and the wait before the next attempt).
    pub async fn keep_renewed(
        mut self,
        store: &CertStore,
        mut observe: impl FnMut(Result<&Issued, &CertifyError>, Duration),
    ) {
        let mut failures = 0u32;
        loop {
            let wait = match self.certify(store).await {
                Ok(issued) => {
                    failures = 0;
                    let wait = renew_after(issued.lifetime);
                    observe(Ok(&issued), wait);
                    wait
                }
                Err(error) => {
                    failures += 1;
                    let wait = backoff(failures);
                    observe(Err(&error), wait);
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// When to renew a certificate valid for `lifetime` from now.
pub fn renew_after(lifetime: Duration) -> Duration {
    lifetime.mul_f64(0.7)
}

/// Backoff after the `n`-th consecutive failure, capped.
pub fn backoff(n: u32) -> Duration {
    Duration::from_millis(500u64.saturating_mul(1u64 << n.min(6))).min(Duration::from_secs(30))
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
