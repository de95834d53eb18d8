//! Simulated proxies: each holds the three streams a real proxy holds on its own
//! connection to the controller (`Destination.Get` and `Destination.GetPolicy` for the
//! Service it calls, `InboundPolicy.Watch` for its own pod) and records when change
//! markers reach it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use mesh_proto::destination::destination_client::DestinationClient;
use mesh_proto::destination::{update, GetDestination};
use mesh_proto::policy::inbound_policy_client::InboundPolicyClient;
use mesh_proto::policy::InboundTarget;
use tonic::transport::Channel;

use super::objects::{marker_index, POD_PORT};

/// What the simulated proxies saw.
#[derive(Debug, Default)]
pub struct Recorder {
    /// For every marker address an endpoint update added: the proxies it reached and
    /// when it first did.
    pub seen: Mutex<HashMap<usize, HashMap<usize, Instant>>>,
    /// Streams that received their first message.
    pub opened: AtomicUsize,
    /// Streams that ended or failed.
    pub dropped: AtomicUsize,
    /// Messages received after the first, by API: Get, GetPolicy, Watch.
    pub updates: [AtomicU64; 3],
}

impl Recorder {
    /// How many proxies marker `n` reached.
    pub fn delivered(&self, n: usize) -> usize {
        let seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        seen.get(&n).map_or(0, HashMap::len)
    }

    /// Messages received after the first on each API: (Get, GetPolicy, Watch).
    pub fn update_counts(&self) -> [u64; 3] {
        [0, 1, 2].map(|i| self.updates[i].load(Ordering::Relaxed))
    }
}

/// One simulated proxy: proxy number `id` calling `target` from pod `workload`
/// (`namespace/name`).
pub struct Proxy {
    pub id: usize,
    pub target: String,
    pub workload: String,
}

impl Proxy {
    /// Opens the three streams on `channel` and records into `rec` until they end.
    pub fn spawn(self, channel: Channel, rec: Arc<Recorder>) {
        let Proxy {
            id,
            target,
            workload,
        } = self;
        let req = GetDestination {
            target: target.clone(),
            context: String::new(),
        };
        let (get_rec, get_req, get_ch) = (rec.clone(), req.clone(), channel.clone());
        tokio::spawn(async move {
            let mut client = DestinationClient::new(get_ch);
            let Ok(rsp) = client.get(get_req).await else {
                get_rec.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            };
            let mut stream = rsp.into_inner();
            let mut first = true;
            while let Ok(Some(msg)) = stream.message().await {
                let now = Instant::now();
                if std::mem::take(&mut first) {
                    get_rec.opened.fetch_add(1, Ordering::Relaxed);
                } else {
                    get_rec.updates[0].fetch_add(1, Ordering::Relaxed);
                }
                let Some(update::Update::Add(set)) = msg.update else {
                    continue;
                };
                let markers: Vec<usize> = set
                    .endpoints
                    .iter()
                    .filter_map(
                        |e| match e.addr.parse::<std::net::SocketAddr>().ok()?.ip() {
                            IpAddr::V4(ip) => marker_index(ip),
                            IpAddr::V6(_) => None,
                        },
                    )
                    .collect();
                if !markers.is_empty() {
                    let mut seen = get_rec.seen.lock().unwrap_or_else(|p| p.into_inner());
                    for m in markers {
                        seen.entry(m).or_default().entry(id).or_insert(now);
                    }
                }
            }
            get_rec.dropped.fetch_add(1, Ordering::Relaxed);
        });
        let (policy_rec, policy_ch) = (rec.clone(), channel.clone());
        tokio::spawn(async move {
            let mut client = DestinationClient::new(policy_ch);
            count_messages(client.get_policy(req).await, &policy_rec, 1).await;
        });
        tokio::spawn(async move {
            let mut client = InboundPolicyClient::new(channel);
            let req = InboundTarget {
                workload,
                port: u32::from(POD_PORT),
            };
            count_messages(client.watch(req).await, &rec, 2).await;
        });
    }
}

/// Reads a stream to its end, counting its first message as opened and the rest as
/// updates of API `api`.
async fn count_messages<T>(
    rsp: Result<tonic::Response<tonic::Streaming<T>>, tonic::Status>,
    rec: &Recorder,
    api: usize,
) {
    if let Ok(rsp) = rsp {
        let mut stream = rsp.into_inner();
        let mut first = true;
        while let Ok(Some(_)) = stream.message().await {
            if std::mem::take(&mut first) {
                rec.opened.fetch_add(1, Ordering::Relaxed);
            } else {
                rec.updates[api].fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    rec.dropped.fetch_add(1, Ordering::Relaxed);
}
