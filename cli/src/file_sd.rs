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

/// Reads a targets file: every target with its labels.
pub fn read(path: &Path) -> anyhow::Result<Vec<Target>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read targets file {}", path.display()))?;
    let groups: Vec<Value> = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a file-SD targets file", path.display()))?;
    let mut out = Vec::new();
    for g in groups {
        let labels: Vec<(String, String)> = g["labels"]
            .as_object()
            .into_iter()
            .flatten()
            .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
            .collect();
        for t in g["targets"].as_array().into_iter().flatten() {
            let addr = t
                .as_str()
                .and_then(|a| a.parse().ok())
                .with_context(|| format!("{}: bad target {t}", path.display()))?;
            out.push(Target {
                addr,
                labels: labels
                    .iter()
                    .filter_map(|(k, v)| Some((label_name(k)?, v.clone())))
                    .collect(),
            });
        }
    }
    Ok(out)
}

/// The label names this format uses (kept `'static`).
fn label_name(k: &str) -> Option<&'static str> {
    ["job", "namespace", "workload", "pod"]
        .into_iter()
        .find(|n| *n == k)
}

impl Target {
    /// The value of label `name`, or `""`.
    pub fn label(&self, name: &str) -> &str {
        self.labels
            .iter()
            .find(|(k, _)| *k == name)
            .map_or("", |(_, v)| v.as_str())
    }
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
    fn reads_what_it_writes() {
        let dir = tempfile::tempdir().unwrap();
        let targets = [
            Target::proxy("127.0.0.1:4191".parse().unwrap(), "demo", "web", "web-1"),
            Target::component("127.0.0.1:9990".parse().unwrap(), JOB_CONTROLLER),
        ];
        let path = write(dir.path(), &targets).unwrap();
        let back = read(&path).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(back[0].label("pod"), "web-1");
        assert_eq!(back[1].label("job"), JOB_CONTROLLER);
        assert_eq!(back[1].label("pod"), "");
        std::fs::write(&path, "{").unwrap();
        assert!(read(&path).is_err());
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
