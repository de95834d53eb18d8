//! Parsing of manifest files: `---`-separated YAML documents (and `kind: List` objects)
//! into [`Resource`]s, dispatching on `apiVersion`/`kind`. Errors name the document, the
//! object and the field path.

use serde::Deserialize;

use super::validate::Invalid;
use super::{
    authz, default_namespace, route, traffic, ObjectMeta, Resource, CORE_V1, POLICY_V1ALPHA1,
};

/// Why a YAML file could not be turned into resources.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    /// The text is not valid YAML.
    #[error("document {doc}: invalid YAML: {error}")]
    Yaml {
        /// 1-based index of the document in the file.
        doc: usize,
        /// The YAML error (carries line and column).
        error: serde_yaml::Error,
    },
    /// A field of a known kind is missing or has the wrong type or value.
    #[error("document {doc} ({kind} {name}): {path}: {message}")]
    Field {
        /// 1-based index of the document in the file.
        doc: usize,
        /// The object's kind.
        kind: String,
        /// The object's name, or `?` when it could not be read.
        name: String,
        /// Path of the offending field, e.g. `spec.ports[0].port`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
    /// A traffic or policy object (route, TrafficPolicy, HTTPFault, AuthorizationPolicy)
    /// has an invalid field.
    #[error("document {doc}: {resource}: {path}: {message}")]
    Invalid {
        /// 1-based index of the document in the file.
        doc: usize,
        /// The object as `<kind> <namespace>/<name>`, e.g. `HTTPRoute demo/api-split`.
        resource: String,
        /// Path of the offending field, e.g. `spec.rules[0].matches[1].path.value`.
        path: String,
        /// What is wrong with it.
        message: String,
    },
}

/// An object of a kind the controller does not handle; reported, then ignored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredObject {
    /// Its `apiVersion`.
    pub api_version: String,
    /// Its `kind`.
    pub kind: String,
    /// Its `metadata.name`, when present.
    pub name: String,
}

/// The contents of one YAML file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ParsedFile {
    /// The objects of kinds the controller handles, in file order.
    pub resources: Vec<Resource>,
    /// The objects of other kinds, which the caller should report.
    pub ignored: Vec<IgnoredObject>,
}

/// Parses one object (e.g. from the Kubernetes API, `apiVersion` and `kind` set).
pub fn parse_object(value: serde_yaml::Value) -> Result<ParsedFile, ParseError> {
    let mut out = ParsedFile::default();
    parse_value(1, "", value, &mut out)?;
    Ok(out)
}

/// Parses a file of `---`-separated YAML documents. `kind: List` objects are flattened.
pub fn parse_documents(text: &str) -> Result<ParsedFile, ParseError> {
    let mut out = ParsedFile::default();
    for (i, doc) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let n = i + 1;
        let value = serde_yaml::Value::deserialize(doc)
            .map_err(|error| ParseError::Yaml { doc: n, error })?;
        parse_value(n, "", value, &mut out)?;
    }
    Ok(out)
}

fn parse_value(
    doc: usize,
    prefix: &str,
    value: serde_yaml::Value,
    out: &mut ParsedFile,
) -> Result<(), ParseError> {
    if value.is_null() {
        return Ok(()); // an empty document, e.g. a trailing `---`
    }
    let text = |v: &serde_yaml::Value, key: &str| {
        v.get(key)
            .and_then(|s| s.as_str())
            .unwrap_or_default()
            .to_string()
    };
    let api_version = text(&value, "apiVersion");
    let kind = text(&value, "kind");
    let name = value
        .get("metadata")
        .map(|m| text(m, "name"))
        .filter(|n| !n.is_empty())
        .unwrap_or_else(|| "?".to_string());
    let field_err = |path: String, message: String| ParseError::Field {
        doc,
        kind: if kind.is_empty() {
            "?".into()
        } else {
            kind.clone()
        },
        name: name.clone(),
        path,
        message,
    };
    if !value.is_mapping() {
        return Err(field_err(
            prefix_path(prefix, ""),
            "expected a mapping".into(),
        ));
    }
    if kind.is_empty() {
        return Err(field_err(
            prefix_path(prefix, "kind"),
            "missing field".into(),
        ));
    }
    let to_err = |e: serde_path_to_error::Error<serde_yaml::Error>| {
        let path = prefix_path(prefix, &e.path().to_string());
        field_err(path, e.into_inner().to_string())
    };
    match (api_version.as_str(), kind.as_str()) {
        (CORE_V1, "Service") => {
            let svc = serde_path_to_error::deserialize(value).map_err(to_err)?;
            out.resources.push(Resource::Service(svc));
        }
        (POLICY_V1ALPHA1, "WorkloadEntry") => {
            let wl = serde_path_to_error::deserialize(value).map_err(to_err)?;
            out.resources.push(Resource::WorkloadEntry(wl));
        }
        (route::GATEWAY_V1 | route::GATEWAY_V1BETA1, "HTTPRoute") => {
            let route = traffic_object(doc, prefix, value, route::http_route)?;
            out.resources.push(Resource::Route(route));
        }
        (route::GATEWAY_V1, "GRPCRoute") => {
            let route = traffic_object(doc, prefix, value, route::grpc_route)?;
            out.resources.push(Resource::Route(route));
        }
        (POLICY_V1ALPHA1, "TrafficPolicy") => {
            let tp = traffic_object(doc, prefix, value, traffic::traffic_policy)?;
            out.resources.push(Resource::TrafficPolicy(tp));
        }
        (POLICY_V1ALPHA1, "HTTPFault") => {
            let fault = traffic_object(doc, prefix, value, traffic::http_fault)?;
            out.resources.push(Resource::HttpFault(fault));
        }
        (POLICY_V1ALPHA1, "AuthorizationPolicy") => {
            let policy = traffic_object(doc, prefix, value, authz::authorization_policy)?;
            out.resources.push(Resource::AuthorizationPolicy(policy));
        }
        (_, "List") => {
            let items = match value.get("items") {
                None => Vec::new(),
                Some(serde_yaml::Value::Sequence(items)) => items.clone(),
                Some(_) => {
                    let path = prefix_path(prefix, "items");
                    return Err(field_err(path, "expected a sequence".into()));
                }
            };
            for (j, item) in items.into_iter().enumerate() {
                parse_value(doc, &format!("{prefix}items[{j}]."), item, out)?;
            }
        }
        _ => out.ignored.push(IgnoredObject {
            api_version,
            kind,
            name,
        }),
    }
    Ok(())
}

/// The `metadata` and `spec` of an object, the rest ignored.
#[derive(Deserialize)]
struct Object<S> {
    metadata: ObjectMeta,
    spec: S,
}

/// Deserializes a traffic kind and validates it with `convert`. Every error, of shape or
/// of value, names the object as `<kind> <namespace>/<name>` and the field path.
fn traffic_object<S, T>(
    doc: usize,
    prefix: &str,
    value: serde_yaml::Value,
    convert: impl FnOnce(ObjectMeta, S) -> Result<T, Invalid>,
) -> Result<T, ParseError>
where
    S: serde::de::DeserializeOwned,
{
    let text = |v: Option<&serde_yaml::Value>, key: &str| {
        v.and_then(|m| m.get(key))
            .and_then(|s| s.as_str())
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let meta = value.get("metadata");
    let kind = text(Some(&value), "kind").unwrap_or_default();
    let invalid =
        |namespace: String, name: String, path: &str, message: String| ParseError::Invalid {
            doc,
            resource: format!("{kind} {namespace}/{name}"),
            path: prefix_path(prefix, path),
            message,
        };
    let object: Object<S> = serde_path_to_error::deserialize(value.clone()).map_err(|e| {
        invalid(
            text(meta, "namespace").unwrap_or_else(default_namespace),
            text(meta, "name").unwrap_or_else(|| "?".to_string()),
            &e.path().to_string(),
            e.into_inner().to_string(),
        )
    })?;
    let (namespace, name) = (
        object.metadata.namespace.clone(),
        object.metadata.name.clone(),
    );
    convert(object.metadata, object.spec).map_err(|e| invalid(namespace, name, &e.path, e.message))
}

fn prefix_path(prefix: &str, path: &str) -> String {
    let p = format!("{prefix}{path}");
    let p = p.trim_end_matches('.');
    if p.is_empty() {
        ".".to_string()
    } else {
        p.to_string()
    }
}
