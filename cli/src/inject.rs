//! `mesh inject` and `mesh uninject`: offline proxy injection of multi-document YAML
//! manifests. The pod-template rewriting is the controller's (`mesh_controller::inject`,
//! shared with the webhook); this module reads and writes YAML and keeps each document's
//! key order so the output diffs cleanly against the input.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;

use anyhow::Context;
use mesh_controller::inject::workloads::{self, Report};
use mesh_controller::inject::InjectConfig;
use serde::Deserialize;
use serde_yaml::{Mapping, Value};

/// `mesh inject`: add the proxy to every workload in the manifests.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Manifest files; none or `-` reads standard input.
    pub files: Vec<PathBuf>,
    /// Image of the injected `mesh-proxy` (and, unless `--init-image`, `mesh-init`).
    #[arg(long)]
    pub proxy_image: Option<String>,
    /// Image of the injected `mesh-init` container.
    #[arg(long)]
    pub init_image: Option<String>,
    /// Inject the proxy as a regular container, for clusters older than Kubernetes 1.29.
    #[arg(long)]
    pub no_native_sidecar: bool,
}

/// `mesh uninject`: remove the injected proxy from the manifests.
#[derive(Debug, clap::Args)]
pub struct UninjectArgs {
    /// Manifest files; none or `-` reads standard input.
    pub files: Vec<PathBuf>,
}

impl Args {
    /// The injection settings these flags ask for.
    pub fn config(&self) -> InjectConfig {
        let mut cfg = InjectConfig::default();
        if let Some(image) = &self.proxy_image {
            cfg.proxy_image = image.clone();
            cfg.init_image = image.clone();
        }
        if let Some(image) = &self.init_image {
            cfg.init_image = image.clone();
        }
        cfg.native_sidecar = !self.no_native_sidecar;
        cfg
    }
}

/// Runs `mesh inject`: manifests on stdout, one line per resource on stderr.
pub fn run(args: Args) -> anyhow::Result<()> {
    let input = read_inputs(&args.files)?;
    let (out, err) = inject_text(&input, &args.config())?;
    emit(&out, &err)
}

/// Runs `mesh uninject`.
pub fn run_uninject(args: UninjectArgs) -> anyhow::Result<()> {
    let input = read_inputs(&args.files)?;
    let (out, err) = uninject_text(&input)?;
    emit(&out, &err)
}

/// Injects every workload of a multi-document YAML text (`force`: the user asked for
/// it, but `mesh.dev/inject: disabled` still wins). Returns (stdout, stderr).
pub fn inject_text(input: &str, cfg: &InjectConfig) -> anyhow::Result<(String, String)> {
    let namespace = BTreeMap::new();
    transform(input, |object| {
        workloads::inject_object(object, &namespace, true, cfg)
    })
}

/// Removes the injected proxy from every workload of a multi-document YAML text.
/// Returns (stdout, stderr).
pub fn uninject_text(input: &str) -> anyhow::Result<(String, String)> {
    transform(input, workloads::uninject_object)
}

/// Applies `rewrite` to each document; documents it does not change are written back as
/// they were read.
fn transform(
    input: &str,
    mut rewrite: impl FnMut(&mut serde_json::Value) -> Vec<Report>,
) -> anyhow::Result<(String, String)> {
    let mut docs = Vec::new();
    let mut log = String::new();
    for (i, doc) in serde_yaml::Deserializer::from_str(input).enumerate() {
        let original = Value::deserialize(doc).with_context(|| format!("document {}", i + 1))?;
        if original.is_null() {
            continue;
        }
        let mut json = match serde_json::to_value(&original) {
            Ok(json) => json,
            Err(e) => {
                log.push_str(&format!("document {} passed through: {e}\n", i + 1));
                docs.push(original);
                continue;
            }
        };
        let reports = rewrite(&mut json);
        for report in &reports {
            log.push_str(&format!("{report}\n"));
        }
        if reports.iter().any(Report::changed) {
            let rewritten =
                serde_yaml::to_value(&json).with_context(|| format!("document {}", i + 1))?;
            docs.push(order_like(rewritten, &original));
        } else {
            docs.push(original);
        }
    }
    let mut out = String::new();
    for (i, doc) in docs.iter().enumerate() {
        if i > 0 {
            out.push_str("---\n");
        }
        out.push_str(&serde_yaml::to_string(doc)?);
    }
    Ok((out, log))
}

/// Orders the keys of `new` as in `old` (new keys after them, in their own order);
/// list items are matched by `name`, else by position; new values are [`fresh`].
fn order_like(new: Value, old: &Value) -> Value {
    match (new, old) {
        (Value::Mapping(mut new), Value::Mapping(old)) => {
            let mut ordered = Mapping::new();
            for (key, old_value) in old {
                if let Some(value) = new.shift_remove(key) {
                    ordered.insert(key.clone(), order_like(value, old_value));
                }
            }
            ordered.extend(new.into_iter().map(|(k, v)| (k, fresh(v))));
            Value::Mapping(ordered)
        }
        (Value::Sequence(new), Value::Sequence(old)) => Value::Sequence(
            new.into_iter()
                .enumerate()
                .map(|(i, item)| {
                    let counterpart = match item.get("name") {
                        Some(name) => old.iter().find(|o| o.get("name") == Some(name)),
                        None => old.get(i),
                    };
                    match counterpart {
                        Some(old_item) => order_like(item, old_item),
                        None => fresh(item),
                    }
                })
                .collect(),
        ),
        (new, _) => new,
    }
}

/// A new value, written the way people write manifests: `name` first in each mapping.
fn fresh(value: Value) -> Value {
    match value {
        Value::Mapping(mut fields) => {
            let mut ordered = Mapping::new();
            if let Some((key, name)) = fields.shift_remove_entry("name") {
                ordered.insert(key, name);
            }
            ordered.extend(fields.into_iter().map(|(k, v)| (k, fresh(v))));
            Value::Mapping(ordered)
        }
        Value::Sequence(items) => Value::Sequence(items.into_iter().map(fresh).collect()),
        other => other,
    }
}

/// Reads and concatenates the inputs (`-` or none: standard input) as YAML documents.
fn read_inputs(files: &[PathBuf]) -> anyhow::Result<String> {
    let stdin = [PathBuf::from("-")];
    let files = if files.is_empty() { &stdin[..] } else { files };
    let mut text = String::new();
    for file in files {
        let part = if file.as_os_str() == "-" {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading standard input")?;
            s
        } else {
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
        };
        if !text.is_empty() {
            text.push_str("\n---\n");
        }
        text.push_str(&part);
    }
    Ok(text)
}

/// Writes the manifests to stdout and the per-resource lines to stderr.
fn emit(out: &str, err: &str) -> anyhow::Result<()> {
    std::io::stderr().write_all(err.as_bytes())?;
    std::io::stdout()
        .write_all(out.as_bytes())
        .context("writing standard output")
}
