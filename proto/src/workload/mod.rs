//! A workload's identity (feature `workload`): a key generated in memory and
//! its CSR, `Certify` calls to the identity service with renewal, the current
//! certificate for rustls, and mutual-TLS configurations that check SPIFFE
//! IDs rather than DNS names. The proxy and the controller (itself a
//! workload of the mesh) share it.

/// The handshake-signature methods of a rustls certificate verifier, checked with
/// the verifier's `algs` field (the ring provider's algorithms).
macro_rules! signature_checks {
    () => {
        fn verify_tls12_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algs)
        }

        fn verify_tls13_signature(
            &self,
            message: &[u8],
            cert: &rustls::pki_types::CertificateDer<'_>,
            dss: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algs)
        }

        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            self.algs.supported_schemes()
        }
    };
}
use signature_checks;

mod bundle;
mod certify;
mod certs;
mod channel;
mod client;
mod csr;
mod server;
pub mod spiffe;

pub use bundle::{
    fingerprint, renewal_directive, to_pem, watch_file, Anchor, Bundle, Reload, Renewal,
    TrustBundle, MAX_ANCHORS,
};
pub use certify::{
    backoff, renew_after, renewal_loop, Certifier, CertifyError, IdentityClient, Issued,
    TokenSource,
};
pub use certs::{certified_key, provider, CertStore, TlsError};
pub use channel::{mtls_channel, mtls_channel_any_workload};
pub use client::{client_config, client_config_any_workload, server_auth_config, server_name};
pub use csr::LocalKey;
pub use server::{server_config, server_config_optional_client};
