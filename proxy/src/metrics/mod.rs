//! The proxy's Prometheus metrics (DESIGN §7), served on `/metrics`.
//!
//! Label values that repeat on every request (service, identities) are
//! `Arc<str>` so recording a request clones pointers, not strings.

mod bounded;
mod series;

pub use bounded::{Bounded, Series};
pub use series::{RequestSeries, TcpSeries};

use prometheus_client::{
    encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use std::{fmt::Write, sync::Arc};

/// A cheaply clonable label value.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq)]
pub struct Str(pub Arc<str>);

impl From<&str> for Str {
    fn from(s: &str) -> Self {
        Str(Arc::from(s))
    }
}

impl EncodeLabelValue for Str {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(&self.0)
    }
}

/// This proxy's workload, as it appears in metric labels.
#[derive(Clone, Debug, Default)]
pub struct Local {
    pub namespace: Str,
    pub workload: Str,
}

/// The namespace in a SPIFFE ID (`spiffe://<td>/ns/<ns>/sa/<sa>`), or `""`.
pub fn identity_namespace(id: &str) -> Str {
    let ns = id
        .strip_prefix("spiffe://")
        .and_then(|rest| rest.split_once("/ns/"))
        .and_then(|(_, rest)| rest.split_once("/sa/"))
        .map(|(ns, _)| ns)
        .unwrap_or_default();
    Str::from(ns)
}

/// Which side of the proxy handled the traffic.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Direction {
    #[default]
    #[allow(non_camel_case_types)]
    inbound,
    #[allow(non_camel_case_types)]
    outbound,
}

/// Whether the response counts as a success.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Classification {
    #[allow(non_camel_case_types)]
    success,
    #[allow(non_camel_case_types)]
    failure,
}

/// Labels of a request stream.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub direction: Direction,
    /// The logical destination (`name.ns.svc.cluster.local:port`).
    pub dst_service: Str,
    /// The client's SPIFFE ID (`""` when unknown).
    pub src_identity: Str,
    /// The client's namespace (outbound: this proxy's; inbound: from its identity).
    pub src_namespace: Str,
    /// The client's workload (outbound: this proxy's; inbound: `""`, use the
    /// client's outbound metrics or `src_identity`).
    pub src_workload: Str,
    /// The server's SPIFFE ID (`""` when not meshed).
    pub dst_identity: Str,
    /// The server's namespace (outbound: from discovery; inbound: this proxy's).
    pub dst_namespace: Str,
    /// The server's workload (outbound: from discovery; inbound: this proxy's).
    pub dst_workload: Str,
    /// `true` when the hop between proxies was mutual TLS.
    pub tls: bool,
    /// The route that matched (`default` when none did; `""` inbound).
    pub route: Str,
}

/// Labels of an accepted TCP connection.
#[derive(Clone, Debug, Default, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TcpLabels {
    pub direction: Direction,
    /// Inbound: the target the peer named; outbound: the original destination's
    /// service for redirected connections (`""` in explicit HTTP mode, where each
    /// request names its own).
    pub dst_service: Str,
    /// Inbound: the peer completed mutual TLS; outbound: an opaque session carried
    /// over mutual TLS.
    pub tls: bool,
}

/// Labels of a retry, a skipped retry or an ejection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TrafficLabels {
    pub dst_service: Str,
    pub route: Str,
    /// Why: `status`, `grpc`, `connect`, `budget`, `body`, `ejected`…
    pub reason: &'static str,
}

/// A gRPC status code label: empty for HTTP responses that are not gRPC.
#[derive(Clone, Copy, Debug, Default, Hash, PartialEq, Eq)]
pub struct GrpcCode(pub Option<u16>);

impl EncodeLabelValue for GrpcCode {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        match self.0 {
            Some(code) => write!(encoder, "{code}"),
            None => Ok(()),
        }
    }
}

/// Labels of a response.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub request: RequestLabels,
    pub status_code: u16,
    /// The gRPC status (from the trailers, or the headers of a trailers-only
    /// response); empty when the response is not gRPC.
    pub grpc_status: GrpcCode,
    pub classification: Classification,
}

/// Labels of an error the proxy produced itself.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub direction: Direction,
    pub reason: &'static str,
}

/// Labels of an inbound authorization decision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AuthzLabels {
    /// `allow`, `deny` or `audit`.
    pub decision: &'static str,
    /// The AuthorizationPolicy that decided, or `default:<policy>`.
    pub policy: Str,
}

/// Labels of the balancer's endpoint counts.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BalancerLabels {
    pub dst_service: Str,
    /// `ready` or `ejected`.
    pub state: &'static str,
}

/// Labels of one of the proxy's listeners.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerLabels {
    /// `inbound`, `outbound` or `admin`.
    pub listener: &'static str,
}

/// Labels of connections a listener did not keep.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ListenerDropLabels {
    pub listener: &'static str,
    /// `refused` (full of active connections), `shed` (a silent connection
    /// closed to make room) or `exhausted` (accept failed: out of
    /// descriptors or memory).
    pub reason: &'static str,
}

/// Labels of a trust anchor.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AnchorLabels {
    /// SHA-256 of the anchor, hex.
    pub fingerprint: String,
}

/// Labels of the trust bundle in force.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BundleLabels {
    /// The bundle's id (a hash of its anchors' fingerprints).
    pub bundle: String,
}

/// Labels of a bundle reload.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReloadLabels {
    /// `ok` or `rejected`.
    pub result: &'static str,
}

/// Labels of a control-plane connection.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControlLabels {
    /// `destination` or `identity`.
    pub component: &'static str,
}

/// How many label sets each traffic family keeps, and for how long an
/// unused one is kept.
#[derive(Clone, Copy, Debug)]
pub struct SeriesLimits {
    /// Label sets per family (requests; TCP); more share an overflow series.
    pub max: usize,
    /// How long a series nobody uses and that has not moved is kept.
    pub retain: std::time::Duration,
}

impl Default for SeriesLimits {
    fn default() -> Self {
        SeriesLimits {
            max: 1_000,
            retain: std::time::Duration::from_secs(600),
        }
    }
}

/// Every metric the proxy exports.
pub struct Metrics {
    registry: Registry,
    /// Requests, responses and latency by request label set (bounded).
    requests: Arc<Bounded<RequestLabels, RequestSeries>>,
    /// TCP connections and bytes by label set (bounded).
    tcp: Arc<Bounded<TcpLabels, TcpSeries>>,
    pub proxy_errors: Family<ErrorLabels, Counter>,
    pub cert_expiry: Gauge,
    pub cert_renewals: Counter,
    pub cert_renewal_failures: Counter,
    pub trust_anchor_expiry: Family<AnchorLabels, Gauge>,
    pub trust_bundle: Family<BundleLabels, Gauge>,
    pub trust_bundle_reloads: Family<ReloadLabels, Counter>,
    pub control_connected: Family<ControlLabels, Gauge>,
    pub retries: Family<TrafficLabels, Counter>,
    pub retries_skipped: Family<TrafficLabels, Counter>,
    pub ejections: Family<TrafficLabels, Counter>,
    pub balancer_endpoints: Family<BalancerLabels, Gauge>,
    pub authz: Family<AuthzLabels, Counter>,
    pub listener_connections: Family<ListenerLabels, Gauge>,
    pub listener_dropped: Family<ListenerDropLabels, Counter>,
    /// The listeners whose counters are read at scrape time.
    listeners: std::sync::Mutex<Vec<(&'static str, mesh_proto::net::accept::StatsHandle)>>,
    process: crate::process::ProcessMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric, with the default series limits.
    pub fn new() -> Self {
        Self::with_limits(SeriesLimits::default())
    }

    /// Creates and registers every metric.
    pub fn with_limits(limits: SeriesLimits) -> Self {
        let mut registry = Registry::with_prefix("mesh");
        let requests = Arc::new(Bounded::new(
            limits.max,
            limits.retain,
            series::request_overflow,
        ));
        let tcp = Arc::new(Bounded::new(
            limits.max,
            limits.retain,
            series::tcp_overflow,
        ));
        registry.register_collector(Box::new(series::TrafficCollector {
            requests: requests.clone(),
            tcp: tcp.clone(),
        }));
        let proxy_errors = Family::<ErrorLabels, Counter>::default();
        let cert_expiry = Gauge::default();
        let cert_renewals = Counter::default();
        let cert_renewal_failures = Counter::default();
        let trust_anchor_expiry = Family::<AnchorLabels, Gauge>::default();
        let trust_bundle = Family::<BundleLabels, Gauge>::default();
        let trust_bundle_reloads = Family::<ReloadLabels, Counter>::default();
        let control_connected = Family::<ControlLabels, Gauge>::default();
        let retries = Family::<TrafficLabels, Counter>::default();
        let retries_skipped = Family::<TrafficLabels, Counter>::default();
        let ejections = Family::<TrafficLabels, Counter>::default();
        let balancer_endpoints = Family::<BalancerLabels, Gauge>::default();
        let authz = Family::<AuthzLabels, Counter>::default();
        let listener_connections = Family::<ListenerLabels, Gauge>::default();
        let listener_dropped = Family::<ListenerDropLabels, Counter>::default();
        registry.register(
            "listener_connections",
            "Connections open on each listener",
            listener_connections.clone(),
        );
        registry.register(
            "listener_dropped",
            "Connections a listener closed at once: refused when full, shed (silent, to make room), or failed accepts (descriptors or memory exhausted)",
            listener_dropped.clone(),
        );
        registry.register(
            "authz",
            "Inbound authorization decisions, by decision and policy",
            authz.clone(),
        );
        registry.register(
            "balancer_endpoints",
            "Endpoints of each backend, by state (computed at scrape time)",
            balancer_endpoints.clone(),
        );
        registry.register("retries", "Retries sent, by reason", retries.clone());
        registry.register(
            "retries_skipped",
            "Retryable failures not retried, by reason (budget, body, attempts)",
            retries_skipped.clone(),
        );
        registry.register(
            "endpoint_ejections",
            "Endpoints ejected by outlier detection",
            ejections.clone(),
        );
        registry.register(
            "proxy_errors",
            "Errors the proxy answered itself, by reason",
            proxy_errors.clone(),
        );
        registry.register(
            "identity_cert_expiry_timestamp_seconds",
            "When the workload certificate expires (Unix seconds)",
            cert_expiry.clone(),
        );
        registry.register(
            "identity_cert_renewals",
            "Certificates obtained from the identity service",
            cert_renewals.clone(),
        );
        registry.register(
            "identity_cert_renewal_failures",
            "Failed certificate requests",
            cert_renewal_failures.clone(),
        );
        registry.register(
            "identity_trust_anchor_expiry_timestamp_seconds",
            "When each anchor of the trust bundle in force expires (Unix seconds)",
            trust_anchor_expiry.clone(),
        );
        registry.register(
            "trust_bundle_info",
            "1 for the trust bundle in force, by id (a hash of its anchors' fingerprints)",
            trust_bundle.clone(),
        );
        registry.register(
            "trust_bundle_reloads",
            "Changes of the trust bundle file, by result (ok, or rejected and the last good bundle kept)",
            trust_bundle_reloads.clone(),
        );
        registry.register(
            "control_connected",
            "1 while the control-plane stream is up",
            control_connected.clone(),
        );
        Metrics {
            registry,
            requests,
            tcp,
            proxy_errors,
            cert_expiry,
            cert_renewals,
            cert_renewal_failures,
            trust_anchor_expiry,
            trust_bundle,
            trust_bundle_reloads,
            control_connected,
            retries,
            retries_skipped,
            ejections,
            balancer_endpoints,
            authz,
            listener_connections,
            listener_dropped,
            listeners: Default::default(),
            process: crate::process::ProcessMetrics::new(),
        }
    }

    /// Exports `stats` as listener `name`'s (several listeners may share a
    /// name: their counts add up).
    pub fn listen(&self, name: &'static str, stats: mesh_proto::net::accept::StatsHandle) {
        let mut l = match self.listeners.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        l.push((name, stats));
    }

    /// Brings the listener families up to date.
    fn refresh_listeners(&self) {
        let l = match self.listeners.lock() {
            Ok(l) => l,
            Err(p) => p.into_inner(),
        };
        let mut sums: Vec<(&'static str, mesh_proto::net::accept::Stats)> = Vec::new();
        for (name, stats) in l.iter() {
            let s = stats.get();
            match sums.iter_mut().find(|(n, _)| n == name) {
                Some((_, sum)) => {
                    sum.open += s.open;
                    sum.refused += s.refused;
                    sum.shed += s.shed;
                    sum.exhausted += s.exhausted;
                }
                None => sums.push((name, s)),
            }
        }
        for (listener, s) in sums {
            self.listener_connections
                .get_or_create(&ListenerLabels { listener })
                .set(s.open as i64);
            for (reason, n) in [
                ("refused", s.refused),
                ("shed", s.shed),
                ("exhausted", s.exhausted),
            ] {
                let c = self
                    .listener_dropped
                    .get_or_create(&ListenerDropLabels { listener, reason });
                c.inc_by(n.saturating_sub(c.get()));
            }
        }
    }

    /// Renders the Prometheus text format (the `process_*` families read at this moment).
    pub fn encode(&self) -> String {
        use prometheus_client::encoding::text::{encode_eof, encode_registry};
        self.process.refresh();
        self.refresh_listeners();
        self.requests.sweep();
        self.tcp.sweep();
        let mut out = String::with_capacity(4096);
        // Writing to a String cannot fail.
        let _ = encode_registry(&mut out, &self.registry);
        let _ = encode_registry(&mut out, &self.process.registry);
        let _ = encode_eof(&mut out);
        out
    }

    /// Counts an error the proxy answered itself.
    pub fn error(&self, direction: Direction, reason: &'static str) {
        self.proxy_errors
            .get_or_create(&ErrorLabels { direction, reason })
            .inc();
    }

    /// The metric handles of one label set.
    pub fn recorder(&self, labels: RequestLabels) -> Recorder {
        let (labels, series) = self.requests.get(&labels);
        Recorder { labels, series }
    }

    /// The TCP handles of one label set.
    pub fn tcp(&self, labels: &TcpLabels) -> Arc<TcpSeries> {
        self.tcp.get(labels).1
    }
}

/// Metric handles for one label set, kept by a connection so that recording
/// a request is a few atomic adds instead of map lookups.
pub struct Recorder {
    /// The labels recorded under (the overflow ones when the family is full).
    labels: RequestLabels,
    series: Arc<RequestSeries>,
}

impl Recorder {
    /// The labels the handles belong to.
    pub fn labels(&self) -> &RequestLabels {
        &self.labels
    }

    /// Records one request, its response status and latency.
    pub fn record(&self, _metrics: &Metrics, status: u16, elapsed: std::time::Duration) {
        self.record_request(elapsed);
        self.series.response(status, GrpcCode(None));
    }

    /// Records one request and the latency of its response headers (the response
    /// itself is counted when its status is known).
    pub fn record_request(&self, elapsed: std::time::Duration) {
        self.series.requests.inc();
        self.series.latency.observe(elapsed.as_secs_f64());
    }

    /// Counts a gRPC response once its status is known (trailers, or `None` when the
    /// stream ended without one).
    pub fn record_grpc(&self, _metrics: &Metrics, status: u16, code: Option<u16>) {
        // gRPC without a status (a reset stream) counts as UNKNOWN (2).
        self.series
            .response(status, GrpcCode(Some(code.unwrap_or(2))));
    }

    /// Counts an HTTP response.
    pub fn record_response(&self, _metrics: &Metrics, status: u16) {
        self.series.response(status, GrpcCode(None));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_from_identities() {
        assert_eq!(
            &*identity_namespace("spiffe://cluster.local/ns/shop/sa/web").0,
            "shop"
        );
        assert_eq!(&*identity_namespace("spiffe://x/other").0, "");
        assert_eq!(&*identity_namespace("").0, "");
    }

    #[test]
    fn renders_the_documented_names() {
        let m = Metrics::new();
        let labels = RequestLabels {
            direction: Direction::outbound,
            dst_service: "web.demo.svc.cluster.local:80".into(),
            src_identity: "spiffe://cluster.local/ns/demo/sa/a".into(),
            src_namespace: "demo".into(),
            src_workload: "a".into(),
            dst_identity: "spiffe://cluster.local/ns/demo/sa/b".into(),
            dst_namespace: "demo".into(),
            dst_workload: "b".into(),
            tls: true,
            route: "default".into(),
        };
        let r = m.recorder(labels.clone());
        r.record(&m, 503, std::time::Duration::from_millis(3));
        r.record(&m, 200, std::time::Duration::from_millis(3));
        r.record(&m, 503, std::time::Duration::from_millis(3));
        let text = m.encode();
        assert!(text.contains("mesh_requests_total{direction=\"outbound\",dst_service=\"web.demo.svc.cluster.local:80\""), "{text}");
        assert!(
            text.contains("status_code=\"503\",grpc_status=\"\",classification=\"failure\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("status_code=\"200\",grpc_status=\"\",classification=\"success\"} 1"),
            "{text}"
        );
        assert!(text.contains("route=\"default\"} 3"), "{text}");
        assert!(
            text.contains("mesh_response_latency_seconds_bucket"),
            "{text}"
        );
    }
}
