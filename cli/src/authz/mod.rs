//! `mesh authz WORKLOAD`: the AuthorizationPolicies that apply to a workload, port by
//! port, with the mTLS mode and what each policy allows or denies. The answer comes from
//! the controller's own index and policy code, fed from a manifest directory (`--local`)
//! or from the Kubernetes API, so it is what the proxies are told.

mod load;
mod render;

use std::path::PathBuf;

use anyhow::Context;

/// Arguments of `mesh authz`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The workload: a WorkloadEntry or pod name, or (Kubernetes) the workload a pod
    /// belongs to (its Deployment, StatefulSet…; the first of its pods is shown).
    pub workload: String,
    /// Namespace of the workload.
    #[arg(short, long, default_value = "default")]
    pub namespace: String,
    /// Read a manifest directory (the controller's `--source dir:DIR`) instead of the
    /// Kubernetes API.
    #[arg(long, value_name = "DIR")]
    pub local: Option<PathBuf>,
    /// Output format.
    #[arg(short, long, default_value = "table", value_parser = ["table", "json"])]
    pub output: String,
}

/// Runs `mesh authz`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let loaded = match &args.local {
        Some(dir) => load::from_dir(dir)?,
        None => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = kube::Client::try_default()
                    .await
                    .context("no Kubernetes API (pass --local DIR for a manifest directory)")?;
                load::from_kubernetes(client, &args.namespace, &args.workload).await
            })?
        }
    };
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let name = loaded
        .workload_name
        .clone()
        .unwrap_or_else(|| args.workload.clone());
    let report = render::Report::build(&loaded.index, &args.namespace, &name)?;
    let text = match args.output.as_str() {
        "json" => serde_json::to_string_pretty(&report.json())? + "\n",
        _ => report.table(),
    };
    print!("{text}");
    Ok(())
}
