//! The Prometheus file-SD targets file the demo writes into its directory
//! (`prometheus-targets.json`): every proxy's admin address labelled like a
//! pod (`job`, `namespace`, `workload`, `pod`), and mesh-identity's and
//! mesh-controller's (`job`). `manifests/prometheus/local.yaml` reads it;
//! the end-to-end tests write the same format (`mesh_integration::prometheus`).

use anyhow::Context;
use serde_json::{json, Value};
use std::{net::SocketAddr, path::Path};

/// The file's name in the demo directory.
pub const FILE: &str = "prometheus-targets.json";

/// One scrape target and its labels.
pub struct Target {
    addr: SocketAddr,
    labels: Vec<(&'static str, String)>,
}

impl Target {
    /// A proxy's admin address, labelled like a pod in Kubernetes.
    pub fn proxy(addr: SocketAddr, namespace: &str, workload: &str, pod: &str) -> Target {
        Target {
            addr,
            labels: vec![
                ("job", "mesh-proxy".to_string()),
                ("namespace", namespace.to_string()),
                ("workload", workload.to_string()),
                ("pod", pod.to_string()),
            ],
        }
    }

    /// A control-plane component's admin address (`job` = `mesh-identity`
    /// or `mesh-controller`).
    pub fn component(addr: SocketAddr, job: &str) -> Target {
        Target {
            addr,
            labels: vec![("job", job.to_string())],
        }
    }
}

/// The targets in Prometheus' file-SD JSON: one target group per target.
pub fn json(targets: &[Target]) -> String {
    let groups: Vec<Value> = targets
        .iter()
        .map(|t| {
            let labels: serde_json::Map<String, Value> = t
                .labels
                .iter()
                .map(|(k, v)| (k.to_string(), Value::String(v.clone())))
                .collect();
            json!({ "targets": [t.addr.to_string()], "labels": labels })
        })
        .collect();
    let mut text = serde_json::to_string_pretty(&groups).unwrap_or_default();
    text.push('\n');
    text
}

/// Writes `dir/prometheus-targets.json` atomically (Prometheus watches it)
/// and returns its path.
pub fn write(dir: &Path, targets: &[Target]) -> anyhow::Result<std::path::PathBuf> {
    let path = dir.join(FILE);
    let tmp = dir.join(format!(".{FILE}.tmp"));
    std::fs::write(&tmp, json(targets)).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The exact text the end-to-end tests write too
    /// (integration/src/prometheus.rs has the same test): change both or neither.
    #[test]
    fn file_sd_format() {
        let targets = [
            Target::proxy("127.0.0.1:4191".parse().unwrap(), "demo", "web-1", "web-1"),
            Target::component("127.0.0.1:9990".parse().unwrap(), "mesh-controller"),
        ];
        assert_eq!(
            json(&targets),
            r#"[
  {
    "labels": {
      "job": "mesh-proxy",
      "namespace": "demo",
      "pod": "web-1",
      "workload": "web-1"
    },
    "targets": [
      "127.0.0.1:4191"
    ]
  },
  {
    "labels": {
      "job": "mesh-controller"
    },
    "targets": [
      "127.0.0.1:9990"
    ]
  }
]
"#
        );
    }

    #[test]
    fn writes_into_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        let t = [Target::component(
            "127.0.0.1:9991".parse().unwrap(),
            "mesh-identity",
        )];
        let path = write(dir.path(), &t).unwrap();
        assert_eq!(path, dir.path().join(FILE));
        let v: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v[0]["labels"]["job"], "mesh-identity");
        assert_eq!(v[0]["targets"][0], "127.0.0.1:9991");
    }
}
