//! The OTLP/gRPC span exporter: a batch processor feeding a tonic client,
//! a parent-based ratio sampler and the `mesh-proxy` resource. `main` puts the
//! resulting tracer behind a `tracing-opentelemetry` layer.

use super::context::TraceContext;
use crate::config::TraceConfig;
use opentelemetry::{
    trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState},
    Context, KeyValue,
};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::{
    trace::{BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider},
    Resource,
};
use std::str::FromStr;

/// The service name spans are exported under.
pub const SERVICE_NAME: &str = "mesh-proxy";

/// The exporter could not be built.
#[derive(Debug, thiserror::Error)]
#[error("MESH_PROXY_TRACE_COLLECTOR: {0}")]
pub struct ExportError(#[from] opentelemetry_otlp::ExporterBuildError);

/// Who is exporting: resource attributes of every span.
#[derive(Debug)]
pub struct Workload<'a> {
    pub namespace: &'a str,
    pub workload: &'a str,
    pub identity: &'a str,
}

/// A tracer provider exporting to `config.collector`. Must be called inside
/// a Tokio runtime (the gRPC channel's worker is spawned on it); call
/// `shutdown` on the result before exiting to flush the last spans.
pub fn provider(
    config: &TraceConfig,
    who: &Workload<'_>,
) -> Result<SdkTracerProvider, ExportError> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(crate::config::grpc_url(&config.collector, false))
        .with_timeout(config.export_timeout)
        .build()?;
    let batch = BatchConfigBuilder::default()
        .with_scheduled_delay(config.batch_delay)
        .build();
    let processor = BatchSpanProcessor::builder(exporter)
        .with_batch_config(batch)
        .build();
    let resource = Resource::builder_empty()
        .with_service_name(SERVICE_NAME)
        .with_attributes([
            KeyValue::new("k8s.namespace.name", who.namespace.to_string()),
            KeyValue::new("mesh.workload", who.workload.to_string()),
            KeyValue::new("mesh.identity", who.identity.to_string()),
        ])
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling,
        ))))
        .with_resource(resource)
        .build())
}

/// The OpenTelemetry context of a remote parent (with its `tracestate`).
pub fn remote_context(cx: &TraceContext, state: Option<&http::HeaderValue>) -> Context {
    let flags = if cx.sampled == Some(true) {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    let state = state
        .and_then(|v| v.to_str().ok())
        .and_then(|v| TraceState::from_str(v).ok())
        .unwrap_or_default();
    let sc = SpanContext::new(
        TraceId::from_bytes(cx.trace_id),
        SpanId::from_bytes(cx.span_id),
        flags,
        true,
        state,
    );
    Context::new().with_remote_span_context(sc)
}
