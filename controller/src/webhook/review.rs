//! AdmissionReview v1 (`admission.k8s.io/v1`) as the webhook reads and writes it, and
//! [`review`], the pure function from a request body to a response body.
//!
//! Only the fields the injector needs are modelled; the rest of a request is ignored.
//! A request that cannot be understood is answered `allowed: true` (the webhook is
//! registered with `failurePolicy: Ignore`, so refusing would only block pods for a bug)
//! with `status` naming the problem, code 400.

use base64::Engine as _;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::NamespaceAnnotations;
use crate::inject::{inject_pod, patch_for, InjectConfig, Outcome};

/// The `apiVersion` of the reviews this webhook speaks.
pub const ADMISSION_API_VERSION: &str = "admission.k8s.io/v1";
/// The `kind` of a review.
pub const ADMISSION_KIND: &str = "AdmissionReview";

/// An AdmissionReview: a request from the API server, or the webhook's response.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// Always [`ADMISSION_API_VERSION`].
    pub api_version: String,
    /// Always [`ADMISSION_KIND`].
    pub kind: String,
    /// What the API server asks about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// The webhook's answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// The part of an admission request the injector reads.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Identifies the request; the response echoes it.
    pub uid: String,
    /// The kind of the object under review.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// The namespace of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// `CREATE`, `UPDATE`, `DELETE` or `CONNECT`.
    #[serde(default)]
    pub operation: String,
    /// The object as it would be stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<Value>,
    /// Whether the request will not be persisted (the injector has no side effects).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dry_run: Option<bool>,
}

/// A Kubernetes group, version and kind (`group` is empty for the core group).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupVersionKind {
    /// The API group; empty for core.
    #[serde(default)]
    pub group: String,
    /// The API version (`v1`).
    #[serde(default)]
    pub version: String,
    /// The kind (`Pod`).
    #[serde(default)]
    pub kind: String,
}

/// The webhook's answer to one request.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the object may be admitted.
    pub allowed: bool,
    /// `JSONPatch` when there is a patch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// The RFC 6902 patch array, JSON then base64.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Why the request could not be handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<ResponseStatus>,
}

/// The status of a response that reports a problem.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// What went wrong.
    pub message: String,
    /// An HTTP-like code: 400 for a request the webhook cannot read.
    pub code: u16,
}

/// A request the webhook cannot read, with the uid if it was found.
struct BadRequest(String);

/// Answers one AdmissionReview request body with a response body. Pod CREATEs are run
/// through [`inject_pod`] (never forced) with the pod's annotations and its namespace's;
/// everything else is allowed unchanged. Never fails: a malformed request gets an
/// `allowed` response whose `status` (code 400) names the problem, and uid `""` when even
/// the uid cannot be read.
pub fn review(body: &[u8], namespaces: &dyn NamespaceAnnotations, cfg: &InjectConfig) -> Vec<u8> {
    let (uid, result) = match serde_json::from_slice::<Value>(body) {
        Err(e) => (
            String::new(),
            Err(BadRequest(format!("body is not JSON: {e}"))),
        ),
        Ok(value) => {
            let uid = value
                .pointer("/request/uid")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            (uid, decide(value, namespaces, cfg))
        }
    };
    let response = match result {
        Ok(None) => AdmissionResponse {
            uid,
            allowed: true,
            patch_type: None,
            patch: None,
            status: None,
        },
        Ok(Some(patch)) => AdmissionResponse {
            uid,
            allowed: true,
            patch_type: Some("JSONPatch".to_string()),
            patch: Some(base64::engine::general_purpose::STANDARD.encode(patch)),
            status: None,
        },
        Err(BadRequest(message)) => {
            tracing::warn!(uid, %message, "malformed admission review; allowing unchanged");
            AdmissionResponse {
                uid,
                allowed: true,
                patch_type: None,
                patch: None,
                status: Some(ResponseStatus { message, code: 400 }),
            }
        }
    };
    let review = AdmissionReview {
        api_version: ADMISSION_API_VERSION.to_string(),
        kind: ADMISSION_KIND.to_string(),
        request: None,
        response: Some(response),
    };
    // Strings, booleans and integers only: serialising cannot fail.
    serde_json::to_vec(&review).unwrap_or_default()
}

/// The namespace a review's request is in, if the body says (for a lookup before the
/// review).
pub fn namespace_of(body: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let request = value.get("request")?;
    request
        .get("namespace")
        .or_else(|| request.get("object")?.get("metadata")?.get("namespace"))
        .and_then(Value::as_str)
        // A namespace name is a DNS label: anything else is not looked up.
        .filter(|ns| {
            !ns.is_empty()
                && ns.len() <= 63
                && ns
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        .map(str::to_string)
}

/// The JSON patch (serialised) for a request, `None` to admit it unchanged.
fn decide(
    value: Value,
    namespaces: &dyn NamespaceAnnotations,
    cfg: &InjectConfig,
) -> Result<Option<Vec<u8>>, BadRequest> {
    let api_version = value.get("apiVersion").and_then(Value::as_str);
    let kind = value.get("kind").and_then(Value::as_str);
    if api_version != Some(ADMISSION_API_VERSION) || kind != Some(ADMISSION_KIND) {
        return Err(BadRequest(format!(
            "expected apiVersion {ADMISSION_API_VERSION} and kind {ADMISSION_KIND}, got {} {}",
            api_version.unwrap_or("<none>"),
            kind.unwrap_or("<none>"),
        )));
    }
    let review: AdmissionReview = serde_json::from_value(value)
        .map_err(|e| BadRequest(format!("invalid AdmissionReview: {e}")))?;
    let request = review
        .request
        .ok_or_else(|| BadRequest("AdmissionReview has no request".to_string()))?;
    if !request.kind.group.is_empty() || request.kind.kind != "Pod" {
        tracing::debug!(uid = request.uid, kind = ?request.kind, "not a pod; allowing");
        return Ok(None);
    }
    if request.operation != "CREATE" {
        tracing::debug!(
            uid = request.uid,
            op = request.operation,
            "not a CREATE; allowing"
        );
        return Ok(None);
    }
    let object = request
        .object
        .ok_or_else(|| BadRequest("request has no object".to_string()))?;
    let pod: Pod = serde_json::from_value(object)
        .map_err(|e| BadRequest(format!("object is not a Pod: {e}")))?;
    let spec = pod
        .spec
        .as_ref()
        .ok_or_else(|| BadRequest("pod has no spec".to_string()))?;
    let meta = &pod.metadata;
    let namespace = request
        .namespace
        .as_deref()
        .or(meta.namespace.as_deref())
        .unwrap_or_default();
    let ns_annotations = namespaces.annotations(namespace).unwrap_or_else(|| {
        tracing::debug!(namespace, "namespace annotations unknown; assuming none");
        Default::default()
    });
    let name = meta
        .name
        .as_deref()
        .or(meta.generate_name.as_deref())
        .unwrap_or("<unnamed>");
    match inject_pod(meta, spec, &ns_annotations, false, cfg) {
        Outcome::Skipped(reason) => {
            tracing::info!(uid = request.uid, namespace, pod = name, %reason, "not injecting");
            Ok(None)
        }
        Outcome::Injected { meta, spec } => {
            let injected = Pod {
                metadata: meta,
                spec: Some(spec),
                ..pod.clone()
            };
            // Diff the typed pods, not the raw JSON: fields this build of the API types
            // does not know must not turn into `remove` operations.
            let invalid = |e: serde_json::Error| BadRequest(format!("cannot serialise pod: {e}"));
            let before = serde_json::to_value(&pod).map_err(invalid)?;
            let after = serde_json::to_value(&injected).map_err(invalid)?;
            let patch = serde_json::to_vec(&patch_for(&before, &after)).map_err(invalid)?;
            tracing::info!(
                uid = request.uid,
                namespace,
                pod = name,
                "injecting the proxy"
            );
            Ok(Some(patch))
        }
    }
}
