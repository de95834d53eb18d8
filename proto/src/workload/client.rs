//! The client side of mutual TLS: the peer's certificate must chain to the
//! trust anchors and carry exactly the SPIFFE ID expected (the one discovery
//! announced, or the controller's).

use super::{spiffe::spiffe_id, CertStore, TlsError, TrustBundle};
use crate::workload::certs::provider;
use rustls::{
    client::danger::{ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
    server::ParsedCertificate,
    ClientConfig,
};
use std::sync::Arc;

/// Builds a client configuration that accepts only `expected_identity`,
/// chained to the bundle in force at each handshake.
pub fn client_config(
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
    expected_identity: &str,
) -> Result<Arc<ClientConfig>, TlsError> {
    build(certs, bundle, Some(expected_identity.to_string()))
}

/// As [`client_config`], for a client that talks to any workload of the
/// mesh (tap): the peer must chain to the bundle and carry a SPIFFE ID.
pub fn client_config_any_workload(
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
) -> Result<Arc<ClientConfig>, TlsError> {
    build(certs, bundle, None)
}

fn build(
    certs: Arc<CertStore>,
    bundle: Arc<TrustBundle>,
    expected: Option<String>,
) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(SpiffeVerifier {
        bundle,
        expected,
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_client_cert_resolver(certs);
    // Connections between proxies are long-lived and pooled: resumption
    // state would only take memory.
    config.resumption = rustls::client::Resumption::disabled();
    Ok(Arc::new(config))
}

/// The SNI name sent to peers. Verification ignores it (identities are
/// URI SANs); it only has to be a valid DNS name.
pub fn server_name() -> Result<ServerName<'static>, rustls::pki_types::InvalidDnsNameError> {
    ServerName::try_from("proxy.mesh.local")
}

/// A client configuration for the identity service: no client certificate
/// (the workload has none yet), the server's DNS name checked against a chain
/// to the bundle in force at each handshake.
pub fn server_auth_config(bundle: Arc<TrustBundle>) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = provider();
    let verifier = Arc::new(DnsVerifier {
        bundle,
        algs: provider.signature_verification_algorithms,
    });
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Delegates to the webpki verifier of the bundle in force.
#[derive(Debug)]
struct DnsVerifier {
    bundle: Arc<TrustBundle>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for DnsVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.bundle.current().server_verifier().verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )
    }

    super::signature_checks!();
}

#[derive(Debug)]
struct SpiffeVerifier {
    bundle: Arc<TrustBundle>,
    /// `None`: any SPIFFE ID.
    expected: Option<String>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for SpiffeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            self.bundle.current().roots(),
            intermediates,
            now,
            self.algs.all,
        )?;
        let id = spiffe_id(end_entity).map_err(rustls::Error::General)?;
        if let Some(expected) = self.expected.as_ref().filter(|e| **e != id) {
            return Err(rustls::Error::General(format!(
                "peer identity {id} is not the expected {expected}"
            )));
        }
        Ok(ServerCertVerified::assertion())
    }

    super::signature_checks!();
}
