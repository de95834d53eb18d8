//! The `Certify` gRPC service (DESIGN §4): checks the caller's token, that it
//! names exactly the requested SPIFFE ID, and signs the CSR with the issuer.
//! [`serve`] runs it over TLS next to the admin endpoint.

mod serve;
#[cfg(test)]
mod tests;

pub use serve::{serve, ServeConfig, ServeError};

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_proto::identity::identity_server::Identity;
use mesh_proto::identity::{CertifyRequest, CertifyResponse};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::ca::{Issuer, SignError};
use crate::spiffe;
use crate::token::{self, TokenKey};

/// Counts of `Certify` outcomes since start.
#[derive(Debug, Default)]
struct Counters {
    issued: AtomicU64,
    errors: AtomicU64,
}

/// The identity service: one per process, cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct IdentityService {
    issuer: Arc<Issuer>,
    token_key: Arc<TokenKey>,
    trust_domain: Arc<str>,
    lifetime: Duration,
    counters: Arc<Counters>,
}

impl IdentityService {
    /// A service issuing leaves of `lifetime` for identities of `trust_domain`,
    /// authenticating callers with tokens signed by `token_key`.
    pub fn new(
        issuer: Arc<Issuer>,
        token_key: TokenKey,
        trust_domain: &str,
        lifetime: Duration,
    ) -> Self {
        Self {
            issuer,
            token_key: Arc::new(token_key),
            trust_domain: trust_domain.into(),
            lifetime,
            counters: Arc::default(),
        }
    }

    /// The issuer that signs leaves.
    pub fn issuer(&self) -> &Arc<Issuer> {
        &self.issuer
    }

    /// The trust domain whose identities this service certifies.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// How many certificates have been issued.
    pub fn issued_total(&self) -> u64 {
        self.counters.issued.load(Ordering::Relaxed)
    }

    /// How many `Certify` calls failed (any reason).
    pub fn errors_total(&self) -> u64 {
        self.counters.errors.load(Ordering::Relaxed)
    }

    /// The checks of `Certify`, in order; see the proto for the error codes.
    fn certify_inner(&self, req: &CertifyRequest) -> Result<CertifyResponse, Status> {
        if req.token.is_empty() {
            return Err(Status::unauthenticated(
                "token missing: a token is required",
            ));
        }
        let token = std::str::from_utf8(&req.token)
            .map_err(|_| Status::unauthenticated("token rejected: token is not UTF-8"))?;
        let claims = token::verify(&self.token_key, token, SystemTime::now())
            .map_err(|e| Status::unauthenticated(format!("token rejected: {e}")))?;

        let requested = spiffe::parse(&req.identity)
            .map_err(|e| Status::invalid_argument(format!("identity: {e}")))?;
        if requested.trust_domain != *self.trust_domain {
            return Err(Status::invalid_argument(format!(
                "identity {} is not in trust domain {}",
                req.identity, self.trust_domain
            )));
        }
        if requested.namespace != claims.namespace
            || requested.service_account != claims.service_account
        {
            let token_id = spiffe::spiffe_id(
                &self.trust_domain,
                &claims.namespace,
                &claims.service_account,
            );
            return Err(Status::permission_denied(format!(
                "token is for {token_id} but the request asks for {}",
                req.identity
            )));
        }

        let leaf = self
            .issuer
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
        match self.certify_inner(&req) {
            Ok(resp) => {
                self.counters.issued.fetch_add(1, Ordering::Relaxed);
                Ok(Response::new(resp))
            }
            Err(status) => {
                self.counters.errors.fetch_add(1, Ordering::Relaxed);
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
