//! The mesh's CustomResourceDefinitions (`mesh_controller::crds::all`), as documents of the
//! install stream and as the files `make manifests` commits under `manifests/crds/`.
//! Gateway API CRDs are not ours to render: users install the upstream release.

use std::path::Path;

use anyhow::Context;

use super::doc;

/// The API group of our CRDs.
const GROUP: &str = "policy.mesh.dev";

/// The first line of every file under `manifests/crds/`.
const FILE_HEADER: &str =
    "# Generated from controller/src/crds.rs by `make manifests`; do not edit.\n";

/// The CRDs as install documents, ordered by name.
pub fn documents() -> anyhow::Result<Vec<serde_yaml::Value>> {
    mesh_controller::crds::all().iter().map(doc).collect()
}

/// `(file name, contents)` of each CRD file: `<crd name>.yaml`, ordered by name.
pub fn crd_files() -> anyhow::Result<Vec<(String, String)>> {
    mesh_controller::crds::all()
        .iter()
        .map(|crd| {
            let name = crd
                .metadata
                .name
                .as_deref()
                .context("a CRD without a name")?;
            let yaml = mesh_controller::crds::to_yaml(crd)
                .with_context(|| format!("serializing the CRD {name}"))?;
            Ok((format!("{name}.yaml"), format!("{FILE_HEADER}{yaml}")))
        })
        .collect()
}

/// Writes [`crd_files`] into `dir` (created if needed), removing files of CRDs in our group
/// that no longer exist, and names each file on stderr.
pub fn write_files(dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let files = crd_files()?;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        let ours = name.ends_with(&format!(".{GROUP}.yaml"));
        let stale = ours && !files.iter().any(|(f, _)| f == name);
        if stale {
            std::fs::remove_file(&path)
                .with_context(|| format!("removing the stale {}", path.display()))?;
            eprintln!("removed {}", path.display());
        }
    }
    for (name, contents) in &files {
        let path = dir.join(name);
        std::fs::write(&path, contents).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}
