//! Authenticating `Certify` callers by TokenReview: the workload's projected
//! ServiceAccount token (audience [`TOKEN_AUDIENCE`]) is sent to the API server, which
//! says whether it is valid and whose it is. Only an authenticated, audience-bound
//! `system:serviceaccount:<ns>:<sa>` token proves an identity.

use std::time::Duration;

use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus};
use kube::api::PostParams;
use kube::{Api, Client};

use super::TOKEN_AUDIENCE;
use crate::server::{AuthError, Authenticator, ServiceAccount};

/// How long a TokenReview may take before the caller is told to retry.
pub const REVIEW_TIMEOUT: Duration = Duration::from_secs(10);

/// Prefix of a service account's username.
const SA_PREFIX: &str = "system:serviceaccount:";

/// Checks tokens with `POST /apis/authentication.k8s.io/v1/tokenreviews`.
#[derive(Clone)]
pub struct TokenReviewer {
    client: Client,
    timeout: Duration,
}

impl std::fmt::Debug for TokenReviewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenReviewer")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

// === impl TokenReviewer ===

impl TokenReviewer {
    /// Reviews tokens through `client`, each review bounded by [`REVIEW_TIMEOUT`].
    pub fn new(client: Client) -> Self {
        Self {
            client,
            timeout: REVIEW_TIMEOUT,
        }
    }
}

#[tonic::async_trait]
impl Authenticator for TokenReviewer {
    async fn authenticate(&self, token: &[u8]) -> Result<ServiceAccount, AuthError> {
        let token = std::str::from_utf8(token)
            .map_err(|_| AuthError::Rejected("token is not UTF-8".to_string()))?;
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: token.trim().to_string(),
                audiences: Some(vec![TOKEN_AUDIENCE.to_string()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let reviewed =
            tokio::time::timeout(self.timeout, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| {
                    AuthError::Unavailable(format!(
                        "the TokenReview did not answer within {:?}",
                        self.timeout
                    ))
                })?
                .map_err(|e| match e {
                    kube::Error::Api(status) => AuthError::Unavailable(format!(
                        "the Kubernetes API refused the TokenReview ({} {}): {}",
                        status.code, status.reason, status.message
                    )),
                    e => AuthError::Unavailable(format!(
                        "cannot reach the Kubernetes API for a TokenReview: {e}"
                    )),
                })?;
        account_of(reviewed.status.as_ref())
    }
}

/// The service account a TokenReview's status proves, or why it proves none.
pub fn account_of(status: Option<&TokenReviewStatus>) -> Result<ServiceAccount, AuthError> {
    let Some(status) = status else {
        return Err(AuthError::Rejected(
            "the TokenReview came back without a status".to_string(),
        ));
    };
    if status.authenticated != Some(true) {
        let why = status
            .error
            .as_deref()
            .filter(|e| !e.is_empty())
            .unwrap_or("no reason given");
        return Err(AuthError::Rejected(format!(
            "the API server did not authenticate it: {why}"
        )));
    }
    let audiences = status.audiences.as_deref().unwrap_or_default();
    if !audiences.iter().any(|a| a == TOKEN_AUDIENCE) {
        return Err(AuthError::Rejected(format!(
            "its audiences {audiences:?} do not include {TOKEN_AUDIENCE}"
        )));
    }
    let username = status
        .user
        .as_ref()
        .and_then(|u| u.username.as_deref())
        .unwrap_or_default();
    service_account(username).ok_or_else(|| {
        AuthError::Rejected(format!(
            "user {username:?} is not a service account (system:serviceaccount:<namespace>:<name>)"
        ))
    })
}

/// Parses `system:serviceaccount:<ns>:<sa>`.
fn service_account(username: &str) -> Option<ServiceAccount> {
    let (namespace, name) = username.strip_prefix(SA_PREFIX)?.split_once(':')?;
    let valid = |s: &str| crate::spiffe::check_segment("name", s).is_ok() && !s.contains(':');
    (valid(namespace) && valid(name)).then(|| ServiceAccount {
        namespace: namespace.to_string(),
        name: name.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::authentication::v1::UserInfo;

    use super::*;

    fn status(authenticated: bool, audiences: &[&str], user: &str) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| a.to_string()).collect()),
            user: Some(UserInfo {
                username: Some(user.to_string()),
                ..UserInfo::default()
            }),
            error: None,
        }
    }

    #[test]
    fn an_authenticated_audience_bound_service_account_token_proves_its_account() {
        let s = status(
            true,
            &["other", TOKEN_AUDIENCE],
            "system:serviceaccount:shop:web",
        );
        assert_eq!(
            account_of(Some(&s)).unwrap(),
            ServiceAccount {
                namespace: "shop".into(),
                name: "web".into()
            }
        );
    }

    #[test]
    fn everything_else_is_rejected_with_the_reason() {
        let mut unauth = status(false, &[], "");
        unauth.error = Some("token has expired".into());
        let cases = [
            (None, "without a status"),
            (Some(unauth), "did not authenticate it: token has expired"),
            (
                Some(status(
                    false,
                    &[TOKEN_AUDIENCE],
                    "system:serviceaccount:a:b",
                )),
                "no reason given",
            ),
            (
                Some(status(true, &["api"], "system:serviceaccount:a:b")),
                "do not include identity.mesh.dev",
            ),
            (
                Some(status(true, &[TOKEN_AUDIENCE], "alice")),
                "\"alice\" is not a service account",
            ),
            (
                Some(status(true, &[TOKEN_AUDIENCE], "system:serviceaccount:a")),
                "not a service account",
            ),
            (
                Some(status(
                    true,
                    &[TOKEN_AUDIENCE],
                    "system:serviceaccount:a:b:c",
                )),
                "not a service account",
            ),
            (
                Some(status(true, &[TOKEN_AUDIENCE], "system:serviceaccount::b")),
                "not a service account",
            ),
        ];
        for (s, want) in cases {
            let err = account_of(s.as_ref()).unwrap_err();
            assert!(
                matches!(&err, AuthError::Rejected(m) if m.contains(want)),
                "{s:?}: {err}"
            );
        }
    }
}
