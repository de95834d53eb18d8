//! Tap, edges and the dashboard against a running `mesh demo`: `mesh tap`
//! prints JSON events within 10 s, `mesh edges` lists loadgen → web and web →
//! api with both SPIFFE identities over mTLS, and a real headless Chromium
//! (driven over the DevTools protocol by integration/browser/cdp_check.py)
//! renders the dashboard's graph with the three workloads and two edges,
//! numbers within 10 % of `mesh stat`'s and tap rows; its screenshot is kept
//! in target/screenshots/dashboard.png.

use mesh_integration::process::{bin, free_addr, wait_for_port, Proc};
use serde_json::Value;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

/// `mesh demo`, stopped with SIGINT (it then stops its own children).
struct Demo(Proc);

impl Drop for Demo {
    fn drop(&mut self) {
        self.0.signal("INT");
        if self.0.wait_exit(Duration::from_secs(15)).is_none() {
            self.0.kill();
        }
    }
}

fn target_dir() -> PathBuf {
    // target/<profile>/mesh -> target/
    bin("mesh")
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

/// Runs `mesh ARGS` with a deadline; (status ok, stdout, stderr).
fn mesh(args: &[&str], timeout: Duration) -> (bool, String, String) {
    let mut child = Command::new(bin("mesh"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("mesh");
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(_)) = child.try_wait() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("output");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// `mesh stat deploy -n demo -o json`: rps and success by workload.
fn stat(targets: &str) -> BTreeMap<String, (f64, Option<f64>)> {
    let (ok, out, err) = mesh(
        &[
            "stat",
            "deploy",
            "-n",
            "demo",
            "--targets",
            targets,
            "-t",
            &format!("{WINDOW_S}s"),
            "-o",
            "json",
        ],
        Duration::from_secs(WINDOW_S + 15),
    );
    assert!(ok, "mesh stat: {err}");
    let rows: Vec<Value> = serde_json::from_str(&out).expect("stat json");
    rows.iter()
        .map(|r| {
            (
                format!("demo/{}", r["name"].as_str().unwrap_or_default()),
                (r["rps"].as_f64().unwrap_or(0.0), r["success"].as_f64()),
            )
        })
        .collect()
}

#[test]
fn tap_edges_and_the_dashboard_against_the_demo() {
    let dir = tempfile::tempdir().expect("tmp");
    let d = dir.path().join("demo");
    let mut cmd = Command::new(bin("mesh"));
    cmd.args(["demo", "--dir"])
        .arg(&d)
        .args(["--requests", "2000000", "--concurrency", "1"]);
    let mut demo = Demo(Proc::spawn("mesh demo", cmd, dir.path().join("demo.log")));
    let targets = d.join("prometheus-targets.json");
    let deadline = Instant::now() + Duration::from_secs(90);
    while !demo.0.log_text().contains("see the traffic") {
        demo.0.assert_running();
        assert!(
            Instant::now() < deadline,
            "demo not up:\n{}",
            demo.0.log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Let the load generator start.
    std::thread::sleep(Duration::from_secs(3));
    let t = targets.to_str().expect("utf-8 path");

    // 1. Five JSON events within 10 s.
    let started = Instant::now();
    let (ok, out, err) = mesh(
        &[
            "tap",
            "deploy/api",
            "-n",
            "demo",
            "--targets",
            t,
            "--max",
            "5",
            "-o",
            "json",
        ],
        Duration::from_secs(10),
    );
    assert!(ok, "mesh tap failed: {err}\n{out}");
    let events: Vec<Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(events.len(), 5, "{out}");
    for e in &events {
        assert_eq!(e["dst_workload"], "demo/api", "{e}");
        assert_eq!(e["direction"], "inbound");
        assert_eq!(e["src_identity"], "spiffe://cluster.local/ns/demo/sa/web");
        assert!(e["status"].as_u64().is_some() && e["latency_ms"].as_f64().is_some());
    }
    eprintln!("mesh tap: 5 events in {:?}", started.elapsed());

    // `mesh top` without a terminal prints its table each interval.
    let (ok, out, err) = mesh(
        &[
            "top",
            "deploy/web",
            "-n",
            "demo",
            "--targets",
            t,
            "--iterations",
            "2",
            "--interval",
            "1s",
        ],
        Duration::from_secs(20),
    );
    assert!(ok, "mesh top: {err}");
    let last = out.rsplit("mesh top deploy/web").next().unwrap_or_default();
    let row = last
        .lines()
        .find(|l| l.starts_with("out") && l.contains("demo/api"))
        .unwrap_or_else(|| panic!("no outbound row to demo/api: {out}"));
    let count: u64 = row
        .split_whitespace()
        .nth(5)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    assert!(
        count > 0 && row.contains('%') && row.contains("ms"),
        "{row}"
    );
    assert!(
        last.lines()
            .any(|l| l.starts_with("in ") && l.contains("demo/web")),
        "{out}"
    );

    // 2. Edges with both identities, over mTLS.
    let (ok, out, err) = mesh(
        &[
            "edges",
            "deploy",
            "-n",
            "demo",
            "--targets",
            t,
            "-t",
            "2s",
            "-o",
            "json",
        ],
        Duration::from_secs(20),
    );
    assert!(ok, "mesh edges: {err}");
    let edges: Vec<Value> = serde_json::from_str(&out).expect("edges json");
    let id = |sa: &str| format!("spiffe://cluster.local/ns/demo/sa/{sa}");
    for (src, dst) in [("loadgen", "web"), ("web", "api")] {
        let e = edges
            .iter()
            .find(|e| e["src"] == format!("demo/{src}") && e["dst"] == format!("demo/{dst}"))
            .unwrap_or_else(|| panic!("no edge {src} -> {dst}: {out}"));
        assert_eq!(e["src_identity"], id(src), "{e}");
        assert_eq!(e["dst_identity"], id(dst), "{e}");
        assert_eq!(e["mtls"], true, "{e}");
        assert!(e["rps"].as_f64().unwrap() > 1.0, "{e}");
    }
    let (_, table, _) = mesh(
        &["edges", "deploy", "-n", "demo", "--targets", t, "-t", "1s"],
        Duration::from_secs(20),
    );
    eprintln!("{table}");

    // 3. The dashboard, in a real browser. Its numbers are rates over each
    // refresh period; `mesh stat` is read over the same period, started when
    // the dashboard starts one, so that both see the same traffic.
    let addr = free_addr();
    let mut dash = Command::new(bin("mesh"));
    // Every namespace (the demo has one), as `mesh demo` says to run it.
    dash.args([
        "dashboard",
        "--refresh",
        &format!("{WINDOW_S}s"),
        "--targets",
        t,
        "--addr",
    ])
    .arg(addr.to_string());
    let mut dashboard = Proc::spawn("mesh dashboard", dash, dir.path().join("dashboard.log"));
    assert!(
        wait_for_port(addr, Duration::from_secs(10)),
        "{}",
        dashboard.log_text()
    );
    let (status, page) = get(addr, "/");
    assert!(
        status == 200 && page.contains("mesh dashboard"),
        "{status} {page}"
    );

    let Some(browser) = chromium() else {
        assert!(
            std::env::var_os("MESH_REQUIRE_BROWSER").is_none(),
            "chromium is missing (.ci/run installs it)"
        );
        eprintln!("SKIPPED: the browser half (no chromium; apt-get install chromium)");
        return;
    };
    let shot = target_dir().join("screenshots").join("dashboard.png");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("browser/cdp_check.py");
    let mut last = String::new();
    for attempt in 1..=3 {
        // A refresh period starts when a summary comes out.
        let g0 = next_summary(addr, None)["generated_at"].clone();
        let stat_run = {
            let t = t.to_string();
            std::thread::spawn(move || stat(&t))
        };
        let summary = next_summary(addr, Some(&g0));
        let out = Command::new("python3")
            .arg(&script)
            .args(["--url", &format!("http://{addr}/"), "--chromium", browser])
            .args([
                "--nodes",
                "3",
                "--edges",
                "2",
                "--tap-rows",
                "1",
                "--timeout",
                "60",
            ])
            .arg("--screenshot")
            .arg(&shot)
            .output()
            .expect("python3");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "browser check failed:\n{text}\n{}\ndashboard log:\n{}",
            String::from_utf8_lossy(&out.stderr),
            dashboard.log_text()
        );
        let stat = stat_run.join().expect("stat");
        let seen: Value = serde_json::from_str(&text).expect("driver json");
        assert!(
            seen["errors"].as_array().is_some_and(|e| e.is_empty()),
            "{seen}"
        );
        let mut nodes: Vec<&str> = seen["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(Value::as_str)
            .collect();
        nodes.sort();
        assert_eq!(nodes, ["demo/api", "demo/loadgen", "demo/web"], "{seen}");
        let pairs: Vec<(String, String)> = seen["edges"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                (
                    e["src"].as_str().unwrap().into(),
                    e["dst"].as_str().unwrap().into(),
                )
            })
            .collect();
        assert!(
            pairs.contains(&("demo/loadgen".into(), "demo/web".into())),
            "{seen}"
        );
        assert!(
            pairs.contains(&("demo/web".into(), "demo/api".into())),
            "{seen}"
        );
        assert_eq!(pairs.len(), 2, "{seen}");
        assert!(seen["tap_rows"].as_u64().unwrap() >= 1, "{seen}");
        assert!(shot.exists());
        // The page shows this period's summary unless another came out
        // meanwhile (then try again).
        let shown_rps = |w: &str| seen["workloads"][w]["rps"].as_f64().unwrap_or(-1.0);
        let period_rps = |w: &str| {
            summary["workloads"]
                .as_array()
                .unwrap()
                .iter()
                .find(|x| {
                    format!(
                        "{}/{}",
                        x["namespace"].as_str().unwrap(),
                        x["name"].as_str().unwrap()
                    ) == w
                })
                .and_then(|x| x["rps"].as_f64())
                .unwrap_or(-2.0)
        };
        if ["demo/api", "demo/web"]
            .iter()
            .any(|w| (shown_rps(w) - period_rps(w)).abs() > 0.01 * period_rps(w).abs())
        {
            last = format!("the page moved on to the next period: {seen} vs {summary}");
            eprintln!("try {attempt}: {last}");
            continue;
        }
        let mut off = Vec::new();
        for w in ["demo/api", "demo/web"] {
            let shown = &seen["workloads"][w];
            let (rps, success) = stat[w];
            let page_rps = shown["rps"].as_f64().unwrap_or(0.0);
            if (page_rps - rps).abs() > 0.10 * rps {
                off.push(format!("{w} rps {page_rps} vs stat {rps}"));
            }
            match (shown["success"].as_f64(), success) {
                (Some(a), Some(b)) if (a - b).abs() <= 0.10 * b => {}
                (a, b) => off.push(format!("{w} success {a:?} vs stat {b:?}")),
            }
            assert_eq!(
                shown["meshed"],
                if w == "demo/api" { "2/2" } else { "1/1" },
                "{seen}"
            );
            eprintln!("{w}: page rps {page_rps:.1} success {:?}; mesh stat rps {rps:.1} success {success:?}", shown["success"]);
        }
        assert!(
            off.is_empty(),
            "the dashboard's numbers are not within 10 % of mesh stat's: {}",
            off.join("; ")
        );
        eprintln!(
            "dashboard matches mesh stat (try {attempt}); screenshot {}",
            shot.display()
        );
        dashboard.assert_running();
        return;
    }
    panic!("no reading of one refresh period: {last}");
}

/// The dashboard's refresh period, also `mesh stat`'s window here.
const WINDOW_S: u64 = 8;

/// GET `path` from the dashboard: (status, body).
fn get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    write!(
        s,
        "GET {path} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n\r\n"
    )
    .expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, body.to_string())
}

/// The next summary whose `generated_at` is not `after` (any, when `None`).
fn next_summary(addr: std::net::SocketAddr, after: Option<&Value>) -> Value {
    let deadline = Instant::now() + Duration::from_secs(3 * WINDOW_S + 10);
    loop {
        let (status, body) = get(addr, "/api/summary");
        if status == 200 {
            let v: Value = serde_json::from_str(&body).expect("summary json");
            if after.is_none_or(|a| v["generated_at"] != *a) {
                return v;
            }
        }
        assert!(Instant::now() < deadline, "no new summary: {status} {body}");
        std::thread::sleep(Duration::from_millis(20));
    }
}
