//! The certificate authority: creates the trust anchor and issuer (used by
//! `mesh identity init`) and, through [`Issuer`], signs workload CSRs into
//! ECDSA P-256 SPIFFE leaves (DESIGN §2, §5).

mod issuer;
mod shared;
#[cfg(test)]
mod tests;

pub use issuer::{Issuer, SignedLeaf};
pub use shared::SharedIssuer;

use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    SerialNumber, PKCS_ECDSA_P256_SHA256,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls::pki_types::CertificateDer;
use thiserror::Error;

/// Lifetime of a trust anchor made by [`generate_trust_anchor`].
pub const ANCHOR_LIFETIME: Duration = Duration::from_secs(10 * 365 * 86_400);
/// Lifetime of an issuer made by [`generate_issuer`].
pub const ISSUER_LIFETIME: Duration = Duration::from_secs(365 * 86_400);
/// Backdating of `not_before`, to tolerate clocks that are slightly behind.
pub const CLOCK_SKEW: Duration = Duration::from_secs(10);

/// Errors creating or loading CA material.
#[derive(Debug, Error)]
pub enum CaError {
    /// PEM text holds no usable certificate or key.
    #[error("{what}: {reason}")]
    Pem {
        /// What was being read, e.g. "issuer certificate".
        what: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A certificate could not be parsed as X.509.
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    Parse {
        /// What was being parsed.
        what: &'static str,
        /// The parser's message.
        reason: String,
    },
    /// The certificate is not a CA (no basicConstraints cA=TRUE, or no keyCertSign).
    #[error("{0} is not a CA certificate (basicConstraints cA=TRUE and keyCertSign required)")]
    NotCa(&'static str),
    /// The certificate is outside its validity window.
    #[error("{what} is not valid now (valid from {not_before} until {not_after})")]
    NotValidNow {
        /// Which certificate.
        what: &'static str,
        /// Start of validity.
        not_before: String,
        /// End of validity.
        not_after: String,
    },
    /// The issuer does not chain to any trust anchor.
    #[error("issuer certificate {subject} (sha256 {fingerprint}, issued by {issuer}) is not signed by any trust anchor of the bundle: {anchors}")]
    Untrusted {
        /// The issuer's subject.
        subject: String,
        /// The issuer certificate's SHA-256.
        fingerprint: String,
        /// The issuer's issuer name.
        issuer: String,
        /// The anchors tried, each as `subject (sha256 …)`.
        anchors: String,
    },
    /// The private key does not belong to the certificate.
    #[error("issuer key does not match the issuer certificate's public key")]
    KeyMismatch,
    /// rcgen failed to build or sign a certificate.
    #[error("certificate generation failed: {0}")]
    Generate(rcgen::Error),
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

/// Why a CSR was not signed.
#[derive(Debug, Error)]
pub enum SignError {
    /// The CSR cannot be parsed, its signature is wrong, or it has unsupported extensions.
    #[error("CSR is invalid: {0}")]
    BadCsr(String),
    /// The CSR's key is not ECDSA P-256.
    #[error("CSR key must be ECDSA P-256, got {0}")]
    KeyType(String),
    /// The CSR's URI SANs are not exactly the expected identity.
    #[error("CSR SAN mismatch: expected exactly one URI SAN {expected}, found {found:?}")]
    SanMismatch {
        /// The identity the caller proved.
        expected: String,
        /// The URI SANs in the CSR.
        found: Vec<String>,
    },
    /// A name given to [`Issuer::issue_serving_cert`] is invalid.
    #[error("invalid name {0:?}")]
    BadName(String),
    /// Signing itself failed.
    #[error("signing failed: {0}")]
    Sign(rcgen::Error),
    /// The system random generator failed.
    #[error("system random generator failed")]
    Random,
}

// Messages carry the cause, so it is not also exposed as a `source`
// (which would print it twice in `{:#}` chains).
impl From<rcgen::Error> for CaError {
    fn from(e: rcgen::Error) -> Self {
        Self::Generate(e)
    }
}

impl From<rcgen::Error> for SignError {
    fn from(e: rcgen::Error) -> Self {
        Self::Sign(e)
    }
}

/// Generates a self-signed root CA (ECDSA P-256, 10 years, CN `root.<td>`).
///
/// Returns `(certificate PEM, private key PEM)`.
pub fn generate_trust_anchor(trust_domain: &str) -> Result<(String, String), CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = ca_params(
        &format!("root.{trust_domain}"),
        BasicConstraints::Unconstrained,
        ANCHOR_LIFETIME,
    )?;
    params.use_authority_key_identifier_extension = false;
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// Generates an intermediate CA signed by the anchor (ECDSA P-256, 1 year,
/// CN `identity.mesh-system.<td>`, path length 0).
///
/// Returns `(certificate PEM, private key PEM)`.
pub fn generate_issuer(
    anchor_cert_pem: &str,
    anchor_key_pem: &str,
    trust_domain: &str,
) -> Result<(String, String), CaError> {
    let anchor_key = KeyPair::from_pem(anchor_key_pem).map_err(|e| CaError::Pem {
        what: "trust anchor key",
        reason: e.to_string(),
    })?;
    let anchor = rcgen::Issuer::from_ca_cert_pem(anchor_cert_pem, anchor_key)?;
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let params = ca_params(
        &format!("identity.mesh-system.{trust_domain}"),
        BasicConstraints::Constrained(0),
        ISSUER_LIFETIME,
    )?;
    let cert = params.signed_by(&key, &anchor)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn ca_params(
    common_name: &str,
    constraints: BasicConstraints,
    lifetime: Duration,
) -> Result<CertificateParams, CaError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(constraints);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + lifetime).into();
    params.serial_number = Some(random_serial().map_err(|_| CaError::Random)?);
    Ok(params)
}

/// A random positive 128-bit serial number.
fn random_serial() -> Result<SerialNumber, ring::error::Unspecified> {
    let mut bytes = [0u8; 16];
    SystemRandom::new().fill(&mut bytes)?;
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01; // keep it 16 bytes long and positive
    Ok(SerialNumber::from_slice(&bytes))
}

/// Parses every `CERTIFICATE` block of `pem` into DER.
/// Whether the first certificate of `cert_pem` names the first of `anchor_pem` as its
/// issuer and carries its signature.
pub fn is_signed_by(cert_pem: &str, anchor_pem: &str) -> bool {
    use x509_parser::prelude::FromDer;
    let (Ok(cert), Ok(anchor)) = (
        parse_certs_pem("certificate", cert_pem),
        parse_certs_pem("anchor", anchor_pem),
    ) else {
        return false;
    };
    let (Ok((_, cert)), Ok((_, anchor))) = (
        x509_parser::certificate::X509Certificate::from_der(&cert[0]),
        x509_parser::certificate::X509Certificate::from_der(&anchor[0]),
    ) else {
        return false;
    };
    anchor.subject().as_raw() == cert.issuer().as_raw()
        && cert.verify_signature(Some(anchor.public_key())).is_ok()
}

fn parse_certs_pem(what: &'static str, pem: &str) -> Result<Vec<CertificateDer<'static>>, CaError> {
    let certs = rustls_pemfile::certs(&mut pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| CaError::Pem {
            what,
            reason: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CaError::Pem {
            what,
            reason: "no CERTIFICATE block found".to_string(),
        });
    }
    Ok(certs)
}

/// Checks that `pem` holds at least one certificate; returns how many.
pub fn parse_trust_anchors(pem: &str) -> Result<usize, CaError> {
    Ok(parse_certs_pem("trust anchors", pem)?.len())
}
