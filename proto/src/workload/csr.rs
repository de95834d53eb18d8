//! The workload's private key (ECDSA P-256, never leaves memory) and the
//! CSR that asks for its SPIFFE ID.

use rcgen::{CertificateParams, DistinguishedName, KeyPair, SanType, PKCS_ECDSA_P256_SHA256};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::{CertifiedKey, SigningKey},
};
use std::sync::Arc;

/// The in-memory key and the CSR made with it.
pub struct LocalKey {
    csr_der: Vec<u8>,
    public_key: Vec<u8>,
    signing_key: Arc<dyn SigningKey>,
}

impl std::fmt::Debug for LocalKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalKey").finish_non_exhaustive()
    }
}

impl LocalKey {
    /// Generates a key and a CSR carrying `identity` as its URI SAN.
    pub fn generate(identity: &str) -> Result<Self, String> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)
            .map_err(|e| format!("generating key: {e}"))?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity
            .to_string()
            .try_into()
            .map_err(|e| format!("identity {identity} is not a valid URI SAN: {e}"))?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        let csr = params
            .serialize_request(&key)
            .map_err(|e| format!("making CSR: {e}"))?;
        let pkcs8 = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let signing_key = rustls::crypto::ring::sign::any_ecdsa_type(&pkcs8)
            .map_err(|e| format!("loading key: {e}"))?;
        Ok(LocalKey {
            csr_der: csr.der().to_vec(),
            public_key: key.public_key_raw().to_vec(),
            signing_key,
        })
    }

    /// The DER CSR.
    pub fn csr(&self) -> &[u8] {
        &self.csr_der
    }

    /// Whether the DER certificate `leaf` is for this key.
    pub fn matches(&self, leaf: &[u8]) -> bool {
        use x509_parser::prelude::FromDer;
        x509_parser::certificate::X509Certificate::from_der(leaf).is_ok_and(|(_, cert)| {
            cert.public_key().subject_public_key.data.as_ref() == self.public_key.as_slice()
        })
    }

    /// Pairs the key with an issued chain (leaf first).
    pub fn certified(&self, chain: Vec<Vec<u8>>) -> Arc<CertifiedKey> {
        let chain = chain.into_iter().map(CertificateDer::from).collect();
        Arc::new(CertifiedKey::new(chain, self.signing_key.clone()))
    }
}
