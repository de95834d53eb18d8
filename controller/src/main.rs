//! The `mesh-controller` binary: parses flags, loads the configured source into the index,
//! then serves the destination/policy gRPC API and the admin probes and metrics until
//! SIGTERM/Ctrl-C.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use mesh_controller::index::{IndexConfig, IndexWriter};
use mesh_controller::inject::InjectConfig;
use mesh_controller::metrics::Metrics;
use mesh_controller::source::{self, SourceSpec};
use mesh_controller::webhook::{self, NamespaceAnnotations, StaticNamespaces};
use mesh_controller::{admin, grpc};
use mesh_proto::workload::CertStore;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How long open gRPC streams get to finish after a shutdown signal.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// The mesh destination and policy controller.
#[derive(Debug, Parser)]
#[command(name = "mesh-controller", version)]
struct Args {
    /// Where resources come from: `dir:PATH` (a directory of YAML manifests, watched) or
    /// `kubernetes` (the API server of the in-cluster config or kubeconfig).
    #[arg(long)]
    source: String,
    /// Address of the destination/policy gRPC server.
    #[arg(long, default_value = "0.0.0.0:8086")]
    grpc_addr: SocketAddr,
    /// Address of the admin server (`/live`, `/ready`, `/metrics`).
    #[arg(long, default_value = "0.0.0.0:9990")]
    admin_addr: SocketAddr,
    /// DNS suffix of Service names.
    #[arg(long, default_value = "cluster.local")]
    cluster_domain: String,
    /// SPIFFE trust domain of workload identities.
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Address of the HTTPS admission webhook (`POST /inject`).
    #[arg(long, default_value = "0.0.0.0:9443")]
    webhook_addr: SocketAddr,
    /// PEM certificate chain of the webhook; without it (and `--webhook-key`) a
    /// self-signed certificate for `mesh-controller.mesh-system.svc` is generated.
    #[arg(long, requires = "webhook_key")]
    webhook_cert: Option<PathBuf>,
    /// PEM private key of the webhook certificate.
    #[arg(long, requires = "webhook_cert")]
    webhook_key: Option<PathBuf>,
    /// Image of the injected `mesh-proxy` and `mesh-init` containers.
    #[arg(long)]
    proxy_image: Option<String>,
    /// YAML map `{namespace: {annotation: value}}` giving the namespaces' annotations to
    /// the webhook (local mode; with `--source kubernetes` they come from the API).
    #[arg(long)]
    namespace_annotations: Option<PathBuf>,
    /// The identity service (`host:port` or URL) the controller gets its own workload
    /// certificate from: it serves gRPC only over mutual TLS with it.
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_ADDR",
        default_value = "mesh-identity.mesh-system.svc.cluster.local:8080"
    )]
    identity_addr: String,
    /// DNS name the identity service's certificate carries (default
    /// `identity.mesh-system.svc.<trust domain>`).
    #[arg(long)]
    identity_server_name: Option<String>,
    /// PEM trust anchors of the mesh: the identity service's certificate and every
    /// caller's must chain to them.
    #[arg(long, env = "MESH_CONTROLLER_TRUST_ANCHORS")]
    trust_anchors: Option<PathBuf>,
    /// File holding the token that proves the controller's identity to the identity
    /// service (a projected ServiceAccount token in Kubernetes); re-read at each renewal.
    #[arg(long, env = "MESH_CONTROLLER_IDENTITY_TOKEN_FILE")]
    identity_token_file: Option<PathBuf>,
    /// The token itself (local mode: `mesh token --namespace mesh-system
    /// --service-account mesh-controller`).
    #[arg(
        long,
        env = "MESH_CONTROLLER_IDENTITY_TOKEN",
        hide_env_values = true,
        conflicts_with = "identity_token_file"
    )]
    identity_token: Option<String>,
    /// The controller's SPIFFE ID (default
    /// `spiffe://<trust domain>/ns/mesh-system/sa/mesh-controller`).
    #[arg(long)]
    identity: Option<String>,
    /// Open gRPC connections; past it, connections still in their handshake are shed,
    /// then new ones refused.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Concurrent gRPC streams one client identity may hold (all its replicas together).
    #[arg(long, default_value_t = 16_384)]
    max_streams_per_identity: usize,
    /// Log filter (tracing EnvFilter syntax, e.g. `info,mesh_controller=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log_level: String,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the tokio runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(&args.log_level)
        .with_context(|| format!("invalid --log-level {:?}", args.log_level))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();

    let spec: SourceSpec = args.source.parse()?;
    let workload = WorkloadIdentity::start(&args).await?;
    let mut inject = InjectConfig {
        trust_domain: args.trust_domain.clone(),
        ..InjectConfig::default()
    };
    if let Some(image) = args.proxy_image {
        inject.proxy_image = image.clone();
        inject.init_image = image;
    }
    // Namespace annotations from a file if given; otherwise from the source (Kubernetes
    // watches Namespaces; a directory has none).
    let from_file: Option<Arc<dyn NamespaceAnnotations>> = match &args.namespace_annotations {
        Some(path) => Some(Arc::new(StaticNamespaces::from_file(path)?)),
        None => None,
    };
    let tls = match (&args.webhook_cert, &args.webhook_key) {
        (Some(cert), Some(key)) => webhook::load_tls(cert, key)?,
        _ => {
            tracing::warn!(
                name = webhook::WEBHOOK_DNS_NAME,
                "no --webhook-cert/--webhook-key: serving the webhook with a self-signed certificate"
            );
            webhook::self_signed_tls()?.0
        }
    };
    // One metrics handle: the writer (and through it the source), the gRPC services and
    // the admin server all count into it.
    let metrics = Arc::new(Metrics::new());
    let trust_domain = args.trust_domain.clone();
    let writer = IndexWriter::with_metrics(
        IndexConfig {
            cluster_domain: args.cluster_domain,
            trust_domain: args.trust_domain,
        },
        Arc::clone(&metrics),
    );
    let reader = writer.subscribe();
    // The first load completes before anything is served.
    let running = source::start(spec, writer)
        .await
        .context("cannot start the source")?;
    let namespaces = from_file
        .or_else(|| running.namespaces())
        .unwrap_or_else(|| Arc::new(StaticNamespaces::default()));

    let grpc_listener = TcpListener::bind(args.grpc_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.grpc_addr))?;
    let admin_listener = TcpListener::bind(args.admin_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.admin_addr))?;
    let webhook_listener = TcpListener::bind(args.webhook_addr)
        .await
        .with_context(|| format!("cannot listen on {}", args.webhook_addr))?;
    let webhook_addr = webhook_listener
        .local_addr()
        .context("webhook listener address")?;
    let grpc_addr = grpc_listener
        .local_addr()
        .context("gRPC listener address")?;
    let admin_addr = admin_listener
        .local_addr()
        .context("admin listener address")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped_flag = stop_rx.clone();
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    // Readiness fails from the shutdown signal on; the admin server itself runs until
    // the gRPC server has drained.
    let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
    let scrape = admin::Scrape {
        metrics: Arc::clone(&metrics),
        index: reader.clone(),
        certs: Some(workload.certs.clone()),
        stopping: Some(stopped_flag.clone()),
        bundle: Some(workload.bundle.clone()),
    };
    let limits = grpc::Limits {
        max_connections: args.max_connections,
        max_streams_per_identity: args.max_streams_per_identity,
        ..grpc::Limits::default()
    };
    let grpc_tls = workload.server_config()?;
    let grpc_stopped = stopped();
    let mut grpc = tokio::spawn(async move {
        grpc::serve(
            grpc_listener,
            grpc_tls,
            &trust_domain,
            reader,
            metrics,
            limits,
            grpc_stopped,
        )
        .await;
    });
    let admin = tokio::spawn(admin::serve(admin_listener, scrape, async move {
        let mut rx = admin_stop_rx;
        let _ = rx.wait_for(|stop| *stop).await;
    }));
    let webhook = tokio::spawn(webhook::serve(
        webhook_listener,
        tls,
        namespaces,
        inject,
        stopped(),
    ));
    tracing::info!(
        grpc = %grpc_addr,
        webhook = %webhook_addr,
        admin = %admin_addr,
        "listening"
    );

    tokio::select! {
        res = &mut grpc => {
            drop(running);
            res.context("gRPC server panicked")?;
            anyhow::bail!("gRPC server stopped unexpectedly");
        }
        sig = shutdown_signal() => sig?,
    }
    tracing::info!("shutting down: not ready, ending streams, draining connections");
    // Not ready at once (the flag), then: dropping the source drops the index writer,
    // which ends every open stream cleanly (clients reconnect, to another replica);
    // the gRPC server stops accepting and sends GOAWAY.
    let _ = stop_tx.send(true);
    drop(running);
    match tokio::time::timeout(SHUTDOWN_GRACE, grpc).await {
        Ok(res) => res.context("gRPC server panicked")?,
        Err(_) => {
            tracing::warn!("gRPC connections still open after {SHUTDOWN_GRACE:?}; exiting anyway")
        }
    }
    let _ = admin_stop_tx.send(true);
    admin.await.context("admin server panicked")?;
    webhook.await.context("webhook server panicked")?;
    Ok(())
}

/// The controller's own workload certificate, from the identity service, kept renewed.
struct WorkloadIdentity {
    certs: Arc<CertStore>,
    bundle: Arc<mesh_proto::workload::TrustBundle>,
}

impl WorkloadIdentity {
    /// Reads the anchors and the token and starts obtaining the certificate.
    async fn start(args: &Args) -> anyhow::Result<Self> {
        use mesh_proto::workload::{IdentityClient, Reload, TokenSource, TrustBundle};
        let Some(anchors_path) = &args.trust_anchors else {
            anyhow::bail!(
                "--trust-anchors is required: the controller serves only over mutual TLS, \
                 with a certificate from the identity service"
            );
        };
        let anchors = std::fs::read_to_string(anchors_path).with_context(|| {
            format!("--trust-anchors {}: cannot read it", anchors_path.display())
        })?;
        let bundle = TrustBundle::from_pem(&anchors)
            .with_context(|| format!("--trust-anchors {}", anchors_path.display()))?;
        // Reloaded live (a ConfigMap volume, or `mesh identity rotate` locally).
        let file = anchors_path.display().to_string();
        tokio::spawn(mesh_proto::workload::watch_file(
            bundle.clone(),
            anchors_path.clone(),
            std::time::Duration::from_secs(1),
            move |reload| match reload {
                Reload::Replaced(b) => {
                    tracing::info!(%file, bundle = %b.id(), anchors = b.anchors().len(), "trust bundle reloaded")
                }
                Reload::Rejected(error) => tracing::warn!(
                    %file,
                    %error,
                    "trust bundle file refused; keeping the last good bundle"
                ),
            },
        ));
        let token = match (&args.identity_token, &args.identity_token_file) {
            (Some(t), _) => TokenSource::Inline(t.trim().to_string()),
            (None, Some(p)) => TokenSource::File(p.clone()),
            (None, None) => anyhow::bail!(
                "--identity-token-file (or --identity-token) is required: the controller gets \
                 its certificate from the identity service like any workload"
            ),
        };
        let td = &args.trust_domain;
        let identity = args
            .identity
            .clone()
            .unwrap_or_else(|| format!("spiffe://{td}/ns/mesh-system/sa/mesh-controller"));
        if !identity.starts_with("spiffe://") {
            anyhow::bail!("--identity {identity}: expected a spiffe:// ID");
        }
        let server_name = args
            .identity_server_name
            .clone()
            .unwrap_or_else(|| format!("identity.mesh-system.svc.{td}"));
        let url = if args.identity_addr.contains("://") {
            args.identity_addr.clone()
        } else {
            format!("https://{}", args.identity_addr)
        };
        let client =
            IdentityClient::new(&url, &server_name, bundle.clone(), identity.clone(), token)
                .context("--identity-addr")?;
        let certs = Arc::new(CertStore::default());
        let store = certs.clone();
        tokio::spawn(async move {
            client
                .keep_renewed(&store, |outcome, wait| match outcome {
                    Ok(issued) => tracing::info!(
                        %identity,
                        expires_in = ?issued.lifetime,
                        renew_in = ?wait,
                        "certificate issued"
                    ),
                    Err(error) => tracing::warn!(
                        %error,
                        retry_in = ?wait,
                        "certificate request failed; keeping the current certificate"
                    ),
                })
                .await;
        });
        Ok(WorkloadIdentity { certs, bundle })
    }

    /// TLS for the gRPC server: this certificate, and a client certificate from the
    /// mesh's anchors required of every caller.
    fn server_config(&self) -> anyhow::Result<Arc<rustls::ServerConfig>> {
        mesh_proto::workload::server_config(self.certs.clone(), self.bundle.clone())
            .context("gRPC server TLS")
    }
}

/// Completes on SIGTERM or Ctrl-C.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {}
        res = tokio::signal::ctrl_c() => res.context("cannot wait for Ctrl-C")?,
    }
    Ok(())
}
