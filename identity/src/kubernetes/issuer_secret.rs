//! The issuer, from a Secret (`tls.crt`, `tls.key`) in the control-plane namespace,
//! watched with a field selector on its name. Every new version is checked with
//! [`Issuer::load`] against the trust anchors: a good one replaces the current issuer
//! at once (no restart), a bad one is refused — the current issuer keeps signing, an
//! error is logged and a Warning Event `IssuerRejected` is posted on the Secret.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{ObjectReference, Secret};
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, ResourceExt};
use thiserror::Error;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, info, warn};

use super::events::{EventRecorder, EventType};
use super::{KubeError, ISSUER_CERT_KEY, ISSUER_KEY_KEY};
use crate::ca::{CaError, Issuer, SharedIssuer};
use crate::metrics::{Metrics, ReloadResult};

/// Why an issuer Secret was refused.
#[derive(Debug, Error)]
pub enum SecretError {
    /// A required key is absent.
    #[error("the Secret has no {0:?} key")]
    MissingKey(&'static str),
    /// A key's value is not text.
    #[error("the Secret's {0:?} is not UTF-8 PEM")]
    NotUtf8(&'static str),
    /// The certificate and key do not make a usable issuer.
    #[error(transparent)]
    Ca(#[from] CaError),
}

/// Loads the issuer a Secret holds, checked against `anchors_pem`.
pub fn load(secret: &Secret, anchors_pem: &str) -> Result<Issuer, SecretError> {
    let text = |key: &'static str| {
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(key))
            .ok_or(SecretError::MissingKey(key))?;
        std::str::from_utf8(&bytes.0).map_err(|_| SecretError::NotUtf8(key))
    };
    Ok(Issuer::load(
        text(ISSUER_CERT_KEY)?,
        text(ISSUER_KEY_KEY)?,
        anchors_pem,
    )?)
}

/// Where the issuer comes from.
#[derive(Clone, Debug)]
pub struct IssuerSource {
    /// The control-plane namespace.
    pub namespace: String,
    /// The Secret's name.
    pub name: String,
    /// The trust bundle the issuer must chain to (PEM), as it changes: a new bundle
    /// checks the Secret again.
    pub anchors: watch::Receiver<String>,
}

/// What the watch has achieved so far.
#[derive(Clone, Debug)]
enum State {
    /// No valid issuer yet; the last problem seen, if any.
    Waiting(Option<String>),
    /// An issuer is loaded; later versions are swapped into this handle.
    Serving(SharedIssuer),
}

/// Starts watching the Secret and waits (at most `timeout`) for its first valid issuer;
/// reloads and refusals are recorded with `events`. Returns the handle the service
/// signs with and the watch task (abort it to stop).
pub async fn start(
    client: Client,
    source: IssuerSource,
    events: EventRecorder,
    metrics: Arc<Metrics>,
    timeout: Duration,
) -> Result<(SharedIssuer, JoinHandle<()>), KubeError> {
    let (tx, mut rx) = watch::channel(State::Waiting(None));
    let api: Api<Secret> = Api::namespaced(client, &source.namespace);
    let task = tokio::spawn(
        Watch {
            source: source.clone(),
            metrics,
            events,
            state: tx,
            last: None,
            refused: None,
        }
        .run(api),
    );
    let first = async {
        loop {
            if let State::Serving(issuer) = &*rx.borrow_and_update() {
                return Some(issuer.clone());
            }
            if rx.changed().await.is_err() {
                return None;
            }
        }
    };
    if let Ok(Some(issuer)) = tokio::time::timeout(timeout, first).await {
        return Ok((issuer, task));
    }
    task.abort();
    let reason = match &*rx.borrow() {
        State::Waiting(Some(reason)) => reason.clone(),
        _ => "the watch delivered nothing".to_string(),
    };
    Err(KubeError::NoIssuer {
        namespace: source.namespace,
        name: source.name,
        waited: timeout,
        reason,
    })
}

/// The running watch of one Secret.
struct Watch {
    source: IssuerSource,
    metrics: Arc<Metrics>,
    events: EventRecorder,
    state: watch::Sender<State>,
    /// `tls.crt` and `tls.key` of the version handled last (relists repeat it).
    last: Option<(Vec<u8>, Vec<u8>)>,
    /// The Event about that version when it was refused: a relist that finds it still
    /// there reports it again (folded into the Event's series, not a new Event).
    refused: Option<(ObjectReference, String)>,
}

// === impl Watch ===

impl Watch {
    async fn run(mut self, api: Api<Secret>) {
        let config =
            watcher::Config::default().fields(&format!("metadata.name={}", self.source.name));
        let stream = mesh_proto::kubernetes::watch(api, config);
        futures::pin_mut!(stream);
        let mut listed = false;
        let mut anchors = self.source.anchors.clone();
        let mut anchors_open = true;
        let mut latest: Option<Secret> = None;
        loop {
            let event = tokio::select! {
                event = stream.next() => match event {
                    Some(event) => event,
                    None => return,
                },
                changed = anchors.changed(), if anchors_open => {
                    anchors_open = changed.is_ok();
                    // A new bundle: the Secret is checked again against it (an issuer
                    // refused before may chain to it now, or no longer).
                    if let (true, Some(secret)) = (anchors_open, latest.clone()) {
                        self.last = None;
                        self.handle(&secret).await;
                    }
                    continue;
                }
            };
            if let Ok(Event::InitApply(secret) | Event::Apply(secret)) = &event {
                latest = Some(secret.clone());
            }
            match event {
                Ok(Event::Init) => listed = false,
                Ok(Event::InitApply(secret) | Event::Apply(secret)) => {
                    listed = true;
                    self.handle(&secret).await;
                }
                Ok(Event::InitDone) if !listed => {
                    warn!(secret = %self.name(), "issuer Secret not found; keeping the current issuer");
                    self.waiting(format!("Secret {} not found", self.name()));
                }
                Ok(Event::InitDone) => {}
                Ok(Event::Delete(_)) => {
                    warn!(secret = %self.name(), "issuer Secret deleted; keeping the current issuer");
                }
                Err(e) => {
                    warn!(secret = %self.name(), error = %e, "issuer Secret watch failed; retrying");
                    self.waiting(format!("cannot watch Secret {}: {e}", self.name()));
                }
            }
        }
    }

    /// `namespace/name` of the Secret.
    fn name(&self) -> String {
        format!("{}/{}", self.source.namespace, self.source.name)
    }

    /// Records a problem while no issuer is loaded yet.
    fn waiting(&self, reason: String) {
        self.state.send_if_modified(|s| match s {
            State::Waiting(_) => {
                *s = State::Waiting(Some(reason));
                true
            }
            State::Serving(_) => false,
        });
    }

    /// Loads a version of the Secret, unless it is the one handled last.
    async fn handle(&mut self, secret: &Secret) {
        let field = |k: &str| {
            secret
                .data
                .as_ref()
                .and_then(|d| d.get(k))
                .map(|b| b.0.clone())
                .unwrap_or_default()
        };
        let content = (field(ISSUER_CERT_KEY), field(ISSUER_KEY_KEY));
        if self.last.as_ref() == Some(&content) {
            if let Some((object, message)) = self.refused.clone() {
                self.report_refusal(object, &message).await;
            }
            return;
        }
        self.last = Some(content);
        let object = reference(secret);
        let anchors = self.source.anchors.borrow().clone();
        match load(secret, &anchors) {
            Ok(issuer) => self.accept(issuer, object).await,
            Err(e) => self.reject(&e, object).await,
        }
    }

    async fn accept(&mut self, issuer: Issuer, object: ObjectReference) {
        self.refused = None;
        self.metrics.issuer_reload(ReloadResult::Ok);
        let not_after = issuer.not_after();
        let valid_until = k8s_time(not_after);
        let issuer = Arc::new(issuer);
        let current = match &*self.state.borrow() {
            State::Serving(shared) => Some(shared.clone()),
            State::Waiting(_) => None,
        };
        match current {
            Some(shared) => {
                shared.replace(issuer);
                info!(secret = %self.name(), %valid_until, "issuer reloaded from the Secret");
                let message = format!("new issuer loaded, valid until {valid_until}");
                self.events
                    .publish(
                        object,
                        EventType::Normal,
                        "IssuerUpdated",
                        "Reload",
                        &message,
                    )
                    .await;
            }
            None => {
                info!(secret = %self.name(), %valid_until, "issuer loaded from the Secret");
                self.state
                    .send_replace(State::Serving(SharedIssuer::new(issuer)));
            }
        }
    }

    async fn reject(&mut self, e: &SecretError, object: ObjectReference) {
        self.metrics.issuer_reload(ReloadResult::Rejected);
        let serving = matches!(&*self.state.borrow(), State::Serving(_));
        let keeping = if serving {
            "keeping the current issuer"
        } else {
            "no issuer is loaded yet"
        };
        error!(secret = %self.name(), reason = %e, "issuer refused; {keeping}");
        let message = format!("issuer refused ({keeping}): {e}");
        self.waiting(format!("Secret {}: {e}", self.name()));
        self.report_refusal(object.clone(), &message).await;
        self.refused = Some((object, message));
    }

    /// Records the Warning Event about a refused issuer (a repeat of the same refusal
    /// joins the same Event's series).
    async fn report_refusal(&self, object: ObjectReference, message: &str) {
        self.events
            .publish(
                object,
                EventType::Warning,
                "IssuerRejected",
                "Reload",
                message,
            )
            .await;
    }
}

/// An Event's reference to `secret`.
fn reference(secret: &Secret) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".to_string()),
        kind: Some("Secret".to_string()),
        name: Some(secret.name_any()),
        namespace: secret.namespace(),
        uid: secret.uid(),
        resource_version: secret.resource_version(),
        field_path: None,
    }
}

/// RFC 3339 text of a time, for logs and Events.
fn k8s_time(t: std::time::SystemTime) -> String {
    k8s_openapi::jiff::Timestamp::try_from(t).map_or_else(|_| format!("{t:?}"), |ts| ts.to_string())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::ByteString;

    use super::*;
    use crate::ca::{generate_issuer, generate_trust_anchor};

    fn secret(data: &[(&str, &str)]) -> Secret {
        Secret {
            data: Some(
                data.iter()
                    .map(|(k, v)| (k.to_string(), ByteString(v.as_bytes().to_vec())))
                    .collect::<BTreeMap<_, _>>(),
            ),
            ..Secret::default()
        }
    }

    #[test]
    fn loads_a_chaining_issuer_and_names_what_is_wrong_otherwise() {
        let (anchor, anchor_key) = generate_trust_anchor("cluster.local").unwrap();
        let (cert, key) = generate_issuer(&anchor, &anchor_key, "cluster.local").unwrap();
        let good = secret(&[(ISSUER_CERT_KEY, &cert), (ISSUER_KEY_KEY, &key)]);
        load(&good, &anchor).unwrap();

        let err = load(&secret(&[(ISSUER_CERT_KEY, &cert)]), &anchor).unwrap_err();
        assert_eq!(err.to_string(), "the Secret has no \"tls.key\" key");

        let (other, other_key) = generate_trust_anchor("cluster.local").unwrap();
        let (cert2, key2) = generate_issuer(&other, &other_key, "cluster.local").unwrap();
        let err = load(
            &secret(&[(ISSUER_CERT_KEY, &cert2), (ISSUER_KEY_KEY, &key2)]),
            &anchor,
        )
        .unwrap_err();
        assert!(
            matches!(err, SecretError::Ca(CaError::Untrusted { .. })),
            "{err}"
        );

        let err = load(
            &secret(&[(ISSUER_CERT_KEY, &cert), (ISSUER_KEY_KEY, &key2)]),
            &anchor,
        )
        .unwrap_err();
        assert!(
            matches!(err, SecretError::Ca(CaError::KeyMismatch)),
            "{err}"
        );
    }
}
