//! The workload's current certificate (swapped on renewal, read by every
//! handshake), when it was installed and when it expires.

use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    sign::CertifiedKey,
};
use std::{
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use x509_parser::prelude::FromDer;

/// A TLS setup error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust anchors: {0}")]
    Anchors(String),
    #[error("tls config: {0}")]
    Config(#[from] rustls::Error),
}

/// A certified key from PEM: a chain (leaf first) and its private key (for
/// tests and tools that hold a certificate on disk).
pub fn certified_key(chain_pem: &str, key_pem: &str) -> Result<Arc<CertifiedKey>, TlsError> {
    use rustls::pki_types::PrivateKeyDer;
    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Anchors(format!("bad certificate PEM: {e}")))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| TlsError::Anchors(format!("bad key PEM: {e}")))?;
    let key = rustls::crypto::ring::sign::any_supported_type(&key)?;
    Ok(Arc::new(CertifiedKey::new(chain, key)))
}

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The workload's current certificate and key, swapped on renewal.
///
/// Handshakes read it through the rustls resolvers below; renewals replace
/// it without touching established connections.
#[derive(Debug)]
pub struct CertStore {
    current: RwLock<Option<Installed>>,
    /// `true` once a certificate is installed.
    ready: tokio::sync::watch::Sender<bool>,
}

impl Default for CertStore {
    fn default() -> Self {
        CertStore {
            current: RwLock::new(None),
            ready: tokio::sync::watch::Sender::new(false),
        }
    }
}

/// The installed certificate and what is known of it.
#[derive(Clone, Debug)]
struct Installed {
    key: Arc<CertifiedKey>,
    at: SystemTime,
    not_after: Option<SystemTime>,
}

impl CertStore {
    fn snapshot(&self) -> Option<Installed> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// The current certificate, if one was issued yet.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.snapshot().map(|i| i.key)
    }

    /// When the current certificate was installed.
    pub fn installed_at(&self) -> Option<SystemTime> {
        self.snapshot().map(|i| i.at)
    }

    /// When the current certificate expires (`None` before the first, or if
    /// its leaf does not parse).
    pub fn not_after(&self) -> Option<SystemTime> {
        self.snapshot().and_then(|i| i.not_after)
    }

    /// Whether there is a certificate and it has not expired at `now`.
    pub fn valid_at(&self, now: SystemTime) -> bool {
        self.snapshot()
            .is_some_and(|i| i.not_after.is_none_or(|t| now < t))
    }

    /// Installs a newly issued certificate.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        let not_after = key.cert.first().and_then(|leaf| {
            let (_, x509) = x509_parser::certificate::X509Certificate::from_der(leaf).ok()?;
            let secs = u64::try_from(x509.validity().not_after.timestamp()).ok()?;
            Some(UNIX_EPOCH + Duration::from_secs(secs))
        });
        let installed = Installed {
            key,
            at: SystemTime::now(),
            not_after,
        };
        match self.current.write() {
            Ok(mut g) => *g = Some(installed),
            Err(poisoned) => *poisoned.into_inner() = Some(installed),
        }
        self.ready.send_replace(true);
    }

    /// Completes once a certificate is installed.
    pub async fn installed(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

impl rustls::server::ResolvesServerCert for CertStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.current()
    }
}

impl rustls::client::ResolvesClientCert for CertStore {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.current()
    }

    fn has_certs(&self) -> bool {
        true
    }
}
