//! The `Destination` gRPC service: endpoint streams (`Get`), sent as a full state followed
//! by diffs, and client-side policy streams (`GetPolicy`), sent as snapshots. Each stream
//! is a lazy `unfold` over an index reader, so it ends as soon as the client goes away,
//! and waits on its target's topic, so it only wakes for changes that concern it.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Instant;

use futures::Stream;
use mesh_proto::destination::{
    self as api, destination_server::Destination, update, AddrSet, GetDestination, NoEndpoints,
    ServicePolicy, Update, WeightedAddrSet,
};
use tokio::sync::watch;
use tonic::{Request, Response, Status};

use crate::index::{EndpointSet, IndexReader, Interest, Resolution, Target};
use crate::metrics::{Api, ApiMetrics, Metrics, StreamMetrics};

/// A boxed stream of gRPC messages.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Destination` service, answering from the index.
#[derive(Clone, Debug)]
pub struct DestinationService {
    index: IndexReader,
    get: ApiMetrics,
    policy: ApiMetrics,
}

impl DestinationService {
    /// A service reading `index`, counting its streams in `metrics`.
    pub fn new(index: IndexReader, metrics: &Metrics) -> Self {
        Self {
            index,
            get: metrics.api(Api::Destination),
            policy: metrics.api(Api::Policy),
        }
    }

    /// A reader, the parsed target and the topic of what it depends on (taken before
    /// the caller reads the index, so no change falls in between).
    fn watch(&self, req: &GetDestination, api: &ApiMetrics) -> Result<Watch, Status> {
        let index = self.index.clone();
        let target = index.borrow().parse_target(&req.target).map_err(|e| {
            api.invalid_target();
            Status::invalid_argument(e.to_string())
        })?;
        let topic = index.topic(Interest::of_target(&target));
        Ok(Watch {
            index,
            target,
            topic,
        })
    }
}

/// What a stream watches: the index, its target, and the target's topic.
struct Watch {
    index: IndexReader,
    target: Target,
    topic: watch::Receiver<()>,
}

/// The state of a `Get` stream between messages.
struct GetState {
    index: IndexReader,
    target: Target,
    topic: watch::Receiver<()>,
    /// What the client has been sent (or is queued to be).
    sent: Resolution,
    /// Messages not yet handed over, with the index change that caused each.
    queue: VecDeque<(Update, Option<Instant>)>,
    metrics: StreamMetrics,
}

/// The state of a `GetPolicy` stream between messages.
struct PolicyState {
    index: IndexReader,
    target: Target,
    topic: watch::Receiver<()>,
    /// The target as the client spelled it (policies name it).
    raw: String,
    last: Option<ServicePolicy>,
    metrics: StreamMetrics,
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = BoxStream<Update>;
    type GetPolicyStream = BoxStream<ServicePolicy>;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let Watch {
            index,
            target,
            topic,
        } = self.watch(&req, &self.get)?;
        tracing::debug!(target = %req.target, context = %req.context, "Get");
        let sent = index.borrow().resolve(&target);
        let state = GetState {
            queue: VecDeque::from([(initial(&sent), None)]),
            index,
            target,
            topic,
            sent,
            metrics: self.get.stream_opened(),
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            loop {
                if let Some((update, changed_at)) = st.queue.pop_front() {
                    st.metrics.sent(changed_at);
                    return Some((Ok(update), st));
                }
                st.topic.changed().await.ok()?; // the source stopped: end the stream
                let (next, changed_at) = {
                    let index = st.index.borrow();
                    (index.resolve(&st.target), st.metrics.index_changed_at())
                };
                let updates = diff(&st.sent, &next);
                st.queue
                    .extend(updates.into_iter().map(|u| (u, changed_at)));
                st.sent = next;
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_policy(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<Self::GetPolicyStream>, Status> {
        let req = req.into_inner();
        let Watch {
            index,
            target,
            topic,
        } = self.watch(&req, &self.policy)?;
        tracing::debug!(target = %req.target, context = %req.context, "GetPolicy");
        let state = PolicyState {
            index,
            target,
            topic,
            raw: req.target,
            last: None,
            metrics: self.policy.stream_opened(),
        };
        let stream = futures::stream::unfold(state, |mut st| async move {
            let mut changed_at = None;
            loop {
                if st.last.is_some() {
                    st.topic.changed().await.ok()?;
                }
                let policy = {
                    let index = st.index.borrow();
                    if st.last.is_some() {
                        changed_at = st.metrics.index_changed_at();
                    }
                    index.service_policy(&st.target, &st.raw)
                };
                if st.last.as_ref() != Some(&policy) {
                    st.metrics.sent(changed_at);
                    st.last = Some(policy.clone());
                    return Some((Ok(policy), st));
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }
}

// === diffs ===

/// The first message of a `Get` stream: the full state.
pub fn initial(state: &Resolution) -> Update {
    match state {
        Resolution::Unknown => no_endpoints(false),
        Resolution::Empty => no_endpoints(true),
        Resolution::Endpoints(set) => add(set, set.endpoints.values()),
    }
}

/// The messages that take a client that has received `sent` to `next`; empty when the two
/// are the same. Removals come before additions.
pub fn diff(sent: &Resolution, next: &Resolution) -> Vec<Update> {
    match (sent, next) {
        (Resolution::Endpoints(old), Resolution::Endpoints(new)) => {
            let mut out = Vec::new();
            let gone: Vec<String> = old
                .endpoints
                .keys()
                .filter(|addr| !new.endpoints.contains_key(*addr))
                .cloned()
                .collect();
            if !gone.is_empty() {
                out.push(Update {
                    update: Some(update::Update::Remove(AddrSet { addrs: gone })),
                });
            }
            let labels_changed = old.metric_labels != new.metric_labels;
            let added: Vec<_> = new
                .endpoints
                .iter()
                .filter(|(addr, ep)| labels_changed || old.endpoints.get(*addr) != Some(ep))
                .map(|(_, ep)| ep)
                .collect();
            if !added.is_empty() {
                out.push(add(new, added));
            }
            out
        }
        (_, Resolution::Endpoints(new)) => vec![add(new, new.endpoints.values())],
        (Resolution::Empty, Resolution::Empty) | (Resolution::Unknown, Resolution::Unknown) => {
            Vec::new()
        }
        (_, Resolution::Empty) => vec![no_endpoints(true)],
        (_, Resolution::Unknown) => vec![no_endpoints(false)],
    }
}

fn add<'a>(set: &EndpointSet, eps: impl IntoIterator<Item = &'a api::WeightedAddr>) -> Update {
    Update {
        update: Some(update::Update::Add(WeightedAddrSet {
            endpoints: eps.into_iter().cloned().collect(),
            metric_labels: set.metric_labels.clone(),
        })),
    }
}

fn no_endpoints(exists: bool) -> Update {
    Update {
        update: Some(update::Update::NoEndpoints(NoEndpoints { exists })),
    }
}

#[cfg(test)]
mod tests;
