//! Kubernetes Events (core/v1) about the objects the identity service reads, so that
//! `kubectl describe secret` shows why an issuer was refused. Only the leader posts
//! (every replica sees the same Secret; see [`super::lease`]). Posting is best effort:
//! a failure is logged, never fatal.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{Event, EventSource, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::sync::watch;
use tracing::{debug, warn};

use super::lease;

/// The component named as the Events' source.
const COMPONENT: &str = "mesh-identity";
/// Longest message the API server accepts on an Event.
const MAX_MESSAGE: usize = 1024;
/// How long posting an Event may take before it is given up.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// The type of an Event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// Something went as intended.
    Normal,
    /// Something needs attention.
    Warning,
}

impl EventType {
    fn as_str(self) -> &'static str {
        match self {
            Self::Normal => "Normal",
            Self::Warning => "Warning",
        }
    }
}

/// Posts Events into one namespace.
#[derive(Clone)]
pub struct EventRecorder {
    api: Api<Event>,
    namespace: String,
    instance: Option<String>,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder")
            .field("namespace", &self.namespace)
            .finish_non_exhaustive()
    }
}

// === impl EventRecorder ===

impl EventRecorder {
    /// Posts to `POST /api/v1/namespaces/<namespace>/events` while `leader` reads
    /// true.
    pub fn new(client: Client, namespace: &str, leader: watch::Receiver<bool>) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            namespace: namespace.to_string(),
            // The pod name (Kubernetes sets HOSTNAME to it).
            instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
            leader,
        }
    }

    /// Records `reason` about `object` if this replica leads (best effort, bounded by
    /// a timeout).
    pub async fn publish(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) {
        if !lease::is_leader(&self.leader) {
            debug!(reason, "not the leader: the event is left to it");
            return;
        }
        let event = self.event(object, kind, reason, message);
        let params = PostParams::default();
        let post = self.api.create(&params, &event);
        match tokio::time::timeout(POST_TIMEOUT, post).await {
            Ok(Ok(_)) => debug!(reason, "event recorded"),
            Ok(Err(error)) => warn!(reason, %error, "cannot record the event"),
            Err(_) => warn!(
                reason,
                "cannot record the event: no answer within {POST_TIMEOUT:?}"
            ),
        }
    }

    fn event(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        message: &str,
    ) -> Event {
        let now = Time(Timestamp::now());
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let name = format!("{}.{nanos:x}", object.name.as_deref().unwrap_or(COMPONENT));
        Event {
            metadata: ObjectMeta {
                name: Some(name),
                namespace: Some(self.namespace.clone()),
                ..ObjectMeta::default()
            },
            involved_object: object,
            reason: Some(reason.to_string()),
            message: Some(truncate(message, MAX_MESSAGE)),
            type_: Some(kind.as_str().to_string()),
            count: Some(1),
            first_timestamp: Some(now.clone()),
            last_timestamp: Some(now),
            source: Some(EventSource {
                component: Some(COMPONENT.to_string()),
                host: None,
            }),
            reporting_component: Some(COMPONENT.to_string()),
            reporting_instance: self.instance.clone(),
            ..Event::default()
        }
    }
}

/// `s` cut to at most `max` bytes on a character boundary.
fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s[..end].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_messages_are_cut_on_a_character_boundary() {
        assert_eq!(truncate("abc", 10), "abc");
        assert_eq!(truncate("aé", 2), "a");
        assert_eq!(truncate(&"x".repeat(2000), MAX_MESSAGE).len(), MAX_MESSAGE);
    }
}
