//! The `AuthorizationPolicy` kind (`policy.mesh.dev/v1alpha1`): which callers may reach the
//! workloads of a namespace, of a Service (port) or of a label selector, and the mTLS mode
//! those workloads require. Unknown fields are rejected anywhere in `spec`: a misspelt rule
//! field would otherwise silently widen or narrow who gets in. Values are validated and
//! the rules converted to the proto messages the proxies receive (see [`rule`]).

mod rule;

use std::collections::BTreeMap;

use mesh_proto::policy::{Action, Rule, TlsMode};
use serde::Deserialize;

use self::rule::RuleSpec;
use super::validate::Invalid;
use super::{ObjectMeta, TargetPort};

/// A validated `AuthorizationPolicy`.
#[derive(Clone, Debug, PartialEq)]
pub struct AuthorizationPolicy {
    /// Name and namespace; the policy only applies to workloads of its namespace.
    pub metadata: ObjectMeta,
    /// The workloads (and ports) it applies to.
    pub target: AuthzTarget,
    /// What it does with the callers its rules match; `None` for a policy that only sets
    /// the mTLS mode.
    pub action: Option<Action>,
    /// The mTLS mode it requires: [`TlsMode::Strict`] or [`TlsMode::Permissive`], never
    /// [`TlsMode::Default`].
    pub mtls: Option<TlsMode>,
    /// The rules, already in proto form (service accounts as `namespace/name`, networks as
    /// CIDRs, methods upper case). Empty: the policy matches no caller.
    pub rules: Vec<Rule>,
}

/// What an [`AuthorizationPolicy`] applies to, always within its namespace.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum AuthzTarget {
    /// Neither `targetRef` nor `selector`: every workload of the namespace.
    Namespace,
    /// `selector.matchLabels`: the workloads whose labels include these (empty: all).
    Selector(BTreeMap<String, String>),
    /// `targetRef`: the workloads a Service selects, on every port or on the workload port
    /// one Service port sends to.
    Service {
        /// The Service's name.
        name: String,
        /// The Service port, when the policy is limited to one.
        port: Option<ServicePortRef>,
    },
}

/// A Service port named in a `targetRef`: its number or its name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ServicePortRef {
    /// The Service port number (`spec.ports[].port`), 1–65535.
    Number(u16),
    /// The Service port name (`spec.ports[].name`).
    Name(String),
}

impl std::fmt::Display for ServicePortRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServicePortRef::Number(n) => write!(f, "{n}"),
            ServicePortRef::Name(name) => f.write_str(name),
        }
    }
}

/// The raw `spec` of an `AuthorizationPolicy`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthorizationPolicySpec {
    #[serde(default)]
    target_ref: Option<TargetRefSpec>,
    #[serde(default)]
    selector: Option<SelectorSpec>,
    #[serde(default)]
    action: Option<String>,
    #[serde(default)]
    mtls: Option<String>,
    #[serde(default)]
    rules: Option<Vec<RuleSpec>>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetRefSpec {
    #[serde(default)]
    group: Option<String>,
    kind: String,
    name: String,
    /// Parsed like a Service `targetPort` (a number or a name, never 0); here it names a
    /// port of the referenced Service.
    #[serde(default)]
    port: Option<TargetPort>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct SelectorSpec {
    #[serde(default)]
    match_labels: Option<BTreeMap<String, String>>,
}

/// Validates an `AuthorizationPolicy` and converts its rules.
pub fn authorization_policy(
    metadata: ObjectMeta,
    spec: AuthorizationPolicySpec,
) -> Result<AuthorizationPolicy, Invalid> {
    let target = target(&spec)?;
    let action = spec.action.as_deref().map(action).transpose()?;
    let mtls = spec.mtls.as_deref().map(mtls).transpose()?;
    let rules = spec.rules.unwrap_or_default();
    if action.is_none() && !rules.is_empty() {
        return Err(Invalid::new(
            "spec.action",
            "required when rules are set (allow, deny or audit)",
        ));
    }
    if action.is_none() && mtls.is_none() {
        return Err(Invalid::new(
            "spec.action",
            "required unless the policy only sets mtls (allow, deny or audit)",
        ));
    }
    let rules = rules
        .iter()
        .enumerate()
        .map(|(i, r)| rule::rule(r, &metadata.namespace, &format!("spec.rules[{i}]")))
        .collect::<Result<_, _>>()?;
    Ok(AuthorizationPolicy {
        metadata,
        target,
        action,
        mtls,
        rules,
    })
}

fn target(spec: &AuthorizationPolicySpec) -> Result<AuthzTarget, Invalid> {
    match (&spec.target_ref, &spec.selector) {
        (Some(_), Some(_)) => Err(Invalid::new(
            "spec.selector",
            "targetRef and selector are exclusive; set one of them",
        )),
        (None, None) => Ok(AuthzTarget::Namespace),
        (None, Some(s)) => Ok(AuthzTarget::Selector(
            s.match_labels.clone().unwrap_or_default(),
        )),
        (Some(t), None) => {
            let group = t.group.as_deref().unwrap_or_default();
            if !matches!(group, "" | "core") || t.kind != "Service" {
                return Err(Invalid::new(
                    "spec.targetRef",
                    format!(
                        "must name a Service (group \"\", kind Service), got group {group:?} kind {:?}",
                        t.kind
                    ),
                ));
            }
            if t.name.is_empty() {
                return Err(Invalid::new("spec.targetRef.name", "must not be empty"));
            }
            let port = t.port.clone().map(|p| match p {
                TargetPort::Number(n) => ServicePortRef::Number(n),
                TargetPort::Name(n) => ServicePortRef::Name(n),
            });
            Ok(AuthzTarget::Service {
                name: t.name.clone(),
                port,
            })
        }
    }
}

/// `allow`, `deny` or `audit`, in any case.
fn action(value: &str) -> Result<Action, Invalid> {
    match value.to_ascii_lowercase().as_str() {
        "allow" => Ok(Action::Allow),
        "deny" => Ok(Action::Deny),
        "audit" => Ok(Action::Audit),
        _ => Err(Invalid::new(
            "spec.action",
            format!("unknown action {value:?} (expected allow, deny or audit)"),
        )),
    }
}

/// `strict` or `permissive`, in any case.
fn mtls(value: &str) -> Result<TlsMode, Invalid> {
    match value.to_ascii_lowercase().as_str() {
        "strict" => Ok(TlsMode::Strict),
        "permissive" => Ok(TlsMode::Permissive),
        _ => Err(Invalid::new(
            "spec.mtls",
            format!("unknown mTLS mode {value:?} (expected strict or permissive)"),
        )),
    }
}

#[cfg(test)]
mod tests;
