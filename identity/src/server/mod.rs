//! The `Certify` gRPC service (DESIGN §4): authenticates the caller's token, checks
//! that it names exactly the requested SPIFFE ID, and signs the CSR with the current
//! issuer. [`serve`] runs it over TLS next to the admin endpoint.

mod auth;
mod serve;
#[cfg(test)]
mod tests;
mod tls;

pub use auth::{AuthError, Authenticator, LocalTokens, ServiceAccount};
pub use serve::{serve, serving_dns_names, ServeConfig, ServeError};

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use mesh_proto::identity::identity_server::Identity;
use mesh_proto::identity::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::ca::{Issuer, SharedIssuer, SignError};
use crate::metrics::Metrics;
use crate::spiffe;
use crate::token::TokenKey;

/// What an [`IdentityService`] is made of.
#[derive(Debug, Clone)]
pub struct ServiceConfig {
    /// The issuer signing leaves; a reloader may swap it while the service runs.
    pub issuer: SharedIssuer,
    /// How callers' tokens are checked.
    pub authenticator: Arc<dyn Authenticator>,
    /// The trust domain whose identities are certified (e.g. `cluster.local`).
    pub trust_domain: String,
    /// Lifetime of issued leaves (capped by the issuer's own expiry).
    pub lifetime: Duration,
    /// Where outcomes are counted.
    pub metrics: Arc<Metrics>,
}

/// The identity service: one per process, cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct IdentityService {
    issuer: SharedIssuer,
    authenticator: Arc<dyn Authenticator>,
    trust_domain: Arc<str>,
    lifetime: Duration,
    metrics: Arc<Metrics>,
}

// === impl IdentityService ===

impl IdentityService {
    /// Local mode: a service issuing leaves of `lifetime` for identities of
    /// `trust_domain`, authenticating callers with tokens signed by `token_key`.
    pub fn new(
        issuer: Arc<Issuer>,
        token_key: TokenKey,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Self {
        Self::with_config(ServiceConfig {
            issuer: SharedIssuer::new(issuer),
            authenticator: Arc::new(LocalTokens::new(token_key)),
            trust_domain: trust_domain.to_string(),
            lifetime,
            metrics: Arc::default(),
        })
    }

    /// A service from its parts (any authenticator, a reloadable issuer).
    pub fn with_config(config: ServiceConfig) -> Self {
        Self {
            issuer: config.issuer,
            authenticator: config.authenticator,
            trust_domain: config.trust_domain.into(),
            lifetime: config.lifetime,
            metrics: config.metrics,
        }
    }

    /// The issuer signing leaves now.
    pub fn issuer(&self) -> Arc<Issuer> {
        self.issuer.current()
    }

    /// The trust domain whose identities this service certifies.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The service's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The Prometheus text of [`Self::metrics`], with the current issuer's expiry.
    pub fn render_metrics(&self) -> String {
        self.metrics.render_for(&self.issuer())
    }

    /// How many certificates have been issued.
    pub fn issued_total(&self) -> u64 {
        self.metrics.issued_total()
    }

    /// How many `Certify` calls failed (any reason).
    pub fn errors_total(&self) -> u64 {
        self.metrics.errors_total()
    }

    /// The checks of `Certify`, in order; see the proto for the error codes.
    async fn certify_inner(&self, req: &CertifyRequest) -> Result<CertifyResponse, Status> {
        if req.token.is_empty() {
            return Err(AuthError::Missing.into());
        }
        let account = self.authenticator.authenticate(&req.token).await?;

        let requested = spiffe::parse(&req.identity)
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        if requested.trust_domain != *self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "identity {} is not in trust domain {}",
                req.identity, self.trust_domain
            )));
        }
        if requested.namespace != account.namespace || requested.service_account != account.name {
            let token_id = spiffe::spiffe_id(&self.trust_domain, &account.namespace, &account.name);
            return Err(Status::permission_denied(format!(
                "token is for {token_id} but the request asks for {}",
                req.identity
            )));
        }

        let leaf = self
            .issuer()
            .sign_csr(
                &req.certificate_signing_request,
                &req.identity,
                self.lifetime,
            )
            .map_err(|e| match e {
                SignError::Sign(_) | SignError::Random => Status::internal(e.to_string()),
                _ => Status::invalid_argument(e.to_string()),
            })?;
        let valid_until = leaf
            .valid_until
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        info!(
            identity = %req.identity,
            valid_until_unix = valid_until,
            lifetime_secs = self.lifetime.as_secs(),
            "issued certificate"
        );
        Ok(CertifyResponse {
            leaf_certificate: leaf.leaf_der,
            intermediate_certificates: leaf.intermediates_der,
            valid_until_unix_seconds: i64::try_from(valid_until).unwrap_or(i64::MAX),
        })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(
        &self,
        request: Request<CertifyRequest>,
    ) -> Result<Response<CertifyResponse>, Status> {
        let req = request.into_inner();
        match self.certify_inner(&req).await {
            Ok(resp) => {
                self.metrics.certificate_issued();
                Ok(Response::new(resp))
            }
            Err(status) => {
                self.metrics.certify_error(status.code());
                warn!(
                    identity = %req.identity,
                    code = ?status.code(),
                    reason = status.message(),
                    "certify refused"
                );
                Err(status)
            }
        }
    }
}
