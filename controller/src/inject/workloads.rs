//! Injection of whole Kubernetes objects, as JSON: finds the pod (template) inside a Pod,
//! a Deployment, StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job or CronJob
//! (and in the items of a `List`), runs [`inject_pod`] / [`uninject_pod`] on it and writes
//! the result back, leaving the rest of the object as it was. Shared by `mesh inject` and
//! the webhook.

use std::collections::BTreeMap;
use std::fmt;

use k8s_openapi::api::core::v1::PodSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde_json::Value;

use super::{inject_pod, uninject_pod, InjectConfig, Outcome, SkipReason, WORKLOAD_ANNOTATION};

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    /// `kind/name`, the kind in lower case (`deployment/web`).
    pub resource: String,
    /// What was done to it.
    pub change: Change,
}

/// The fate of one object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Its pod (template) was meshed.
    Injected,
    /// The injected proxy was removed from its pod (template).
    Uninjected,
    /// Its pod (template) was left as it was, for this reason.
    Skipped(SkipReason),
    /// `mesh uninject` on a pod (template) without a proxy.
    NotInjected,
    /// The object has no pod template; it passes through unchanged.
    NotAWorkload,
    /// The pod template could not be read; the object passes through unchanged.
    Invalid(String),
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let r = &self.resource;
        match &self.change {
            Change::Injected => write!(f, "{r} injected"),
            Change::Uninjected => write!(f, "{r} uninjected"),
            Change::Skipped(reason) => write!(f, "{r} skipped: {reason}"),
            Change::NotInjected => write!(f, "{r} skipped: not injected"),
            Change::NotAWorkload => write!(f, "{r} skipped: not a workload"),
            Change::Invalid(e) => write!(f, "{r} skipped: invalid pod template: {e}"),
        }
    }
}

impl Report {
    /// Whether the object was changed.
    pub fn changed(&self) -> bool {
        matches!(self.change, Change::Injected | Change::Uninjected)
    }
}

/// Injects the pod templates in `object` (and in its items, for a List) in place, with
/// the same rules as [`inject_pod`]; returns one report per object, in document order.
pub fn inject_object(
    object: &mut Value,
    namespace_annotations: &BTreeMap<String, String>,
    force: bool,
    cfg: &InjectConfig,
) -> Vec<Report> {
    let mut reports = Vec::new();
    visit(
        object,
        &mut |meta, spec, owner| {
            // A template's pods belong to the object that holds it.
            let mut meta = meta.clone();
            if let Some(owner) = owner {
                meta.annotations
                    .get_or_insert_with(BTreeMap::new)
                    .entry(WORKLOAD_ANNOTATION.to_string())
                    .or_insert_with(|| owner.to_string());
            }
            match inject_pod(&meta, spec, namespace_annotations, force, cfg) {
                Outcome::Injected { meta, spec } => Ok((meta, spec)),
                Outcome::Skipped(reason) => Err(Change::Skipped(reason)),
            }
        },
        Change::Injected,
        &mut reports,
    );
    reports
}

/// Removes the injected proxy from the pod templates in `object`, in place.
pub fn uninject_object(object: &mut Value) -> Vec<Report> {
    let mut reports = Vec::new();
    visit(
        object,
        &mut |meta, spec, _| uninject_pod(meta, spec).ok_or(Change::NotInjected),
        Change::Uninjected,
        &mut reports,
    );
    reports
}

/// A rewrite of one pod template (given the name of the workload object holding it, for
/// templates): the new metadata and spec, or why there is none.
type Rewrite<'a> =
    dyn FnMut(&ObjectMeta, &PodSpec, Option<&str>) -> Result<(ObjectMeta, PodSpec), Change> + 'a;

/// Applies `rewrite` to every pod template in `object`, reporting `done` where it worked.
fn visit(object: &mut Value, rewrite: &mut Rewrite<'_>, done: Change, reports: &mut Vec<Report>) {
    let kind = object
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    if kind.ends_with("List") {
        if let Some(items) = object.get_mut("items").and_then(Value::as_array_mut) {
            for item in items {
                visit(item, rewrite, done.clone(), reports);
            }
            return;
        }
    }
    let name = object
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or("<unnamed>");
    let resource = format!("{}/{name}", kind.to_lowercase());
    let api_version = object
        .get("apiVersion")
        .and_then(Value::as_str)
        .unwrap_or_default();
    // Pods have no template owner; a CronJob's pods are named after the CronJob.
    let owner = (kind != "Pod" && name != "<unnamed>").then(|| name.to_string());
    let change = match template_pointer(api_version, &kind) {
        None => Change::NotAWorkload,
        Some(pointer) => match object.pointer_mut(pointer) {
            None => Change::Invalid(format!("no pod template at {pointer}")),
            Some(template) => match rewrite_template(template, rewrite, owner.as_deref()) {
                Ok(()) => done,
                Err(change) => change,
            },
        },
    };
    reports.push(Report { resource, change });
}

/// Where the pod template (`{metadata, spec}`) of a kind is, as a JSON pointer.
fn template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("", "Pod") => Some(""),
        ("", "ReplicationController") => Some("/spec/template"),
        ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet") => {
            Some("/spec/template")
        }
        ("batch", "Job") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Reads a pod template as typed objects, rewrites it and writes it back; metadata that
/// the rewrite leaves empty is removed.
fn rewrite_template(
    template: &mut Value,
    rewrite: &mut Rewrite<'_>,
    owner: Option<&str>,
) -> Result<(), Change> {
    let invalid = |e: serde_json::Error| Change::Invalid(e.to_string());
    let meta_json = template.get("metadata").cloned();
    let meta: ObjectMeta = match &meta_json {
        Some(m) => serde_json::from_value(m.clone()).map_err(invalid)?,
        None => ObjectMeta::default(),
    };
    let spec_json = template
        .get("spec")
        .cloned()
        .ok_or_else(|| Change::Invalid("no spec".to_string()))?;
    let spec: PodSpec = serde_json::from_value(spec_json).map_err(invalid)?;
    let (new_meta, new_spec) = rewrite(&meta, &spec, owner)?;
    let Some(fields) = template.as_object_mut() else {
        return Err(Change::Invalid("not an object".to_string()));
    };
    if new_meta != meta {
        let value = serde_json::to_value(new_meta).map_err(invalid)?;
        // `metadata: {}` says nothing: leave it out, as a template without metadata had.
        if value.as_object().is_some_and(|m| m.is_empty()) {
            fields.remove("metadata");
        } else {
            fields.insert("metadata".to_string(), value);
        }
    }
    fields.insert(
        "spec".to_string(),
        serde_json::to_value(new_spec).map_err(invalid)?,
    );
    Ok(())
}
