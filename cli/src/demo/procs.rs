//! The demo's child processes: found next to the `mesh` binary, logs in the
//! demo directory, every one killed by PID when the demo ends.

use anyhow::{bail, Context};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};
use tokio::process::{Child, Command};

/// The children started so far.
#[derive(Default)]
pub struct Procs {
    children: Vec<(String, Child)>,
}

/// The directory holding the mesh binaries (the one `mesh` runs from).
pub fn bin_dir() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("locating the mesh binary")?;
    exe.parent()
        .map(Path::to_path_buf)
        .context("mesh binary has no directory")
}

impl Procs {
    /// Starts `bin` with `args` and `envs`, logging to `log_dir/<name>.log`.
    pub fn spawn(
        &mut self,
        name: &str,
        bin: &str,
        args: &[String],
        envs: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<()> {
        let path = bin_dir()?.join(bin);
        if !path.exists() {
            bail!(
                "{} not found: build the binaries first (`make demo` does)",
                path.display()
            );
        }
        let log = std::fs::File::create(log_dir.join(format!("{name}.log")))?;
        let child = Command::new(&path)
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {name}"))?;
        self.children.push((name.to_string(), child));
        Ok(())
    }

    /// Fails if a child has exited.
    pub fn check(&mut self) -> anyhow::Result<()> {
        for (name, c) in &mut self.children {
            if let Ok(Some(status)) = c.try_wait() {
                bail!("{name} exited with {status} (see its log)");
            }
        }
        Ok(())
    }

    /// Kills every child and waits for it.
    pub async fn stop_all(&mut self) {
        for (_, c) in &mut self.children {
            let _ = c.kill().await;
        }
        self.children.clear();
    }
}

/// A free loopback address.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?)
}

/// Waits for `addr` to accept connections.
pub async fn wait_port(addr: SocketAddr, what: &str, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        procs.check()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{what} did not start listening on {addr} within 20 s")
}

/// GET `path` on an admin server: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n")?.1.to_string();
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}
