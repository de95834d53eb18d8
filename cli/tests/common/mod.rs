//! Helpers shared by the tests: the golden files and the comparison that
//! `UPDATE_GOLDEN=1` turns into a rewrite, running `mesh install`, and reading YAML
//! streams. Each test crate uses a part of them.

#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Command, Output};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::CertificateDer;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_yaml::Value;

/// `cli/tests/golden/`.
pub fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// Compares `actual` with the golden file, or rewrites it when `UPDATE_GOLDEN=1`.
pub fn assert_golden(file: &str, actual: &str) {
    let path = golden_dir().join(file);
    if std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1") {
        std::fs::write(&path, actual).expect("write golden");
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_GOLDEN=1 creates it)", path.display()));
    assert_eq!(
        actual, expected,
        "{file} differs from the golden file (UPDATE_GOLDEN=1 to accept)"
    );
}

/// Runs `mesh install` with `args`.
pub fn mesh_install(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mesh"))
        .arg("install")
        .args(args)
        .output()
        .expect("run mesh")
}

/// Runs `mesh install` with `args` and returns its stdout; it must succeed.
pub fn install(args: &[&str]) -> String {
    let out = mesh_install(args);
    assert!(
        out.status.success(),
        "mesh install {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

/// The non-empty documents of a YAML stream.
pub fn documents(text: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML"))
        .filter(|v| !v.is_null())
        .collect()
}

/// The document's `kind`.
pub fn kind(doc: &Value) -> &str {
    doc["kind"].as_str().expect("a kind")
}

/// The document's `metadata.name`.
pub fn name(doc: &Value) -> &str {
    doc["metadata"]["name"].as_str().expect("a name")
}

/// The one document of `kind` named `name`, as its k8s-openapi type.
pub fn object<T: DeserializeOwned>(docs: &[Value], kind_: &str, name_: &str) -> T {
    let mut found = docs.iter().filter(|d| kind(d) == kind_ && name(d) == name_);
    let doc = found.next().unwrap_or_else(|| panic!("no {kind_} {name_}"));
    assert!(found.next().is_none(), "two {kind_} {name_}");
    serde_yaml::from_value(doc.clone()).unwrap_or_else(|e| panic!("{kind_} {name_}: {e}"))
}

/// Every CERTIFICATE block of `pem`, DER.
pub fn pem_certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}
