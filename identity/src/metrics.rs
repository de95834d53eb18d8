//! The identity service's Prometheus metrics (`GET /metrics` on the admin port, names in
//! `docs/metrics.md`): certificates issued, `Certify` errors by gRPC code, issuer
//! reloads by result, the current issuer's expiry (read at scrape time), and whether
//! this replica is the leader (Kubernetes source).

use std::time::{SystemTime, UNIX_EPOCH};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::{counter::Counter, family::Family, gauge::Gauge};
use prometheus_client::registry::Registry;
use tonic::Code;

/// Labels of a `Certify` error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CodeLabels {
    /// The gRPC code, e.g. `UNAUTHENTICATED`.
    code: &'static str,
}

/// Labels of a trust anchor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AnchorLabels {
    /// SHA-256 of the anchor, hex.
    fingerprint: String,
}

/// Labels of the trust bundle.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct BundleLabels {
    /// The bundle's id, as proxies compute it.
    bundle: String,
}

/// Labels of an issuer reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    /// `ok` or `rejected`.
    result: &'static str,
}

/// The outcome of loading an issuer from its source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReloadResult {
    /// The issuer was loaded and is now signing.
    Ok,
    /// The issuer was refused; the previous one keeps signing.
    Rejected,
}

impl ReloadResult {
    fn label(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Rejected => "rejected",
        }
    }
}

/// The gRPC codes `Certify` answers with (the label values of the error counter).
const CODES: &[Code] = &[
    Code::InvalidArgument,
    Code::Unauthenticated,
    Code::PermissionDenied,
    Code::Unavailable,
    Code::Internal,
];

/// The canonical upper-case name of a gRPC code (`PERMISSION_DENIED`).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Every metric the identity service exports; share it behind an `Arc`.
pub struct Metrics {
    registry: Registry,
    issuer_expiry: Gauge,
    issued: Counter,
    certify_errors: Family<CodeLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    leader: Gauge,
    anchor_expiry: Family<AnchorLabels, Gauge>,
    bundle: Family<BundleLabels, Gauge>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("issued", &self.issued.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

// === impl Metrics ===

impl Metrics {
    /// Creates and registers every metric (all zero).
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh_identity");
        let issuer_expiry = Gauge::default();
        let issued = Counter::default();
        let certify_errors = Family::<CodeLabels, Counter>::default();
        let reloads = Family::<ResultLabels, Counter>::default();
        let leader = Gauge::default();
        let anchor_expiry = Family::<AnchorLabels, Gauge>::default();
        let bundle = Family::<BundleLabels, Gauge>::default();
        registry.register(
            "trust_anchor_expiry_timestamp_seconds",
            "When each trust anchor of the bundle in force expires (Unix seconds)",
            anchor_expiry.clone(),
        );
        registry.register(
            "trust_bundle_info",
            "1 for the trust bundle in force, by id (as proxies report theirs in mesh_trust_bundle_info)",
            bundle.clone(),
        );
        registry.register(
            "issuer_expiry_timestamp_seconds",
            "When the current issuer certificate expires (Unix seconds)",
            issuer_expiry.clone(),
        );
        registry.register(
            "certificates_issued",
            "Workload certificates signed by Certify",
            issued.clone(),
        );
        registry.register(
            "certify_errors",
            "Certify calls refused, by gRPC code",
            certify_errors.clone(),
        );
        registry.register(
            "issuer_reloads",
            "Issuer loads from its source (the first included), by result",
            reloads.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica holds the leader Lease (the only one writing), else 0",
            leader.clone(),
        );
        // Every series exists from the start, so the first error or rejection is an
        // increase Prometheus can see (a series born at 1 has none).
        for code in CODES {
            drop(certify_errors.get_or_create(&CodeLabels {
                code: code_name(*code),
            }));
        }
        for result in [ReloadResult::Ok, ReloadResult::Rejected] {
            drop(reloads.get_or_create(&ResultLabels {
                result: result.label(),
            }));
        }
        Self {
            registry,
            issuer_expiry,
            issued,
            certify_errors,
            reloads,
            leader,
            anchor_expiry,
            bundle,
        }
    }

    /// Counts a signed certificate.
    pub fn certificate_issued(&self) {
        self.issued.inc();
    }

    /// Counts a refused `Certify` call.
    pub fn certify_error(&self, code: Code) {
        self.certify_errors
            .get_or_create(&CodeLabels {
                code: code_name(code),
            })
            .inc();
    }

    /// Counts an issuer load.
    pub fn issuer_reload(&self, result: ReloadResult) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: result.label(),
            })
            .inc();
    }

    /// Records whether this replica leads (holds the Lease).
    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// Certificates signed so far.
    pub fn issued_total(&self) -> u64 {
        self.issued.get()
    }

    /// `Certify` errors so far, all codes together.
    pub fn errors_total(&self) -> u64 {
        CODES
            .iter()
            .filter_map(|c| {
                self.certify_errors.get(&CodeLabels {
                    code: code_name(*c),
                })
            })
            .map(|c| c.get())
            .sum()
    }

    /// Issuer loads with `result` so far.
    pub fn reloads_total(&self, result: ReloadResult) -> u64 {
        self.reloads
            .get(&ResultLabels {
                result: result.label(),
            })
            .map_or(0, |c| c.get())
    }

    /// The Prometheus text exposition for the issuer in force: its expiry, its
    /// bundle and the bundle's anchors.
    pub fn render_for(&self, issuer: &crate::ca::Issuer) -> String {
        self.bundle.clear();
        self.bundle
            .get_or_create(&BundleLabels {
                bundle: issuer.bundle_id().to_string(),
            })
            .set(1);
        self.anchor_expiry.clear();
        for anchor in issuer.anchors() {
            let expiry = anchor
                .not_after
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
            self.anchor_expiry
                .get_or_create(&AnchorLabels {
                    fingerprint: anchor.fingerprint.clone(),
                })
                .set(expiry);
        }
        self.render(issuer.not_after())
    }

    /// The Prometheus text exposition, with the expiry gauge set to `issuer_not_after`.
    pub fn render(&self, issuer_not_after: SystemTime) -> String {
        let expiry = issuer_not_after
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
        self.issuer_expiry.set(expiry);
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn renders_every_family_with_its_labels() {
        let m = Metrics::new();
        m.certificate_issued();
        m.certify_error(Code::Unauthenticated);
        m.certify_error(Code::Unauthenticated);
        m.certify_error(Code::PermissionDenied);
        m.issuer_reload(ReloadResult::Ok);
        m.issuer_reload(ReloadResult::Rejected);
        let text = m.render(UNIX_EPOCH + Duration::from_secs(1_700_000_000));
        for line in [
            "mesh_identity_issuer_expiry_timestamp_seconds 1700000000",
            "mesh_identity_certificates_issued_total 1",
            "mesh_identity_certify_errors_total{code=\"UNAUTHENTICATED\"} 2",
            "mesh_identity_certify_errors_total{code=\"PERMISSION_DENIED\"} 1",
            "mesh_identity_issuer_reloads_total{result=\"ok\"} 1",
            "mesh_identity_issuer_reloads_total{result=\"rejected\"} 1",
            "mesh_identity_leader 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
        assert!(text.contains("# TYPE mesh_identity_certify_errors counter"));
        // Series not incremented yet are there at zero.
        assert!(
            text.lines()
                .any(|l| l == "mesh_identity_certify_errors_total{code=\"UNAVAILABLE\"} 0"),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(m.errors_total(), 3);
        assert_eq!(m.issued_total(), 1);
        assert_eq!(m.reloads_total(ReloadResult::Rejected), 1);
        m.set_leader(true);
        let text = m.render(UNIX_EPOCH);
        assert!(
            text.lines().any(|l| l == "mesh_identity_leader 1"),
            "{text}"
        );
    }
}
