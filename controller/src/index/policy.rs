//! Client-side policy of a target (`Destination.GetPolicy`): for now the default policy of
//! a Service port (no routes, the target itself as the only backend, default balancer and
//! retry budget). Later, HTTPRoutes and TrafficPolicies will be folded in here.

use mesh_proto::destination::{Backend, Balancer, ProtocolHint, RetryBudget, ServicePolicy};

use super::{protocol_hint, Index, Target};

/// Default peak-EWMA decay time.
pub const DEFAULT_EWMA_DECAY_MS: u32 = 10_000;

/// The default retry budget: 20 % extra load, at least 10 retries/s, over 10 s.
pub fn default_retry_budget() -> RetryBudget {
    RetryBudget {
        ratio: 0.2,
        min_retries_per_second: 10,
        ttl_ms: 10_000,
    }
}

// === impl Index ===

impl Index {
    /// The policy of `target`; `raw` is the target as the client spelled it, used as the
    /// default backend so the proxy resolves it the same way.
    pub fn service_policy(&self, target: &Target, raw: &str) -> ServicePolicy {
        let svc_port = self.service_port(target);
        let service = match (target, svc_port) {
            (
                Target::Service {
                    name, namespace, ..
                },
                _,
            ) => format!("{name}.{namespace}"),
            (_, Some((svc, _))) => format!("{}.{}", svc.metadata.name, svc.metadata.namespace),
            _ => String::new(),
        };
        let opaque = svc_port.is_some_and(|(_, port)| {
            protocol_hint(port.app_protocol.as_deref()) == ProtocolHint::Opaque
        });
        ServicePolicy {
            service,
            routes: Vec::new(),
            default_backend: Some(Backend {
                target: raw.to_string(),
                weight: 1,
                request_timeout_ms: 0,
            }),
            opaque,
            balancer: Some(Balancer {
                ewma_decay_ms: DEFAULT_EWMA_DECAY_MS,
                ..Balancer::default()
            }),
            retry_budget: Some(default_retry_budget()),
        }
    }
}
