//! The Prometheus file-SD targets file the demo writes into its directory
//! (`prometheus-targets.json`): every proxy's admin address labelled like a
//! pod (`job`, `namespace`, `workload`, `pod`), and mesh-identity's and
//! mesh-controller's (`job`). `manifests/prometheus/local.yaml` reads it;
//! the end-to-end tests write the same file through this module.

use anyhow::Context;
use serde_json::{json, Value};
use std::{net::SocketAddr, path::Path};

/// The file's name in the demo directory.
pub const FILE: &str = "prometheus-targets.json";
/// The `job` label of the proxies' targets (as in `manifests/prometheus/`).
pub const JOB_PROXY: &str = "mesh-proxy";
/// The `job` label of `mesh-identity`'s admin target.
pub const JOB_IDENTITY: &str = "mesh-identity";
/// The `job` label of `mesh-controller`'s admin target.
pub const JOB_CONTROLLER: &str = "mesh-controller";

/// One scrape target: an admin address and the target labels its series get.
#[derive(Clone, Debug)]
pub struct Target {
    /// The admin address.
    pub addr: SocketAddr,
    /// The target labels.
    pub labels: Vec<(&'static str, String)>,
}

impl Target {
    /// A proxy's admin address, labelled like a pod in Kubernetes.
    pub fn proxy(addr: SocketAddr, namespace: &str, workload: &str, pod: &str) -> Target {
        Target {
            addr,
            labels: vec![
                ("job", JOB_PROXY.to_string()),
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
    write_at(&path, targets).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// Writes the targets file at `path`, atomically.
pub fn write_at(path: &Path, targets: &[Target]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json(targets))?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The format `manifests/prometheus/local.yaml` reads.
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
