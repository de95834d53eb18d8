//! Running the identity service: serves `Certify` over TLS (the serving certificate
//! follows the current issuer, see `tls.rs`) with the control plane's connection, stream
//! and idle limits (`mesh_proto::server`), runs the admin endpoint (probes and
//! metrics), and stops gracefully when the shutdown future completes.

use std::future::Future;
use std::sync::Arc;

use mesh_proto::identity::identity_server::IdentityServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tracing::info;

use super::tls::{self, ServingCerts};
use super::IdentityService;

/// What [`serve`] needs: bound listeners and the service.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where `Certify` is served over TLS (bind `0.0.0.0:8080` in production).
    pub listener: TcpListener,
    /// Where `/live`, `/ready` and `/metrics` are served, if anywhere (`0.0.0.0:9991`).
    pub admin_listener: Option<TcpListener>,
    /// The service to run.
    pub service: IdentityService,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The serving certificate or the TLS configuration could not be made.
    #[error("{0}")]
    Tls(String),
    /// A listener's address could not be read.
    #[error("listener: {0}")]
    Io(std::io::Error),
}

impl From<std::io::Error> for ServeError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// DNS names of the serving certificate for `trust_domain` (used as the
/// cluster domain): the in-cluster Service names and `localhost`.
pub fn serving_dns_names(trust_domain: &str) -> Vec<String> {
    vec![
        format!("identity.mesh-system.svc.{trust_domain}"),
        format!("mesh-identity.mesh-system.svc.{trust_domain}"),
        "localhost".to_string(),
    ]
}

/// Serves until `shutdown` completes, then drains in-flight calls and returns.
pub async fn serve(
    config: ServeConfig,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    crate::install_crypto_provider();
    let ServeConfig {
        listener,
        admin_listener,
        service,
    } = config;
    let td = service.trust_domain().to_string();
    let certs = ServingCerts::new(service.issuer.clone(), &td).map_err(ServeError::Tls)?;
    let tls_config = tls::server_config(certs).map_err(ServeError::Tls)?;

    let addr = listener.local_addr()?;
    let admin_addr = match &admin_listener {
        Some(l) => l.local_addr()?.to_string(),
        None => "none".to_string(),
    };
    let metrics_service = service.clone();
    let render: Arc<dyn Fn() -> String + Send + Sync> =
        Arc::new(move || metrics_service.render_metrics());
    // `/ready` fails from the shutdown signal on, while calls in flight finish.
    let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let admin =
        admin_listener.map(|l| tokio::spawn(crate::admin::serve(l, render, stopping.clone())));
    let shutdown = async move {
        shutdown.await;
        stopping.store(true, std::sync::atomic::Ordering::Relaxed);
        info!("stopping: not ready, draining");
    };

    let routes = tonic::service::Routes::new(IdentityServer::new(service));
    info!(%addr, admin = %admin_addr, trust_domain = %td, "listening");
    // Workloads call before they have a certificate: TLS without client
    // authentication, bounded like every control-plane listener.
    mesh_proto::server::serve(
        listener,
        tls_config,
        routes,
        mesh_proto::server::Limits::default(),
        None,
        shutdown,
    )
    .await;
    if let Some(admin) = admin {
        admin.abort();
    }
    info!("stopped");
    Ok(())
}
