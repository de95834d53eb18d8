//! `mesh-identity`: the mesh certificate authority process. Parses flags,
//! loads the issuer and token key, binds the listeners and runs
//! [`mesh_identity::server::serve`] until SIGTERM or Ctrl-C.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use mesh_identity::files::{IssuerPaths, TOKEN_KEY};
use mesh_identity::server::{self, IdentityService, ServeConfig};
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
    /// Trust anchors PEM (default: DIR/trust-anchors.pem).
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
    /// Address of the admin server (/live, /ready).
    #[arg(long, default_value = "0.0.0.0:9991")]
    admin_addr: SocketAddr,
    /// Trust domain of the SPIFFE IDs issued (also the cluster domain).
    #[arg(long, default_value = "cluster.local")]
    trust_domain: String,
    /// Lifetime of issued leaf certificates, e.g. 20s, 90m, 24h, 1d.
    #[arg(long, default_value = "24h", value_parser = parse_lifetime)]
    cert_lifetime: Duration,
    /// How workloads are authenticated: `local` (tokens from `mesh token`).
    #[arg(long, default_value = "local")]
    source: String,
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

async fn run(args: Args) -> Result<()> {
    if args.source != "local" {
        bail!(
            "--source {}: unsupported identity source (only `local` is available)",
            args.source
        );
    }
    spiffe::check_segment("trust domain", &args.trust_domain).context("--trust-domain")?;
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

    let listener = bind(args.addr, "addr").await?;
    let admin_listener = bind(args.admin_addr, "admin-addr").await?;
    let service = IdentityService::new(
        Arc::new(issuer),
        token_key,
        &args.trust_domain,
        args.cert_lifetime,
    );
    let config = ServeConfig {
        listener,
        admin_listener: Some(admin_listener),
        service,
    };
    server::serve(config, shutdown_signal()).await?;
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
