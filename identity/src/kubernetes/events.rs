//! Kubernetes Events (events.k8s.io/v1) about the objects the identity service reads,
//! so that `kubectl describe secret` shows why an issuer was refused. Published through
//! kube-runtime's [`Recorder`], which folds a repeated event (same reason about the same
//! object within minutes) into one Event with a growing series count instead of a new
//! object each time. Only the leader posts (every replica sees the same Secret; see
//! [`super::lease`]). Posting is best effort: a failure is logged, never fatal.

use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, Recorder, Reporter};
use kube::Client;
use tokio::sync::watch;
use tracing::{debug, warn};

use super::lease;

pub use kube::runtime::events::EventType;

/// The component named as the Events' reporter.
const COMPONENT: &str = "mesh-identity";
/// Longest note the API server accepts on an Event.
const MAX_NOTE: usize = 1024;
/// How long posting an Event may take before it is given up.
const POST_TIMEOUT: Duration = Duration::from_secs(10);

/// Posts Events about objects (in the objects' namespaces) while this replica leads.
#[derive(Clone)]
pub struct EventRecorder {
    recorder: Recorder,
    leader: watch::Receiver<bool>,
}

impl std::fmt::Debug for EventRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventRecorder").finish_non_exhaustive()
    }
}

// === impl EventRecorder ===

impl EventRecorder {
    /// Records while `leader` reads true.
    pub fn new(client: Client, leader: watch::Receiver<bool>) -> Self {
        let reporter = Reporter {
            controller: COMPONENT.to_string(),
            // The pod name (Kubernetes sets HOSTNAME to it).
            instance: std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
        };
        Self {
            recorder: Recorder::new(client, reporter),
            leader,
        }
    }

    /// Records `reason` about `object` if this replica leads (best effort, bounded by
    /// a timeout). `action` names what was done (`Reload`).
    pub async fn publish(
        &self,
        object: ObjectReference,
        kind: EventType,
        reason: &str,
        action: &str,
        note: &str,
    ) {
        if !lease::is_leader(&self.leader) {
            debug!(reason, "not the leader: the event is left to it");
            return;
        }
        let event = Event {
            type_: kind,
            reason: reason.to_string(),
            note: Some(truncate(note, MAX_NOTE)),
            action: action.to_string(),
            secondary: None,
        };
        let post = self.recorder.publish(&event, &object);
        match tokio::time::timeout(POST_TIMEOUT, post).await {
            Ok(Ok(())) => debug!(reason, "event recorded"),
            Ok(Err(error)) => warn!(reason, %error, "cannot record the event"),
            Err(_) => warn!(
                reason,
                "cannot record the event: no answer within {POST_TIMEOUT:?}"
            ),
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
        assert_eq!(truncate(&"x".repeat(2000), MAX_NOTE).len(), MAX_NOTE);
    }
}
