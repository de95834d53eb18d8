//! `mesh-identity`: the mesh certificate authority process. Parses flags, starts
//! the identity source (local: issuer and token key from files; kubernetes:
//! TokenReview, the issuer Secret and the trust bundle), binds the listeners and
//! runs [`mesh_identity::server::serve`] until SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use mesh_identity::ca::SharedIssuer;
use mesh_identity::files::{IssuerPaths, TOKEN_KEY};
use mesh_identity::kubernetes::{self, lease, KubeMode, KubeSettings, LeaseSettings};
use mesh_identity::metrics::Metrics;
use mesh_identity::server::{self, IdentityService, LocalTokens, ServeConfig, ServiceConfig};
use mesh_identity::token::TokenKey;
use mesh_identity::{duration, spiffe};
use tokio::net::TcpListener;
use tracing::info;

/// The mesh certificate authority: signs workload certificates for proxies.
#[derive(Debug, Parser)]
#[command(name = "mesh-identity", version)]
struct Args {
    /// Identity directory written by `mesh identity init`.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Trust anchors PEM (default: DIR/trust-anchors.pem; required with
    /// `--source kubernetes`, where they are also the published trust bundle).
    #[arg(long, value_name = "PATH")]
    trust_anchors: Option<PathBuf>,
    /// Issuer certificate PEM (default: DIR/issuer.crt).
    #[arg(long, value_name = "PATH")]
    issuer_cert: Option<PathBuf>,
    /// Issuer private key PEM (default: DIR/issuer.key).
    #[arg(long, value_name = "PATH")]
    issuer_key: Option<PathBuf>,
    /// Token key for local-mode tokens (default: DIR/token.key).
    #[arg(long, value_name = "PATH")]
    token_key: Option<PathBuf>,
    /// Address of the Certify gRPC (TLS) server.
    #[arg(long, default_value = "0.0.0.0:8080")]
    addr: SocketAddr,
    /// Address of the admin server (/live, /ready, /metrics).
    #[arg(long, default_value = "0.0.0.0:9991")]
    admin_addr: SocketAddr,
    /// Trust domain of the SPIFFE IDs issued (also the cluster domain).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of issued leaf certificates, e.g. 20s, 90m, 24h, 1d.
    #[arg(long, default_value = "24h", value_parser = parse_lifetime)]
    cert_lifetime: Duration,
    /// Where identities and the issuer come from: `local` (tokens from `mesh token`,
    /// issuer files) or `kubernetes` (TokenReview, the issuer Secret).
    #[arg(long, value_enum, default_value = "local")]
    source: Source,
    /// Control-plane namespace holding the issuer Secret (kubernetes source).
    #[arg(long, env = "POD_NAMESPACE", default_value = kubernetes::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Secret holding the issuer's `tls.crt` and `tls.key`, watched and reloaded on
    /// change (kubernetes source).
    #[arg(long, value_name = "NAME", default_value = kubernetes::DEFAULT_ISSUER_SECRET)]
    issuer_secret: String,
}

/// Where identities and the issuer come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum Source {
    /// Issuer and token key from files; tokens minted by `mesh token`.
    Local,
    /// Service-account tokens checked by TokenReview; issuer from a Secret.
    Kubernetes,
}

fn parse_lifetime(s: &str) -> Result<Duration, duration::ParseDurationError> {
    duration::parse(s)
}

/// Picks an explicit path, else `DIR/name`, else fails naming the flag.
fn path_for(
    explicit: &Option<PathBuf>,
    dir: &Option<PathBuf>,
    name: &str,
    flag: &str,
) -> Result<PathBuf> {
    match (explicit, dir) {
        (Some(p), _) => Ok(p.clone()),
        (None, Some(d)) => Ok(d.join(name)),
        (None, None) => bail!("--{flag} (or --dir) is required"),
    }
}

async fn bind(addr: SocketAddr, flag: &str) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .with_context(|| format!("--{flag} {addr}: cannot listen"))
}

async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut sig) => {
                sig.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => info!("Ctrl-C received, shutting down"),
        () = term => info!("SIGTERM received, shutting down"),
    }
}

/// The local source: issuer and token key from files.
fn local_service(args: &Args) -> Result<IdentityService> {
    let paths = IssuerPaths {
        trust_anchors: path_for(
            &args.trust_anchors,
            &args.dir,
            mesh_identity::files::TRUST_ANCHORS,
            "trust-anchors",
        )?,
        issuer_cert: path_for(
            &args.issuer_cert,
            &args.dir,
            mesh_identity::files::ISSUER_CERT,
            "issuer-cert",
        )?,
        issuer_key: path_for(
            &args.issuer_key,
            &args.dir,
            mesh_identity::files::ISSUER_KEY,
            "issuer-key",
        )?,
    };
    let token_key_path = path_for(&args.token_key, &args.dir, TOKEN_KEY, "token-key")?;
    let issuer = paths.load().context("loading the issuer")?;
    let token_key = TokenKey::load(&token_key_path).context("loading the token key")?;
    let issuer = SharedIssuer::new(Arc::new(issuer));
    let metrics = Arc::new(Metrics::new());
    // Anchors and issuer are reloaded live (`mesh identity rotate`).
    tokio::spawn(mesh_identity::issuer_files::watch(
        paths,
        issuer.clone(),
        metrics.clone(),
        mesh_identity::issuer_files::POLL,
    ));
    Ok(IdentityService::with_config(ServiceConfig {
        issuer,
        authenticator: Arc::new(LocalTokens::new(token_key)),
        trust_domain: args.trust_domain.clone(),
        lifetime: args.cert_lifetime,
        metrics,
    }))
}

/// The kubernetes source: TokenReview, the issuer Secret, the published trust bundle.
/// The returned [`KubeMode`] owns the watches; keep it alive while serving.
async fn kubernetes_service(args: &Args) -> Result<(IdentityService, KubeMode)> {
    for (set, flag) in [
        (args.dir.is_some(), "dir"),
        (args.issuer_cert.is_some(), "issuer-cert"),
        (args.issuer_key.is_some(), "issuer-key"),
        (args.token_key.is_some(), "token-key"),
    ] {
        if set {
            bail!("--{flag} is not used with --source kubernetes (the issuer comes from Secret --issuer-secret)");
        }
    }
    let Some(anchors_path) = &args.trust_anchors else {
        bail!("--trust-anchors is required with --source kubernetes");
    };
    let anchors = std::fs::read_to_string(anchors_path)
        .with_context(|| format!("--trust-anchors {}: cannot read it", anchors_path.display()))?;
    let count = mesh_identity::ca::parse_trust_anchors(&anchors)
        .with_context(|| format!("--trust-anchors {}", anchors_path.display()))?;
    // kube's error repeats its causes in its own message: print that message once.
    let client = mesh_identity::kubernetes::connect().await.map_err(|e| {
        anyhow::anyhow!("connecting to the Kubernetes API (in-cluster config or kubeconfig): {e}")
    })?;
    let metrics = Arc::new(Metrics::new());
    let lease = LeaseSettings::new(lease::holder_identity()).context("leader election")?;
    info!(
        namespace = %args.namespace,
        identity = lease.identity(),
        secret = %args.issuer_secret,
        anchors = count,
        "waiting for the issuer Secret"
    );
    let settings = KubeSettings {
        namespace: args.namespace.clone(),
        issuer_secret: args.issuer_secret.clone(),
        trust_anchors_pem: anchors,
        trust_anchors_file: Some(anchors_path.clone()),
        startup_timeout: kubernetes::DEFAULT_STARTUP_TIMEOUT,
        lease,
    };
    let kube_mode = kubernetes::start(client, settings, metrics.clone()).await?;
    let service = IdentityService::with_config(ServiceConfig {
        issuer: kube_mode.issuer.clone(),
        authenticator: kube_mode.authenticator.clone(),
        trust_domain: args.trust_domain.clone(),
        lifetime: args.cert_lifetime,
        metrics,
    });
    Ok((service, kube_mode))
}

async fn run(args: Args) -> Result<()> {
    spiffe::check_segment("trust domain", &args.trust_domain).context("--trust-domain")?;
    let (service, kube_mode) = match args.source {
        Source::Local => (local_service(&args)?, None),
        Source::Kubernetes => {
            let (service, kube_mode) = kubernetes_service(&args).await?;
            (service, Some(kube_mode))
        }
    };

    let listener = bind(args.addr, "addr").await?;
    let admin_listener = bind(args.admin_addr, "admin-addr").await?;
    let config = ServeConfig {
        listener,
        admin_listener: Some(admin_listener),
        service,
    };
    // On the signal a leader hands its Lease back at once, while the server drains.
    let release = kube_mode.as_ref().map(KubeMode::release_handle);
    let shutdown = async move {
        shutdown_signal().await;
        if let Some(r) = &release {
            r.release();
        }
    };
    server::serve(config, shutdown).await?;
    if let Some(mut k) = kube_mode {
        k.step_down(Duration::from_secs(5)).await;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = match Args::try_parse() {
        Ok(args) => args,
        // --help and --version go to stdout and exit 0.
        Err(e) if !e.use_stderr() => e.exit(),
        Err(e) => {
            let msg = e.to_string();
            let line = msg.lines().next().unwrap_or_default();
            eprintln!("mesh-identity: {line}");
            std::process::exit(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    mesh_identity::install_crypto_provider();
    if let Err(e) = run(args).await {
        eprintln!("mesh-identity: error: {e:#}");
        std::process::exit(1);
    }
}
