//! Mutual TLS between proxies: the workload's current certificate, the trust
//! anchors, and the rustls configurations of the inbound (server) and
//! outbound (client) sides. Identities are SPIFFE IDs in URI SANs.

mod client;
mod server;
pub mod spiffe;

pub use client::{client_config, server_name};
pub use server::server_config;

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

/// The process-wide crypto provider (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The workload's current certificate and key, swapped on renewal.
///
/// Handshakes read it through the rustls resolvers below; renewals replace
/// it without touching established connections.
#[derive(Default, Debug)]
pub struct CertStore {
    current: RwLock<Option<Arc<CertifiedKey>>>,
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
