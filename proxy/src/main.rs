//! The `mesh-proxy` binary: reads `MESH_PROXY_*`, runs the proxy;
//! `mesh-proxy init` installs the capture rules instead.

use std::process::ExitCode;

// Every request allocates (hyper and h2 spawn a task per stream, with
// 128-byte-aligned cells): mimalloc does it for a fraction of glibc's CPU.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("init") {
        return mesh_proxy::init::main(&argv[1..]);
    }
    let config = match mesh_proxy::config::Config::from_env() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    // The connection caps, not the descriptor limit, should bound a flood.
    let _ = mesh_proxy::serve::raise_fd_limit();
    let rt = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("mesh-proxy: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // The exporter's gRPC channel needs the runtime.
    let traces = match rt.block_on(async { Traces::new(&config) }) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("mesh-proxy: {e}");
            return ExitCode::from(2);
        }
    };
    let logs = init_logs(&traces);
    let _ = rustls::crypto::ring::default_provider().install_default();

    let result = rt.block_on(async {
        let result = mesh_proxy::app::run(config).await;
        traces.shutdown().await;
        result
    });
    if let Some(logs) = logs {
        logs.flush(std::time::Duration::from_secs(1));
    }
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The log subscriber: formatted logs on stderr (`MESH_PROXY_LOG`), and the
/// request spans to the OpenTelemetry layer when tracing is on. Request spans
/// never reach the log formatter. Lines go through the writer thread (never a
/// write on the request path); without it (it could not start), straight to stderr.
fn init_logs(traces: &Traces) -> Option<mesh_proxy::log_writer::LogWriter> {
    use tracing_subscriber::prelude::*;
    let filter = std::env::var("MESH_PROXY_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".into());
    // Per-target levels only (`info,mesh_proxy=debug`): static, so callsite
    // interest stays cached, and without EnvFilter's regex engine in the
    // binary. A bad directive falls back to `info` with a warning.
    let (filter, bad) = match filter.parse::<tracing_subscriber::filter::Targets>() {
        Ok(t) => (t, None),
        Err(e) => (
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing::level_filters::LevelFilter::INFO),
            Some(format!("MESH_PROXY_LOG {filter:?}: {e}; using info")),
        ),
    };
    let filter = filter.with_target(
        mesh_proxy::trace::TARGET,
        tracing::level_filters::LevelFilter::OFF,
    );
    use mesh_proxy::log_writer::{LogWriter, QUEUE};
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = LogWriter::spawn(Box::new(std::io::stderr()), QUEUE).ok();
    let fmt = match &writer {
        Some(w) => tracing_subscriber::fmt::layer()
            .with_writer(w.clone())
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
        None => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(ansi)
            .with_filter(filter)
            .boxed(),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(traces.layer())
        .init();
    if let Some(bad) = bad {
        tracing::warn!("{bad}");
    }
    writer
}

/// The span exporter, when `MESH_PROXY_TRACE_COLLECTOR` is set.
struct Traces(Option<opentelemetry_sdk::trace::SdkTracerProvider>);

impl Traces {
    fn new(
        config: &mesh_proxy::config::Config,
    ) -> Result<Self, mesh_proxy::trace::export::ExportError> {
        use mesh_proxy::trace::export;
        let Some(trace) = &config.trace else {
            return Ok(Traces(None));
        };
        let who = export::Workload {
            namespace: &config.namespace,
            workload: &config.workload,
            identity: &config.identity,
        };
        export::provider(trace, &who).map(|p| Traces(Some(p)))
    }

    fn layer<S>(&self) -> Option<impl tracing_subscriber::Layer<S>>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        use opentelemetry::trace::TracerProvider as _;
        use tracing_subscriber::{filter::Targets, Layer as _};
        let provider = self.0.as_ref()?;
        let layer = tracing_opentelemetry::layer()
            .with_tracer(provider.tracer(mesh_proxy::trace::export::SERVICE_NAME))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_level(false)
            .with_target(false)
            .with_filter(
                Targets::new().with_target(mesh_proxy::trace::TARGET, tracing::Level::INFO),
            );
        Some(layer)
    }

    /// Flushes the last spans (the export needs the runtime running).
    async fn shutdown(self) {
        if let Some(p) = self.0 {
            let _ = tokio::task::spawn_blocking(move || p.shutdown()).await;
        }
    }
}
