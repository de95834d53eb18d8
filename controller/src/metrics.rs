//! The controller's Prometheus metrics (`GET /metrics` on the admin port, names in
//! `docs/metrics.md`): events the sources apply, index updates and how long each rebuild
//! took, the indexed objects (counted at scrape time), the gRPC watch streams and the
//! updates they push, and errors by reason.
//!
//! One [`Metrics`] is shared (`Arc`) by the index writer, the sources, the gRPC services
//! and the admin server. Hot paths resolve their series once ([`SourceEvents`] per
//! watcher, [`ApiMetrics`] per service, [`StreamMetrics`] per stream) and then only touch
//! atomics.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::index::ObjectCounts;

/// Upper bounds of the latency histograms, in seconds: 100 µs … 10 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

// === labels ===

/// Where resources come from (the `source` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Source {
    /// A directory of manifests (`--source dir:PATH`).
    Dir,
    /// The Kubernetes API (`--source kubernetes`).
    Kubernetes,
}

impl Source {
    fn label(self) -> &'static str {
        match self {
            Self::Dir => "dir",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// A gRPC watch API (the `api` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Api {
    /// `Destination.Get`: endpoint streams.
    Destination,
    /// `Destination.GetPolicy`: client-side policy streams.
    Policy,
    /// `InboundPolicy.Watch`: server-side policy streams.
    Inbound,
}

impl Api {
    /// Every API, in label order.
    pub const ALL: [Api; 3] = [Api::Destination, Api::Policy, Api::Inbound];

    fn label(self) -> &'static str {
        match self {
            Self::Destination => "destination",
            Self::Policy => "policy",
            Self::Inbound => "inbound",
        }
    }
}

/// Why something failed (the `reason` label of `errors_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorReason {
    /// A malformed gRPC target or port, answered `INVALID_ARGUMENT`.
    InvalidTarget,
    /// A manifest or object the parser or validation rejected (its last good version stays).
    InvalidResource,
    /// A watch failed: a Kubernetes watch request (retried with backoff), a file-system
    /// watch error, or a manifest directory or file that could not be read.
    WatchFailed,
}

impl ErrorReason {
    /// Every reason, in label order.
    pub const ALL: [ErrorReason; 3] = [
        ErrorReason::InvalidTarget,
        ErrorReason::InvalidResource,
        ErrorReason::WatchFailed,
    ];

    fn label(self) -> &'static str {
        match self {
            Self::InvalidTarget => "invalid_target",
            Self::InvalidResource => "invalid_resource",
            Self::WatchFailed => "watch_failed",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SourceEventLabels {
    source: &'static str,
    kind: &'static str,
    event: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    reason: &'static str,
}

// === impl Metrics ===

/// Every metric the controller exports, registered in one registry; share it behind an
/// `Arc`.
pub struct Metrics {
    registry: Registry,
    source_events: Family<SourceEventLabels, Counter>,
    index_updates: Counter,
    index_rebuild: Histogram,
    index_objects: Family<KindLabels, Gauge>,
    streams_open: Family<ApiLabels, Gauge>,
    streams_total: Family<ApiLabels, Counter>,
    updates_sent: Family<ApiLabels, Counter>,
    push_latency: Family<ApiLabels, Histogram, fn() -> Histogram>,
    errors: Family<ReasonLabels, Counter>,
    changes: ChangeClock,
    /// Serialises scrapes: each sets the object gauges, then encodes them.
    render: Mutex<()>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("index_updates", &self.index_updates.get())
            .finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every family. The per-API and per-reason series exist (at
    /// zero) from the start, so their first increase is visible to Prometheus.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("mesh_controller");
        let source_events = Family::<SourceEventLabels, Counter>::default();
        let index_updates = Counter::default();
        let index_rebuild = latency_histogram();
        let index_objects = Family::<KindLabels, Gauge>::default();
        let streams_open = Family::<ApiLabels, Gauge>::default();
        let streams_total = Family::<ApiLabels, Counter>::default();
        let updates_sent = Family::<ApiLabels, Counter>::default();
        let push_latency: Family<ApiLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(latency_histogram);
        let errors = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "source_events",
            "Watch events and file changes the sources applied to the index",
            source_events.clone(),
        );
        registry.register(
            "index_updates",
            "Changes of the index (each one notifies every open stream)",
            index_updates.clone(),
        );
        registry.register_with_unit(
            "index_rebuild",
            "Time each index change took to apply and rebuild",
            Unit::Seconds,
            index_rebuild.clone(),
        );
        registry.register(
            "index_objects",
            "Objects in the index by kind, counted at scrape time",
            index_objects.clone(),
        );
        registry.register(
            "streams_open",
            "gRPC watch streams currently open",
            streams_open.clone(),
        );
        registry.register(
            "streams",
            "gRPC watch streams served",
            streams_total.clone(),
        );
        registry.register(
            "updates_sent",
            "Messages handed to gRPC watch streams (the first of each included)",
            updates_sent.clone(),
        );
        registry.register_with_unit(
            "push_latency",
            "Time from an index change to the update it caused being handed to a stream",
            Unit::Seconds,
            push_latency.clone(),
        );
        registry.register("errors", "Errors by reason", errors.clone());
        for api in Api::ALL {
            let labels = ApiLabels { api: api.label() };
            drop(streams_open.get_or_create(&labels));
            drop(streams_total.get_or_create(&labels));
            drop(updates_sent.get_or_create(&labels));
            drop(push_latency.get_or_create(&labels));
        }
        for reason in ErrorReason::ALL {
            drop(errors.get_or_create(&ReasonLabels {
                reason: reason.label(),
            }));
        }
        Self {
            registry,
            source_events,
            index_updates,
            index_rebuild,
            index_objects,
            streams_open,
            streams_total,
            updates_sent,
            push_latency,
            errors,
            changes: ChangeClock::new(),
            render: Mutex::new(()),
        }
    }

    /// Counts an error.
    pub fn error(&self, reason: ErrorReason) {
        self.error_counter(reason).inc();
    }

    fn error_counter(&self, reason: ErrorReason) -> Counter {
        self.errors.get_or_create_owned(&ReasonLabels {
            reason: reason.label(),
        })
    }

    /// The event counters of one watcher (`kind` is `file` for the directory source, the
    /// Kubernetes kind otherwise), created at zero.
    pub fn source_events(&self, source: Source, kind: &'static str) -> SourceEvents {
        let counter = |event: &'static str| {
            self.source_events.get_or_create_owned(&SourceEventLabels {
                source: source.label(),
                kind,
                event,
            })
        };
        SourceEvents {
            apply: counter("apply"),
            delete: counter("delete"),
            relist: counter("relist"),
            error: counter("error"),
            invalid_resource: self.error_counter(ErrorReason::InvalidResource),
            watch_failed: self.error_counter(ErrorReason::WatchFailed),
        }
    }

    /// Records a change of the index that took `took` to apply. Called by the index writer
    /// while it holds the index, so a reader holding a snapshot sees the stamp of exactly
    /// that snapshot ([`StreamMetrics::index_changed_at`]).
    pub fn index_changed(&self, took: Duration) {
        self.changes.stamp();
        self.index_updates.inc();
        self.index_rebuild.observe(took.as_secs_f64());
    }

    /// The handles of one gRPC API, resolved once per service.
    pub fn api(&self, api: Api) -> ApiMetrics {
        let labels = ApiLabels { api: api.label() };
        ApiMetrics {
            open: self.streams_open.get_or_create_owned(&labels),
            total: self.streams_total.get_or_create_owned(&labels),
            sent: self.updates_sent.get_or_create_owned(&labels),
            latency: self.push_latency.get_or_create_owned(&labels),
            invalid_target: self.error_counter(ErrorReason::InvalidTarget),
            changes: self.changes.clone(),
        }
    }

    /// The text exposition (OpenMetrics), with the object gauges set from `objects`.
    pub fn render(&self, objects: &ObjectCounts) -> String {
        // A poisoned lock only means another scrape panicked; the gauges are still valid.
        let _scrape = self.render.lock().unwrap_or_else(|e| e.into_inner());
        for (kind, n) in objects.by_kind() {
            self.index_objects
                .get_or_create(&KindLabels { kind })
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

// === impl ChangeClock ===

/// When the index last changed, shared by the writer (which stamps it) and the streams
/// (which read it to measure push latency).
#[derive(Clone, Debug)]
struct ChangeClock {
    epoch: Instant,
    /// Nanoseconds from `epoch` to the last change; 0 until the first.
    last: Arc<AtomicU64>,
}

impl ChangeClock {
    fn new() -> Self {
        Self {
            epoch: Instant::now(),
            last: Arc::new(AtomicU64::new(0)),
        }
    }

    fn stamp(&self) {
        let nanos = u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX);
        // Ordering comes from the index lock both sides hold.
        self.last.store(nanos.max(1), Ordering::Relaxed);
    }

    fn last(&self) -> Option<Instant> {
        match self.last.load(Ordering::Relaxed) {
            0 => None,
            nanos => Some(self.epoch + Duration::from_nanos(nanos)),
        }
    }
}

// === impl SourceEvents ===

/// The counters of one watcher: its events by kind of event, and the errors it reports.
#[derive(Clone, Debug)]
pub struct SourceEvents {
    apply: Counter,
    delete: Counter,
    relist: Counter,
    error: Counter,
    invalid_resource: Counter,
    watch_failed: Counter,
}

impl SourceEvents {
    /// An object or file was created or changed.
    pub fn applied(&self) {
        self.apply.inc();
    }

    /// An object or file was deleted.
    pub fn deleted(&self) {
        self.delete.inc();
    }

    /// A (re)list completed and was applied as one batch.
    pub fn relisted(&self) {
        self.relist.inc();
    }

    /// An object or file was rejected by the parser or validation (also counted in
    /// `errors_total{reason="invalid_resource"}`).
    pub fn invalid(&self) {
        self.error.inc();
        self.invalid_resource.inc();
    }

    /// The watch failed or a file could not be read (also counted in
    /// `errors_total{reason="watch_failed"}`).
    pub fn watch_failed(&self) {
        self.error.inc();
        self.watch_failed.inc();
    }
}

// === impl ApiMetrics ===

/// The handles of one gRPC API: cloned into each stream, never looked up per message.
#[derive(Clone, Debug)]
pub struct ApiMetrics {
    open: Gauge,
    total: Counter,
    sent: Counter,
    latency: Histogram,
    invalid_target: Counter,
    changes: ChangeClock,
}

impl ApiMetrics {
    /// Counts a stream refused with `INVALID_ARGUMENT`.
    pub fn invalid_target(&self) {
        self.invalid_target.inc();
    }

    /// Counts a new stream; it is open until the returned handle is dropped.
    pub fn stream_opened(&self) -> StreamMetrics {
        self.total.inc();
        self.open.inc();
        StreamMetrics { api: self.clone() }
    }
}

/// The metrics of one open stream; dropping it (with the stream's state) closes it.
#[derive(Debug)]
pub struct StreamMetrics {
    api: ApiMetrics,
}

impl StreamMetrics {
    /// When the index last changed. Read it while holding the snapshot an update is
    /// computed from: the writer stamps under the same lock.
    pub fn index_changed_at(&self) -> Option<Instant> {
        self.api.changes.last()
    }

    /// Counts a message handed to the stream; `changed_at` is the index change that
    /// caused it (`None` for a stream's first message, which no change caused).
    pub fn sent(&self, changed_at: Option<Instant>) {
        self.api.sent.inc();
        if let Some(at) = changed_at {
            self.api.latency.observe(at.elapsed().as_secs_f64());
        }
    }
}

impl Drop for StreamMetrics {
    fn drop(&mut self) {
        self.api.open.dec();
    }
}

/// The value of the sample `series` (name and labels exactly as rendered) in `text`.
#[cfg(test)]
pub(crate) fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
}

#[cfg(test)]
mod tests;
