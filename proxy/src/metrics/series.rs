//! The per-label-set handles of the traffic families (requests, responses
//! and latency; TCP connections and bytes), kept in [`Bounded`] maps and
//! encoded by a collector at scrape time.

use super::{
    bounded::{Bounded, Series},
    Classification, GrpcCode, RequestLabels, ResponseLabels, TcpLabels,
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{counter::Counter, gauge::Gauge, histogram::Histogram, MetricType},
};
use std::sync::{Arc, Mutex};

/// Distinct (status, gRPC status) pairs one request series keeps; more are
/// counted under status 0.
const MAX_RESPONSE_KINDS: usize = 64;

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
    ])
}

/// The handles of one request label set.
pub struct RequestSeries {
    pub(super) requests: Counter,
    pub(super) latency: Histogram,
    /// Response counters by HTTP status and gRPC status.
    responses: Mutex<Vec<(u16, GrpcCode, Counter)>>,
}

impl Default for RequestSeries {
    fn default() -> Self {
        RequestSeries {
            requests: Counter::default(),
            latency: latency_histogram(),
            responses: Mutex::new(Vec::new()),
        }
    }
}

impl Series for RequestSeries {
    fn activity(&self) -> u64 {
        self.requests.get()
    }
}

impl RequestSeries {
    /// Counts a response.
    pub fn response(&self, status: u16, grpc: GrpcCode) {
        let mut r = match self.responses.lock() {
            Ok(r) => r,
            Err(p) => p.into_inner(),
        };
        if let Some((_, _, c)) = r.iter().find(|(s, g, _)| *s == status && *g == grpc) {
            c.inc();
            return;
        }
        let (status, grpc) = if r.len() < MAX_RESPONSE_KINDS {
            (status, grpc)
        } else {
            (0, GrpcCode(None))
        };
        match r.iter().find(|(s, g, _)| *s == status && *g == grpc) {
            Some((_, _, c)) => {
                c.inc();
            }
            None => {
                let c = Counter::default();
                c.inc();
                r.push((status, grpc, c));
            }
        }
    }
}

/// The handles of one TCP label set.
#[derive(Default)]
pub struct TcpSeries {
    pub open: Counter,
    pub close: Counter,
    pub open_connections: Gauge,
    pub read: Counter,
    pub write: Counter,
}

impl Series for TcpSeries {
    fn activity(&self) -> u64 {
        [&self.open, &self.close, &self.read, &self.write]
            .iter()
            .fold(0u64, |a, c| a.wrapping_add(c.get()))
    }
}

/// A response's classification: gRPC calls fail when their status is not
/// OK, whatever the HTTP status.
fn classify(status: u16, grpc: GrpcCode) -> Classification {
    if status < 500 && grpc.0.is_none_or(|c| c == 0) {
        Classification::success
    } else {
        Classification::failure
    }
}

/// Labels of the overflow counter.
#[derive(Clone, Debug, Hash, PartialEq, Eq, prometheus_client::encoding::EncodeLabelSet)]
struct OverflowLabels {
    family: &'static str,
}

/// Encodes the traffic families from their bounded maps.
pub struct TrafficCollector {
    pub requests: Arc<Bounded<RequestLabels, RequestSeries>>,
    pub tcp: Arc<Bounded<TcpLabels, TcpSeries>>,
}

impl std::fmt::Debug for TrafficCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrafficCollector").finish_non_exhaustive()
    }
}

/// Encodes one family: `metric(series)` for every series of `map`.
fn family<L, S, M>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    kind: MetricType,
    map: &Bounded<L, S>,
    metric: impl Fn(&S) -> &M,
) -> Result<(), std::fmt::Error>
where
    L: Clone + Eq + std::hash::Hash + EncodeLabelSet,
    S: Series,
    M: EncodeMetric,
{
    let mut e = encoder.encode_descriptor(name, help, None, kind)?;
    let mut result = Ok(());
    map.for_each(|labels, series| {
        if result.is_ok() {
            result = e
                .encode_family(labels)
                .and_then(|f| metric(series).encode(f));
        }
    });
    result
}

impl Collector for TrafficCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let r = &*self.requests;
        family(
            &mut encoder,
            "requests",
            "HTTP requests received",
            MetricType::Counter,
            r,
            |s| &s.requests,
        )?;
        family(
            &mut encoder,
            "response_latency_seconds",
            "Time from request to response headers",
            MetricType::Histogram,
            r,
            |s| &s.latency,
        )?;
        {
            let mut e = encoder.encode_descriptor(
                "responses",
                "HTTP responses sent",
                None,
                MetricType::Counter,
            )?;
            let mut result = Ok(());
            r.for_each(|labels, series| {
                let responses = match series.responses.lock() {
                    Ok(g) => g,
                    Err(p) => p.into_inner(),
                };
                for (status, grpc, counter) in responses.iter() {
                    if result.is_err() {
                        return;
                    }
                    let l = ResponseLabels {
                        request: labels.clone(),
                        status_code: *status,
                        grpc_status: *grpc,
                        classification: classify(*status, *grpc),
                    };
                    result = e.encode_family(&l).and_then(|f| counter.encode(f));
                }
            });
            result?;
        }
        let t = &*self.tcp;
        family(
            &mut encoder,
            "tcp_open",
            "TCP connections accepted",
            MetricType::Counter,
            t,
            |s| &s.open,
        )?;
        family(
            &mut encoder,
            "tcp_close",
            "TCP connections closed",
            MetricType::Counter,
            t,
            |s| &s.close,
        )?;
        family(
            &mut encoder,
            "tcp_open_connections",
            "TCP connections currently open",
            MetricType::Gauge,
            t,
            |s| &s.open_connections,
        )?;
        family(
            &mut encoder,
            "tcp_read_bytes",
            "Bytes read from accepted connections",
            MetricType::Counter,
            t,
            |s| &s.read,
        )?;
        family(
            &mut encoder,
            "tcp_write_bytes",
            "Bytes written to accepted connections",
            MetricType::Counter,
            t,
            |s| &s.write,
        )?;
        let mut e = encoder.encode_descriptor(
            "metrics_overflow",
            "Label sets recorded under an overflow series because their family was full",
            None,
            MetricType::Counter,
        )?;
        for (name, n) in [("requests", r.overflowed()), ("tcp", t.overflowed())] {
            let c = prometheus_client::metrics::counter::ConstCounter::new(n);
            c.encode(e.encode_family(&OverflowLabels { family: name })?)?;
        }
        Ok(())
    }
}

/// The label set an overflowing request label set is counted under: its
/// direction and TLS kept, every name replaced.
pub fn request_overflow(l: &RequestLabels) -> RequestLabels {
    RequestLabels {
        direction: l.direction,
        dst_service: "overflow".into(),
        src_identity: Default::default(),
        src_namespace: Default::default(),
        src_workload: Default::default(),
        dst_identity: Default::default(),
        dst_namespace: Default::default(),
        dst_workload: Default::default(),
        tls: l.tls,
        route: Default::default(),
    }
}

/// The same for TCP label sets.
pub fn tcp_overflow(l: &TcpLabels) -> TcpLabels {
    TcpLabels {
        direction: l.direction,
        dst_service: "overflow".into(),
        tls: l.tls,
    }
}
