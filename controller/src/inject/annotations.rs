//! The annotations that drive injection (DESIGN §2): `mesh.dev/inject` and the
//! `config.mesh.dev/<knob>` overrides, parsed and checked into [`Overrides`].

use std::collections::BTreeMap;

use super::{InjectConfig, SkipReason, ADMIN_PORT};

/// `mesh.dev/inject: enabled | disabled`, on a namespace or a pod (template).
pub const INJECT_ANNOTATION: &str = "mesh.dev/inject";
/// Added to injected pods; its value is the proxy image.
pub const INJECTED_ANNOTATION: &str = "mesh.dev/injected";
/// The workload a pod belongs to (its Deployment, StatefulSet, …), set by the injector;
/// the proxy reads it (downward API) as the workload name of its metrics, the same name
/// the controller gives the pod's endpoints.
pub const WORKLOAD_ANNOTATION: &str = "mesh.dev/workload";
/// Prefix of the per-workload configuration overrides.
pub const CONFIG_PREFIX: &str = "config.mesh.dev/";
/// Inbound ports not captured: comma-separated ports or `lo-hi` ranges.
pub const SKIP_INBOUND_PORTS: &str = "config.mesh.dev/skip-inbound-ports";
/// Outbound ports not captured: comma-separated ports or `lo-hi` ranges.
pub const SKIP_OUTBOUND_PORTS: &str = "config.mesh.dev/skip-outbound-ports";
/// Ports whose traffic is opaque TCP (no protocol detection).
pub const OPAQUE_PORTS: &str = "config.mesh.dev/opaque-ports";
/// CPU request of the proxy container (a Kubernetes quantity).
pub const PROXY_CPU_REQUEST: &str = "config.mesh.dev/proxy-cpu-request";
/// CPU limit of the proxy container.
pub const PROXY_CPU_LIMIT: &str = "config.mesh.dev/proxy-cpu-limit";
/// Memory request of the proxy container.
pub const PROXY_MEMORY_REQUEST: &str = "config.mesh.dev/proxy-memory-request";
/// Memory limit of the proxy container.
pub const PROXY_MEMORY_LIMIT: &str = "config.mesh.dev/proxy-memory-limit";
/// What the proxy allows on ports no AuthorizationPolicy allows anything on:
/// `allow-all` (permissive mTLS), `allow-authenticated` or `deny` (strict).
pub const DEFAULT_INBOUND_POLICY: &str = "config.mesh.dev/default-inbound-policy";
/// The values [`DEFAULT_INBOUND_POLICY`] takes.
pub const DEFAULT_INBOUND_POLICIES: &[&str] = &["allow-all", "allow-authenticated", "deny"];
/// The proxy's log filter (`MESH_PROXY_LOG`).
pub const PROXY_LOG_LEVEL: &str = "config.mesh.dev/proxy-log-level";

/// CPU request when the pod sets none.
const DEFAULT_CPU_REQUEST: &str = "100m";
/// Memory request when the pod sets none.
const DEFAULT_MEMORY_REQUEST: &str = "20Mi";

/// The injection parameters of one pod, after its annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Overrides {
    /// Inbound ports left uncaptured, the admin port first.
    pub skip_inbound: Vec<String>,
    /// Outbound ports left uncaptured.
    pub skip_outbound: Vec<String>,
    /// Opaque ports, if the pod names any.
    pub opaque_ports: Option<String>,
    /// `requests` of the proxy container, by resource name.
    pub requests: BTreeMap<String, String>,
    /// `limits` of the proxy container, by resource name.
    pub limits: BTreeMap<String, String>,
    /// The proxy's log filter.
    pub log_level: String,
    /// The proxy's default inbound policy, when annotated.
    pub default_inbound_policy: Option<String>,
    /// The app's HTTP probe endpoints (`port:/path,…`), when it has any.
    pub probes: Option<String>,
    /// The app's container ports (`8080,9090`), when it declares any.
    pub ports: Option<String>,
    /// The pod carries [`WORKLOAD_ANNOTATION`]: the proxy's workload name comes from it
    /// (else from the pod name).
    pub workload_annotation: bool,
    /// The pod's `terminationGracePeriodSeconds`, when set: the proxy's drain on SIGTERM
    /// fits in it.
    pub shutdown_grace_seconds: Option<i64>,
}

impl Overrides {
    /// Reads the overrides from the (pod over namespace) annotations.
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
        cfg: &InjectConfig,
    ) -> Result<Self, SkipReason> {
        let get = |name: &str| {
            annotations
                .get(name)
                .map(|v| v.trim())
                .filter(|v| !v.is_empty())
        };
        let mut skip_inbound = vec![ADMIN_PORT.to_string()];
        for port in port_list(annotations, SKIP_INBOUND_PORTS)? {
            if !skip_inbound.contains(&port) {
                skip_inbound.push(port);
            }
        }
        let skip_outbound = port_list(annotations, SKIP_OUTBOUND_PORTS)?;
        let opaque = port_list(annotations, OPAQUE_PORTS)?;
        let opaque_ports = (!opaque.is_empty()).then(|| opaque.join(","));

        let quantity = |name: &str, default: Option<&str>| match get(name) {
            Some(v) if is_quantity(v) => Ok(Some(v.to_string())),
            Some(v) => Err(invalid(name, v)),
            None => Ok(default.map(str::to_string)),
        };
        let mut requests = BTreeMap::new();
        let mut limits = BTreeMap::new();
        for (name, is_limit, resource, default) in [
            (PROXY_CPU_REQUEST, false, "cpu", Some(DEFAULT_CPU_REQUEST)),
            (
                PROXY_MEMORY_REQUEST,
                false,
                "memory",
                Some(DEFAULT_MEMORY_REQUEST),
            ),
            (PROXY_CPU_LIMIT, true, "cpu", None),
            (PROXY_MEMORY_LIMIT, true, "memory", None),
        ] {
            if let Some(value) = quantity(name, default)? {
                let map = if is_limit { &mut limits } else { &mut requests };
                map.insert(resource.to_string(), value);
            }
        }
        let log_level = get(PROXY_LOG_LEVEL).unwrap_or(&cfg.log_level).to_string();
        let default_inbound_policy = match get(DEFAULT_INBOUND_POLICY) {
            Some(v) if DEFAULT_INBOUND_POLICIES.contains(&v) => Some(v.to_string()),
            Some(v) => return Err(invalid(DEFAULT_INBOUND_POLICY, v)),
            None => None,
        };
        Ok(Self {
            skip_inbound,
            skip_outbound,
            opaque_ports,
            requests,
            limits,
            log_level,
            default_inbound_policy,
            probes: None,
            ports: None,
            workload_annotation: false,
            shutdown_grace_seconds: None,
        })
    }
}

/// Parses a comma-separated list of ports and `lo-hi` ranges (1–65535), as written.
fn port_list(
    annotations: &BTreeMap<String, String>,
    name: &str,
) -> Result<Vec<String>, SkipReason> {
    let Some(value) = annotations.get(name) else {
        return Ok(Vec::new());
    };
    let mut ports = Vec::new();
    for item in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let ok = match item.split_once('-') {
            Some((lo, hi)) => matches!((port(lo), port(hi)), (Some(lo), Some(hi)) if lo <= hi),
            None => port(item).is_some(),
        };
        if !ok {
            return Err(invalid(name, value));
        }
        ports.push(item.to_string());
    }
    Ok(ports)
}

/// A port number 1–65535.
fn port(s: &str) -> Option<u16> {
    s.trim().parse().ok().filter(|p| *p != 0)
}

/// A plausible Kubernetes quantity: digits with an optional fraction and suffix
/// (`100m`, `0.5`, `64Mi`, `1e3`). The API server has the last word.
fn is_quantity(s: &str) -> bool {
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (digits, suffix) = s.split_at(split);
    let number_ok = !digits.is_empty()
        && digits.chars().all(|c| c.is_ascii_digit() || c == '.')
        && digits.chars().filter(|c| *c == '.').count() <= 1;
    let suffix_ok = matches!(
        suffix,
        "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
    ) || (suffix.starts_with(['e', 'E'])
        && suffix[1..]
            .trim_start_matches(['+', '-'])
            .chars()
            .all(|c| c.is_ascii_digit()));
    number_ok && suffix_ok
}

/// The skip reason for a bad annotation value.
fn invalid(name: &str, value: &str) -> SkipReason {
    SkipReason::InvalidAnnotation {
        name: name.to_string(),
        value: value.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantities() {
        for ok in ["100m", "0.5", "64Mi", "1", "2Gi", "1e3"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "m", "lots", "1..2", "12Qi", "-1"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn port_lists() {
        let ann = |v: &str| BTreeMap::from([(SKIP_OUTBOUND_PORTS.to_string(), v.to_string())]);
        assert_eq!(
            port_list(&ann(" 25, 3306-3307 ,"), SKIP_OUTBOUND_PORTS),
            Ok(vec!["25".to_string(), "3306-3307".to_string()])
        );
        for bad in ["0", "70000", "x", "10-5", "1-"] {
            assert!(port_list(&ann(bad), SKIP_OUTBOUND_PORTS).is_err(), "{bad}");
        }
    }
}
