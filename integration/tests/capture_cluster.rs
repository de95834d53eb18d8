//! Transparent capture the way pods work: a "node" namespace holds a bridge
//! and the control plane (no route out), three "pods" each get a veth into
//! the bridge, an address in 198.18.0.0/24, a default route via the node,
//! their app, their `mesh-proxy` (uid 2102) and the rules `mesh-proxy init`
//! installs. A fourth namespace, outside the mesh, runs a plain server.
//! Apps make plain `connect()`s to Service and pod addresses; a raw capture
//! on the bridge checks what crosses the wire. Last, the mTLS modes: a
//! plaintext client outside the mesh is served while B is permissive and
//! refused once a policy makes it strict.

use mesh_identity::{files, token};
use mesh_integration::{
    netns::{can_run, python, Netns, CAPTURE_TOOLS},
    process::{bin, Proc},
};
use serde_json::Value;
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

const POD_PY: &str = include_str!("cluster/pod.py");
const NODE_IP: &str = "198.18.0.1";
const SERVICE_IP: &str = "198.19.0.10";
const EXT_IP: &str = "198.18.0.9";
/// IPv6 twins, from the benchmarking range 2001:2::/48 (RFC 5180).
const NODE_IP6: &str = "2001:2::1";
const SERVICE_IP6: &str = "2001:2:0:1::10";
/// How long every app and server lives (bounds the test even if it hangs).
const APP_SECS: &str = "120";
/// The proxies' detection timeout, short so the control case stays cheap.
const DETECT_MS: u64 = 3000;

/// The pods: name (= service account), IPv4 and IPv6 addresses.
const PODS: &[(&str, &str, &str)] = &[
    ("a", "198.18.0.2", "2001:2::2"),
    ("b", "198.18.0.3", "2001:2::3"),
    ("c", "198.18.0.4", "2001:2::4"),
];

fn manifests() -> String {
    format!(
        r#"apiVersion: v1
kind: Service
metadata:
  name: b
  namespace: shop
  annotations: {{config.mesh.dev/opaque-ports: "6000"}}
spec:
  selector: {{app: b}}
  clusterIP: {SERVICE_IP}
  ports:
    - {{name: http, port: 80, targetPort: 8080}}
    - {{name: echo, port: 7000}}
    - {{name: pg, port: 5432}}
    - {{name: marked, port: 6000}}
    - {{name: unmarked, port: 6001}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: a, namespace: shop, labels: {{app: a}}}}
spec: {{address: 198.18.0.2, serviceAccount: a, ports: {{http: 8080}}}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: b, namespace: shop, labels: {{app: b}}}}
spec:
  address: 198.18.0.3
  serviceAccount: b
  ports: {{http: 8080, echo: 7000, pg: 5432, marked: 6000, unmarked: 6001}}
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: c, namespace: shop, labels: {{app: c}}}}
spec: {{address: 198.18.0.4, serviceAccount: c, ports: {{http: 8080}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: b6, namespace: shop}}
spec:
  selector: {{app: b6}}
  clusterIP: "{SERVICE_IP6}"
  ports: [{{name: http, port: 80, targetPort: 8080}}]
---
apiVersion: policy.mesh.dev/v1alpha1
kind: WorkloadEntry
metadata: {{name: b-v6, namespace: shop, labels: {{app: b6}}}}
spec:
  address: "2001:2::3"
  serviceAccount: b
  ports: {{http: 8080}}
  proxyInboundAddress: "[2001:2::3]:4143"
"#
    )
}

/// Prints every process log when the test fails.
struct DumpLogs(Vec<PathBuf>);

impl Drop for DumpLogs {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for log in &self.0 {
                let text = std::fs::read_to_string(log).unwrap_or_default();
                eprintln!("===== {} =====\n{text}", log.display());
            }
        }
    }
}

/// Starts a long-lived command inside `ns`, logging to `dir/<name>.log`.
fn spawn_in(ns: &Netns, dir: &Path, name: &str, argv: &[&str], env: &[(&str, String)]) -> Proc {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name]).args(argv);
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::spawn(name, cmd, dir.join(format!("{name}.log")))
}

/// Runs a `pod.py` client inside `ns` and parses its JSON line.
fn client(ns: &Netns, py: &str, script: &str, args: &[&str]) -> Value {
    let mut argv = vec![script];
    argv.extend_from_slice(args);
    let out = ns.exec_ok(py, &argv);
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("client output {out:?}: {e}"))
}

fn ok_out(v: &Value, what: &str) -> (String, f64) {
    assert_eq!(v["ok"], true, "{what}: {v}");
    (
        v["out"].as_str().unwrap_or_default().to_string(),
        v["secs"].as_f64().unwrap_or(f64::MAX),
    )
}

#[test]
fn pods_reach_services_through_their_proxies_over_mtls() {
    if !can_run("capture_cluster", CAPTURE_TOOLS) {
        return;
    }
    let py = python();

    // Files the proxy user (2102) must read live in a world-readable dir.
    let dir = tempfile::Builder::new()
        .prefix("mesh-cluster-")
        .tempdir_in("/tmp")
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let proxy_bin = dir.path().join("mesh-proxy");
    std::fs::copy(bin("mesh-proxy"), &proxy_bin).expect("copy mesh-proxy");
    std::fs::set_permissions(&proxy_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let script = dir.path().join("pod.py");
    std::fs::write(&script, POD_PY).unwrap();
    let script = script.to_str().unwrap().to_string();
    let proxy_bin = proxy_bin.to_str().unwrap().to_string();

    // The node: a bridge and nothing else; no default route.
    let node = Netns::new("node");
    node.exec_ok("ip", &["link", "add", "br0", "type", "bridge"]);
    node.exec_ok(
        "ip",
        &["addr", "add", &format!("{NODE_IP}/24"), "dev", "br0"],
    );
    node.exec_ok(
        "ip",
        &[
            "-6",
            "addr",
            "add",
            &format!("{NODE_IP6}/64"),
            "dev",
            "br0",
            "nodad",
        ],
    );
    node.exec_ok("ip", &["link", "set", "br0", "up"]);
    // Promiscuous, so the capture also sees frames bridged between pods.
    node.exec_ok("ip", &["link", "set", "br0", "promisc", "on"]);

    let attach = |tag: &str, ip: &str, ip6: Option<&str>| -> Netns {
        let pod = Netns::new(tag);
        let host_end = format!("vh-{tag}");
        node.exec_ok(
            "ip",
            &[
                "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "netns",
                &pod.name,
            ],
        );
        node.exec_ok("ip", &["link", "set", &host_end, "master", "br0"]);
        node.exec_ok("ip", &["link", "set", &host_end, "up"]);
        pod.exec_ok("ip", &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
        pod.exec_ok("ip", &["link", "set", "eth0", "up"]);
        pod.exec_ok("ip", &["route", "add", "default", "via", NODE_IP]);
        if let Some(ip6) = ip6 {
            pod.exec_ok(
                "ip",
                &[
                    "-6",
                    "addr",
                    "add",
                    &format!("{ip6}/64"),
                    "dev",
                    "eth0",
                    "nodad",
                ],
            );
            pod.exec_ok("ip", &["-6", "route", "add", "default", "via", NODE_IP6]);
        }
        pod
    };
    let pods: Vec<Netns> = PODS
        .iter()
        .map(|(name, ip, ip6)| attach(name, ip, Some(ip6)))
        .collect();
    let ext = attach("ext", EXT_IP, None);
    for pod in &pods {
        let out = pod.exec(&proxy_bin, &["init", "--ipv6", "on"]);
        assert!(out.status.success(), "init: {out:?}");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("IPv4 and IPv6"),
            "{out:?}"
        );
    }

    // Control plane in the node namespace.
    let identity_dir = dir.path().join("identity");
    files::init_dir(&identity_dir, "cluster.local", false).expect("identity init");
    let token_key = files::load_token_key(&identity_dir).expect("token key");
    let anchors = std::fs::read_to_string(identity_dir.join(files::TRUST_ANCHORS)).unwrap();
    let manifest_dir = dir.path().join("manifests");
    std::fs::create_dir_all(&manifest_dir).unwrap();
    std::fs::write(manifest_dir.join("shop.yaml"), manifests()).unwrap();

    let mut procs: Vec<Proc> = Vec::new();
    let identity_bin = bin("mesh-identity");
    let controller_bin = bin("mesh-controller");
    procs.push(spawn_in(
        &node,
        dir.path(),
        "identity",
        &[
            identity_bin.to_str().unwrap(),
            "--dir",
            identity_dir.to_str().unwrap(),
            "--addr",
            &format!("{NODE_IP}:8080"),
            "--admin-addr",
            &format!("{NODE_IP}:9991"),
            "--cert-lifetime",
            "1h",
        ],
        &[],
    ));
    procs.push(spawn_in(
        &node,
        dir.path(),
        "controller",
        &[
            controller_bin.to_str().unwrap(),
            "--source",
            &format!("dir:{}", manifest_dir.display()),
            "--grpc-addr",
            &format!("{NODE_IP}:8086"),
            "--admin-addr",
            &format!("{NODE_IP}:9990"),
            "--webhook-addr",
            &format!("{NODE_IP}:9443"),
            "--identity-addr",
            &format!("{NODE_IP}:8080"),
            "--trust-anchors",
            identity_dir.join(files::TRUST_ANCHORS).to_str().unwrap(),
            "--identity-token",
            &token::mint(
                &token_key,
                "mesh-system",
                "mesh-controller",
                Duration::from_secs(3600),
            ),
        ],
        &[],
    ));

    // Each pod: its apps (as root) and its proxy (as the proxy user).
    for ((name, ip, _), pod) in PODS.iter().zip(&pods) {
        procs.push(spawn_in(
            pod,
            dir.path(),
            &format!("app-{name}"),
            &[py, &script, "http", "8080", name, APP_SECS],
            &[],
        ));
        let env = vec![
            ("MESH_PROXY_DESTINATION_ADDR", format!("{NODE_IP}:8086")),
            ("MESH_PROXY_IDENTITY_ADDR", format!("{NODE_IP}:8080")),
            ("MESH_PROXY_TRUST_ANCHORS", anchors.clone()),
            (
                "MESH_PROXY_IDENTITY_TOKEN",
                token::mint(&token_key, "shop", name, Duration::from_secs(3600)),
            ),
            ("MESH_PROXY_NAMESPACE", "shop".to_string()),
            ("MESH_PROXY_SERVICE_ACCOUNT", name.to_string()),
            ("MESH_PROXY_WORKLOAD", name.to_string()),
            // As the injector sets it: the pod IP (status.podIP).
            ("MESH_PROXY_APP_IP", ip.to_string()),
            ("MESH_PROXY_DETECT_TIMEOUT_MS", DETECT_MS.to_string()),
            // As the injector writes it from a readiness probe on /ready.
            ("MESH_PROXY_INBOUND_PROBES", "8080:/ready".to_string()),
            ("MESH_PROXY_LOG", "info,mesh_proxy=debug".to_string()),
        ];
        procs.push(spawn_in(
            pod,
            dir.path(),
            &format!("proxy-{name}"),
            &[
                "setpriv",
                "--reuid",
                "2102",
                "--regid",
                "2102",
                "--clear-groups",
                &proxy_bin,
            ],
            &env,
        ));
    }
    let b = &pods[1];
    procs.push(spawn_in(
        b,
        dir.path(),
        "echo-b",
        &[py, &script, "echo", "7000", APP_SECS],
        &[],
    ));
    procs.push(spawn_in(
        b,
        dir.path(),
        "banner-b",
        &[py, &script, "banner", "5432,6000,6001", APP_SECS],
        &[],
    ));
    procs.push(spawn_in(
        &ext,
        dir.path(),
        "echo-ext",
        &[py, &script, "echo-peer", "9000", APP_SECS],
        &[],
    ));
    let logs = DumpLogs(procs.iter().map(|p| p.log.clone()).collect());

    for ((name, _, _), pod) in PODS.iter().zip(&pods) {
        let out = pod.exec_ok(py, &[&script, "ready", "http://127.0.0.1:4191/ready", "30"]);
        assert_eq!(out.trim(), "ready", "proxy of pod {name} never got ready");
    }
    for p in &mut procs {
        p.assert_running();
    }

    let capture_file = dir.path().join("bridge.raw");
    let stop_file = dir.path().join("capture.stop");
    let mut capture = spawn_in(
        &node,
        dir.path(),
        "capture",
        &[
            py,
            &script,
            "capture",
            "br0",
            capture_file.to_str().unwrap(),
            stop_file.to_str().unwrap(),
            "90",
        ],
        &[],
    );
    for _ in 0..50 {
        if capture.log_text().contains("capturing") {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        capture.log_text().contains("capturing"),
        "capture not started"
    );

    let a = &pods[0];
    let secret = format!("mesh-secret-{}", std::process::id());
    let a_id = "spiffe://cluster.local/ns/shop/sa/a";

    // HTTP to the Service's cluster IP: B answers and sees A's identity.
    let v = client(a, py, &script, &["get", SERVICE_IP, "80", &secret, "15"]);
    let (out, _) = ok_out(&v, "GET service IP");
    assert_eq!(out.trim(), format!("b client={a_id}"));
    // The same over IPv6 (ip6tables capture, IP6T_SO_ORIGINAL_DST).
    let v = client(a, py, &script, &["get", SERVICE_IP6, "80", &secret, "10"]);
    let (out, _) = ok_out(&v, "GET IPv6 service IP");
    assert_eq!(out.trim(), format!("b client={a_id}"));
    // HTTP straight to pod C's address.
    let v = client(
        a,
        py,
        &script,
        &["get", "198.18.0.4", "8080", &secret, "10"],
    );
    let (out, _) = ok_out(&v, "GET pod IP");
    assert_eq!(out.trim(), format!("c client={a_id}"));

    // Opaque TCP, client first: detected from the first bytes.
    let msg = format!("opaque {secret}");
    let v = client(a, py, &script, &["talk", SERVICE_IP, "7000", &msg, "10"]);
    let (out, secs) = ok_out(&v, "opaque echo");
    assert_eq!(out, msg);
    assert!(secs < 1.5, "opaque echo took {secs} s");
    // Server first, on a well-known port and on an annotated one: no wait.
    for port in ["5432", "6000"] {
        let v = client(a, py, &script, &["greet", SERVICE_IP, port, "10"]);
        let (out, secs) = ok_out(&v, "banner");
        assert_eq!(out.trim(), format!("banner from {port}"));
        assert!(
            secs < 1.5,
            "banner on {port} took {secs} s (detection not skipped?)"
        );
    }
    // Control: server first on a port nobody marked waits for detection.
    let v = client(a, py, &script, &["greet", SERVICE_IP, "6001", "15"]);
    let (out, secs) = ok_out(&v, "banner on an unmarked port");
    assert_eq!(out.trim(), "banner from 6001");
    assert!(
        secs >= (DETECT_MS as f64 / 1000.0) * 0.8,
        "unmarked server-first port answered in {secs} s: was detection skipped?"
    );

    // Outside the mesh: forwarded unchanged, from A's own address, in clear.
    let plain = format!("plaintext-control-{}", std::process::id());
    let v = client(a, py, &script, &["talk", EXT_IP, "9000", &plain, "10"]);
    let (out, _) = ok_out(&v, "outside the mesh");
    assert_eq!(out, format!("198.18.0.2 {plain}"));

    std::fs::write(&stop_file, b"").unwrap();
    for _ in 0..50 {
        if capture.exited() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    capture.kill();
    let wire = std::fs::read(&capture_file).expect("capture file");
    let contains = |needle: &str| wire.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(
        contains(&plain),
        "the capture did not see the plaintext control ({} bytes captured)",
        wire.len()
    );
    assert!(
        !contains(&secret),
        "meshed traffic crossed the bridge in plaintext"
    );
    // The meshed hops went to the proxies' inbound port, not the apps'.
    let proxy_b = std::fs::read_to_string(dir.path().join("proxy-b.log")).unwrap_or_default();
    assert!(
        !proxy_b.contains("inbound connection refused"),
        "proxy b refused a peer:\n{proxy_b}"
    );

    // mTLS modes. By default (allow-all) B's ports are permissive: a
    // plaintext client outside the mesh is served, without an identity.
    let v = client(
        &ext,
        py,
        &script,
        &["get", "198.18.0.3", "8080", "ext", "10"],
    );
    let (out, _) = ok_out(&v, "plaintext from outside the mesh, permissive");
    assert_eq!(out.trim(), "b client=none");
    // Strict for B: the same client is refused within 2 s of the edit…
    std::fs::write(
        manifest_dir.join("b-strict.yaml"),
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {name: b-strict, namespace: shop}\nspec:\n  selector: {matchLabels: {app: b}}\n  mtls: strict\n",
    )
    .unwrap();
    let edited = std::time::Instant::now();
    loop {
        let v = client(
            &ext,
            py,
            &script,
            &["get", "198.18.0.3", "8080", "ext", "0.5"],
        );
        if v["ok"] == false {
            break;
        }
        assert!(
            edited.elapsed() < Duration::from_secs(2),
            "plaintext still served 2 s after strict mode: {v}"
        );
    }
    // …except for the app's probe endpoint, which the kubelet reaches in
    // plaintext (from outside the mesh) whatever the mode…
    let v = client(
        &ext,
        py,
        &script,
        &["get", "198.18.0.3", "8080", "probe", "5", "/ready"],
    );
    let (out, _) = ok_out(&v, "probe on a strict port");
    assert_eq!(out.trim(), "b client=none");
    // …but only the probe: another path on the same port gets 403.
    let v = client(
        &ext,
        py,
        &script,
        &["get", "198.18.0.3", "8080", "probe", "0.5", "/admin"],
    );
    assert!(
        v["ok"] == false && v["out"].as_str().unwrap_or_default().contains("status 403"),
        "{v}"
    );
    // …while meshed A still gets through, over mutual TLS.
    let v = client(
        a,
        py,
        &script,
        &["get", "198.18.0.3", "8080", &secret, "10"],
    );
    let (out, _) = ok_out(&v, "meshed client in strict mode");
    assert_eq!(out.trim(), format!("b client={a_id}"));
    // A port without probes refuses plaintext connections outright.
    let v = client(
        &ext,
        py,
        &script,
        &["talk", "198.18.0.3", "7000", "hello", "0.5"],
    );
    assert_eq!(v["ok"], false, "plaintext echo on a strict port: {v}");
    let proxy_b = std::fs::read_to_string(dir.path().join("proxy-b.log")).unwrap_or_default();
    assert!(
        proxy_b
            .contains("plaintext connection to port 7000 refused: mTLS is strict (shop/b-strict)")
            && proxy_b.contains("request denied policy=shop/b-strict"),
        "{proxy_b}"
    );
    drop(logs);
}
