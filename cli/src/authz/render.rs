//! What `mesh authz` prints: per port, the mTLS mode and the policies in force; per
//! policy, its target, action and rules in words.

use std::fmt::Write as _;

use anyhow::bail;
use mesh_controller::index::Index;
use mesh_controller::resources::{AuthorizationPolicy, AuthzTarget};
use mesh_proto::policy::{path_match::Kind, Action, Operation, Rule, Source, TlsMode};
use serde_json::{json, Value};

/// One port of the workload.
pub struct PortRow {
    pub port: u16,
    /// `strict`, `permissive` or `default`.
    pub mtls: &'static str,
    /// The policy that set the mode (`namespace/name`), if one did.
    pub mtls_source: String,
    /// Names of the policies with an action on the port.
    pub policies: Vec<String>,
}

/// One policy that applies to the workload.
pub struct PolicyRow {
    pub name: String,
    /// `allow`, `deny`, `audit`, or `-` for a mode-only policy.
    pub action: &'static str,
    /// `strict`, `permissive` or `-`.
    pub mtls: &'static str,
    /// The workload port it is limited to, or `None` for every port.
    pub port: Option<u16>,
    /// How it selects the workload.
    pub target: String,
    /// One line per rule.
    pub rules: Vec<String>,
}

/// The whole answer.
pub struct Report {
    pub workload: String,
    pub labels: String,
    pub ports: Vec<PortRow>,
    pub policies: Vec<PolicyRow>,
}

impl Report {
    /// The report of workload `namespace/name` in `index`.
    pub fn build(index: &Index, namespace: &str, name: &str) -> anyhow::Result<Report> {
        let Some(ports) = index.workload_ports(namespace, name) else {
            let known: Vec<&str> = index
                .workloads_in(namespace)
                .map(|w| w.metadata.name.as_str())
                .collect();
            bail!(
                "workload {namespace}/{name} not found (known in {namespace}: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            );
        };
        let labels = index
            .workloads_in(namespace)
            .find(|w| w.metadata.name == name)
            .map(|w| {
                w.selection_labels()
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        let ports = ports
            .into_iter()
            .map(|port| {
                let sp = index.server_policy(namespace, name, port);
                PortRow {
                    port,
                    mtls: match sp.tls_mode() {
                        TlsMode::Strict => "strict",
                        TlsMode::Permissive => "permissive",
                        TlsMode::Default => "default",
                    },
                    mtls_source: sp.tls_mode_source.clone(),
                    policies: sp.policies.iter().map(|p| p.name.clone()).collect(),
                }
            })
            .collect();
        let policies = index
            .authorization_policies_for(namespace, name)
            .into_iter()
            .map(|a| policy_row(a.policy, a.port))
            .collect();
        Ok(Report {
            workload: format!("{namespace}/{name}"),
            labels,
            ports,
            policies,
        })
    }

    /// The human-readable form.
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "WORKLOAD {} ({})", self.workload, self.labels);
        s.push('\n');
        let mut rows = vec![vec![
            "PORT".to_string(),
            "MTLS".to_string(),
            "POLICIES".to_string(),
        ]];
        for p in &self.ports {
            let mtls = if p.mtls_source.is_empty() {
                p.mtls.to_string()
            } else {
                format!("{} ({})", p.mtls, p.mtls_source)
            };
            let policies = if p.policies.is_empty() {
                "- (the proxy's default inbound policy decides)".to_string()
            } else {
                p.policies.join(", ")
            };
            rows.push(vec![p.port.to_string(), mtls, policies]);
        }
        columns(&mut s, &rows);
        for p in &self.policies {
            s.push('\n');
            let port = p
                .port
                .map_or("every port".to_string(), |p| format!("port {p}"));
            let _ = writeln!(
                s,
                "POLICY {} · action {} · mtls {} · {} · {}",
                p.name, p.action, p.mtls, p.target, port
            );
            if p.action == "-" {
                continue;
            }
            if p.rules.is_empty() {
                let _ = writeln!(s, "  (no rules: matches no caller)");
            }
            for r in &p.rules {
                let _ = writeln!(s, "  {r}");
            }
        }
        s.push_str(
            "\nDeny policies win; on a port with an allow policy, callers no allow policy \
             matches are denied;\nwithout one, the proxy's default inbound policy \
             (config.mesh.dev/default-inbound-policy) decides.\n",
        );
        s
    }

    /// The JSON form.
    pub fn json(&self) -> Value {
        json!({
            "workload": self.workload,
            "labels": self.labels,
            "ports": self.ports.iter().map(|p| json!({
                "port": p.port,
                "mtls": p.mtls,
                "mtls_source": p.mtls_source,
                "policies": p.policies,
            })).collect::<Vec<_>>(),
            "policies": self.policies.iter().map(|p| json!({
                "name": p.name,
                "action": p.action,
                "mtls": p.mtls,
                "port": p.port,
                "target": p.target,
                "rules": p.rules,
            })).collect::<Vec<_>>(),
        })
    }
}

fn policy_row(p: &AuthorizationPolicy, port: Option<u16>) -> PolicyRow {
    PolicyRow {
        name: p.metadata.name.clone(),
        action: match p.action {
            None => "-",
            Some(Action::Allow) => "allow",
            Some(Action::Deny) => "deny",
            Some(Action::Audit) => "audit",
        },
        mtls: match p.mtls {
            Some(TlsMode::Strict) => "strict",
            Some(TlsMode::Permissive) => "permissive",
            _ => "-",
        },
        port,
        target: match &p.target {
            AuthzTarget::Namespace => "the whole namespace".to_string(),
            AuthzTarget::Selector(labels) => format!(
                "selector {}",
                labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(",")
            ),
            AuthzTarget::Service { name, port } => match port {
                Some(port) => format!("Service {name} port {port}"),
                None => format!("Service {name}"),
            },
        },
        rules: p.rules.iter().map(rule).collect(),
    }
}

/// A rule in words: `from <sources> to <operations>`.
fn rule(r: &Rule) -> String {
    let from = if r.from.is_empty() {
        "any caller (plaintext too)".to_string()
    } else {
        r.from.iter().map(source).collect::<Vec<_>>().join(" | ")
    };
    let to = if r.to.is_empty() {
        "anything".to_string()
    } else {
        r.to.iter().map(operation).collect::<Vec<_>>().join(" | ")
    };
    format!("from {from} to {to}")
}

fn source(s: &Source) -> String {
    let mut parts = Vec::new();
    for (name, values) in [
        ("identities", &s.identities),
        ("namespaces", &s.namespaces),
        ("serviceAccounts", &s.service_accounts),
        ("networks", &s.networks),
    ] {
        if !values.is_empty() {
            parts.push(format!("{name}={}", values.join(",")));
        }
    }
    if s.unauthenticated {
        parts.push("unauthenticated (plaintext too)".to_string());
    }
    if parts.is_empty() {
        "any authenticated caller".to_string()
    } else {
        parts.join(" ")
    }
}

fn operation(o: &Operation) -> String {
    let mut parts = Vec::new();
    if !o.methods.is_empty() {
        parts.push(format!("methods={}", o.methods.join(",")));
    }
    if !o.paths.is_empty() {
        let paths: Vec<String> = o
            .paths
            .iter()
            .filter_map(|p| match p.kind.as_ref()? {
                Kind::Exact(e) => Some(e.clone()),
                Kind::Prefix(pre) => Some(format!("{pre}*")),
            })
            .collect();
        parts.push(format!("paths={}", paths.join(",")));
    }
    if !o.ports.is_empty() {
        let ports: Vec<String> = o.ports.iter().map(u32::to_string).collect();
        parts.push(format!("ports={}", ports.join(",")));
    }
    if parts.is_empty() {
        "anything".to_string()
    } else {
        parts.join(" ")
    }
}

/// Left-aligned columns separated by two spaces.
fn columns(s: &mut String, rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len())
        .map(|i| rows.iter().map(|r| r[i].chars().count()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            if i + 1 == r.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<w$}  ", w = widths[i]);
            }
        }
        let _ = writeln!(s, "{}", line.trim_end());
    }
}
