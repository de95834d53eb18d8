//! Proxy configuration from `MESH_PROXY_*` environment variables.
//!
//! Every variable is documented in `proxy/README.md`. A bad value is an error
//! naming the variable, so a misconfigured proxy exits at once with one line.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

/// A configuration error; the message names the variable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{name}: {reason} (got {value:?})")]
    Invalid {
        name: &'static str,
        value: String,
        reason: String,
    },
    #[error("{0} must be set")]
    Missing(&'static str),
    #[error("{name}: cannot read {path}: {err}")]
    File {
        name: &'static str,
        path: String,
        err: std::io::Error,
    },
}

pub use mesh_proto::workload::TokenSource;

/// The proxy's full configuration.
#[derive(Clone, Debug)]
pub struct Config {
    /// Where the outbound listener binds (the app's traffic arrives here).
    pub outbound_addr: SocketAddr,
    /// Where the inbound listener binds (peer proxies connect here).
    pub inbound_addr: SocketAddr,
    /// Where the admin server binds (`/live`, `/ready`, `/metrics`).
    pub admin_addr: SocketAddr,
    /// The IP the local application listens on; inbound traffic goes there.
    pub app_ip: std::net::IpAddr,
    /// The destination controller, as `host:port` or a URL (always mutual
    /// TLS).
    pub destination_addr: String,
    /// The SPIFFE ID the controller must present.
    pub destination_identity: String,
    /// The identity service, as `host:port` or a URL (TLS).
    pub identity_addr: String,
    /// The DNS name the identity service's certificate must carry.
    pub identity_server_name: String,
    /// PEM trust anchors of the mesh (the bundle at startup).
    pub trust_anchors_pem: String,
    /// The bundle's file, watched for changes (`None` when given inline).
    pub trust_anchors_file: Option<std::path::PathBuf>,
    /// How often the bundle file is read for changes.
    pub trust_anchors_poll: Duration,
    /// This workload's SPIFFE ID.
    pub identity: String,
    /// How the proxy proves its identity to the identity service.
    pub token: TokenSource,
    /// The workload's namespace (for metrics and the controller's logs).
    pub namespace: String,
    /// The workload's name for metrics (the owning Deployment's, or the
    /// WorkloadEntry's).
    pub workload: String,
    /// The pod or WorkloadEntry name the controller knows this proxy by
    /// (`MESH_PROXY_POD_NAME`, defaulting to the workload name): inbound
    /// policies are watched for `namespace/pod_name`.
    pub pod_name: String,
    /// What happens on a port no authorization policy allows anything on,
    /// and its mTLS mode when no policy sets one.
    pub default_inbound_policy: crate::inbound::authz::DefaultPolicy,
    /// The application's HTTP probe endpoints (`MESH_PROXY_INBOUND_PROBES`,
    /// `port:/path` pairs the injector takes from the pod's probes): plaintext
    /// `GET`/`HEAD` requests to them are always allowed, so kubelet probes work
    /// on strict ports and under a `deny` default.
    pub inbound_probes: Vec<(u16, String)>,
    /// The application's ports (`MESH_PROXY_INBOUND_PORTS`, the injector
    /// writes the containers' ports): the only ports inbound traffic may
    /// reach, and their inbound policies are fetched at startup and kept, so
    /// no first request waits for the controller. `None`: not declared (any
    /// port but the proxy's own); `Some([])`: the app serves nothing.
    pub inbound_ports: Option<Vec<u16>>,
    /// Tokio worker threads; 1 runs a single-threaded runtime.
    pub worker_threads: usize,
    /// Timeout for connecting to a peer or the application.
    pub connect_timeout: Duration,
    /// How long to wait for a new target's first discovery answer.
    pub discovery_timeout: Duration,
    /// How long a client may take to say something: a peer its handshake
    /// and transport header, any HTTP client its first request and every
    /// HTTP/1 request head.
    pub header_timeout: Duration,
    /// How long a connection may go without a new request (HTTP/2; HTTP/1
    /// keep-alive connections are bounded by `header_timeout`).
    pub idle_timeout: Duration,
    /// Open connections per listener (inbound, outbound); beyond it the
    /// oldest silent connection is shed, or the new one refused.
    pub max_connections: usize,
    /// Open connections on the admin listener.
    pub admin_max_connections: usize,
    /// How long a shutdown (SIGTERM) may wait for open connections and
    /// requests in flight to finish.
    pub shutdown_grace: Duration,
    /// Requests in flight per direction; more are shed with `503 overloaded`.
    pub max_in_flight: usize,
    /// Discovery targets watched at once (each holds a `Get` and a
    /// `GetPolicy` stream); the least recently used one nobody holds makes
    /// room for a new one.
    pub max_targets: usize,
    /// Label sets per traffic metric family, and how long an unused one is
    /// kept.
    pub series: crate::metrics::SeriesLimits,
    /// How long a redirected connection may take to show its protocol
    /// before it is treated as opaque TCP.
    pub detect_timeout: Duration,
    /// Ports whose traffic is opaque TCP: no protocol detection (on top of
    /// the well-known server-speaks-first ports).
    pub opaque_ports: Vec<crate::init::rules::PortRange>,
    /// Write one JSON access-log line per request on stdout.
    pub access_log: bool,
    /// Distributed tracing; `None` (no collector) turns it off.
    pub trace: Option<TraceConfig>,
    /// Who may tap this proxy, and how much.
    pub tap: TapConfig,
}

/// Tap (`MESH_PROXY_TAP_*`).
#[derive(Clone, Debug)]
pub struct TapConfig {
    /// The SPIFFE IDs that may tap (empty: tap is off).
    pub identities: Vec<String>,
    pub limits: crate::tap::Limits,
}

/// Where and how much to trace (`MESH_PROXY_TRACE_*`).
#[derive(Clone, Debug)]
pub struct TraceConfig {
    /// The OTLP/gRPC collector, as `host:port` or a URL.
    pub collector: String,
    /// The share of new traces sampled, 0.0 to 1.0; a caller's sampling
    /// decision is honoured (parent-based).
    pub sampling: f64,
    /// How long spans wait in the batch before export (must be > 0).
    pub batch_delay: Duration,
    /// How long one export may take.
    pub export_timeout: Duration,
}

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// Reads the configuration through `get` (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |k: &'static str| get(k).filter(|v| !v.trim().is_empty());
        let addr = |k: &'static str, default: &str| -> Result<SocketAddr, ConfigError> {
            let v = get(k).unwrap_or_else(|| default.to_string());
            v.trim().parse().map_err(|e| ConfigError::Invalid {
                name: k,
                value: v.clone(),
                reason: format!("not an ip:port address ({e})"),
            })
        };
        let millis = |k: &'static str, default: u64| -> Result<Duration, ConfigError> {
            match get(k) {
                None => Ok(Duration::from_millis(default)),
                Some(v) => v
                    .trim()
                    .parse::<u64>()
                    .ok()
                    .filter(|ms| *ms > 0)
                    .map(Duration::from_millis)
                    .ok_or(ConfigError::Invalid {
                        name: k,
                        value: v,
                        reason: "expected a positive number of milliseconds".into(),
                    }),
            }
        };

        let (trust_anchors_pem, trust_anchors_file) = match (
            get("MESH_PROXY_TRUST_ANCHORS"),
            get("MESH_PROXY_TRUST_ANCHORS_FILE"),
        ) {
            (Some(pem), _) => (pem, None),
            (None, Some(path)) => {
                let pem = std::fs::read_to_string(&path).map_err(|err| ConfigError::File {
                    name: "MESH_PROXY_TRUST_ANCHORS_FILE",
                    path: path.clone(),
                    err,
                })?;
                (pem, Some(path.into()))
            }
            (None, None) => return Err(ConfigError::Missing("MESH_PROXY_TRUST_ANCHORS_FILE")),
        };

        let token = match (
            get("MESH_PROXY_IDENTITY_TOKEN"),
            get("MESH_PROXY_IDENTITY_TOKEN_FILE"),
        ) {
            (Some(t), _) => TokenSource::Inline(t.trim().to_string()),
            (None, Some(p)) => TokenSource::File(PathBuf::from(p)),
            (None, None) => return Err(ConfigError::Missing("MESH_PROXY_IDENTITY_TOKEN_FILE")),
        };

        let namespace = get("MESH_PROXY_NAMESPACE").unwrap_or_else(|| "default".into());
        let td = get("MESH_PROXY_TRUST_DOMAIN").unwrap_or_else(|| "cluster.local".into());
        let identity = match get("MESH_PROXY_IDENTITY") {
            Some(id) => {
                if !id.starts_with("spiffe://") {
                    return Err(ConfigError::Invalid {
                        name: "MESH_PROXY_IDENTITY",
                        value: id,
                        reason: "expected a spiffe:// ID".into(),
                    });
                }
                id
            }
            None => {
                let sa = get("MESH_PROXY_SERVICE_ACCOUNT").unwrap_or_else(|| "default".into());
                format!("spiffe://{td}/ns/{namespace}/sa/{sa}")
            }
        };

        let count = |k: &'static str, default: usize| -> Result<usize, ConfigError> {
            match get(k) {
                None => Ok(default),
                Some(v) => v
                    .trim()
                    .parse::<usize>()
                    .ok()
                    .filter(|n| (1..=1_000_000).contains(n))
                    .ok_or(ConfigError::Invalid {
                        name: k,
                        value: v,
                        reason: "expected a number from 1 to 1000000".into(),
                    }),
            }
        };

        let worker_threads = match get("MESH_PROXY_WORKER_THREADS") {
            None => 1,
            Some(v) => v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=64).contains(n))
                .ok_or(ConfigError::Invalid {
                    name: "MESH_PROXY_WORKER_THREADS",
                    value: v,
                    reason: "expected a number from 1 to 64".into(),
                })?,
        };

        let app_ip = {
            let v = get("MESH_PROXY_APP_IP").unwrap_or_else(|| "127.0.0.1".into());
            v.trim().parse().map_err(|_| ConfigError::Invalid {
                name: "MESH_PROXY_APP_IP",
                value: v.clone(),
                reason: "not an IP address".into(),
            })?
        };

        let opaque_ports = match get("MESH_PROXY_OPAQUE_PORTS") {
            None => Vec::new(),
            Some(v) => {
                crate::init::rules::parse_ports(&v).map_err(|reason| ConfigError::Invalid {
                    name: "MESH_PROXY_OPAQUE_PORTS",
                    value: v.clone(),
                    reason: format!("{reason}; expected ports or ranges like 3306,9000-9010"),
                })?
            }
        };

        let default_inbound_policy = match get("MESH_PROXY_DEFAULT_INBOUND_POLICY") {
            None => Default::default(),
            Some(v) => {
                crate::inbound::authz::DefaultPolicy::parse(&v).ok_or(ConfigError::Invalid {
                    name: "MESH_PROXY_DEFAULT_INBOUND_POLICY",
                    value: v,
                    reason: "expected allow-all, allow-authenticated or deny".into(),
                })?
            }
        };
        let workload = get("MESH_PROXY_WORKLOAD").unwrap_or_else(|| "unknown".into());
        let inbound_ports = match get("MESH_PROXY_INBOUND_PORTS") {
            None => None,
            // Serves nothing: every inbound connection is refused.
            Some(v) if v.trim() == "none" => Some(Vec::new()),
            Some(v) => Some(
                v.split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(|p| p.parse::<u16>().ok().filter(|p| *p != 0))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| ConfigError::Invalid {
                        name: "MESH_PROXY_INBOUND_PORTS",
                        value: v.clone(),
                        reason: "expected comma-separated ports (1-65535) or none".into(),
                    })?,
            ),
        };
        let inbound_probes = match get("MESH_PROXY_INBOUND_PROBES") {
            None => Vec::new(),
            Some(v) => parse_probes(&v).map_err(|reason| ConfigError::Invalid {
                name: "MESH_PROXY_INBOUND_PROBES",
                value: v.clone(),
                reason,
            })?,
        };

        let access_log = match get("MESH_PROXY_ACCESS_LOG").as_deref().map(str::trim) {
            None | Some("off") => false,
            Some("json") => true,
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "MESH_PROXY_ACCESS_LOG",
                    value: other.to_string(),
                    reason: "expected json or off".into(),
                })
            }
        };

        let trace = match get("MESH_PROXY_TRACE_COLLECTOR") {
            None => None,
            Some(collector) => {
                let sampling = match get("MESH_PROXY_TRACE_SAMPLING") {
                    None => 1.0,
                    Some(v) => v
                        .trim()
                        .parse::<f64>()
                        .ok()
                        .filter(|r| (0.0..=1.0).contains(r))
                        .ok_or(ConfigError::Invalid {
                            name: "MESH_PROXY_TRACE_SAMPLING",
                            value: v,
                            reason: "expected a ratio from 0.0 to 1.0".into(),
                        })?,
                };
                Some(TraceConfig {
                    collector: collector.trim().to_string(),
                    sampling,
                    batch_delay: millis("MESH_PROXY_TRACE_BATCH_DELAY_MS", 5_000)?,
                    export_timeout: Duration::from_secs(10),
                })
            }
        };

        Ok(Config {
            outbound_addr: addr("MESH_PROXY_OUTBOUND_ADDR", "127.0.0.1:4140")?,
            inbound_addr: addr("MESH_PROXY_INBOUND_ADDR", "0.0.0.0:4143")?,
            admin_addr: addr("MESH_PROXY_ADMIN_ADDR", "0.0.0.0:4191")?,
            app_ip,
            destination_addr: get("MESH_PROXY_DESTINATION_ADDR")
                .unwrap_or_else(|| "mesh-controller.mesh-system.svc.cluster.local:8086".into()),
            destination_identity: match get("MESH_PROXY_DESTINATION_IDENTITY") {
                None => format!("spiffe://{td}/ns/mesh-system/sa/mesh-controller"),
                Some(id) if id.starts_with("spiffe://") => id,
                Some(id) => {
                    return Err(ConfigError::Invalid {
                        name: "MESH_PROXY_DESTINATION_IDENTITY",
                        value: id,
                        reason: "expected a spiffe:// ID".into(),
                    })
                }
            },
            identity_addr: get("MESH_PROXY_IDENTITY_ADDR")
                .unwrap_or_else(|| "mesh-identity.mesh-system.svc.cluster.local:8080".into()),
            identity_server_name: get("MESH_PROXY_IDENTITY_SERVER_NAME")
                // The identity service's certificate names the Service in the trust
                // domain (which doubles as the cluster domain).
                .unwrap_or_else(|| format!("identity.mesh-system.svc.{td}")),
            trust_anchors_pem,
            trust_anchors_file,
            trust_anchors_poll: millis("MESH_PROXY_TRUST_ANCHORS_POLL_MS", 1_000)?,
            identity,
            token,
            pod_name: get("MESH_PROXY_POD_NAME").unwrap_or_else(|| workload.clone()),
            workload,
            default_inbound_policy,
            inbound_probes,
            inbound_ports,
            namespace,
            worker_threads,
            connect_timeout: millis("MESH_PROXY_CONNECT_TIMEOUT_MS", 1_000)?,
            discovery_timeout: millis("MESH_PROXY_DISCOVERY_TIMEOUT_MS", 3_000)?,
            header_timeout: millis("MESH_PROXY_HEADER_TIMEOUT_MS", 10_000)?,
            idle_timeout: millis("MESH_PROXY_IDLE_TIMEOUT_MS", 300_000)?,
            max_connections: count("MESH_PROXY_MAX_CONNECTIONS", 10_000)?,
            admin_max_connections: count("MESH_PROXY_ADMIN_MAX_CONNECTIONS", 1_024)?,
            max_targets: count(
                "MESH_PROXY_MAX_TARGETS",
                crate::discovery::DEFAULT_MAX_TARGETS,
            )?,
            max_in_flight: count("MESH_PROXY_MAX_IN_FLIGHT", 100_000)?,
            shutdown_grace: match get("MESH_PROXY_SHUTDOWN_GRACE") {
                None => Duration::from_secs(30),
                Some(v) => parse_duration(&v).ok_or(ConfigError::Invalid {
                    name: "MESH_PROXY_SHUTDOWN_GRACE",
                    value: v,
                    reason: "expected a duration like 30s, 1500ms or 2m".into(),
                })?,
            },
            series: crate::metrics::SeriesLimits {
                max: count("MESH_PROXY_METRICS_MAX_SERIES", 1_000)?,
                retain: millis("MESH_PROXY_METRICS_RETAIN_IDLE_MS", 600_000)?,
            },
            detect_timeout: millis("MESH_PROXY_DETECT_TIMEOUT_MS", 10_000)?,
            opaque_ports,
            access_log,
            trace,
            tap: TapConfig {
                identities: match get("MESH_PROXY_TAP_IDENTITIES") {
                    // The control plane's tap identity (the CLI's and the dashboard's).
                    None => vec![format!("spiffe://{td}/ns/mesh-system/sa/mesh-tap")],
                    Some(v) if v.trim() == "none" => Vec::new(),
                    Some(v) => {
                        let ids: Vec<String> = v
                            .split(',')
                            .map(str::trim)
                            .filter(|s| !s.is_empty())
                            .map(String::from)
                            .collect();
                        if ids.is_empty() || ids.iter().any(|i| !i.starts_with("spiffe://")) {
                            return Err(ConfigError::Invalid {
                                name: "MESH_PROXY_TAP_IDENTITIES",
                                value: v,
                                reason: "expected comma-separated spiffe:// IDs or none".into(),
                            });
                        }
                        ids
                    }
                },
                limits: crate::tap::Limits {
                    max_taps: count("MESH_PROXY_TAP_MAX", 8)?,
                    default_rps: 100,
                    max_rps: u32::try_from(count("MESH_PROXY_TAP_MAX_RPS", 1_000)?)
                        .unwrap_or(u32::MAX),
                },
            },
        })
    }
}

/// Parses `30s`, `1500ms`, `2m` or a bare number of seconds.
fn parse_duration(v: &str) -> Option<Duration> {
    let v = v.trim();
    let (n, unit) = match v.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => v.split_at(i),
        None => (v, "s"),
    };
    let n: u64 = n.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(n)),
        "s" => Some(Duration::from_secs(n)),
        "m" => Some(Duration::from_secs(n.checked_mul(60)?)),
        _ => None,
    }
}

/// Parses `8080:/healthz,8080:/ready` (an empty list is fine).
fn parse_probes(v: &str) -> Result<Vec<(u16, String)>, String> {
    v.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| {
            let (port, path) = item
                .split_once(':')
                .ok_or_else(|| format!("{item:?}: expected port:/path"))?;
            let port = port
                .parse::<u16>()
                .ok()
                .filter(|p| *p != 0)
                .ok_or_else(|| format!("{item:?}: bad port"))?;
            if !path.starts_with('/') {
                return Err(format!("{item:?}: the path must start with /"));
            }
            Ok((port, path.to_string()))
        })
        .collect()
}

/// Turns `host:port` into an `http://` URL; URLs pass through unchanged.
pub fn grpc_url(addr: &str, tls: bool) -> String {
    if addr.contains("://") {
        addr.to_string()
    } else if tls {
        format!("https://{addr}")
    } else {
        format!("http://{addr}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn base() -> HashMap<&'static str, String> {
        HashMap::from([
            ("MESH_PROXY_TRUST_ANCHORS", "pem".to_string()),
            ("MESH_PROXY_IDENTITY_TOKEN", "tok".to_string()),
        ])
    }

    fn parse(m: &HashMap<&'static str, String>) -> Result<Config, ConfigError> {
        Config::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn defaults_follow_the_design() {
        let c = parse(&base()).expect("valid");
        assert_eq!(c.outbound_addr.to_string(), "127.0.0.1:4140");
        assert_eq!(c.inbound_addr.to_string(), "0.0.0.0:4143");
        assert_eq!(c.admin_addr.to_string(), "0.0.0.0:4191");
        assert_eq!(c.identity, "spiffe://cluster.local/ns/default/sa/default");
        assert_eq!(
            c.destination_identity,
            "spiffe://cluster.local/ns/mesh-system/sa/mesh-controller"
        );
        assert_eq!(c.worker_threads, 1);
        assert!(c.opaque_ports.is_empty());
        assert_eq!(c.detect_timeout, Duration::from_secs(10));
        assert_eq!(c.header_timeout, Duration::from_secs(10));
        assert_eq!(c.idle_timeout, Duration::from_secs(300));
        assert_eq!(
            (c.max_connections, c.admin_max_connections),
            (10_000, 1_024)
        );
    }

    #[test]
    fn tracing_is_off_without_a_collector() {
        let mut m = base();
        m.insert("MESH_PROXY_TRACE_SAMPLING", "0.5".into());
        assert!(parse(&m).expect("valid").trace.is_none());
        m.insert("MESH_PROXY_TRACE_COLLECTOR", "otel.mesh-system:4317".into());
        let t = parse(&m).expect("valid").trace.expect("on");
        assert_eq!(t.collector, "otel.mesh-system:4317");
        assert_eq!(t.sampling, 0.5);
        assert_eq!(t.batch_delay, Duration::from_secs(5));
    }

    #[test]
    fn opaque_ports_take_ranges() {
        let mut m = base();
        m.insert("MESH_PROXY_OPAQUE_PORTS", "3306, 9000-9010".into());
        let c = parse(&m).expect("valid");
        use crate::init::rules::PortRange;
        assert_eq!(
            c.opaque_ports,
            vec![PortRange(3306, 3306), PortRange(9000, 9010)]
        );
    }

    #[test]
    fn identity_from_parts() {
        let mut m = base();
        m.insert("MESH_PROXY_NAMESPACE", "prod".into());
        m.insert("MESH_PROXY_SERVICE_ACCOUNT", "orders".into());
        assert_eq!(
            parse(&m).expect("valid").identity,
            "spiffe://cluster.local/ns/prod/sa/orders"
        );
    }

    #[test]
    fn errors_name_the_variable() {
        let mut m = base();
        m.insert("MESH_PROXY_INBOUND_ADDR", "nope".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_INBOUND_ADDR:"), "{e}");

        let mut m = base();
        m.insert("MESH_PROXY_WORKER_THREADS", "0".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_WORKER_THREADS:"), "{e}");

        let mut m = base();
        m.remove("MESH_PROXY_IDENTITY_TOKEN");
        let e = parse(&m).expect_err("missing").to_string();
        assert!(e.contains("MESH_PROXY_IDENTITY_TOKEN_FILE"), "{e}");

        let mut m = base();
        m.insert("MESH_PROXY_ACCESS_LOG", "yes".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_ACCESS_LOG:"), "{e}");

        let mut m = base();
        m.insert(
            "MESH_PROXY_INBOUND_PROBES",
            "8080:/healthz, 9090:/ready".into(),
        );
        assert_eq!(
            parse(&m).unwrap().inbound_probes,
            [(8080, "/healthz".to_string()), (9090, "/ready".to_string())]
        );
        m.insert("MESH_PROXY_INBOUND_PROBES", "8080:healthz".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(
            e.starts_with("MESH_PROXY_INBOUND_PROBES:") && e.contains("must start with /"),
            "{e}"
        );

        let mut m = base();
        m.insert("MESH_PROXY_DEFAULT_INBOUND_POLICY", "allow-some".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(
            e.starts_with("MESH_PROXY_DEFAULT_INBOUND_POLICY:") && e.contains("allow-all"),
            "{e}"
        );

        let mut m = base();
        m.insert("MESH_PROXY_OPAQUE_PORTS", "3306,x".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_OPAQUE_PORTS:"), "{e}");

        let mut m = base();
        m.insert("MESH_PROXY_TRACE_COLLECTOR", "127.0.0.1:4317".into());
        m.insert("MESH_PROXY_TRACE_SAMPLING", "1.5".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_TRACE_SAMPLING:"), "{e}");

        let mut m = base();
        m.insert("MESH_PROXY_TRACE_COLLECTOR", "127.0.0.1:4317".into());
        m.insert("MESH_PROXY_TRACE_BATCH_DELAY_MS", "0".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_TRACE_BATCH_DELAY_MS:"), "{e}");

        let mut m = base();
        m.insert("MESH_PROXY_MAX_CONNECTIONS", "0".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_MAX_CONNECTIONS:"), "{e}");

        let mut m = base();
        m.insert("MESH_PROXY_INBOUND_PORTS", "8080,0".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_INBOUND_PORTS:"), "{e}");
        m.insert("MESH_PROXY_INBOUND_PORTS", "none".into());
        assert_eq!(parse(&m).unwrap().inbound_ports, Some(vec![]));
        m.insert("MESH_PROXY_INBOUND_PORTS", "8080, 9090".into());
        assert_eq!(parse(&m).unwrap().inbound_ports, Some(vec![8080, 9090]));

        let mut m = base();
        m.insert("MESH_PROXY_IDENTITY", "orders".into());
        let e = parse(&m).expect_err("invalid").to_string();
        assert!(e.starts_with("MESH_PROXY_IDENTITY:"), "{e}");
    }

    #[test]
    fn grpc_urls() {
        assert_eq!(grpc_url("127.0.0.1:8086", false), "http://127.0.0.1:8086");
        assert_eq!(grpc_url("localhost:8080", true), "https://localhost:8080");
        assert_eq!(grpc_url("http://x:1", true), "http://x:1");
    }
}
