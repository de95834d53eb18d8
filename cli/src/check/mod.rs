//! `mesh check`: grouped health checks of a mesh installation, printed as `√`/`‼`/`×`
//! lines with a hint under each failure (or as JSON), exiting non-zero when any check
//! fails. The Kubernetes checks live in [`kubernetes`]; each check is a small function
//! returning a [`Check`], so groups are easy to extend.

mod data_plane;
pub mod kubernetes;
pub mod local;
mod render;

use serde::Serialize;

pub use render::{render_json, render_text};

/// The outcome of one check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Passed (`√`).
    Success,
    /// Works, but something should be looked at (`‼`); does not fail the run.
    Warning,
    /// Failed (`×`); the run exits non-zero.
    Error,
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// The group it belongs to, e.g. `kubernetes-api`.
    #[serde(skip)]
    pub group: &'static str,
    /// What was checked, phrased as what should hold.
    pub description: String,
    /// The outcome.
    pub result: Status,
    /// What was found, for warnings and errors.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// What to do about it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

impl Check {
    /// A passed check; `detail` (e.g. a version) is shown in brackets.
    pub fn ok(group: &'static str, description: impl Into<String>) -> Self {
        Check {
            group,
            description: description.into(),
            result: Status::Success,
            error: None,
            hint: None,
        }
    }

    /// A failed check with what was found and a hint.
    pub fn fail(
        group: &'static str,
        description: impl Into<String>,
        error: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Check {
            group,
            description: description.into(),
            result: Status::Error,
            error: Some(error.into()),
            hint: Some(hint.into()),
        }
    }

    /// A warning with what was found and a hint.
    pub fn warn(
        group: &'static str,
        description: impl Into<String>,
        error: impl Into<String>,
        hint: impl Into<String>,
    ) -> Self {
        Check {
            result: Status::Warning,
            ..Check::fail(group, description, error, hint)
        }
    }
}

/// `mesh check` flags.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Namespace of the control plane.
    #[arg(long, default_value = "mesh-system")]
    pub namespace: String,
    /// Check a local mesh instead of Kubernetes: a `mesh demo --dir DIR` directory
    /// (its `prometheus-targets.json` and `identity/`).
    #[arg(long, value_name = "DIR")]
    pub local: Option<std::path::PathBuf>,
    /// Local mode: the file-SD targets file (default: DIR/prometheus-targets.json).
    #[arg(long, value_name = "FILE")]
    pub targets: Option<std::path::PathBuf>,
    /// Local mode: the identity directory (default: DIR/identity).
    #[arg(long, value_name = "DIR")]
    pub identity_dir: Option<std::path::PathBuf>,
    /// Kubernetes: also check every injected pod's proxy (ready, certificate valid,
    /// version).
    #[arg(long)]
    pub proxy: bool,
    /// `--proxy`: how long each proxy may take to answer (read in parallel; one that
    /// does not answer is named, not waited for).
    #[arg(long, default_value = "2s")]
    pub timeout: String,
    /// Output format.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

/// Runs the checks against the cluster of the current kubeconfig; prints the report and
/// returns whether every check passed.
pub fn run(args: Args) -> anyhow::Result<bool> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local =
        match (&args.local, &args.targets, &args.identity_dir) {
            (None, None, None) => None,
            (dir, targets, identity) => {
                let under = |name: &str| dir.as_ref().map(|d| d.join(name));
                Some(local::Settings {
                    targets: targets
                        .clone()
                        .or_else(|| under(crate::file_sd::FILE))
                        .ok_or_else(|| {
                            anyhow::anyhow!("--identity-dir needs --local DIR or --targets FILE")
                        })?,
                    identity_dir: identity.clone().or_else(|| under("identity")).ok_or_else(
                        || anyhow::anyhow!("--targets needs --local DIR or --identity-dir DIR"),
                    )?,
                })
            }
        };
    let settings = kubernetes::Settings {
        namespace: args.namespace,
        proxies: args.proxy,
        timeout: crate::stat::parse_window(&args.timeout)
            .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?,
    };
    let checks = rt.block_on(async {
        if let Some(local) = &local {
            return local::checks(local).await;
        }
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = crate::kube_pods::client().await.map_err(|e| e.to_string());
        kubernetes::checks(client, &settings).await
    });
    let text = if args.output == "json" {
        render_json(&checks) + "\n"
    } else {
        render_text(&checks)
    };
    print!("{text}");
    Ok(passed(&checks))
}

/// True when no check failed.
pub fn passed(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.result != Status::Error)
}
