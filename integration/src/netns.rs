//! Network namespaces for root-only tests: created by the test, with only
//! test addresses (198.18.0.0/15) and no route out, removed on drop even
//! when the test fails.

use std::process::{Command, Output};

/// True when the tests run as root (network namespaces and iptables need it).
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// Returns false (after printing SKIPPED) when the test cannot run here;
/// under CI a missing privilege or tool is a failure, not a skip.
pub fn can_run(test: &str, tools: &[&str]) -> bool {
    let ci = std::env::var_os("CI").is_some();
    if !is_root() {
        println!("SKIPPED: {test}: needs root");
        assert!(!ci, "{test} needs root under CI");
        return false;
    }
    for tool in tools {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            println!("SKIPPED: {test}: {tool} not installed");
            assert!(!ci, "{test} needs {tool} under CI (.ci/run installs it)");
            return false;
        }
    }
    true
}

/// The tools the root-only capture tests run.
pub const CAPTURE_TOOLS: &[&str] = &["ip", "iptables", "iptables-save", "python3", "setpriv"];

/// A Python the unprivileged proxy user can run too (not one under /root).
pub fn python() -> &'static str {
    if std::path::Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// A network namespace owned by the test.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `mesh-<tag>-<pid>` with loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = format!("mesh-{tag}-{}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        run("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.exec_ok("ip", &["link", "set", "lo", "up"]);
        ns
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, cmd])
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("ip netns exec {cmd}: {e}"))
    }

    /// Runs a command inside the namespace and requires success.
    pub fn exec_ok(&self, cmd: &str, args: &[&str]) -> String {
        let out = self.exec(cmd, args);
        assert!(
            out.status.success(),
            "{cmd} {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).to_string()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().expect(cmd);
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
