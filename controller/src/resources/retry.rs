//! Retries and timeouts of a route rule: the Gateway API fields (`rules[].timeouts`,
//! GEP-1731 `rules[].retry`) and the mesh's route annotations, which say what Gateway API
//! cannot (gRPC retries, HTTP status classes, GRPCRoute timeouts).
//!
//! Attempts: Gateway API's `retry.attempts` and the `retry.mesh.dev/limit` annotation both
//! count *retries*; the proto's `RetryPolicy.attempts` counts *attempts, the first one
//! included*. So `attempts = retries + 1`: `attempts: 2` in an HTTPRoute (or `limit: "2"`)
//! becomes `RetryPolicy.attempts = 3`, and `attempts: 0` becomes 1 (no retry).

use std::collections::BTreeMap;

use mesh_proto::destination::{RetryPolicy, StatusRange};

use super::validate::{self, Invalid};

/// Annotation: HTTP statuses to retry, e.g. `5xx,429,503` or `500-504`.
pub const RETRY_HTTP: &str = "retry.mesh.dev/http";
/// Annotation: gRPC statuses to retry, e.g. `cancelled,unavailable`.
pub const RETRY_GRPC: &str = "retry.mesh.dev/grpc";
/// Annotation: maximum number of retries (the first attempt not included).
pub const RETRY_LIMIT: &str = "retry.mesh.dev/limit";
/// Annotation: whole-request timeout, a Gateway API duration.
pub const TIMEOUT_REQUEST: &str = "timeout.mesh.dev/request";
/// Annotation: per-attempt timeout, a Gateway API duration.
pub const TIMEOUT_BACKEND_REQUEST: &str = "timeout.mesh.dev/backend-request";

/// Retries when neither the rule nor an annotation gives a number.
pub const DEFAULT_RETRIES: u32 = 1;
/// Largest accepted number of retries.
pub const MAX_RETRIES: u32 = 100;
/// Base backoff when none is given, in milliseconds.
pub const DEFAULT_BACKOFF_BASE_MS: u32 = 25;
/// Smallest backoff cap, in milliseconds; the cap is `max(this, 10 × base)`.
pub const MIN_BACKOFF_MAX_MS: u32 = 250;

/// HTTP statuses to retry.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StatusSet {
    /// Single codes.
    pub codes: Vec<u32>,
    /// Inclusive ranges (`5xx` is 500–599).
    pub ranges: Vec<StatusRange>,
}

/// The retry and timeout annotations of a route, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteAnnotations {
    /// `retry.mesh.dev/http`.
    pub http: Option<StatusSet>,
    /// `retry.mesh.dev/grpc`, normalised names.
    pub grpc: Option<Vec<String>>,
    /// `retry.mesh.dev/limit`: retries, 0–[`MAX_RETRIES`].
    pub limit: Option<u32>,
    /// `timeout.mesh.dev/request`, in milliseconds.
    pub request_timeout_ms: Option<u32>,
    /// `timeout.mesh.dev/backend-request`, in milliseconds.
    pub backend_request_timeout_ms: Option<u32>,
}

fn annotation_path(key: &str) -> String {
    format!("metadata.annotations[{key:?}]")
}

impl RouteAnnotations {
    /// Reads the mesh annotations out of `annotations`; others are ignored.
    pub fn parse(annotations: &BTreeMap<String, String>) -> Result<Self, Invalid> {
        let get = |key: &str| {
            annotations
                .get(key)
                .map(|v| (v.as_str(), annotation_path(key)))
        };
        let mut out = Self::default();
        if let Some((v, path)) = get(RETRY_HTTP) {
            out.http = Some(parse_statuses(v, &path)?);
        }
        if let Some((v, path)) = get(RETRY_GRPC) {
            let codes = list(v)
                .map(|c| validate::grpc_code(c, &path))
                .collect::<Result<Vec<_>, _>>()?;
            if codes.is_empty() {
                return Err(Invalid::new(path, "empty list of gRPC statuses"));
            }
            out.grpc = Some(codes);
        }
        if let Some((v, path)) = get(RETRY_LIMIT) {
            let n = v
                .trim()
                .parse::<i64>()
                .map_err(|_| Invalid::new(&path, format!("{v:?} is not a number of retries")))?;
            out.limit = Some(validate::bounded(n, MAX_RETRIES, &path)?);
        }
        if let Some((v, path)) = get(TIMEOUT_REQUEST) {
            out.request_timeout_ms = Some(validate::duration_ms(v.trim(), &path)?);
        }
        if let Some((v, path)) = get(TIMEOUT_BACKEND_REQUEST) {
            out.backend_request_timeout_ms = Some(validate::duration_ms(v.trim(), &path)?);
        }
        Ok(out)
    }

    /// Whether any retry annotation is present.
    pub fn has_retry(&self) -> bool {
        self.http.is_some() || self.grpc.is_some() || self.limit.is_some()
    }
}

fn list(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty())
}

/// Parses `5xx,429,500-504`: classes `1xx`–`5xx`, single codes and inclusive ranges.
pub fn parse_statuses(v: &str, path: &str) -> Result<StatusSet, Invalid> {
    let mut set = StatusSet::default();
    let code = |s: &str| {
        let n = s.trim().parse::<i64>().map_err(|_| {
            Invalid::new(path, format!("{s:?} is not an HTTP status, class or range"))
        })?;
        validate::status_code(n, path)
    };
    for item in list(v) {
        let lower = item.to_ascii_lowercase();
        if let Some(class) = lower.strip_suffix("xx") {
            let c = code(&format!("{class}00"))?;
            set.ranges.push(StatusRange {
                min: c,
                max: c + 99,
            });
        } else if let Some((a, b)) = item.split_once('-') {
            let (min, max) = (code(a)?, code(b)?);
            if min > max {
                return Err(Invalid::new(path, format!("empty status range {item:?}")));
            }
            set.ranges.push(StatusRange { min, max });
        } else {
            set.codes.push(code(item)?);
        }
    }
    if set.codes.is_empty() && set.ranges.is_empty() {
        return Err(Invalid::new(path, "empty list of HTTP statuses"));
    }
    Ok(set)
}

/// The Gateway API `rules[].retry` block, in the shape shared by every route kind.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GatewayRetry<'a> {
    /// `attempts`: retries, not attempts.
    pub attempts: Option<i64>,
    /// `codes`.
    pub codes: Option<&'a [i64]>,
    /// `backoff`, a duration.
    pub backoff: Option<&'a str>,
}

/// The retry policy of a rule (`path` is the rule's field path, e.g. `spec.rules[0]`).
///
/// A rule's own `retry` block wins field by field; annotations fill what it leaves unset,
/// and alone enable retries when the rule has no `retry` block. Without a `retry` block
/// or a retry annotation, the rule does not retry. Statuses default to `5xx` when neither
/// HTTP nor gRPC statuses are given for an HTTPRoute, and to gRPC `unavailable` for a
/// GRPCRoute. Connection failures are always retried.
pub fn rule_retry(
    gateway: Option<&GatewayRetry<'_>>,
    ann: &RouteAnnotations,
    grpc_route: bool,
    path: &str,
) -> Result<Option<RetryPolicy>, Invalid> {
    if gateway.is_none() && !ann.has_retry() {
        return Ok(None);
    }
    let gw = gateway.cloned().unwrap_or_default();
    let retries = match gw.attempts {
        Some(n) => validate::bounded(n, MAX_RETRIES, &format!("{path}.retry.attempts"))?,
        None => ann.limit.unwrap_or(DEFAULT_RETRIES),
    };
    let mut statuses = match gw.codes {
        Some(codes) => {
            let codes = codes
                .iter()
                .enumerate()
                .map(|(i, c)| validate::status_code(*c, &format!("{path}.retry.codes[{i}]")))
                .collect::<Result<Vec<_>, _>>()?;
            StatusSet {
                codes,
                ranges: Vec::new(),
            }
        }
        None => ann.http.clone().unwrap_or_default(),
    };
    let mut grpc_codes = ann.grpc.clone().unwrap_or_default();
    if statuses.codes.is_empty() && statuses.ranges.is_empty() && grpc_codes.is_empty() {
        if grpc_route {
            grpc_codes.push("unavailable".to_string());
        } else {
            statuses.ranges.push(StatusRange { min: 500, max: 599 });
        }
    }
    let base = match gw.backoff {
        Some(b) => validate::duration_ms(b, &format!("{path}.retry.backoff"))?,
        None => DEFAULT_BACKOFF_BASE_MS,
    };
    Ok(Some(RetryPolicy {
        attempts: retries + 1,
        status_codes: statuses.codes,
        status_ranges: statuses.ranges,
        grpc_codes,
        connect_failures: true,
        backoff_base_ms: base,
        backoff_max_ms: base.saturating_mul(10).max(MIN_BACKOFF_MAX_MS),
    }))
}

/// The `(request, backend_request)` timeouts of a rule in milliseconds (0 = none): the
/// rule's `timeouts` fields, else the annotations. `path` is the rule's field path.
pub fn rule_timeouts(
    request: Option<&str>,
    backend_request: Option<&str>,
    ann: &RouteAnnotations,
    path: &str,
) -> Result<(u32, u32), Invalid> {
    let req = request
        .map(|d| validate::duration_ms(d, &format!("{path}.timeouts.request")))
        .transpose()?;
    let backend_path = format!("{path}.timeouts.backendRequest");
    let backend = backend_request
        .map(|d| validate::duration_ms(d, &backend_path))
        .transpose()?;
    if let (Some(r), Some(b)) = (req, backend) {
        if r != 0 && b > r {
            return Err(Invalid::new(
                backend_path,
                format!("must not exceed timeouts.request ({r}ms), got {b}ms"),
            ));
        }
    }
    Ok((
        req.or(ann.request_timeout_ms).unwrap_or(0),
        backend.or(ann.backend_request_timeout_ms).unwrap_or(0),
    ))
}

#[cfg(test)]
mod tests;
