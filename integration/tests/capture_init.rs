//! `mesh-proxy init` in a real network namespace: the rules land once even
//! when run twice, the app's outbound TCP is redirected to the proxy's
//! port, and the proxy's own connections (uid 2102) are not.

use mesh_integration::{
    netns::{can_run, python, Netns, CAPTURE_TOOLS},
    process::bin,
};

/// A Python one-liner listener inside the namespace: accepts for `secs`
/// seconds on `port`, greets each client with `hello`, prints the count.
const LISTENER: &str = "import socket,sys,time\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind(('0.0.0.0',int(sys.argv[1])));s.listen(16);s.settimeout(0.2)\nn=0;end=time.time()+float(sys.argv[2])\nwhile time.time()<end:\n  try:\n    c,_=s.accept();c.sendall(b'hello');c.close();n+=1\n  except OSError: pass\nprint(n)";

/// Connects to `addr:port` with a 1 s timeout; prints what it read or the error.
const CLIENT: &str = "import socket,sys\ntry:\n  c=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1);print(c.recv(5).decode())\nexcept OSError as e: print('error',type(e).__name__)";

#[test]
fn init_rules_are_idempotent_and_spare_the_proxy_user() {
    if !can_run("capture_init", CAPTURE_TOOLS) {
        return;
    }
    let py = python();
    let ns = Netns::new("init");
    // A test-only address; nothing owns 198.18.0.5, and there is no route out.
    ns.exec_ok(
        "ip",
        &["link", "add", "v0", "type", "veth", "peer", "name", "v1"],
    );
    ns.exec_ok("ip", &["addr", "add", "198.18.0.1/24", "dev", "v0"]);
    ns.exec_ok("ip", &["link", "set", "v0", "up"]);
    ns.exec_ok("ip", &["link", "set", "v1", "up"]);

    let proxy = bin("mesh-proxy");
    let proxy = proxy.to_str().unwrap();
    for _ in 0..2 {
        ns.exec_ok(proxy, &["init", "--skip-outbound-ports", "9999"]);
    }
    let saved = ns.exec_ok("iptables-save", &["-t", "nat"]);
    for needle in [
        "-A PREROUTING -p tcp -j MESH_INBOUND",
        "-A OUTPUT -p tcp -j MESH_OUTBOUND",
        "-A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN",
        "--to-ports 4140",
        "--to-ports 4143",
    ] {
        assert_eq!(saved.matches(needle).count(), 1, "{needle:?} in:\n{saved}");
    }

    // A stand-in for the outbound proxy on 4140.
    let listener = std::process::Command::new("ip")
        .args(["netns", "exec", &ns.name, py, "-c", LISTENER, "4140", "4"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));

    // The app (root here) connects to an address nobody owns: captured.
    let app = ns.exec_ok(py, &["-c", CLIENT, "198.18.0.5", "80"]);
    assert_eq!(app.trim(), "hello", "app connection not redirected");
    // The proxy's user connecting to the same address is not captured: it
    // gets no answer (nobody owns the address) instead of looping to 4140.
    let own = ns.exec_ok(
        "setpriv",
        &[
            "--reuid",
            "2102",
            "--regid",
            "2102",
            "--clear-groups",
            py,
            "-c",
            CLIENT,
            "198.18.0.5",
            "80",
        ],
    );
    assert!(
        own.trim().starts_with("error"),
        "proxy user was redirected: {own}"
    );
    // A skipped port is not captured either.
    let skipped = ns.exec_ok(py, &["-c", CLIENT, "198.18.0.5", "9999"]);
    assert!(
        skipped.trim().starts_with("error"),
        "skipped port was redirected: {skipped}"
    );

    let out = listener.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1",
        "exactly the app's connection reached 4140"
    );
}

#[test]
fn init_without_iptables_privileges_or_binary_fails_clearly() {
    // No root needed: a missing binary is reported by name.
    let out = std::process::Command::new(bin("mesh-proxy"))
        .args(["init", "--iptables-mode", "legacy"])
        .env("PATH", "/nonexistent")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("iptables-legacy not found"), "{err}");
    // A bad flag names itself.
    let out = std::process::Command::new(bin("mesh-proxy"))
        .args(["init", "--proxy-uid", "root"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--proxy-uid"));
}

#[test]
fn dry_run_prints_the_exact_rules_for_a_flag_set() {
    // No root needed: nothing is installed.
    let run = |extra: &[&str]| {
        let out = std::process::Command::new(bin("mesh-proxy"))
            .args([
                "init",
                "--dry-run",
                "--skip-inbound-ports",
                "22",
                "--skip-outbound-ports",
                "443,9000-9010",
                "--skip-outbound-subnets",
                "10.0.0.0/8,fd00::/8",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let v4 = "\
iptables -t nat -N MESH_INBOUND
iptables -t nat -F MESH_INBOUND
iptables -t nat -N MESH_OUTBOUND
iptables -t nat -F MESH_OUTBOUND
iptables -t nat -A MESH_INBOUND -p tcp -m multiport --dports 4191,22 -j RETURN
iptables -t nat -A MESH_INBOUND -p tcp -j REDIRECT --to-ports 4143
iptables -t nat -A MESH_OUTBOUND -m owner --uid-owner 2102 -j RETURN
iptables -t nat -A MESH_OUTBOUND -o lo -j RETURN
iptables -t nat -A MESH_OUTBOUND -d 127.0.0.0/8 -j RETURN
iptables -t nat -A MESH_OUTBOUND -p tcp -m multiport --dports 443,9000:9010 -j RETURN
iptables -t nat -A MESH_OUTBOUND -d 10.0.0.0/8 -j RETURN
iptables -t nat -A MESH_OUTBOUND -p tcp -j REDIRECT --to-ports 4140
iptables -t nat -A PREROUTING -p tcp -j MESH_INBOUND
iptables -t nat -A OUTPUT -p tcp -j MESH_OUTBOUND
";
    assert_eq!(run(&["--ipv6", "off"]), v4);
    let both = run(&["--ipv6", "on", "--iptables-mode", "legacy"]);
    let v6 = v4
        .replace("iptables ", "ip6tables-legacy ")
        .replace("127.0.0.0/8", "::1/128")
        .replace("10.0.0.0/8", "fd00::/8");
    assert_eq!(
        both,
        format!("{}{v6}", v4.replace("iptables ", "iptables-legacy "))
    );
}
