//! The control plane's side of the Kubernetes API, shared by the controller and the
//! identity service: clients without kube's built-in retry, and watches that relist at
//! once on `410 Gone` and otherwise back off at most 3 s ([`crate::net::retry`]).

use futures::Stream;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Config};
use serde::de::DeserializeOwned;

/// A client for `config` without kube's built-in retries, which retry a `503` for
/// minutes with growing waits and hide an outage from the caller. Every caller retries
/// on its own terms: watches through [`watch`], the others where they are made.
pub fn client(mut config: Config) -> Result<Client, kube::Error> {
    config.default_retry = false;
    Client::try_from(config)
}

/// A [`client`] of the in-cluster config (or the kubeconfig).
pub async fn connect() -> Result<Client, kube::Error> {
    let config = Config::infer().await.map_err(kube::Error::InferConfig)?;
    client(config)
}

/// A watch whose resource version expired (`410 Gone`, the API server compacted the
/// history it would resume from): the watcher lists again, and need not wait.
pub fn expired(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(status) if status.code == 410)
}

/// The events of `api` under `config`, retried after errors with
/// [`crate::net::retry::with_backoff`] (a relist after `410 Gone` at once).
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> impl Stream<Item = Result<Event<K>, watcher::Error>> + Send
where
    K: kube::Resource + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    crate::net::retry::with_backoff(Box::pin(watcher::watcher(api, config)), expired)
}
