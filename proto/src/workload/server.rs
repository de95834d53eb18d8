//! The server side of mutual TLS: our certificate, and a client certificate
//! that chains to the trust anchors is mandatory (the caller's SPIFFE ID is
//! then read from it).

use super::{CertStore, TlsError};
use rustls::{server::WebPkiClientVerifier, RootCertStore, ServerConfig};
use std::sync::Arc;

/// Builds the inbound TLS configuration (TLS 1.3, client auth required).
pub fn server_config(
    certs: Arc<CertStore>,
    roots: Arc<RootCertStore>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = super::provider();
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .build()
        .map_err(|e| TlsError::Anchors(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(certs);
    // Peers speak the transport header or HTTP/2 straight away: no ALPN.
    config.max_early_data_size = 0;
    // No session resumption (peers keep their connections): no tickets to
    // mint, no session cache to hold.
    config.send_tls13_tickets = 0;
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    Ok(Arc::new(config))
}
