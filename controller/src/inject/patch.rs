//! The admission webhook answers with an RFC 6902 JSON patch from the pod it was sent to
//! the injected pod; this computes it (with the `json-patch` crate's diff).

use serde_json::Value;

/// The RFC 6902 operations that turn `original_pod_json` into `injected_pod_json`, each an
/// object such as `{"op": "add", "path": "/spec/volumes/1", "value": {...}}`.
pub fn patch_for(original_pod_json: &Value, injected_pod_json: &Value) -> Vec<Value> {
    json_patch::diff(original_pod_json, injected_pod_json)
        .0
        .into_iter()
        // Serialising a patch operation (strings, pointers, JSON values) cannot fail.
        .filter_map(|op| serde_json::to_value(op).ok())
        .collect()
}
