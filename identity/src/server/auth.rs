//! Who is calling `Certify`: an [`Authenticator`] turns the request's token into the
//! service account it proves, or an [`AuthError`] that maps to a gRPC status. Local
//! mode checks tokens signed by the service's own key ([`LocalTokens`]); Kubernetes
//! mode asks the API server (`crate::kubernetes::TokenReviewer`).

use std::time::SystemTime;

use thiserror::Error;
use tonic::Status;

use crate::token::{self, TokenKey};

/// The service account a token proved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceAccount {
    /// The workload's namespace.
    pub namespace: String,
    /// The workload's service account name.
    pub name: String,
}

/// Why a token did not authenticate its caller.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum AuthError {
    /// The request carried no token.
    #[error("token missing: a token is required")]
    Missing,
    /// The token was checked and refused (the message says why).
    #[error("token rejected: {0}")]
    Rejected(String),
    /// The token could not be checked now (e.g. the API server is unreachable).
    #[error("token not checked: {0}")]
    Unavailable(String),
}

impl From<AuthError> for Status {
    fn from(e: AuthError) -> Self {
        match e {
            AuthError::Missing | AuthError::Rejected(_) => Status::unauthenticated(e.to_string()),
            AuthError::Unavailable(_) => Status::unavailable(e.to_string()),
        }
    }
}

/// Checks a workload token.
#[tonic::async_trait]
pub trait Authenticator: std::fmt::Debug + Send + Sync + 'static {
    /// The service account `token` proves. `token` is non-empty.
    async fn authenticate(&self, token: &[u8]) -> Result<ServiceAccount, AuthError>;
}

/// Local mode: tokens minted by `mesh token` with the service's HMAC key.
#[derive(Debug, Clone)]
pub struct LocalTokens {
    key: TokenKey,
}

// === impl LocalTokens ===

impl LocalTokens {
    /// Accepts tokens signed with `key`.
    pub fn new(key: TokenKey) -> Self {
        Self { key }
    }
}

#[tonic::async_trait]
impl Authenticator for LocalTokens {
    async fn authenticate(&self, token: &[u8]) -> Result<ServiceAccount, AuthError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| AuthError::Rejected("token is not UTF-8".to_string()))?;
        let claims = token::verify(&self.key, token, SystemTime::now())
            .map_err(|e| AuthError::Rejected(e.to_string()))?;
        Ok(ServiceAccount {
            namespace: claims.namespace,
            name: claims.service_account,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn local_tokens_prove_their_account() {
        let key = TokenKey::generate().unwrap();
        let auth = LocalTokens::new(key.clone());
        let token = token::mint(&key, "shop", "web", Duration::from_secs(60));
        assert_eq!(
            auth.authenticate(token.as_bytes()).await.unwrap(),
            ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
        let err = auth.authenticate(&[0xff, 0xfe]).await.unwrap_err();
        assert_eq!(err.to_string(), "token rejected: token is not UTF-8");
    }

    #[test]
    fn errors_map_to_codes() {
        let s = Status::from(AuthError::Missing);
        assert_eq!(s.code(), tonic::Code::Unauthenticated);
        let s = Status::from(AuthError::Rejected("expired".into()));
        assert_eq!(
            (s.code(), s.message()),
            (tonic::Code::Unauthenticated, "token rejected: expired")
        );
        let s = Status::from(AuthError::Unavailable("API server down".into()));
        assert_eq!(s.code(), tonic::Code::Unavailable);
    }
}
