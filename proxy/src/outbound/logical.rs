//! A logical target's policy, compiled once per snapshot: routes with
//! compiled matches, backends bound to their endpoint watches, timeouts,
//! retry policy and budget, balancer settings.

use super::{
    balance::{outlier::OutlierConfig, Balance, BalancerConfig, Shared},
    fault::{Fault, FaultService},
    retry::{
        classify::{grpc_code, RetryPolicy},
        Budget, BudgetConfig, Retries,
    },
    route::{Match, PathMatch, ValueMatch},
    split::Split,
    timeout::Timeout,
    EndpointClient, PlainClient,
};
use crate::{
    discovery::Resolver,
    metrics::{Metrics, Str},
};
use mesh_proto::destination as pb;
use regex_lite::Regex;
use std::{sync::Arc, time::Duration};

/// A route's tower stack, outermost first: fault injection, the request
/// timeout, retries, the per-try timeout, the weighted split over each
/// backend's balancer. Built once per policy snapshot, cloned per request
/// (Arc clones only).
pub type RouteStack = FaultService<Timeout<tower::retry::Retry<Retries, Timeout<Split>>>>;

/// What compiling a policy needs from the outbound side.
#[derive(Clone)]
pub struct Env {
    pub resolver: Arc<Resolver<EndpointClient>>,
    pub plain: PlainClient,
    pub discovery_timeout: Duration,
    pub metrics: Arc<Metrics>,
}

/// A compiled route.
pub struct Route {
    pub name: Str,
    pub matches: Vec<Match>,
    /// Whether requests on this route may be retried (their bodies are
    /// then kept for replay and they count towards the budget).
    pub retries: bool,
    /// The backends, for requests that bypass the stack (upgrades).
    pub split: Split,
    /// The request path.
    pub stack: RouteStack,
}

/// A target's compiled policy.
pub struct Policy {
    pub routes: Vec<Route>,
    pub default_route: Route,
    /// Shared by the routes that retry (only their requests deposit);
    /// starts empty when a new snapshot arrives.
    pub budget: Arc<Budget>,
    /// Traffic to the target is opaque TCP (never parsed).
    pub opaque: bool,
    /// The Service port's canonical name when the target is a Service
    /// (also when it was looked up by cluster IP), or a known workload's
    /// `ip:port`.
    pub authority: Option<Str>,
    /// The target's `dst_service` metric label: the authority, or
    /// `external:<port>` for what the mesh does not know (the name the app
    /// used is not a bounded label value).
    pub label: Str,
}

impl Policy {
    /// The route for a request: the first that matches, else the default.
    pub fn route_for<B>(&self, req: &http::Request<B>) -> &Route {
        self.routes
            .iter()
            .find(|r| super::route::any_match(&r.matches, req))
            .unwrap_or(&self.default_route)
    }

    /// The policy used when the controller gives none: the target itself,
    /// no timeouts, no retries.
    pub fn fallback(target: &str, env: &Env) -> Self {
        let ctx = Ctx::new(
            target,
            BalancerConfig::default(),
            BudgetConfig::default(),
            env,
        );
        Policy {
            routes: Vec::new(),
            default_route: default_route(&ctx),
            budget: ctx.budget.clone(),
            opaque: false,
            authority: None,
            label: external_label(target),
        }
    }
}

/// What every route of one policy shares while it is built.
struct Ctx<'a> {
    target: &'a str,
    env: &'a Env,
    shared: Arc<Shared>,
    budget: Arc<Budget>,
}

impl<'a> Ctx<'a> {
    fn new(target: &'a str, cfg: BalancerConfig, budget: BudgetConfig, env: &'a Env) -> Self {
        Ctx {
            target,
            env,
            shared: Arc::new(Shared {
                cfg,
                pending: Default::default(),
                plain: env.plain.clone(),
                discovery_timeout: env.discovery_timeout,
                metrics: env.metrics.clone(),
                freed: Default::default(),
            }),
            budget: Arc::new(Budget::new(budget)),
        }
    }

    /// Assembles a route's stack.
    #[allow(clippy::too_many_arguments)]
    fn route(
        &self,
        name: &str,
        matches: Vec<Match>,
        backends: Vec<(String, u32)>,
        timeout: Option<Duration>,
        per_try_timeout: Option<Duration>,
        retry: Option<RetryPolicy>,
        fault: Option<Fault>,
    ) -> Route {
        let name = Str::from(name);
        let balances = backends
            .into_iter()
            .map(|(target, weight)| {
                let dest = self.env.resolver.resolve(&target);
                let b = Balance::new(
                    Str::from(target.as_str()),
                    name.clone(),
                    dest,
                    self.shared.clone(),
                );
                (weight, b)
            })
            .collect();
        let split = Split::new(name.clone(), balances);
        let retries = retry.is_some();
        let policy = Retries::new(
            retry,
            self.budget.clone(),
            self.env.metrics.clone(),
            Str::from(self.target),
            name.clone(),
        );
        let stack = FaultService::new(
            fault,
            Timeout::request(
                timeout,
                tower::retry::Retry::new(policy, Timeout::per_try(per_try_timeout, split.clone())),
            ),
        );
        Route {
            name,
            matches,
            retries,
            split,
            stack,
        }
    }
}

fn default_route(ctx: &Ctx<'_>) -> Route {
    ctx.route(
        "default",
        Vec::new(),
        vec![(ctx.target.to_string(), 1)],
        None,
        None,
        None,
        None,
    )
}

fn ms(v: u32) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(u64::from(v)))
}

/// Compiles a snapshot. Parts the controller should have rejected (a bad
/// regex, an unknown gRPC code) are dropped with a warning, never a panic.
pub fn compile(target: &str, p: pb::ServicePolicy, env: &Env) -> Policy {
    let balancer = p.balancer.map(balancer).unwrap_or_default();
    let budget = p
        .retry_budget
        .map(|b| BudgetConfig {
            ratio: b.ratio,
            min_per_second: b.min_retries_per_second,
            ttl: ms(b.ttl_ms).unwrap_or(Duration::from_secs(10)),
        })
        .unwrap_or_default();
    let ctx = Ctx::new(target, balancer, budget, env);
    let routes = p
        .routes
        .into_iter()
        .filter_map(|r| compile_route(&ctx, r))
        .collect();
    let default_route = p
        .default_route
        .and_then(|r| compile_route(&ctx, r))
        .unwrap_or_else(|| default_route(&ctx));
    let authority = (!p.authority.is_empty()).then(|| Str::from(p.authority.as_str()));
    Policy {
        routes,
        default_route,
        budget: ctx.budget.clone(),
        opaque: p.opaque,
        label: authority.clone().unwrap_or_else(|| external_label(target)),
        authority,
    }
}

/// The metric label of a target the mesh does not know: its kind and port.
pub fn external_label(target: &str) -> Str {
    match target
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
    {
        Some(port) => Str::from(format!("external:{port}").as_str()),
        None => Str::from("external"),
    }
}

#[cfg(test)]
#[test]
fn unknown_targets_are_labelled_by_kind_and_port() {
    assert_eq!(
        &*external_label("evil-7731.example.com:8080").0,
        "external:8080"
    );
    assert_eq!(&*external_label("[2001:db8::1]:443").0, "external:443");
    assert_eq!(&*external_label("no-port").0, "external");
}

fn balancer(b: pb::Balancer) -> BalancerConfig {
    BalancerConfig {
        decay: ms(b.ewma_decay_ms).unwrap_or(Duration::from_secs(10)),
        max_requests: b.max_requests as usize,
        max_connections: b.max_connections as usize,
        max_pending: b.max_pending_requests as usize,
        outlier: b.outlier_detection.map(|o| OutlierConfig {
            consecutive_failures: o.consecutive_failures.max(1),
            base_ejection: ms(o.base_ejection_ms).unwrap_or(Duration::from_secs(30)),
            max_ejection: ms(o.max_ejection_ms).unwrap_or(Duration::from_secs(300)),
            max_ejection_percent: o.max_ejection_percent.min(100),
        }),
    }
}

/// `re` compiled to match whole values only.
fn regex(target: &str, route: &str, re: &str) -> Option<Regex> {
    match Regex::new(&format!("^(?:{re})$")) {
        Ok(r) => Some(r),
        Err(error) => {
            tracing::warn!(%target, %route, %error, "dropping a route with a bad regex");
            None
        }
    }
}

fn value(
    target: &str,
    route: &str,
    exact: Option<String>,
    re: Option<String>,
) -> Option<ValueMatch> {
    match (exact, re) {
        (Some(e), _) => Some(ValueMatch::Exact(e)),
        (None, Some(r)) => regex(target, route, &r).map(ValueMatch::Regex),
        (None, None) => Some(ValueMatch::Exact(String::new())),
    }
}

fn compile_match(target: &str, route: &str, m: pb::HttpMatch) -> Option<Match> {
    use pb::{header_match, path_match, query_match};
    let path = match m.path.and_then(|p| p.kind) {
        None => None,
        Some(path_match::Kind::Exact(e)) => Some(PathMatch::Exact(e)),
        Some(path_match::Kind::Prefix(p)) => Some(PathMatch::Prefix(p)),
        Some(path_match::Kind::Regex(r)) => Some(PathMatch::Regex(regex(target, route, &r)?)),
    };
    let method = if m.method.is_empty() {
        None
    } else {
        Some(http::Method::from_bytes(m.method.as_bytes()).ok()?)
    };
    let mut headers = Vec::with_capacity(m.headers.len());
    for h in m.headers {
        let name = http::HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()).ok()?;
        let (exact, re) = match h.value {
            Some(header_match::Value::Exact(e)) => (Some(e), None),
            Some(header_match::Value::Regex(r)) => (None, Some(r)),
            None => (None, None),
        };
        headers.push((name, value(target, route, exact, re)?));
    }
    let mut query = Vec::with_capacity(m.query_params.len());
    for q in m.query_params {
        let (exact, re) = match q.value {
            Some(query_match::Value::Exact(e)) => (Some(e), None),
            Some(query_match::Value::Regex(r)) => (None, Some(r)),
            None => (None, None),
        };
        query.push((q.name, value(target, route, exact, re)?));
    }
    Some(Match {
        path,
        method,
        headers,
        query,
    })
}

fn compile_route(ctx: &Ctx<'_>, r: pb::Route) -> Option<Route> {
    let target = ctx.target;
    let name = r.name.clone();
    let mut matches = Vec::with_capacity(r.matches.len());
    for m in r.matches {
        matches.push(compile_match(target, &name, m)?);
    }
    let backends = r
        .backends
        .into_iter()
        .map(|b| (b.target, b.weight))
        .collect();
    let retry = r.retry.filter(|p| p.attempts > 1).map(|p| RetryPolicy {
        attempts: p.attempts.min(10),
        statuses: p.status_codes.iter().filter_map(|c| u16::try_from(*c).ok()).collect(),
        ranges: p
            .status_ranges
            .iter()
            .filter_map(|r| Some((u16::try_from(r.min).ok()?, u16::try_from(r.max).ok()?)))
            .collect(),
        grpc: p
            .grpc_codes
            .iter()
            .filter_map(|c| {
                let code = grpc_code(c);
                if code.is_none() {
                    tracing::warn!(%target, route = %name, grpc_code = %c, "ignoring an unknown gRPC code");
                }
                code
            })
            .collect(),
        connect_failures: p.connect_failures,
        backoff_base: ms(p.backoff_base_ms).unwrap_or(Duration::from_millis(25)),
        backoff_max: ms(p.backoff_max_ms).unwrap_or(Duration::from_millis(250)),
    });
    let fault = r.fault.and_then(|f| {
        let abort = http::StatusCode::from_u16(f.abort_status as u16)
            .ok()
            .filter(|_| f.abort_percent > 0.0)
            .map(|s| (s, f.abort_percent));
        let delay = ms(f.delay_ms)
            .filter(|_| f.delay_percent > 0.0)
            .map(|d| (d, f.delay_percent));
        (abort.is_some() || delay.is_some()).then_some(Fault { abort, delay })
    });
    Some(ctx.route(
        &name,
        matches,
        backends,
        ms(r.request_timeout_ms),
        ms(r.backend_request_timeout_ms),
        retry,
        fault,
    ))
}
