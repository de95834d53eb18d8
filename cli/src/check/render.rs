//! Output of `mesh check`: grouped text lines or one JSON document.

use super::{passed, Check, Status};
use serde::Serialize;

/// Text output: one heading per group, one line per check, the error and hint indented
/// under warnings and failures, and a closing `Status check results are √|×` line.
pub fn render_text(checks: &[Check]) -> String {
    let mut out = String::new();
    let mut group = "";
    for c in checks {
        if c.group != group {
            if !group.is_empty() {
                out.push('\n');
            }
            group = c.group;
            out.push_str(&format!("{group}\n{}\n", "-".repeat(group.chars().count())));
        }
        let mark = match c.result {
            Status::Success => "√",
            Status::Warning => "‼",
            Status::Error => "×",
        };
        out.push_str(&format!("{mark} {}\n", c.description));
        if let Some(e) = &c.error {
            out.push_str(&format!("    {e}\n"));
        }
        if let Some(h) = &c.hint {
            out.push_str(&format!("    hint: {h}\n"));
        }
    }
    let mark = if passed(checks) { "√" } else { "×" };
    out.push_str(&format!("\nStatus check results are {mark}\n"));
    out
}

#[derive(Serialize)]
struct Category<'a> {
    #[serde(rename = "categoryName")]
    name: &'a str,
    checks: Vec<&'a Check>,
}

#[derive(Serialize)]
struct Report<'a> {
    success: bool,
    categories: Vec<Category<'a>>,
}

/// JSON output: `{"success": bool, "categories": [{"categoryName", "checks": [...]}]}`.
pub fn render_json(checks: &[Check]) -> String {
    let mut categories: Vec<Category<'_>> = Vec::new();
    for c in checks {
        match categories.last_mut() {
            Some(cat) if cat.name == c.group => cat.checks.push(c),
            _ => categories.push(Category {
                name: c.group,
                checks: vec![c],
            }),
        }
    }
    let report = Report {
        success: passed(checks),
        categories,
    };
    serde_json::to_string_pretty(&report).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Check> {
        vec![
            Check::ok("kubernetes-api", "can reach the Kubernetes API"),
            Check::warn(
                "kubernetes-api",
                "version is supported",
                "v1.28.3",
                "upgrade",
            ),
            Check::fail(
                "crds",
                "CRD x is installed",
                "not found",
                "mesh install --crds",
            ),
        ]
    }

    #[test]
    fn text_groups_marks_and_hints() {
        assert_eq!(
            render_text(&sample()),
            "kubernetes-api\n--------------\n√ can reach the Kubernetes API\n‼ version is supported\n    v1.28.3\n    hint: upgrade\n\ncrds\n----\n× CRD x is installed\n    not found\n    hint: mesh install --crds\n\nStatus check results are ×\n"
        );
    }

    #[test]
    fn json_has_categories_and_success() {
        let v: serde_json::Value = serde_json::from_str(&render_json(&sample())).unwrap();
        assert_eq!(v["success"], false);
        assert_eq!(v["categories"][0]["categoryName"], "kubernetes-api");
        assert_eq!(v["categories"][0]["checks"][1]["result"], "warning");
        assert_eq!(
            v["categories"][1]["checks"][0]["hint"],
            "mesh install --crds"
        );
        let ok = vec![Check::ok("g", "fine")];
        assert!(render_text(&ok).ends_with("Status check results are √\n"));
    }
}
