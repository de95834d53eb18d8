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

// === a fake Kubernetes API of static answers ===

/// A route: path, a substring the query must contain (or ""), status and body.
pub type Route = (String, &'static str, u16, serde_json::Value);

/// Serves `routes` (404 Status for anything else) on a loopback port. In a text body,
/// `{n}` becomes how many times its path was served (1, 2, …) and `{n*K}` that times K,
/// so counters grow between scrapes.
pub fn fake_api(routes: Vec<Route>) -> std::net::SocketAddr {
    let routes = std::sync::Arc::new(routes);
    let served = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashMap::<
        String,
        u64,
    >::new()));
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let routes = routes.clone();
            let served = served.clone();
            std::thread::spawn(move || {
                use std::io::{BufRead, BufReader, Write};
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 {
                        return;
                    }
                    let target = line.split(' ').nth(1).unwrap_or("/").to_string();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                            break;
                        }
                    }
                    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
                    let found = routes
                        .iter()
                        .find(|(p, q, _, _)| p == path && query.contains(q));
                    let (status, body) = match found {
                        Some((p, _, s, serde_json::Value::String(text))) => {
                            let mut served = served.lock().unwrap();
                            let n = served.entry(p.clone()).or_insert(0);
                            *n += 1;
                            (*s, count(text, *n))
                        }
                        Some((_, _, s, b)) => (*s, b.to_string()),
                        None => (
                            404,
                            serde_json::json!({"kind": "Status", "apiVersion": "v1",
                            "metadata": {}, "status": "Failure", "reason": "NotFound",
                            "code": 404, "message": "not found"})
                            .to_string(),
                        ),
                    };
                    let rsp = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    if stream.write_all(rsp.as_bytes()).is_err() {
                        return;
                    }
                }
            });
        }
    });
    addr
}

/// `text` with `{n}` replaced by `n` and `{n*K}` by `n * K`.
fn count(text: &str, n: u64) -> String {
    let mut out = text.replace("{n}", &n.to_string());
    while let Some(i) = out.find("{n*") {
        let Some(len) = out[i..].find('}') else { break };
        let k: u64 = out[i + 3..i + len].parse().unwrap_or(0);
        out.replace_range(i..=i + len, &(n * k).to_string());
    }
    out
}

/// A kubeconfig in `dir` pointing at `server` (no credentials).
pub fn kubeconfig(dir: &std::path::Path, server: &str) -> std::path::PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster: {{server: \"{server}\"}}\nusers:\n- name: u\n  user: {{}}\ncontexts:\n- name: c\n  context: {{cluster: fake, user: u}}\ncurrent-context: c\n"
        ),
    )
    .unwrap();
    path
}
