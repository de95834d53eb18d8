//! Authorization of inbound callers: the controller's `ServerPolicy` for a
//! port, compiled once per update into matchers and pre-created counters, so
//! a request's decision is string comparisons and one atomic increment.
//!
//! Precedence: a matching deny policy wins; otherwise, when any allow policy
//! applies, the caller must match one of them; when none applies, the
//! proxy's default inbound policy decides. Audit policies only count and log.

mod cidr;
mod matcher;
pub mod path;

use crate::metrics::{AuthzLabels, Metrics, Str};
use mesh_proto::policy::{self as pb, ServerPolicy};
use prometheus_client::metrics::counter::Counter;
use std::net::IpAddr;

pub use self::cidr::Cidr;
use self::matcher::{Operation, Source};

/// The proxy-wide default (`MESH_PROXY_DEFAULT_INBOUND_POLICY`, set from
/// `config.mesh.dev/default-inbound-policy` at injection): what happens on a
/// port no allow policy applies to, and its mTLS mode when no policy sets it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DefaultPolicy {
    /// Every caller, plaintext included (permissive mTLS).
    #[default]
    AllowAll,
    /// Callers with a mesh identity (strict mTLS).
    AllowAuthenticated,
    /// Nobody (strict mTLS).
    Deny,
}

impl DefaultPolicy {
    /// Parses the annotation's value.
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim() {
            "allow-all" => Some(Self::AllowAll),
            "allow-authenticated" => Some(Self::AllowAuthenticated),
            "deny" => Some(Self::Deny),
            _ => None,
        }
    }

    /// The value as written in the annotation.
    pub fn name(self) -> &'static str {
        match self {
            Self::AllowAll => "allow-all",
            Self::AllowAuthenticated => "allow-authenticated",
            Self::Deny => "deny",
        }
    }
}

/// Whether plaintext callers are accepted on a port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    Strict,
    Permissive,
}

/// Who is calling.
#[derive(Clone, Copy, Debug)]
pub struct Caller<'a> {
    /// The verified SPIFFE ID (of this proxy's trust domain; the inbound side
    /// refuses others); `None` for plaintext callers.
    pub identity: Option<&'a str>,
    /// The client's address.
    pub addr: IpAddr,
}

/// What is being called.
#[derive(Clone, Copy, Debug)]
pub struct Call<'a> {
    /// The workload port.
    pub port: u16,
    /// Method and path of an HTTP request; `None` for an opaque connection.
    pub http: Option<(&'a http::Method, &'a str)>,
}

/// The outcome for one caller.
#[derive(Debug)]
pub struct Decision<'a> {
    pub allowed: bool,
    /// The policy that decided (`default:<name>` for the default policy).
    pub policy: &'a Str,
}

/// A decision's policy and the counter it increments.
#[derive(Debug)]
struct Outcome {
    policy: Str,
    counter: Counter,
}

impl Outcome {
    fn new(metrics: &Metrics, decision: &'static str, policy: Str) -> Self {
        let counter = metrics.authz.get_or_create_owned(&AuthzLabels {
            decision,
            policy: policy.clone(),
        });
        Outcome { policy, counter }
    }
}

/// One compiled policy.
#[derive(Debug)]
struct Policy {
    action: pb::Action,
    rules: Vec<(Vec<Source>, Vec<Operation>)>,
    /// Its allow, deny or audit counter (by `action`).
    outcome: Outcome,
}

impl Policy {
    fn matches(&self, caller: &Caller<'_>, call: &Call<'_>) -> bool {
        // Deny rules ignore HTTP-only conditions on opaque connections, and
        // treat entries they cannot compile as matching; allow rules do the
        // opposite. Both fail closed.
        let deny = self.action == pb::Action::Deny;
        self.rules.iter().any(|(from, to)| {
            (from.is_empty() || from.iter().any(|s| s.matches(caller, deny)))
                && (to.is_empty() || to.iter().any(|o| o.matches(call, deny)))
        })
    }
}

/// The compiled policy of one port.
#[derive(Debug)]
pub struct ServerAuthz {
    /// False for the placeholder used before the controller answers.
    pub received: bool,
    tls: TlsMode,
    /// The deny outcome of a plaintext caller on a strict port.
    tls_outcome: Outcome,
    policies: Vec<Policy>,
    /// Whether any allow policy applies (then it is "allowed or denied").
    any_allow: bool,
    /// Denial when allow policies apply but none matched.
    not_allowed: Outcome,
    default: DefaultPolicy,
    default_allow: Outcome,
    default_deny: Outcome,
    /// The allow outcome of the application's probe endpoints.
    probe: Outcome,
    uses_paths: bool,
    /// The names peers may give the port (sorted): the only transport-header
    /// names that become metric labels.
    authorities: Vec<Str>,
}

impl ServerAuthz {
    /// Compiles `policy` (or the default alone, when `None`). Entries the
    /// controller should have rejected (bad patterns) are skipped with a log.
    pub fn compile(
        policy: Option<&ServerPolicy>,
        default: DefaultPolicy,
        metrics: &Metrics,
    ) -> Self {
        let default_name = Str::from(format!("default:{}", default.name()).as_str());
        let mut policies = Vec::new();
        let (mut tls, mut tls_source) = (None, default_name.clone());
        if let Some(p) = policy {
            tls = match p.tls_mode() {
                pb::TlsMode::Default => None,
                pb::TlsMode::Strict => Some(TlsMode::Strict),
                pb::TlsMode::Permissive => Some(TlsMode::Permissive),
            };
            if tls.is_some() && !p.tls_mode_source.is_empty() {
                tls_source = Str::from(p.tls_mode_source.as_str());
            }
            for ap in &p.policies {
                let name = Str::from(ap.name.as_str());
                let decision = match ap.action() {
                    pb::Action::Allow => "allow",
                    pb::Action::Deny => "deny",
                    pb::Action::Audit => "audit",
                };
                let rules = ap
                    .rules
                    .iter()
                    .map(|r| {
                        let from = r
                            .from
                            .iter()
                            .map(|s| Source::compile(s, &ap.name))
                            .collect();
                        let to = r.to.iter().map(Operation::compile).collect();
                        (from, to)
                    })
                    .collect();
                policies.push(Policy {
                    action: ap.action(),
                    rules,
                    outcome: Outcome::new(metrics, decision, name),
                });
            }
        }
        let tls = tls.unwrap_or(match default {
            DefaultPolicy::AllowAll => TlsMode::Permissive,
            _ => TlsMode::Strict,
        });
        let allow_names: Vec<&str> = policies
            .iter()
            .filter(|p| p.action == pb::Action::Allow)
            .map(|p| &*p.outcome.policy.0)
            .collect();
        let not_allowed = Str::from(allow_names.join(",").as_str());
        let uses_paths = policy.is_some_and(|p| {
            p.policies
                .iter()
                .flat_map(|ap| &ap.rules)
                .flat_map(|r| &r.to)
                .any(|o| !o.paths.is_empty())
        });
        ServerAuthz {
            received: policy.is_some(),
            tls,
            tls_outcome: Outcome::new(metrics, "deny", tls_source),
            any_allow: !allow_names.is_empty(),
            not_allowed: Outcome::new(metrics, "deny", not_allowed),
            policies,
            default,
            default_allow: Outcome::new(metrics, "allow", default_name.clone()),
            default_deny: Outcome::new(metrics, "deny", default_name),
            probe: Outcome::new(metrics, "allow", Str::from("probe")),
            uses_paths,
            authorities: {
                let mut names: Vec<Str> = policy
                    .map(|p| {
                        p.authorities
                            .iter()
                            .map(|a| Str::from(a.as_str()))
                            .collect()
                    })
                    .unwrap_or_default();
                names.sort_by(|a, b| a.0.cmp(&b.0));
                names
            },
        }
    }

    /// The metric label of a transport-header `name`: the name when the
    /// controller says clients call the port by it, else empty (a peer's
    /// choice of name is not a bounded label value).
    pub fn known_name(&self, name: &str) -> Str {
        self.authorities
            .binary_search_by(|a| (*a.0).cmp(name))
            .map(|i| self.authorities[i].clone())
            .unwrap_or_default()
    }

    /// The port's mTLS mode.
    pub fn tls_mode(&self) -> TlsMode {
        self.tls
    }

    /// Counts and returns the refusal of a plaintext caller on a strict port.
    pub fn refuse_plaintext(&self) -> &Str {
        self.tls_outcome.counter.inc();
        &self.tls_outcome.policy
    }

    /// Counts and returns the allowance of a request to a probe endpoint.
    pub fn allow_probe(&self) -> Decision<'_> {
        self.count(true, &self.probe)
    }

    /// Whether any policy on the port looks at request paths (then requests
    /// are matched, and forwarded, with a normalized path).
    pub fn uses_paths(&self) -> bool {
        self.uses_paths
    }

    /// Decides whether `caller` may make `call`, counting the decision and
    /// every audit policy that matched (which is also logged).
    pub fn decide(&self, caller: &Caller<'_>, call: &Call<'_>) -> Decision<'_> {
        for p in &self.policies {
            if p.action == pb::Action::Audit && p.matches(caller, call) {
                p.outcome.counter.inc();
                tracing::info!(
                    policy = %p.outcome.policy.0,
                    client = caller.identity.unwrap_or("-"),
                    addr = %caller.addr,
                    port = call.port,
                    path = call.http.map_or("-", |(_, p)| p),
                    "audit policy matched"
                );
            }
        }
        let (allowed, outcome) = self.evaluate(caller, call);
        self.count(allowed, outcome)
    }

    /// Whether `caller` may still make `call` (an open opaque session after
    /// a policy change); counts only a denial.
    pub fn recheck(&self, caller: &Caller<'_>, call: &Call<'_>) -> Decision<'_> {
        let (allowed, outcome) = self.evaluate(caller, call);
        if !allowed {
            outcome.counter.inc();
        }
        Decision {
            allowed,
            policy: &outcome.policy,
        }
    }

    /// The decision and the outcome that made it, counting nothing.
    fn evaluate(&self, caller: &Caller<'_>, call: &Call<'_>) -> (bool, &Outcome) {
        // The mode may have turned strict after a plaintext connection opened.
        if caller.identity.is_none() && self.tls == TlsMode::Strict {
            return (false, &self.tls_outcome);
        }
        let mut allowed_by = None;
        for p in &self.policies {
            match p.action {
                pb::Action::Deny if p.matches(caller, call) => return (false, &p.outcome),
                pb::Action::Allow if allowed_by.is_none() && p.matches(caller, call) => {
                    allowed_by = Some(&p.outcome);
                }
                _ => {}
            }
        }
        if let Some(outcome) = allowed_by {
            return (true, outcome);
        }
        if self.any_allow {
            return (false, &self.not_allowed);
        }
        match self.default {
            DefaultPolicy::AllowAll => (true, &self.default_allow),
            DefaultPolicy::AllowAuthenticated if caller.identity.is_some() => {
                (true, &self.default_allow)
            }
            _ => (false, &self.default_deny),
        }
    }

    fn count<'a>(&self, allowed: bool, outcome: &'a Outcome) -> Decision<'a> {
        outcome.counter.inc();
        Decision {
            allowed,
            policy: &outcome.policy,
        }
    }
}

#[cfg(test)]
mod tests;
