//! The real `prometheus` binary for end-to-end tests of the scrape
//! configurations and dashboards in `manifests/`: the file-SD targets file
//! (the format `mesh demo` writes), a Prometheus on a loopback port with its
//! own temporary directory, and the parts of its HTTP API the tests read.

use crate::{
    fixture::admin_get,
    process::{free_addr, Proc},
};
use serde_json::Value;
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

pub use mesh_cli::file_sd::{
    json as file_sd_json, write_at as write_file_sd, Target, FILE as TARGETS_FILE, JOB_CONTROLLER,
    JOB_IDENTITY, JOB_PROXY,
};

/// A configuration shaped like `manifests/prometheus/local.yaml`: one job
/// reading the file-SD targets file `targets`, scraped every `interval`
/// (e.g. `1s`).
pub fn file_sd_config(targets: &Path, interval: &str) -> String {
    format!(
        "global:\n  scrape_interval: {interval}\n  scrape_timeout: {interval}\n  evaluation_interval: {interval}\nscrape_configs:\n  - job_name: mesh\n    file_sd_configs:\n      - files: ['{}']\n        refresh_interval: {interval}\n",
        targets.display()
    )
}

/// The `prometheus` binary, if installed.
pub fn binary() -> Option<PathBuf> {
    let usr = PathBuf::from("/usr/bin/prometheus");
    if usr.exists() {
        return Some(usr);
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg("command -v prometheus")
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
}

/// Returns false (after printing SKIPPED) when `prometheus` is not
/// installed; under CI (`CI` set) that is a failure, not a skip.
pub fn can_run() -> bool {
    if binary().is_some() {
        return true;
    }
    println!("SKIPPED: prometheus not installed");
    assert!(
        std::env::var_os("CI").is_none(),
        "prometheus is needed under CI (.ci/run installs it)"
    );
    false
}

/// A running Prometheus. Dropping it kills the process (by PID) and then
/// removes its directory (configuration, storage, log).
pub struct Prometheus {
    pub addr: SocketAddr,
    proc: Proc,
    /// Declared after `proc`: removed once the process is gone.
    pub dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port with the configuration
    /// `config(dir)` returns, `dir` being its own temporary directory (where
    /// the caller may also keep e.g. a targets file), and waits until it is
    /// ready (at most 20 s).
    pub async fn start(config: impl Fn(&Path) -> String) -> Prometheus {
        let bin = binary().expect("prometheus installed (check can_run first)");
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("tempdir");
            let file = dir.path().join("prometheus.yml");
            std::fs::write(&file, config(dir.path())).expect("write prometheus.yml");
            let addr = free_addr();
            let mut cmd = Command::new(&bin);
            cmd.arg(format!("--config.file={}", file.display()))
                .arg(format!(
                    "--storage.tsdb.path={}",
                    dir.path().join("data").display()
                ))
                .arg(format!("--web.listen-address={addr}"))
                .arg("--log.level=warn");
            let proc = Proc::spawn("prometheus", cmd, dir.path().join("prometheus.log"));
            let mut p = Prometheus { addr, proc, dir };
            match p.wait_ready().await {
                Ok(()) => return p,
                Err(log) if log.contains("address already in use") => continue,
                Err(log) => panic!("prometheus did not become ready:\n{log}"),
            }
        }
        panic!("prometheus: no free port after 3 tries");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if admin_get(self.addr, "/-/ready").await.map(|r| r.0) == Some(200) {
                return Ok(());
            }
            if self.proc.exited() {
                return Err(self.proc.log_text());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("not ready in 20 s:\n{}", self.proc.log_text()))
    }

    /// Prometheus' log so far.
    pub fn log_text(&self) -> String {
        self.proc.log_text()
    }

    /// GETs an API path; the JSON `data` on success, else the error.
    pub async fn api(&self, path: &str) -> Result<Value, String> {
        let (status, body) = admin_get(self.addr, path)
            .await
            .ok_or_else(|| format!("GET {path}: no answer"))?;
        let v: Value =
            serde_json::from_str(&body).map_err(|e| format!("GET {path}: {status} {e}: {body}"))?;
        if v["status"] != "success" {
            return Err(format!(
                "{}: {}",
                v["errorType"].as_str().unwrap_or("error"),
                v["error"].as_str().unwrap_or(&body)
            ));
        }
        Ok(v["data"].clone())
    }

    /// Evaluates `expr` now: the samples (a scalar counts as one), or the
    /// query error.
    pub async fn query(&self, expr: &str) -> Result<Vec<Value>, String> {
        let data = self
            .api(&format!("/api/v1/query?query={}", encode(expr)))
            .await?;
        match data["resultType"].as_str() {
            Some("vector") | Some("matrix") => {
                Ok(data["result"].as_array().cloned().unwrap_or_default())
            }
            _ => Ok(vec![data["result"].clone()]),
        }
    }

    /// The values of label `label` on the series `selector` matches (every
    /// series when `None`): what Grafana's `label_values(...)` lists.
    pub async fn label_values(
        &self,
        label: &str,
        selector: Option<&str>,
    ) -> Result<Vec<String>, String> {
        let mut path = format!("/api/v1/label/{}/values", encode(label));
        if let Some(s) = selector {
            path.push_str(&format!("?match%5B%5D={}", encode(s)));
        }
        let data = self.api(&path).await?;
        Ok(data
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }

    /// The active targets (`/api/v1/targets`): their labels and health.
    pub async fn active_targets(&self) -> Vec<Value> {
        self.api("/api/v1/targets?state=active")
            .await
            .map(|d| d["activeTargets"].as_array().cloned().unwrap_or_default())
            .unwrap_or_default()
    }

    /// Waits until `n` targets are active and every one has been scraped
    /// successfully, at most `timeout`.
    pub async fn wait_for_targets_up(&self, n: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.active_targets().await;
            if targets.len() == n && targets.iter().all(|t| t["health"] == "up") {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not {n} healthy targets after {timeout:?}: {targets:#?}\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Percent-encodes a query parameter (everything but RFC 3986 unreserved).
pub fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_queries() {
        assert_eq!(
            encode(r#"sum(rate(x{a="b"}[5s]))"#),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B5s%5D%29%29"
        );
    }
}
