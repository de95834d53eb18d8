//! The server side of mutual TLS: our certificate, and a client certificate
//! that chains to the bundle in force is mandatory (the caller's SPIFFE ID is
//! then read from it).

use super::{CertStore, TlsError, TrustBundle};
use rustls::{
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, UnixTime},
    server::danger::{ClientCertVerified, ClientCertVerifier},
    DistinguishedName, ServerConfig,
};
use std::sync::Arc;

/// Builds the inbound TLS configuration (TLS 1.3, client auth required).
pub fn server_config(
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
) -> Result<Arc<ServerConfig>, TlsError> {
    build(certs, bundle, true)
}

/// As [`server_config`], but a client may come without a certificate (one it
/// presents must still chain to the bundle): the service then refuses it
/// with a message of its own rather than a failed handshake.
pub fn server_config_optional_client(
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
) -> Result<Arc<ServerConfig>, TlsError> {
    build(certs, bundle, false)
}

fn build(
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
    mandatory: bool,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = super::provider();
    let verifier = Arc::new(LiveClientVerifier {
        bundle,
        mandatory,
        algs: provider.signature_verification_algorithms,
    });
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

/// Delegates to the webpki client verifier of the bundle in force, so a
/// reloaded bundle applies to the next handshake.
#[derive(Debug)]
struct LiveClientVerifier {
    bundle: Arc<TrustBundle>,
    mandatory: bool,
    algs: WebPkiSupportedAlgorithms,
}

impl ClientCertVerifier for LiveClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    // No CA names hinted: mesh clients hold one certificate, and the hints
    // would have to outlive a bundle swap.
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundle
            .current()
            .client_verifier()
            .verify_client_cert(end_entity, intermediates, now)
    }

    super::signature_checks!();
}
