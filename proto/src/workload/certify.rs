//! Calls `Certify` and keeps the certificate fresh: renew at 70 % of the
//! lifetime (±10 % at random, so a fleet does not renew in one burst), retry
//! with capped exponential backoff bounded by what is left of the current
//! certificate, renew early when the trust bundle asks for it, verify every
//! issued chain against the bundle before installing it, and never drop the
//! current certificate while a renewal is failing.

use super::channel::{dial_tls, host_port};
use super::{server_auth_config, spiffe::spiffe_id, CertStore, LocalKey, TlsError, TrustBundle};
use crate::identity::{identity_client, CertifyRequest};
use rustls::pki_types::{CertificateDer, ServerName};
use std::{
    future::Future,
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use tonic::transport::{Channel, Endpoint, Uri};

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
    #[error("certify: issued certificate refused: {0}")]
    Untrusted(String),
    #[error("{0}")]
    Setup(String),
}

/// A client of the identity service for one workload identity.
pub struct IdentityClient {
    client: identity_client::IdentityClient<Channel>,
    identity: String,
    token: TokenSource,
    key: LocalKey,
    bundle: Arc<TrustBundle>,
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
    /// lazily), which must present a certificate for `server_name` chained to
    /// the bundle in force, and a key for `identity`.
    pub fn new(
        url: &str,
        server_name: &str,
        bundle: Arc<TrustBundle>,
        identity: String,
        token: TokenSource,
    ) -> Result<Self, CertifyError> {
        let setup = |e: &dyn std::fmt::Display| CertifyError::Setup(e.to_string());
        let sni = ServerName::try_from(server_name.to_string())
            .map_err(|e| setup(&format!("identity server name {server_name:?}: {e}")))?;
        let config = server_auth_config(bundle.clone()).map_err(|e| setup(&e))?;
        let connect_timeout = Duration::from_secs(2);
        let endpoint = Endpoint::from_shared(format!("http://{}", host_port(url)))
            .map_err(|e| setup(&e))?
            .connect_timeout(connect_timeout)
            .timeout(Duration::from_secs(5));
        let connector = tower::service_fn(move |uri: Uri| {
            let (config, sni) = (config.clone(), sni.clone());
            async move { dial_tls(&uri, config, Some(sni), connect_timeout).await }
        });
        let channel = endpoint.connect_with_connector_lazy(connector);
        let key = LocalKey::generate(&identity).map_err(|e| setup(&e))?;
        Ok(IdentityClient {
            client: identity_client::IdentityClient::new(channel),
            identity,
            token,
            key,
            bundle,
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

    /// Requests a certificate, checks it, and installs it in `store`.
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
        self.check(&chain)?;
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

    /// What peers will check, checked first: the chain leads to an anchor of
    /// the bundle in force, names exactly our identity and holds our key.
    fn check(&self, chain: &[Vec<u8>]) -> Result<(), CertifyError> {
        let untrusted = |m: String| CertifyError::Untrusted(m);
        let leaf = chain
            .first()
            .ok_or_else(|| untrusted("empty chain".into()))?;
        let id = spiffe_id(leaf).map_err(untrusted)?;
        if id != self.identity {
            return Err(untrusted(format!("it names {id}, not {}", self.identity)));
        }
        if !self.key.matches(leaf) {
            return Err(untrusted("it does not hold this workload's key".into()));
        }
        let ders: Vec<_> = chain
            .iter()
            .map(|c| CertificateDer::from(c.as_slice()))
            .collect();
        self.bundle
            .current()
            .verify_chain(&ders)
            .map_err(|e: TlsError| untrusted(format!("it does not chain to the trust bundle: {e}")))
    }

    /// Obtains the first certificate, then renews forever, calling
    /// `observe` with each outcome (and the wait before the next attempt).
    pub async fn keep_renewed(
        self,
        store: &CertStore,
        observe: impl FnMut(Result<&Issued, &CertifyError>, Duration),
    ) {
        let bundle = self.bundle.clone();
        renewal_loop(self, store, &bundle, observe).await;
    }
}

/// Something that obtains a certificate and installs it (the identity client;
/// a stand-in in tests).
pub trait Certifier {
    /// One attempt.
    fn certify(
        &mut self,
        store: &CertStore,
    ) -> impl Future<Output = Result<Issued, CertifyError>> + Send;
}

impl Certifier for IdentityClient {
    fn certify(
        &mut self,
        store: &CertStore,
    ) -> impl Future<Output = Result<Issued, CertifyError>> + Send {
        IdentityClient::certify(self, store)
    }
}

/// The renewal schedule: certify, wait (70 % ± 10 % of the lifetime, or the
/// backoff), and renew early when a new bundle asks certificates installed
/// before some time to be renewed (at a random moment within its spread).
pub async fn renewal_loop<C: Certifier>(
    mut certifier: C,
    store: &CertStore,
    bundle: &TrustBundle,
    mut observe: impl FnMut(Result<&Issued, &CertifyError>, Duration),
) {
    let mut failures = 0u32;
    let mut changes = bundle.subscribe();
    changes.mark_unchanged();
    loop {
        let wait = match certifier.certify(store).await {
            Ok(issued) => {
                failures = 0;
                let wait = renew_after(issued.lifetime, random_unit());
                observe(Ok(&issued), wait);
                wait
            }
            Err(error) => {
                failures = failures.saturating_add(1);
                let remaining = store
                    .not_after()
                    .map(|t| t.duration_since(SystemTime::now()).unwrap_or_default());
                let wait = backoff(failures, remaining);
                observe(Err(&error), wait);
                wait
            }
        };
        let mut deadline = tokio::time::Instant::now() + wait;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                changed = changes.changed() => {
                    if changed.is_err() {
                        tokio::time::sleep_until(deadline).await;
                        break;
                    }
                    let asked = bundle.current().renewal();
                    let installed = store.installed_at();
                    if let (Some(r), Some(at)) = (asked, installed) {
                        if at < r.before {
                            let within = r.spread.mul_f64((random_unit() + 1.0) / 2.0);
                            deadline = deadline.min(tokio::time::Instant::now() + within);
                        }
                    }
                }
            }
        }
    }
}

/// When to renew a certificate valid for `lifetime` from now: at 70 % of it,
/// moved by `jitter` × 10 % (`jitter` in -1..=1).
pub fn renew_after(lifetime: Duration, jitter: f64) -> Duration {
    lifetime.mul_f64(0.7 * (1.0 + 0.1 * jitter.clamp(-1.0, 1.0)))
}

/// Backoff after the `n`-th consecutive failure, capped at 30 s, and at a
/// third of what is left of the current certificate (if any), so several
/// attempts fit before it expires.
pub fn backoff(n: u32, remaining: Option<Duration>) -> Duration {
    let wait =
        Duration::from_millis(500u64.saturating_mul(1u64 << n.min(6))).min(Duration::from_secs(30));
    match remaining {
        Some(left) => wait.min((left / 3).max(Duration::from_millis(100))),
        None => wait,
    }
}

/// A uniform number in -1..=1 (ring's system random; 0 if it fails).
fn random_unit() -> f64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        return 0.0;
    }
    f64::from(u32::from_le_bytes(b)) / f64::from(u32::MAX) * 2.0 - 1.0
}

#[cfg(test)]
mod tests;
