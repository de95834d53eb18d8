//! TLS for the `Certify` server. The serving certificate is issued from the current
//! issuer and issued again when the issuer is swapped (a reload) or the certificate
//! passes 70 % of its lifetime, so a rotated issuer never leaves the server presenting a
//! certificate that dies with the old one.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use tracing::{info, warn};

use super::serve::serving_dns_names;
use crate::ca::{Issuer, SharedIssuer};
use crate::spiffe;

/// Longest lifetime of the serving certificate (it is also capped by the issuer).
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// A serving certificate and the issuer that signed it.
#[derive(Debug)]
struct Cached {
    issuer: Arc<Issuer>,
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
}

/// Resolves the serving certificate, re-issuing it when the issuer changes.
#[derive(Debug)]
pub(super) struct ServingCerts {
    issuer: SharedIssuer,
    trust_domain: String,
    cache: Mutex<Option<Cached>>,
}

// === impl ServingCerts ===

impl ServingCerts {
    /// Issues the first certificate now, so a problem stops startup.
    pub(super) fn new(issuer: SharedIssuer, trust_domain: &str) -> Result<Self, String> {
        let certs = Self {
            issuer,
            trust_domain: trust_domain.to_string(),
            cache: Mutex::new(None),
        };
        certs.current()?;
        Ok(certs)
    }

    /// The certificate for the current issuer, issued if needed.
    fn current(&self) -> Result<Arc<CertifiedKey>, String> {
        let issuer = self.issuer.current();
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref() {
            if Arc::ptr_eq(&c.issuer, &issuer) && SystemTime::now() < c.renew_at {
                return Ok(Arc::clone(&c.key));
            }
        }
        let (key, renew_at) = issue(&issuer, &self.trust_domain)?;
        let issuer_not_after_unix = issuer
            .not_after()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        info!(issuer_not_after_unix, "issued the serving certificate");
        *cache = Some(Cached {
            issuer,
            key: Arc::clone(&key),
            renew_at,
        });
        Ok(key)
    }
}

impl ResolvesServerCert for ServingCerts {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match self.current() {
            Ok(key) => Some(key),
            Err(error) => {
                warn!(%error, "cannot issue the serving certificate; refusing the handshake");
                None
            }
        }
    }
}

/// Issues a serving certificate; returns it with the time to renew it.
fn issue(issuer: &Issuer, td: &str) -> Result<(Arc<CertifiedKey>, SystemTime), String> {
    let now = SystemTime::now();
    let lifetime = issuer
        .not_after()
        .duration_since(now)
        .unwrap_or_default()
        .min(SERVING_CERT_LIFETIME);
    let (chain, key) = issuer
        .issue_serving_cert(
            &serving_dns_names(td),
            &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
            &spiffe::spiffe_id(td, "mesh-system", "mesh-identity"),
            lifetime,
        )
        .map_err(|e| format!("issuing the serving certificate: {e}"))?;
    let certs: Vec<CertificateDer<'static>> = rustls_pemfile::certs(&mut chain.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| format!("serving certificate: {e}"))?;
    let key: PrivateKeyDer<'static> = rustls_pemfile::private_key(&mut key.as_bytes())
        .map_err(|e| format!("serving key: {e}"))?
        .ok_or("serving key: no private key block")?;
    let signer = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("serving key: {e}"))?;
    Ok((
        Arc::new(CertifiedKey::new(certs, signer)),
        now + lifetime.mul_f64(0.7),
    ))
}

/// The rustls server configuration: HTTP/2 only, certificates from `certs`.
pub(super) fn server_config(certs: ServingCerts) -> Result<Arc<ServerConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS configuration: {e}"))?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(certs));
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::{generate_issuer, generate_trust_anchor};

    fn issuer() -> Issuer {
        let (anchor, anchor_key) = generate_trust_anchor("cluster.local").unwrap();
        let (cert, key) = generate_issuer(&anchor, &anchor_key, "cluster.local").unwrap();
        Issuer::load(&cert, &key, &anchor).unwrap()
    }

    #[test]
    fn reissued_only_when_the_issuer_changes() {
        let shared = SharedIssuer::from(issuer());
        let certs = ServingCerts::new(shared.clone(), "cluster.local").unwrap();
        let first = certs.current().unwrap();
        assert!(Arc::ptr_eq(&first, &certs.current().unwrap()));
        let old = shared.current();
        shared.replace(Arc::new(issuer()));
        let second = certs.current().unwrap();
        assert!(!Arc::ptr_eq(&first, &second));
        // The chain ends with the new issuer.
        assert_eq!(second.cert.len(), 2);
        assert_eq!(
            second.cert[1].as_ref(),
            shared.current().issuer_cert_der(),
            "chain carries the new issuer"
        );
        assert_ne!(second.cert[1].as_ref(), old.issuer_cert_der());
    }
}
