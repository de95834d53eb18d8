//! The trust bundle: the anchors a workload accepts, swapped live when its
//! file changes. Handshakes read the current bundle (a clone of an `Arc`), so
//! a new bundle applies to the next handshake and established connections are
//! not cut.
//!
//! A bundle file is PEM certificates; it may also carry directives as comment
//! lines, which `mesh identity rotate` writes:
//!
//! `# mesh.dev/renew-issued-before: <unix seconds> <spread seconds>` asks
//! every workload whose certificate was installed before that time to renew
//! it, at a random moment within the spread (so a fleet does not renew in one
//! burst).

use super::TlsError;
use rustls::{
    client::WebPkiServerVerifier,
    pki_types::{pem::PemObject, CertificateDer},
    server::{danger::ClientCertVerifier, WebPkiClientVerifier},
    RootCertStore,
};
use std::{
    path::PathBuf,
    sync::{Arc, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};
use x509_parser::prelude::FromDer;

/// More anchors than this in one bundle is a mistake (and a bound on what a
/// bundle can make a workload hold and report).
pub const MAX_ANCHORS: usize = 32;
/// The directive asking for early renewal.
const RENEW_DIRECTIVE: &str = "# mesh.dev/renew-issued-before:";

/// One trust anchor, as reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Anchor {
    /// SHA-256 of the DER certificate, lowercase hex.
    pub fingerprint: String,
    /// The subject, as text.
    pub subject: String,
    /// `notAfter`.
    pub not_after: SystemTime,
}

/// A request to renew certificates installed before `before`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Renewal {
    /// Certificates installed before this time are renewed.
    pub before: SystemTime,
    /// Renewals are spread at random over this long.
    pub spread: Duration,
}

/// A parsed bundle and the verifiers built from it.
pub struct Bundle {
    pem: String,
    roots: Arc<RootCertStore>,
    anchors: Vec<Anchor>,
    renewal: Option<Renewal>,
    client_verifier: Arc<dyn ClientCertVerifier>,
    server_verifier: Arc<WebPkiServerVerifier>,
}

impl std::fmt::Debug for Bundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bundle")
            .field("anchors", &self.anchors)
            .field("renewal", &self.renewal)
            .finish_non_exhaustive()
    }
}

impl Bundle {
    /// Parses PEM anchors (and directives); at least one anchor, at most
    /// [`MAX_ANCHORS`], each a CA certificate that parses.
    pub fn parse(pem: &str) -> Result<Self, TlsError> {
        let bad = |m: String| TlsError::Anchors(m);
        let mut roots = RootCertStore::empty();
        let mut anchors = Vec::new();
        let mut anchors_pem = String::new();
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            let cert = cert.map_err(|e| bad(format!("bad PEM: {e}")))?;
            if anchors.len() == MAX_ANCHORS {
                return Err(bad(format!("more than {MAX_ANCHORS} anchors")));
            }
            let (_, x509) = x509_parser::certificate::X509Certificate::from_der(&cert)
                .map_err(|e| bad(format!("bad certificate: {e}")))?;
            let not_after = UNIX_EPOCH
                + Duration::from_secs(
                    u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0),
                );
            anchors.push(Anchor {
                fingerprint: fingerprint(&cert),
                subject: x509.subject().to_string(),
                not_after,
            });
            anchors_pem.push_str(&to_pem(&cert));
            roots
                .add(cert.clone())
                .map_err(|e| bad(format!("bad certificate: {e}")))?;
        }
        if anchors.is_empty() {
            return Err(bad("no certificate found".into()));
        }
        let renewal = pem.lines().find_map(parse_renewal);
        let roots = Arc::new(roots);
        let provider = super::provider();
        let client_verifier =
            WebPkiClientVerifier::builder_with_provider(roots.clone(), provider.clone())
                .build()
                .map_err(|e| bad(e.to_string()))?;
        let server_verifier = WebPkiServerVerifier::builder_with_provider(roots.clone(), provider)
            .build()
            .map_err(|e| bad(e.to_string()))?;
        Ok(Self {
            pem: anchors_pem,
            roots,
            anchors,
            renewal,
            client_verifier,
            server_verifier,
        })
    }

    /// The anchors as a root store.
    pub fn roots(&self) -> &Arc<RootCertStore> {
        &self.roots
    }

    /// The anchors, in file order.
    pub fn anchors(&self) -> &[Anchor] {
        &self.anchors
    }

    /// A short id of the anchor set (order and directives ignored): equal
    /// bundles have equal ids wherever they are computed.
    pub fn id(&self) -> String {
        let mut fps: Vec<&str> = self
            .anchors
            .iter()
            .map(|a| a.fingerprint.as_str())
            .collect();
        fps.sort_unstable();
        fps.dedup();
        let mut id = fingerprint(fps.join(",").as_bytes());
        id.truncate(16);
        id
    }

    /// The anchors as PEM, in file order (what `/trust-bundle` serves).
    pub fn pem(&self) -> &str {
        &self.pem
    }

    /// The early-renewal request, if the file carries one.
    pub fn renewal(&self) -> Option<Renewal> {
        self.renewal
    }

    /// Verifies a client chain (leaf first) as servers of the mesh do.
    pub(super) fn client_verifier(&self) -> &Arc<dyn ClientCertVerifier> {
        &self.client_verifier
    }

    /// Verifies a server chain and its DNS name (the identity service's).
    pub(super) fn server_verifier(&self) -> &Arc<WebPkiServerVerifier> {
        &self.server_verifier
    }

    /// Checks that `chain` (leaf first) chains to one of the anchors now.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), TlsError> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or_else(|| TlsError::Anchors("empty chain".into()))?;
        self.client_verifier
            .verify_client_cert(leaf, intermediates, rustls::pki_types::UnixTime::now())
            .map(|_| ())
            .map_err(TlsError::Config)
    }
}

/// `# mesh.dev/renew-issued-before: <unix> <spread>` → a [`Renewal`].
fn parse_renewal(line: &str) -> Option<Renewal> {
    let rest = line.trim().strip_prefix(RENEW_DIRECTIVE)?;
    let mut words = rest.split_whitespace();
    let before = words.next()?.parse::<u64>().ok()?;
    let spread = words.next().map_or(Some(0), |w| w.parse::<u64>().ok())?;
    Some(Renewal {
        before: UNIX_EPOCH + Duration::from_secs(before),
        spread: Duration::from_secs(spread.min(24 * 3600)),
    })
}

/// The directive line asking for renewal of certificates installed before
/// `before`, spread over `spread`.
pub fn renewal_directive(before: SystemTime, spread: Duration) -> String {
    let unix = before.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    format!("{RENEW_DIRECTIVE} {unix} {}", spread.as_secs())
}

/// A DER certificate as a PEM block.
pub fn to_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::with_capacity(b64.len() + 64);
    out.push_str("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).unwrap_or_default());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// SHA-256 of a DER certificate, lowercase hex.
pub fn fingerprint(der: &[u8]) -> String {
    use std::fmt::Write;
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// The current bundle, shared by every TLS configuration of the process.
#[derive(Debug)]
pub struct TrustBundle {
    current: RwLock<Arc<Bundle>>,
    changes: tokio::sync::watch::Sender<u64>,
}

impl TrustBundle {
    /// A bundle holding `bundle` until it is replaced.
    pub fn new(bundle: Bundle) -> Arc<Self> {
        Arc::new(Self {
            current: RwLock::new(Arc::new(bundle)),
            changes: tokio::sync::watch::Sender::new(0),
        })
    }

    /// A bundle of one fresh anchor whose key is thrown away: it trusts no
    /// one (for tests).
    pub fn trusting_no_one() -> Arc<Self> {
        let anchor = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .and_then(|key| {
                let mut params = rcgen::CertificateParams::default();
                params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
                params.self_signed(&key)
            })
            .map(|cert| cert.pem())
            .unwrap_or_default();
        Self::from_pem(&anchor).unwrap_or_else(|e| panic!("a fresh anchor: {e}"))
    }

    /// Parses `pem` into a new shared bundle.
    pub fn from_pem(pem: &str) -> Result<Arc<Self>, TlsError> {
        Bundle::parse(pem).map(Self::new)
    }

    /// The bundle in force.
    pub fn current(&self) -> Arc<Bundle> {
        // A poisoned lock still holds a whole `Arc`.
        match self.current.read() {
            Ok(g) => g.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Puts `bundle` in force for every later handshake.
    pub fn replace(&self, bundle: Bundle) {
        let bundle = Arc::new(bundle);
        match self.current.write() {
            Ok(mut g) => *g = bundle,
            Err(poisoned) => *poisoned.into_inner() = bundle,
        }
        self.changes.send_modify(|n| *n += 1);
    }

    /// Changes as they happen.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.changes.subscribe()
    }
}

/// What a bundle-file check found.
#[derive(Debug)]
pub enum Reload {
    /// A new bundle is in force.
    Replaced(Arc<Bundle>),
    /// The file changed but is not a valid bundle: the last good one stays.
    Rejected(String),
}

/// Watches a bundle file (a ConfigMap volume's symlinks are followed) by
/// reading it every `interval`, and replaces `bundle` when its content changes
/// to a valid bundle. `observe` hears of every change, good or not.
pub async fn watch_file(
    bundle: Arc<TrustBundle>,
    path: PathBuf,
    interval: Duration,
    mut observe: impl FnMut(Reload),
) {
    // What the bundle in force was read from, and what the file held last time. The
    // first read that parses to the bundle already in force is taken as its source.
    let mut in_force: Option<Vec<u8>> = None;
    let mut seen: Option<Vec<u8>> = None;
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let read = match tokio::fs::read(&path).await {
            Ok(bytes) => bytes,
            // Gone (a replace by rename in progress) or unreadable: keep what we have,
            // and say so once.
            Err(e) => {
                if seen.take().is_some() {
                    observe(Reload::Rejected(format!("{}: {e}", path.display())));
                }
                continue;
            }
        };
        if seen.as_deref() == Some(read.as_slice()) {
            continue;
        }
        seen = Some(read.clone());
        if in_force.as_deref() == Some(read.as_slice()) {
            continue; // back to what is in force
        }
        let outcome = std::str::from_utf8(&read)
            .map_err(|e| format!("not UTF-8: {e}"))
            .and_then(|pem| Bundle::parse(pem).map_err(|e| e.to_string()));
        match outcome {
            Ok(b) => {
                let current = bundle.current();
                let same = b.id() == current.id() && b.renewal() == current.renewal();
                in_force = Some(read);
                if !same {
                    bundle.replace(b);
                    observe(Reload::Replaced(bundle.current()));
                }
            }
            Err(e) => observe(Reload::Rejected(e)),
        }
    }
}

#[cfg(test)]
mod tests;
