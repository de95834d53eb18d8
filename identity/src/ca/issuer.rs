//! The loaded issuer: an intermediate CA checked against the trust anchors at
//! load time, which signs workload CSRs and the identity service's own
//! serving certificate.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, ExtendedKeyUsagePurpose,
    IsCa, KeyPair, KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, CertificateSigningRequestDer};
use x509_parser::certificate::X509Certificate;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION, OID_SIG_ED25519,
};
use x509_parser::prelude::FromDer;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{parse_certs_pem, random_serial, CaError, SignError, CLOCK_SKEW};

/// A signed workload certificate, as returned by `Certify`.
#[derive(Debug, Clone)]
pub struct SignedLeaf {
    /// The DER-encoded leaf.
    pub leaf_der: Vec<u8>,
    /// DER-encoded intermediates, leaf-most first (the issuer).
    pub intermediates_der: Vec<Vec<u8>>,
    /// The leaf's `notAfter`.
    pub valid_until: SystemTime,
}

/// An intermediate CA that chains to one of the trust anchors.
pub struct Issuer {
    signer: rcgen::Issuer<'static, KeyPair>,
    cert_der: CertificateDer<'static>,
    cert_pem: String,
    anchors_pem: String,
    anchors: Vec<mesh_proto::workload::Anchor>,
    bundle_id: String,
    not_after: SystemTime,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

fn parse_x509<'a>(what: &'static str, der: &'a [u8]) -> Result<X509Certificate<'a>, CaError> {
    X509Certificate::from_der(der)
        .map(|(_, cert)| cert)
        .map_err(|e| CaError::Parse {
            what,
            reason: e.to_string(),
        })
}

fn is_ca(cert: &X509Certificate<'_>) -> bool {
    let ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    let can_sign = match cert.key_usage() {
        Ok(Some(ku)) => ku.value.key_cert_sign(),
        Ok(None) => true,
        Err(_) => false,
    };
    ca && can_sign
}

fn check_valid_now(what: &'static str, cert: &X509Certificate<'_>) -> Result<(), CaError> {
    if cert.validity().is_valid() {
        return Ok(());
    }
    Err(CaError::NotValidNow {
        what,
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
    })
}

fn to_system_time(unix_secs: i64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(u64::try_from(unix_secs).unwrap_or(0))
}

/// Names a public key type for error messages, or `None` when it is P-256.
fn non_p256_key(spki: &SubjectPublicKeyInfo<'_>) -> Option<String> {
    let alg = &spki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 => None,
            Some(c) => Some(format!("ECDSA on curve {c}")),
            None => Some("ECDSA without a named curve".to_string()),
        };
    }
    Some(if *alg == OID_SIG_ED25519 {
        "Ed25519".to_string()
    } else if *alg == OID_PKCS1_RSAENCRYPTION {
        "RSA".to_string()
    } else {
        format!("key algorithm {alg}")
    })
}

impl Issuer {
    /// Loads an issuer from its certificate, key and the trust anchors (PEM).
    ///
    /// Refuses an issuer that is not a CA, is outside its validity window,
    /// whose key does not match, or that is not directly signed by one of the
    /// anchors (name and signature checked).
    pub fn load(cert_pem: &str, key_pem: &str, anchors_pem: &str) -> Result<Self, CaError> {
        let anchors = parse_certs_pem("trust anchors", anchors_pem)?;
        // The bundle as workloads read it (its id and anchors are reported).
        let bundle =
            mesh_proto::workload::Bundle::parse(anchors_pem).map_err(|e| CaError::Pem {
                what: "trust anchors",
                reason: e.to_string(),
            })?;
        let cert_der = parse_certs_pem("issuer certificate", cert_pem)?.remove(0);
        let key = KeyPair::from_pem(key_pem).map_err(|e| CaError::Pem {
            what: "issuer key",
            reason: e.to_string(),
        })?;

        let cert = parse_x509("issuer certificate", &cert_der)?;
        if !is_ca(&cert) {
            return Err(CaError::NotCa("issuer certificate"));
        }
        check_valid_now("issuer certificate", &cert)?;
        if key.public_key_raw() != cert.public_key().subject_public_key.data.as_ref() {
            return Err(CaError::KeyMismatch);
        }

        let mut signed_by_anchor = None;
        let mut names = Vec::with_capacity(anchors.len());
        for der in &anchors {
            let anchor = parse_x509("trust anchor", der)?;
            names.push(format!(
                "{} (sha256 {})",
                anchor.subject(),
                mesh_proto::workload::fingerprint(der)
            ));
            if anchor.subject().as_raw() == cert.issuer().as_raw()
                && cert.verify_signature(Some(anchor.public_key())).is_ok()
            {
                signed_by_anchor = Some(anchor);
                break;
            }
        }
        let Some(anchor) = signed_by_anchor else {
            return Err(CaError::Untrusted {
                subject: cert.subject().to_string(),
                fingerprint: mesh_proto::workload::fingerprint(&cert_der),
                issuer: cert.issuer().to_string(),
                anchors: names.join(", "),
            });
        };
        if !is_ca(&anchor) {
            return Err(CaError::NotCa("trust anchor"));
        }
        check_valid_now("trust anchor", &anchor)?;

        let not_after = to_system_time(cert.validity().not_after.timestamp());
        let signer = rcgen::Issuer::from_ca_cert_der(&cert_der, key)?;
        let cert_pem = cert_pem.trim().to_string() + "\n";
        let anchors_pem = anchors_pem.trim().to_string() + "\n";
        Ok(Self {
            signer,
            cert_der,
            cert_pem,
            anchors_pem,
            anchors: bundle.anchors().to_vec(),
            bundle_id: bundle.id(),
            not_after,
        })
    }

    /// The trust anchors (PEM) that verify this issuer's certificates.
    pub fn trust_anchors_pem(&self) -> &str {
        &self.anchors_pem
    }

    /// The anchors of the bundle this issuer was checked against.
    pub fn anchors(&self) -> &[mesh_proto::workload::Anchor] {
        &self.anchors
    }

    /// The id of that bundle (as workloads compute it).
    pub fn bundle_id(&self) -> &str {
        &self.bundle_id
    }

    /// The issuer certificate, DER.
    pub fn issuer_cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// The issuer certificate, PEM.
    pub fn issuer_cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// When the issuer certificate expires; no leaf outlives it.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    /// Signs a workload CSR for `expected_identity`, valid for `lifetime`
    /// (capped at the issuer's own expiry).
    ///
    /// The CSR's signature must verify, its key must be ECDSA P-256 and its
    /// only URI SAN must be `expected_identity`; other requested attributes
    /// (subject, DNS SANs, extensions) are ignored.
    pub fn sign_csr(
        &self,
        csr_der: &[u8],
        expected_identity: &str,
        lifetime: Duration,
    ) -> Result<SignedLeaf, SignError> {
        let csr =
            CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(csr_der))
                .map_err(|e| SignError::BadCsr(e.to_string()))?;
        let (_, parsed) = X509CertificationRequest::from_der(csr_der)
            .map_err(|e| SignError::BadCsr(e.to_string()))?;
        if let Some(kind) = non_p256_key(&parsed.certification_request_info.subject_pki) {
            return Err(SignError::KeyType(kind));
        }

        let uris: Vec<String> = csr
            .params
            .subject_alt_names
            .iter()
            .filter_map(|san| match san {
                SanType::URI(uri) => Some(uri.as_str().to_string()),
                _ => None,
            })
            .collect();
        if uris.len() != 1 || uris[0] != expected_identity {
            return Err(SignError::SanMismatch {
                expected: expected_identity.to_string(),
                found: uris,
            });
        }

        let (params, valid_until) = self.leaf_params(expected_identity, lifetime)?;
        let cert = params.signed_by(&csr.public_key, &self.signer)?;
        Ok(SignedLeaf {
            leaf_der: cert.der().to_vec(),
            intermediates_der: vec![self.cert_der.to_vec()],
            valid_until,
        })
    }

    /// Issues a serving certificate with a fresh P-256 key for the given DNS
    /// names, IPs and SPIFFE ID. Returns `(chain PEM = leaf + issuer, key PEM)`.
    pub fn issue_serving_cert(
        &self,
        dns_names: &[String],
        ips: &[IpAddr],
        spiffe_id: &str,
        lifetime: Duration,
    ) -> Result<(String, String), SignError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let (mut params, _) = self.leaf_params(spiffe_id, lifetime)?;
        for name in dns_names {
            let ia5 = name
                .as_str()
                .try_into()
                .map_err(|_| SignError::BadName(name.clone()))?;
            params.subject_alt_names.push(SanType::DnsName(ia5));
        }
        params
            .subject_alt_names
            .extend(ips.iter().map(|ip| SanType::IpAddress(*ip)));
        let cert = params.signed_by(&key, &self.signer)?;
        let chain = format!("{}{}", cert.pem(), self.cert_pem);
        Ok((chain, key.serialize_pem()))
    }

    /// Leaf parameters: URI SAN, not a CA, TLS client+server usages.
    fn leaf_params(
        &self,
        identity: &str,
        lifetime: Duration,
    ) -> Result<(CertificateParams, SystemTime), SignError> {
        let uri = identity
            .try_into()
            .map_err(|_| SignError::BadName(identity.to_string()))?;
        let now = SystemTime::now();
        let not_after = (now + lifetime).min(self.not_after);
        // Certificates carry whole seconds: report exactly what is encoded.
        let secs = not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let valid_until = UNIX_EPOCH + Duration::from_secs(secs);

        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.not_before = (now - CLOCK_SKEW).into();
        params.not_after = valid_until.into();
        params.serial_number = Some(random_serial().map_err(|_| SignError::Random)?);
        Ok((params, valid_until))
    }
}
