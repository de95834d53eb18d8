//! One `Destination.Get` stream: applies full states and diffs to the
//! endpoint set, and reconnects with backoff when the stream breaks.

use super::{EndpointMeta, EndpointSet, NewEndpoint, TlsTarget};
use crate::metrics::{ControlLabels, Metrics};
use mesh_proto::destination::{
    destination_client::DestinationClient, update, GetDestination, Update, WeightedAddr,
};
use std::{collections::HashMap, net::SocketAddr, sync::Arc};
use tokio::sync::watch;
use tonic::transport::Channel;

type Tx<T> = watch::Sender<Option<Arc<EndpointSet<T>>>>;

/// The endpoints delivered so far on the current stream.
struct State<T> {
    exists: bool,
    endpoints: HashMap<SocketAddr, (EndpointMeta, Arc<T>)>,
}

impl<T> State<T> {
    /// Applies one update; `fresh` marks the first message of a stream,
    /// which replaces everything (but reuses unchanged endpoints' state).
    fn apply(&mut self, update: Update, fresh: bool, new: &NewEndpoint<T>, target: &str) {
        let mut previous = if fresh {
            std::mem::take(&mut self.endpoints)
        } else {
            HashMap::new()
        };
        match update.update {
            Some(update::Update::Add(set)) => {
                self.exists = true;
                for wa in set.endpoints {
                    let Some(meta) = meta(&wa, &set.metric_labels, target) else {
                        continue;
                    };
                    let reused = previous
                        .remove(&meta.addr)
                        .or_else(|| self.endpoints.remove(&meta.addr))
                        .filter(|(old, _)| *old == meta);
                    let state = match reused {
                        Some((_, s)) => s,
                        None => Arc::new(new(&meta)),
                    };
                    self.endpoints.insert(meta.addr, (meta, state));
                }
            }
            Some(update::Update::Remove(set)) => {
                for a in set.addrs {
                    if let Ok(addr) = a.parse::<SocketAddr>() {
                        self.endpoints.remove(&addr);
                    }
                }
            }
            Some(update::Update::NoEndpoints(ne)) => {
                self.exists = ne.exists;
                self.endpoints.clear();
            }
            None => {}
        }
    }

    fn snapshot(&self) -> Arc<EndpointSet<T>> {
        let mut eps: Vec<_> = self.endpoints.values().collect();
        eps.sort_by_key(|(m, _)| m.addr);
        Arc::new(EndpointSet::new(
            self.exists,
            eps.into_iter().map(|(_, s)| s.clone()).collect(),
        ))
    }
}

fn meta(
    wa: &WeightedAddr,
    shared: &std::collections::HashMap<String, String>,
    target: &str,
) -> Option<EndpointMeta> {
    let addr: SocketAddr = match wa.addr.parse() {
        Ok(a) => a,
        Err(_) => {
            tracing::warn!(%target, addr = %wa.addr, "ignoring endpoint with a bad address");
            return None;
        }
    };
    let tls = match &wa.tls {
        None => None,
        Some(t) => {
            let proxy_addr = if t.proxy_addr.is_empty() {
                SocketAddr::new(addr.ip(), 4143)
            } else {
                match t.proxy_addr.parse() {
                    Ok(a) => a,
                    Err(_) => {
                        tracing::warn!(%target, proxy_addr = %t.proxy_addr, "ignoring endpoint with a bad proxy address");
                        return None;
                    }
                }
            };
            Some(TlsTarget {
                identity: t.identity.clone(),
                proxy_addr,
            })
        }
    };
    // The endpoint's own labels win over the set's.
    let label = |k: &str| {
        let v = wa.metric_labels.get(k).or_else(|| shared.get(k));
        crate::metrics::Str::from(v.map(String::as_str).unwrap_or_default())
    };
    Some(EndpointMeta {
        addr,
        tls,
        workload: label("workload"),
        namespace: label("namespace"),
    })
}

/// Runs the watch until every reader is gone.
pub(super) async fn run<T: Send + Sync + 'static>(
    client: DestinationClient<Channel>,
    target: String,
    context: String,
    new: NewEndpoint<T>,
    tx: Tx<T>,
    metrics: Arc<Metrics>,
) {
    let gauge = metrics
        .control_connected
        .get_or_create_owned(&ControlLabels {
            component: "destination",
        });
    let mut state = State {
        exists: false,
        endpoints: HashMap::new(),
    };
    let open = || {
        let mut client = client.clone();
        let req = GetDestination {
            target: target.clone(),
            context: context.clone(),
        };
        async move { client.get(req).await }
    };
    let on_message = |update: Update, fresh: bool| {
        state.apply(update, fresh, &new, &target);
        let snap = state.snapshot();
        tracing::debug!(%target, endpoints = snap.endpoints.len(), exists = snap.exists, "discovery update");
        tx.send_replace(Some(snap));
    };
    super::reconnect::run("destination", &target, open, on_message, tx.closed(), gauge).await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_proto::destination::{AddrSet, NoEndpoints, WeightedAddrSet};

    fn wa(addr: &str, id: &str) -> WeightedAddr {
        WeightedAddr {
            addr: addr.into(),
            weight: 1,
            tls: Some(mesh_proto::destination::TlsTarget {
                identity: id.into(),
                proxy_addr: String::new(),
            }),
            ..Default::default()
        }
    }

    fn add(eps: Vec<WeightedAddr>) -> Update {
        Update {
            update: Some(update::Update::Add(WeightedAddrSet {
                endpoints: eps,
                ..Default::default()
            })),
        }
    }

    fn counting() -> (NewEndpoint<usize>, Arc<std::sync::atomic::AtomicUsize>) {
        let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let c = n.clone();
        (
            Arc::new(move |_m: &EndpointMeta| c.fetch_add(1, std::sync::atomic::Ordering::SeqCst)),
            n,
        )
    }

    #[test]
    fn diffs_and_fresh_states() {
        let (new, created) = counting();
        let mut s = State::<usize> {
            exists: false,
            endpoints: HashMap::new(),
        };
        s.apply(add(vec![wa("127.0.0.1:1", "a")]), true, &new, "t");
        s.apply(add(vec![wa("127.0.0.1:2", "a")]), false, &new, "t");
        assert_eq!(s.snapshot().endpoints.len(), 2);
        assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 2);
        assert_eq!(
            s.endpoints[&"127.0.0.1:1".parse().unwrap()].1.as_ref(),
            &0usize
        );

        // Remove one.
        s.apply(
            Update {
                update: Some(update::Update::Remove(AddrSet {
                    addrs: vec!["127.0.0.1:1".into()],
                })),
            },
            false,
            &new,
            "t",
        );
        assert_eq!(s.snapshot().endpoints.len(), 1);

        // A reconnect's full state replaces everything, keeping unchanged state.
        s.apply(
            add(vec![wa("127.0.0.1:2", "a"), wa("127.0.0.1:3", "a")]),
            true,
            &new,
            "t",
        );
        assert_eq!(s.snapshot().endpoints.len(), 2);
        assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 3);

        // Changed identity => new endpoint state.
        s.apply(add(vec![wa("127.0.0.1:2", "b")]), false, &new, "t");
        assert_eq!(created.load(std::sync::atomic::Ordering::SeqCst), 4);

        s.apply(
            Update {
                update: Some(update::Update::NoEndpoints(NoEndpoints { exists: false })),
            },
            false,
            &new,
            "t",
        );
        let snap = s.snapshot();
        assert!(!snap.exists);
        assert!(snap.pick().is_none());
    }

    #[test]
    fn bad_addresses_are_skipped() {
        let (new, _) = counting();
        let mut s = State::<usize> {
            exists: false,
            endpoints: HashMap::new(),
        };
        s.apply(
            add(vec![wa("nope", "a"), wa("127.0.0.1:9", "a")]),
            true,
            &new,
            "t",
        );
        let snap = s.snapshot();
        assert_eq!(snap.endpoints.len(), 1);
        assert!(snap.exists);
    }
}
