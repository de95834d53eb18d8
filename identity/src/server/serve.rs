//! Running the identity service: issues the TLS serving certificate from the
//! issuer, serves `Certify` over TLS with tonic, runs the admin endpoint, and
//! stops gracefully when the shutdown future completes.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, SystemTime};

use mesh_proto::identity::identity_server::IdentityServer;
use thiserror::Error;
use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Identity as TlsIdentity, Server, ServerTlsConfig};
use tracing::info;

use super::IdentityService;
use crate::ca::SignError;
use crate::spiffe;

/// Longest lifetime of the serving certificate (it is also capped by the issuer).
const SERVING_CERT_LIFETIME: Duration = Duration::from_secs(365 * 86_400);

/// What [`serve`] needs: bound listeners and the service.
#[derive(Debug)]
pub struct ServeConfig {
    /// Where `Certify` is served over TLS (bind `0.0.0.0:8080` in production).
    pub listener: TcpListener,
    /// Where `/live` and `/ready` are served, if anywhere (`0.0.0.0:9991`).
    pub admin_listener: Option<TcpListener>,
    /// The service to run.
    pub service: IdentityService,
}

/// Why the server could not start or stopped with an error.
#[derive(Debug, Error)]
pub enum ServeError {
    /// The serving certificate could not be issued.
    #[error("issuing the serving certificate: {0}")]
    ServingCert(SignError),
    /// A listener's address could not be read.
    #[error("listener: {0}")]
    Io(std::io::Error),
    /// tonic failed to configure TLS or to serve (message includes the causes).
    #[error("gRPC server: {0}")]
    Transport(String),
}

impl From<SignError> for ServeError {
    fn from(e: SignError) -> Self {
        Self::ServingCert(e)
    }
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
/// cluster domain): the in-cluster Service name and `localhost`.
pub fn serving_dns_names(trust_domain: &str) -> Vec<String> {
    vec![
        format!("identity.mesh-system.svc.{trust_domain}"),
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
    let issuer = service.issuer().clone();
    let lifetime = issuer
        .not_after()
        .duration_since(SystemTime::now())
        .unwrap_or_default()
        .min(SERVING_CERT_LIFETIME);
    let (chain, key) = issuer.issue_serving_cert(
        &serving_dns_names(&td),
        &[IpAddr::V4(Ipv4Addr::LOCALHOST)],
        &spiffe::spiffe_id(&td, "mesh-system", "mesh-identity"),
        lifetime,
    )?;
    let tls = ServerTlsConfig::new().identity(TlsIdentity::from_pem(chain, key));

    let addr = listener.local_addr()?;
    let admin_addr = match &admin_listener {
        Some(l) => l.local_addr()?.to_string(),
        None => "none".to_string(),
    };
    let admin = admin_listener.map(|l| tokio::spawn(crate::admin::serve(l)));

    let router = Server::builder()
        .tls_config(tls)?
        .add_service(IdentityServer::new(service));
    info!(%addr, admin = %admin_addr, trust_domain = %td, "listening");
    let result = router
        .serve_with_incoming_shutdown(TcpIncoming::from(listener), shutdown)
        .await;
    if let Some(admin) = admin {
        admin.abort();
    }
    info!("stopped");
    Ok(result?)
}
