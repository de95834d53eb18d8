//! The mesh's own traffic kinds (`policy.mesh.dev/v1alpha1`): `TrafficPolicy` (per-Service
//! load balancer, limits, outlier detection, retry budget) and `HTTPFault` (fault injection,
//! referenced from a route rule's `ExtensionRef` filter). Raw serde shapes are validated and
//! converted to the proto messages the proxies receive.

use mesh_proto::destination::{Balancer, Fault, OutlierDetection, RetryBudget};
use serde::Deserialize;

use super::validate::{self, Invalid};
use super::ObjectMeta;

/// Default peak-EWMA decay time.
pub const DEFAULT_EWMA_DECAY_MS: u32 = 10_000;

/// The default balancer: peak-EWMA with a 10 s decay, no limits, no outlier detection.
pub fn default_balancer() -> Balancer {
    Balancer {
        ewma_decay_ms: DEFAULT_EWMA_DECAY_MS,
        max_connections: 0,
        max_pending_requests: 0,
        max_requests: 0,
        outlier_detection: None,
    }
}

/// The default retry budget: 20 % extra load, at least 10 retries/s, over 10 s.
pub fn default_retry_budget() -> RetryBudget {
    RetryBudget {
        ratio: 0.2,
        min_retries_per_second: 10,
        ttl_ms: 10_000,
    }
}

// === TrafficPolicy ===

/// A validated `TrafficPolicy`.
#[derive(Clone, Debug, PartialEq)]
pub struct TrafficPolicy {
    /// Name and namespace (the target Service is in the same namespace).
    pub metadata: ObjectMeta,
    /// Name of the target Service.
    pub target: String,
    /// Balancer and circuit-breaker settings for the Service's backends.
    pub balancer: Balancer,
    /// The Service's retry budget.
    pub retry_budget: RetryBudget,
}

/// The raw `spec` of a `TrafficPolicy`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrafficPolicySpec {
    target_ref: TargetRef,
    #[serde(default)]
    load_balancer: Option<LoadBalancerSpec>,
    #[serde(default)]
    limits: Option<LimitsSpec>,
    #[serde(default)]
    outlier_detection: Option<OutlierSpec>,
    #[serde(default)]
    retry_budget: Option<RetryBudgetSpec>,
}

#[derive(Clone, Debug, Deserialize)]
struct TargetRef {
    #[serde(default)]
    group: String,
    kind: String,
    name: String,
}

/// Balancer algorithms; only peak-EWMA exists.
#[derive(Clone, Copy, Debug, Deserialize)]
enum BalancerType {
    PeakEWMA,
}

#[derive(Clone, Debug, Deserialize)]
struct LoadBalancerSpec {
    #[serde(default, rename = "type")]
    _kind: Option<BalancerType>,
    #[serde(default)]
    decay: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct LimitsSpec {
    #[serde(default)]
    max_connections: u32,
    #[serde(default)]
    max_pending_requests: u32,
    #[serde(default)]
    max_requests_per_endpoint: u32,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OutlierSpec {
    #[serde(default)]
    consecutive_failures: Option<u32>,
    #[serde(default)]
    base_ejection_time: Option<String>,
    #[serde(default)]
    max_ejection_percent: Option<u32>,
    #[serde(default)]
    max_ejection_time: Option<String>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RetryBudgetSpec {
    #[serde(default)]
    ratio: Option<f64>,
    #[serde(default)]
    min_retries_per_second: Option<u32>,
    #[serde(default)]
    ttl: Option<String>,
}

/// A duration field with a default, which must be positive.
fn positive_ms(value: Option<&str>, default: u32, path: &str) -> Result<u32, Invalid> {
    let ms = value
        .map(|v| validate::duration_ms(v, path))
        .transpose()?
        .unwrap_or(default);
    if ms == 0 {
        return Err(Invalid::new(path, "must be longer than 0s"));
    }
    Ok(ms)
}

/// Validates a `TrafficPolicy` and fills in the defaults.
pub fn traffic_policy(
    metadata: ObjectMeta,
    spec: TrafficPolicySpec,
) -> Result<TrafficPolicy, Invalid> {
    let t = &spec.target_ref;
    if !matches!(t.group.as_str(), "" | "core") || t.kind != "Service" {
        return Err(Invalid::new(
            "spec.targetRef",
            format!(
                "must name a Service (group \"\", kind Service), got group {:?} kind {:?}",
                t.group, t.kind
            ),
        ));
    }
    if t.name.is_empty() {
        return Err(Invalid::new("spec.targetRef.name", "must not be empty"));
    }
    let mut balancer = default_balancer();
    if let Some(lb) = &spec.load_balancer {
        balancer.ewma_decay_ms = positive_ms(
            lb.decay.as_deref(),
            DEFAULT_EWMA_DECAY_MS,
            "spec.loadBalancer.decay",
        )?;
    }
    if let Some(l) = &spec.limits {
        balancer.max_connections = l.max_connections;
        balancer.max_pending_requests = l.max_pending_requests;
        balancer.max_requests = l.max_requests_per_endpoint;
    }
    if let Some(o) = &spec.outlier_detection {
        let p = "spec.outlierDetection";
        let consecutive_failures = o.consecutive_failures.unwrap_or(5);
        if consecutive_failures == 0 {
            return Err(Invalid::new(
                format!("{p}.consecutiveFailures"),
                "must be at least 1",
            ));
        }
        let max_ejection_percent = o.max_ejection_percent.unwrap_or(50);
        if max_ejection_percent > 100 {
            return Err(Invalid::new(
                format!("{p}.maxEjectionPercent"),
                format!("{max_ejection_percent} is outside 0-100"),
            ));
        }
        let base_path = format!("{p}.baseEjectionTime");
        let base = positive_ms(o.base_ejection_time.as_deref(), 30_000, &base_path)?;
        let max_path = format!("{p}.maxEjectionTime");
        let max = positive_ms(o.max_ejection_time.as_deref(), 300_000, &max_path)?;
        if max < base {
            return Err(Invalid::new(
                max_path,
                format!("must not be shorter than baseEjectionTime ({base}ms), got {max}ms"),
            ));
        }
        balancer.outlier_detection = Some(OutlierDetection {
            consecutive_failures,
            base_ejection_ms: base,
            max_ejection_percent,
            max_ejection_ms: max,
        });
    }
    let mut retry_budget = default_retry_budget();
    if let Some(b) = &spec.retry_budget {
        let p = "spec.retryBudget";
        if let Some(ratio) = b.ratio {
            if !(0.0..=1.0).contains(&ratio) {
                return Err(Invalid::new(
                    format!("{p}.ratio"),
                    format!("{ratio} is outside 0-1"),
                ));
            }
            retry_budget.ratio = ratio as f32;
        }
        if let Some(min) = b.min_retries_per_second {
            retry_budget.min_retries_per_second = min;
        }
        retry_budget.ttl_ms = positive_ms(b.ttl.as_deref(), 10_000, &format!("{p}.ttl"))?;
    }
    Ok(TrafficPolicy {
        target: t.name.clone(),
        metadata,
        balancer,
        retry_budget,
    })
}

// === HTTPFault ===

/// A validated `HTTPFault`.
#[derive(Clone, Debug, PartialEq)]
pub struct HttpFault {
    /// Name and namespace (routes reference it from their own namespace).
    pub metadata: ObjectMeta,
    /// The faults to inject.
    pub fault: Fault,
}

/// The raw `spec` of an `HTTPFault`.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct HttpFaultSpec {
    #[serde(default)]
    abort: Option<AbortSpec>,
    #[serde(default)]
    delay: Option<DelaySpec>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AbortSpec {
    http_status: i64,
    #[serde(default)]
    percent: Option<f64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DelaySpec {
    fixed_delay: String,
    #[serde(default)]
    percent: Option<f64>,
}

/// Validates an `HTTPFault`. A `percent` left out means 100.
pub fn http_fault(metadata: ObjectMeta, spec: HttpFaultSpec) -> Result<HttpFault, Invalid> {
    let mut fault = Fault::default();
    if let Some(a) = &spec.abort {
        fault.abort_status = validate::status_code(a.http_status, "spec.abort.httpStatus")?;
        fault.abort_percent = validate::percent(a.percent.unwrap_or(100.0), "spec.abort.percent")?;
    }
    if let Some(d) = &spec.delay {
        fault.delay_ms = validate::duration_ms(&d.fixed_delay, "spec.delay.fixedDelay")?;
        fault.delay_percent = validate::percent(d.percent.unwrap_or(100.0), "spec.delay.percent")?;
    }
    Ok(HttpFault { metadata, fault })
}

#[cfg(test)]
mod tests;
