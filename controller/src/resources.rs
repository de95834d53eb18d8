//! The configuration resources the controller understands (DESIGN §5), as serde types in
//! their Kubernetes YAML shape, and the parser that turns a multi-document YAML file into
//! them. Errors name the document and the field path of the problem.

use std::collections::BTreeMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};

use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// `apiVersion` of the core Kubernetes kinds (`Service`).
pub const CORE_V1: &str = "v1";
/// `apiVersion` of the mesh's own kinds (`WorkloadEntry`).
pub const POLICY_V1ALPHA1: &str = "policy.mesh.dev/v1alpha1";

/// One object the controller indexes.
#[derive(Clone, Debug, PartialEq)]
pub enum Resource {
    /// A Kubernetes `Service`.
    Service(Service),
    /// A `policy.mesh.dev/v1alpha1` `WorkloadEntry`.
    WorkloadEntry(WorkloadEntry),
}

/// Kubernetes object metadata (the fields the controller reads; others are ignored).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct ObjectMeta {
    /// Object name, required.
    pub name: String,
    /// Namespace; `default` when absent.
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Labels, used by selectors.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Annotations (kept for later use; not interpreted yet).
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn default_namespace() -> String {
    "default".to_string()
}

// === Service ===

/// A Kubernetes `Service` (`apiVersion: v1`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct Service {
    /// Name, namespace and labels.
    pub metadata: ObjectMeta,
    /// The selector and ports.
    pub spec: ServiceSpec,
}

/// The `spec` of a [`Service`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSpec {
    /// Label selector over workloads in the Service's namespace; empty selects nothing.
    #[serde(default)]
    pub selector: BTreeMap<String, String>,
    /// The virtual IP; `None`/absent for headless Services.
    #[serde(default, rename = "clusterIP", deserialize_with = "de_cluster_ip")]
    pub cluster_ip: Option<IpAddr>,
    /// The Service's ports.
    #[serde(default)]
    pub ports: Vec<ServicePort>,
}

/// One port of a [`Service`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServicePort {
    /// Optional port name.
    #[serde(default)]
    pub name: Option<String>,
    /// The Service port, 1–65535.
    #[serde(deserialize_with = "de_port")]
    pub port: u16,
    /// The workload port traffic goes to; absent means the same as `port`.
    #[serde(default)]
    pub target_port: Option<TargetPort>,
    /// Transport protocol, `TCP` by default.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// Application protocol (`http`, `http2`, `grpc`, `tcp`, ...), drives the protocol hint.
    #[serde(default)]
    pub app_protocol: Option<String>,
}

fn default_protocol() -> String {
    "TCP".to_string()
}

/// A Service `targetPort`: a port number or the name of a workload port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetPort {
    /// A port number, 1–65535.
    Number(u16),
    /// A port name, resolved through each workload's named ports.
    Name(String),
}

impl<'de> Deserialize<'de> for TargetPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = TargetPort;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number (1-65535) or a port name")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<TargetPort, E> {
                match u16::try_from(v) {
                    Ok(p) if p != 0 => Ok(TargetPort::Number(p)),
                    _ => Err(E::invalid_value(de::Unexpected::Unsigned(v), &self)),
                }
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<TargetPort, E> {
                match u64::try_from(v) {
                    Ok(u) => self.visit_u64(u),
                    Err(_) => Err(E::invalid_value(de::Unexpected::Signed(v), &self)),
                }
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TargetPort, E> {
                if v.is_empty() {
                    return Err(E::invalid_value(de::Unexpected::Str(v), &self));
                }
                Ok(TargetPort::Name(v.to_string()))
            }
        }
        d.deserialize_any(V)
    }
}

// === WorkloadEntry ===

/// A workload that is not a pod (`policy.mesh.dev/v1alpha1`, `kind: WorkloadEntry`).
#[derive(Clone, Debug, PartialEq, Deserialize)]
pub struct WorkloadEntry {
    /// Name, namespace and labels.
    pub metadata: ObjectMeta,
    /// Address, ports and identity.
    pub spec: WorkloadEntrySpec,
}

/// The `spec` of a [`WorkloadEntry`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkloadEntrySpec {
    /// The workload's IP address (required).
    pub address: IpAddr,
    /// Named ports, used to resolve named `targetPort`s and `ip:port` targets.
    #[serde(default, deserialize_with = "de_port_map")]
    pub ports: BTreeMap<String, u16>,
    /// Labels merged over `metadata.labels` for selection.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// Service account of the workload's identity; `default` when absent.
    #[serde(default)]
    pub service_account: Option<String>,
    /// Whether the workload runs a proxy (gets mTLS); `true` by default.
    #[serde(default = "default_true")]
    pub meshed: bool,
    /// The proxy's inbound listener; `<address>:4143` when absent.
    #[serde(default)]
    pub proxy_inbound_address: Option<SocketAddr>,
}

fn default_true() -> bool {
    true
}

impl WorkloadEntry {
    /// The labels used for selection: `metadata.labels` overlaid with `spec.labels`.
    pub fn selection_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.metadata.labels.clone();
        if let Some(extra) = &self.spec.labels {
            labels.extend(extra.iter().map(|(k, v)| (k.clone(), v.clone())));
        }
        labels
    }

    /// The service account, `default` when unset.
    pub fn service_account(&self) -> &str {
        self.spec.service_account.as_deref().unwrap_or("default")
    }

    /// The proxy's inbound address, `<address>:4143` when unset.
    pub fn proxy_inbound_address(&self) -> SocketAddr {
        self.spec
            .proxy_inbound_address
            .unwrap_or_else(|| SocketAddr::new(self.spec.address, 4143))
    }
}

// === field helpers ===

fn de_port<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let p = u16::deserialize(d)?;
    if p == 0 {
        return Err(de::Error::invalid_value(
            de::Unexpected::Unsigned(0),
            &"a port number (1-65535)",
        ));
    }
    Ok(p)
}

fn de_port_map<'de, D: Deserializer<'de>>(d: D) -> Result<BTreeMap<String, u16>, D::Error> {
    #[derive(Deserialize)]
    struct Port(#[serde(deserialize_with = "de_port")] u16);
    let map = BTreeMap::<String, Port>::deserialize(d)?;
    Ok(map.into_iter().map(|(k, Port(p))| (k, p)).collect())
}

fn de_cluster_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<IpAddr>, D::Error> {
    let s = Option::<String>::deserialize(d)?;
    match s.as_deref() {
        None | Some("") | Some("None") => Ok(None),
        Some(s) => s.parse().map(Some).map_err(|_| {
            de::Error::invalid_value(de::Unexpected::Str(s), &"an IP address or \"None\"")
        }),
    }
}

// === parsing ===

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

fn prefix_path(prefix: &str, path: &str) -> String {
    let p = format!("{prefix}{path}");
    let p = p.trim_end_matches('.');
    if p.is_empty() {
        ".".to_string()
    } else {
        p.to_string()
    }
}

#[cfg(test)]
mod tests;
