//! Golden tests of `mesh inject` / `mesh uninject`: each `tests/golden/<case>.yaml` is
//! injected and compared with `<case>.injected.yaml` (stdout) and `<case>.stderr`.
//! `UPDATE_GOLDEN=1 cargo test -p mesh-cli --test golden` rewrites the expected files.

mod common;

use common::{assert_golden, documents, golden_dir};
use mesh_cli::inject::{inject_text, uninject_text};
use mesh_controller::inject::InjectConfig;

const CASES: &[&str] = &["web", "skips"];

/// A fixed image, so that the goldens do not change with the crate version.
fn config() -> InjectConfig {
    InjectConfig {
        proxy_image: "ghcr.io/mesh-dev/mesh-proxy:golden".to_string(),
        init_image: "ghcr.io/mesh-dev/mesh-proxy:golden".to_string(),
        ..InjectConfig::default()
    }
}

fn input(case: &str) -> String {
    std::fs::read_to_string(golden_dir().join(format!("{case}.yaml"))).expect("read input")
}

#[test]
fn inject_matches_golden() {
    for case in CASES {
        let (out, err) = inject_text(&input(case), &config()).expect("inject");
        assert_golden(&format!("{case}.injected.yaml"), &out);
        assert_golden(&format!("{case}.stderr"), &err);
    }
}

#[test]
fn web_stderr_names_each_resource() {
    let (_, err) = inject_text(&input("web"), &config()).expect("inject");
    assert_eq!(
        err,
        "deployment/web injected\nservice/web skipped: not a workload\n\
         configmap/web-config skipped: not a workload\n"
    );
}

#[test]
fn inject_is_idempotent() {
    for case in CASES {
        let (once, _) = inject_text(&input(case), &config()).expect("inject");
        let (twice, err) = inject_text(&once, &config()).expect("inject again");
        assert_eq!(once, twice, "{case}");
        assert!(
            !err.lines().any(|l| l.split(' ').nth(1) == Some("injected")),
            "{case}: {err}"
        );
    }
}

#[test]
fn uninject_reverses_inject() {
    for case in CASES {
        let original = input(case);
        let (injected, _) = inject_text(&original, &config()).expect("inject");
        let (restored, err) = uninject_text(&injected).expect("uninject");
        assert_eq!(documents(&restored), documents(&original), "{case}");
        if *case == "web" {
            assert!(err.starts_with("deployment/web uninjected\n"), "{err}");
        }
    }
}

#[test]
fn unchanged_documents_pass_through() {
    let text = "apiVersion: v1\nkind: Service\nmetadata:\n  name: s\n  zz: 1\n  aa: 2\n";
    let (out, err) = inject_text(text, &config()).expect("inject");
    assert_eq!(out, text);
    assert_eq!(err, "service/s skipped: not a workload\n");
    assert!(inject_text("a: [", &config()).is_err());
}
