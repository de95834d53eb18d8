//! The committed CRD files under `manifests/crds/` must be exactly what the code generates
//! (`make manifests`, i.e. `mesh install --crds --output-dir manifests/crds`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use mesh_cli::install::crd_files;

const FIX: &str = "run `make manifests` and commit manifests/crds/";

fn crds_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../manifests/crds")
}

/// `file name -> contents` of the YAML files in `dir`.
fn yaml_files(dir: &std::path::Path) -> BTreeMap<String, String> {
    let entries =
        std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}; {FIX}", dir.display()));
    entries
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).expect("read CRD file");
            (name, text)
        })
        .collect()
}

#[test]
fn committed_crds_match_the_code() {
    let expected: BTreeMap<_, _> = crd_files().expect("generate CRDs").into_iter().collect();
    let committed = yaml_files(&crds_dir());
    let names = |m: &BTreeMap<String, String>| m.keys().cloned().collect::<Vec<_>>();
    assert_eq!(
        names(&committed),
        names(&expected),
        "manifests/crds/ has other files than the CRDs in controller/src/crds.rs: {FIX}"
    );
    for (name, text) in &expected {
        assert!(
            committed[name] == *text,
            "manifests/crds/{name} differs from controller/src/crds.rs: {FIX}"
        );
    }
}

#[test]
fn output_dir_writes_one_file_per_crd() {
    let tmp = tempfile::tempdir().unwrap();
    let stale = tmp.path().join("gone.policy.mesh.dev.yaml");
    let other = tmp.path().join("notes.yaml");
    std::fs::write(&stale, "old").unwrap();
    std::fs::write(&other, "kept").unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_mesh"))
        .args(["install", "--crds", "--output-dir"])
        .arg(tmp.path())
        .output()
        .expect("run mesh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.stdout.is_empty());
    assert!(!stale.exists(), "files of removed CRDs go");
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "kept");
    let mut written = yaml_files(tmp.path());
    written.remove("notes.yaml");
    let expected: BTreeMap<_, _> = crd_files().unwrap().into_iter().collect();
    assert_eq!(written, expected);
    for (name, text) in &expected {
        let crd: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_yaml::from_str(text).unwrap();
        assert_eq!(format!("{}.yaml", crd.metadata.name.unwrap()), *name);
    }
}
