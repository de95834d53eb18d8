//! The `Destination` gRPC service: endpoint streams (`Get`), sent as a full state followed
//! by diffs, and client-side policy streams (`GetPolicy`), sent as snapshots. Each stream
//! is a lazy `unfold` over an index reader, so it ends as soon as the client goes away.

use std::collections::VecDeque;
use std::pin::Pin;

use futures::Stream;
use mesh_proto::destination::{
    self as api, destination_server::Destination, update, AddrSet, GetDestination, NoEndpoints,
    ServicePolicy, Update, WeightedAddrSet,
};
use tonic::{Request, Response, Status};

use crate::index::{EndpointSet, IndexReader, Resolution, Target};

/// A boxed stream of gRPC messages.
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The `Destination` service, answering from the index.
#[derive(Clone, Debug)]
pub struct DestinationService {
    index: IndexReader,
}

impl DestinationService {
    /// A service reading `index`.
    pub fn new(index: IndexReader) -> Self {
        Self { index }
    }

    /// A fresh reader (marked as having seen the current snapshot) and the parsed target.
    fn watch(&self, req: &GetDestination) -> Result<(IndexReader, Target), Status> {
        let mut index = self.index.clone();
        let target = index
            .borrow_and_update()
            .parse_target(&req.target)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        Ok((index, target))
    }
}

#[tonic::async_trait]
impl Destination for DestinationService {
    type GetStream = BoxStream<Update>;
    type GetPolicyStream = BoxStream<ServicePolicy>;

    async fn get(&self, req: Request<GetDestination>) -> Result<Response<Self::GetStream>, Status> {
        let req = req.into_inner();
        let (index, target) = self.watch(&req)?;
        tracing::debug!(target = %req.target, context = %req.context, "Get");
        let sent = index.borrow().resolve(&target);
        let state = (
            index,
            target,
            sent.clone(),
            VecDeque::from([initial(&sent)]),
        );
        let stream = futures::stream::unfold(state, |(mut index, target, mut sent, mut queue)| {
            async move {
                loop {
                    if let Some(update) = queue.pop_front() {
                        return Some((Ok(update), (index, target, sent, queue)));
                    }
                    index.changed().await.ok()?; // the source stopped: end the stream
                    let next = index.borrow_and_update().resolve(&target);
                    queue.extend(diff(&sent, &next));
                    sent = next;
                }
            }
        });
        Ok(Response::new(Box::pin(stream)))
    }

    async fn get_policy(
        &self,
        req: Request<GetDestination>,
    ) -> Result<Response<Self::GetPolicyStream>, Status> {
        let req = req.into_inner();
        let (index, target) = self.watch(&req)?;
        tracing::debug!(target = %req.target, context = %req.context, "GetPolicy");
        let raw = req.target;
        let state = (index, target, raw, None::<ServicePolicy>);
        let stream = futures::stream::unfold(state, |(mut index, target, raw, last)| async move {
            let mut first = last.is_none();
            loop {
                if !first {
                    index.changed().await.ok()?;
                }
                first = false;
                let policy = index.borrow_and_update().service_policy(&target, &raw);
                if last.as_ref() != Some(&policy) {
                    return Some((Ok(policy.clone()), (index, target, raw, Some(policy))));
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
