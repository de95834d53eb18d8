//! Running the identity service: serves `Certify` over TLS with tonic (the serving
//! certificate follows the current issuer, see `tls.rs`), runs the admin endpoint
//! (probes and metrics), and stops gracefully when the shutdown future completes.

use std::future::Future;
use std::sync::Arc;

use mesh_proto::identity::identity_server::IdentityServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::Server;
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
    /// tonic failed to serve (message includes the causes).
    #[error("gRPC server: {0}")]
    Transport(String),
}

impl From<std::io::Error> for ServeError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<tonic::transport::Error> for ServeError {
    fn from(e: tonic::transport::Error) -> Self {
        // tonic's own message is only the kind; the detail is in its sources.
        let mut msg = e.to_string();
        let mut cause = std::error::Error::source(&e);
        while let Some(c) = cause {
            msg.push_str(": ");
            msg.push_str(&c.to_string());
            cause = c.source();
        }
        Self::Transport(msg)
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
    let admin = admin_listener.map(|l| tokio::spawn(crate::admin::serve(l, render)));

    let router = Server::builder().add_service(IdentityServer::new(service));
    info!(%addr, admin = %admin_addr, trust_domain = %td, "listening");
    let result = router
        .serve_with_incoming_shutdown(tls::incoming(listener, tls_config), shutdown)
        .await;
    if let Some(admin) = admin {
        admin.abort();
    }
    info!("stopped");
    Ok(result?)
}
