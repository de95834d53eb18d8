//! Running against the Kubernetes API: the permissions the controller needs.

pub mod convert;
pub mod freshness;
pub mod rbac;
pub mod source;

/// A client for `config` as the controller uses it: without kube's built-in retries
/// (a `503` retried for minutes with growing waits, hiding an outage from the
/// caller). Every caller retries on its own terms: watches after at most 3 s
/// (`mesh_proto::net::retry`), the injector's namespace lookup fails the review.
pub fn client(mut config: kube::Config) -> Result<kube::Client, kube::Error> {
    config.default_retry = false;
    kube::Client::try_from(config)
}

/// A client of the in-cluster config (or the kubeconfig): see [`client`].
pub async fn connect() -> Result<kube::Client, kube::Error> {
    let config = kube::Config::infer()
        .await
        .map_err(kube::Error::InferConfig)?;
    client(config)
}
