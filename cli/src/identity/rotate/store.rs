//! Where a rotation reads and writes the CA material. Locally: the identity directory
//! (`trust-anchors.pem`, `issuer.crt`, `issuer.key`, the anchor keys). In Kubernetes:
//! the `mesh-identity-trust-roots` ConfigMap (the bundle mesh-identity reads and
//! publishes), the `mesh-identity-issuer` Secret, and a local state directory for the
//! new anchor's key, which never enters the cluster.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Patch, PatchParams};
use kube::Api;
use mesh_identity::files;

use crate::install::identity::{ISSUER_SECRET, TRUST_ROOTS_CONFIG_MAP, TRUST_ROOTS_KEY};

/// The new anchor while a rotation is under way.
pub const NEXT_ANCHOR: &str = "next-anchor.pem";
/// Its key.
pub const NEXT_ANCHOR_KEY: &str = "next-anchor.key";
/// In Kubernetes, where the state directory keeps the anchor once the rotation is done.
pub const ANCHOR: &str = "anchor.pem";

/// The field manager named in Kubernetes writes.
const FIELD_MANAGER: &str = "mesh-identity-rotate";

/// Where the CA material lives.
pub enum Store {
    /// An identity directory.
    Local(PathBuf),
    /// The cluster, and a local directory for the new anchor's key.
    Kube {
        client: kube::Client,
        namespace: String,
        state: PathBuf,
    },
}

impl Store {
    /// The directory holding the anchor keys.
    fn keys_dir(&self) -> &Path {
        match self {
            Store::Local(dir) => dir,
            Store::Kube { state, .. } => state,
        }
    }

    /// Where the bundle is, for messages.
    pub fn bundle_name(&self) -> String {
        match self {
            Store::Local(dir) => dir.join(files::TRUST_ANCHORS).display().to_string(),
            Store::Kube { namespace, .. } => {
                format!("ConfigMap {namespace}/{TRUST_ROOTS_CONFIG_MAP}")
            }
        }
    }

    /// The bundle's text.
    pub async fn bundle(&self) -> Result<String> {
        match self {
            Store::Local(dir) => read(&dir.join(files::TRUST_ANCHORS)),
            Store::Kube {
                client, namespace, ..
            } => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let cm = api
                    .get(TRUST_ROOTS_CONFIG_MAP)
                    .await
                    .with_context(|| format!("reading {}", self.bundle_name()))?;
                cm.data
                    .and_then(|d| d.get(TRUST_ROOTS_KEY).cloned())
                    .with_context(|| format!("{} has no {TRUST_ROOTS_KEY}", self.bundle_name()))
            }
        }
    }

    /// Replaces the bundle's text.
    pub async fn write_bundle(&self, text: &str) -> Result<()> {
        match self {
            Store::Local(dir) => write_atomic(&dir.join(files::TRUST_ANCHORS), text, 0o644),
            Store::Kube {
                client, namespace, ..
            } => {
                let api: Api<ConfigMap> = Api::namespaced(client.clone(), namespace);
                let patch = serde_json::json!({"data": {TRUST_ROOTS_KEY: text}});
                api.patch(
                    TRUST_ROOTS_CONFIG_MAP,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await
                .with_context(|| format!("writing {}", self.bundle_name()))?;
                Ok(())
            }
        }
    }

    /// The issuer certificate in force (PEM).
    pub async fn issuer_cert(&self) -> Result<String> {
        match self {
            Store::Local(dir) => read(&dir.join(files::ISSUER_CERT)),
            Store::Kube { .. } => {
                let data = self.secret_data().await?;
                let cert = data
                    .get("tls.crt")
                    .with_context(|| format!("Secret {ISSUER_SECRET} has no tls.crt"))?;
                String::from_utf8(cert.0.clone()).context("tls.crt is not text")
            }
        }
    }

    async fn secret_data(&self) -> Result<BTreeMap<String, k8s_openapi::ByteString>> {
        let Store::Kube {
            client, namespace, ..
        } = self
        else {
            bail!("not a cluster");
        };
        let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
        let secret = api
            .get(ISSUER_SECRET)
            .await
            .with_context(|| format!("reading Secret {namespace}/{ISSUER_SECRET}"))?;
        Ok(secret.data.unwrap_or_default())
    }

    /// Installs a new issuer (and, in the Secret, the bundle it chains to as `ca.crt`).
    pub async fn write_issuer(&self, cert: &str, key: &str, bundle: &str) -> Result<()> {
        match self {
            Store::Local(dir) => {
                // Key first: a reader that sees the new certificate with the old key
                // refuses the pair and reads again; mesh-identity also waits for the
                // files to settle.
                write_atomic(&dir.join(files::ISSUER_KEY), key, 0o600)?;
                write_atomic(&dir.join(files::ISSUER_CERT), cert, 0o644)
            }
            Store::Kube {
                client, namespace, ..
            } => {
                use base64::Engine;
                let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
                let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
                let patch = serde_json::json!({"data": {
                    "tls.crt": b64(cert), "tls.key": b64(key), "ca.crt": b64(bundle),
                }});
                api.patch(
                    ISSUER_SECRET,
                    &PatchParams {
                        field_manager: Some(FIELD_MANAGER.into()),
                        ..PatchParams::default()
                    },
                    &Patch::Merge(&patch),
                )
                .await
                .with_context(|| format!("writing Secret {namespace}/{ISSUER_SECRET}"))?;
                Ok(())
            }
        }
    }

    /// The new anchor and its key, if a rotation is under way.
    pub fn next_anchor(&self) -> Option<(String, String)> {
        let dir = self.keys_dir();
        Some((
            read(&dir.join(NEXT_ANCHOR)).ok()?,
            read(&dir.join(NEXT_ANCHOR_KEY)).ok()?,
        ))
    }

    /// Keeps a new anchor and its key (mode 0600) for the next steps.
    pub fn save_next_anchor(&self, cert: &str, key: &str) -> Result<()> {
        let dir = self.keys_dir();
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        write_atomic(&dir.join(NEXT_ANCHOR_KEY), key, 0o600)?;
        write_atomic(&dir.join(NEXT_ANCHOR), cert, 0o644)
    }

    /// The new anchor is the only one left: its key becomes the anchor key (locally
    /// `anchor.key`; in Kubernetes `anchor.pem` and `anchor.key` in the state
    /// directory, to keep offline).
    pub fn finish(&self) -> Result<String> {
        let dir = self.keys_dir();
        let rename = |from: &str, to: &str| {
            std::fs::rename(dir.join(from), dir.join(to))
                .with_context(|| format!("moving {from} to {to} in {}", dir.display()))
        };
        rename(NEXT_ANCHOR_KEY, files::ANCHOR_KEY)?;
        match self {
            Store::Local(_) => std::fs::remove_file(dir.join(NEXT_ANCHOR))
                .with_context(|| format!("removing {NEXT_ANCHOR}"))?,
            Store::Kube { .. } => rename(NEXT_ANCHOR, ANCHOR)?,
        }
        Ok(dir.join(files::ANCHOR_KEY).display().to_string())
    }
}

fn read(path: &Path) -> Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, text: &str, mode: u32) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("rotate-tmp");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    };
    write().with_context(|| format!("cannot write {}", path.display()))
}
