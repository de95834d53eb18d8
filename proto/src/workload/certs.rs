//! The workload's current certificate (swapped on renewal, read by every
//! handshake) and the trust anchors.

use rustls::{
    pki_types::{pem::PemObject, CertificateDer},
    sign::CertifiedKey,
    RootCertStore,
};
use std::sync::{Arc, RwLock};

/// A TLS setup error.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("trust anchors: {0}")]
    Anchors(String),
    #[error("tls config: {0}")]
    Config(#[from] rustls::Error),
}

/// Parses PEM trust anchors into a root store; at least one is required.
pub fn trust_roots(pem: &str) -> Result<Arc<RootCertStore>, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Anchors(format!("bad PEM: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| TlsError::Anchors(format!("bad certificate: {e}")))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Anchors("no certificate found".into()));
    }
    Ok(Arc::new(roots))
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
    current: RwLock<Option<Arc<CertifiedKey>>>,
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

impl CertStore {
    /// The current certificate, if one was issued yet.
    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Installs a newly issued certificate.
    pub fn set(&self, key: Arc<CertifiedKey>) {
        match self.current.write() {
            Ok(mut g) => *g = Some(key),
            Err(poisoned) => *poisoned.into_inner() = Some(key),
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
