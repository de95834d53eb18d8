//! A whole local mesh for one test: a trust anchor and issuer, the real
//! `mesh-identity` and `mesh-controller` binaries on a manifest directory,
//! and `mesh-proxy` processes for the workloads the test declares.

use crate::process::{bin, free_addr, wait_for_port, Proc};
use mesh_identity::{files, token};
use std::{
    net::SocketAddr,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The trust domain of test meshes.
pub const TRUST_DOMAIN: &str = "cluster.local";

/// A running control plane.
pub struct Mesh {
    pub root: tempfile::TempDir,
    pub identity_dir: PathBuf,
    pub manifests: PathBuf,
    pub identity_addr: SocketAddr,
    /// `mesh-identity`'s admin server (`/metrics`, `/ready`).
    pub identity_admin: SocketAddr,
    pub controller_addr: SocketAddr,
    /// `mesh-controller`'s admin server (`/metrics`, `/ready`).
    pub controller_admin: SocketAddr,
    pub identity: Proc,
    pub controller: Option<Proc>,
    token_key: token::TokenKey,
}

/// A running proxy.
pub struct Proxy {
    pub outbound: SocketAddr,
    pub inbound: SocketAddr,
    pub admin: SocketAddr,
    pub identity: String,
    /// `MESH_PROXY_NAMESPACE`.
    pub namespace: String,
    /// `MESH_PROXY_WORKLOAD`.
    pub workload: String,
    pub proc: Proc,
}

/// The SPIFFE ID of a test workload.
pub fn spiffe(ns: &str, sa: &str) -> String {
    format!("spiffe://{TRUST_DOMAIN}/ns/{ns}/sa/{sa}")
}

impl Mesh {
    /// Starts identity (certificates valid for `cert_lifetime`, e.g. "1h")
    /// and the controller on an empty manifest directory.
    pub async fn start(cert_lifetime: &str) -> Mesh {
        let mut mesh = Self::start_identity(cert_lifetime).await;
        mesh.start_controller();
        mesh
    }

    /// Starts the identity service only; the caller starts a controller (e.g. one on a
    /// Kubernetes source, [`Mesh::spawn_controller_from`]).
    pub async fn start_identity(cert_lifetime: &str) -> Mesh {
        let root = tempfile::tempdir().expect("tempdir");
        let identity_dir = root.path().join("identity");
        let manifests = root.path().join("manifests");
        std::fs::create_dir_all(&manifests).expect("manifests dir");
        files::init_dir(&identity_dir, TRUST_DOMAIN, false).expect("identity init");
        let token_key = files::load_token_key(&identity_dir).expect("token key");

        let identity_addr = free_addr();
        let identity_admin = free_addr();
        let mut cmd = Command::new(bin("mesh-identity"));
        cmd.arg("--dir")
            .arg(&identity_dir)
            .arg("--addr")
            .arg(identity_addr.to_string())
            .arg("--admin-addr")
            .arg(identity_admin.to_string())
            .arg("--cert-lifetime")
            .arg(cert_lifetime);
        let mut identity = Proc::spawn("mesh-identity", cmd, root.path().join("identity.log"));
        if !wait_for_port(identity_addr, Duration::from_secs(20)) {
            identity.assert_running();
            panic!("identity did not listen:\n{}", identity.log_text());
        }
        Mesh {
            identity_dir,
            manifests,
            identity_addr,
            identity_admin,
            controller_addr: free_addr(),
            controller_admin: free_addr(),
            identity,
            controller: None,
            token_key,
            root,
        }
    }

    /// Starts (or restarts) the controller on its fixed address.
    pub fn start_controller(&mut self) {
        let p = self.spawn_controller(self.controller_addr, self.controller_admin);
        self.controller = Some(p);
    }

    /// Starts another controller replica on the same manifests, serving gRPC on
    /// `grpc` and its admin server on `admin`; waits until it is ready.
    pub fn spawn_controller(&self, grpc: SocketAddr, admin: SocketAddr) -> Proc {
        let source = format!("dir:{}", self.manifests.display());
        self.spawn_controller_from(grpc, admin, &source, &[])
    }

    /// Starts a controller replica reading `source` (`dir:…` or `kubernetes`) with
    /// extra environment `env` (e.g. `KUBECONFIG`); waits until it is ready.
    pub fn spawn_controller_from(
        &self,
        grpc: SocketAddr,
        admin: SocketAddr,
        source: &str,
        env: &[(&str, &std::ffi::OsStr)],
    ) -> Proc {
        let mut cmd = Command::new(bin("mesh-controller"));
        cmd.envs(env.iter().copied());
        cmd.arg("--source")
            .arg(source)
            .arg("--grpc-addr")
            .arg(grpc.to_string())
            .arg("--admin-addr")
            .arg(admin.to_string())
            .arg("--webhook-addr")
            .arg(free_addr().to_string())
            // Its own certificate, from identity like any workload's.
            .arg("--identity-addr")
            .arg(self.identity_addr.to_string())
            .arg("--trust-anchors")
            .arg(self.anchors_path())
            .arg("--identity-token")
            .arg(self.token("mesh-system", "mesh-controller"));
        let started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let log = self
            .root
            .path()
            .join(format!("controller-{}-{started}.log", grpc.port()));
        let mut p = Proc::spawn("mesh-controller", cmd, log);
        if !wait_for_port(grpc, Duration::from_secs(20)) {
            p.assert_running();
            panic!("controller did not listen:\n{}", p.log_text());
        }
        // Ready once it has its certificate: proxies can connect from then on.
        let deadline = Instant::now() + Duration::from_secs(20);
        while !wait_ready(admin) {
            p.assert_running();
            assert!(
                Instant::now() < deadline,
                "controller not ready in 20 s:\n{}",
                p.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        p
    }

    /// A gRPC channel to the controller over mutual TLS, with a certificate
    /// for `spiffe://cluster.local/ns/test/sa/fixture` (the controller
    /// serves nobody else).
    pub fn controller_channel(&self) -> tonic::transport::Channel {
        use mesh_proto::workload::{certified_key, mtls_channel, CertStore, TrustBundle};
        let (chain, key) = crate::tls::client_cert(&self.identity_dir, &spiffe("test", "fixture"));
        let certs = std::sync::Arc::new(CertStore::default());
        certs.set(certified_key(&chain, &key).expect("fixture certificate"));
        let anchors = std::fs::read_to_string(self.anchors_path()).expect("anchors");
        mtls_channel(
            &self.controller_addr.to_string(),
            certs,
            TrustBundle::from_pem(&anchors).expect("anchors"),
            &spiffe("mesh-system", "mesh-controller"),
            Duration::from_secs(2),
        )
        .expect("controller channel")
    }

    /// Kills the controller.
    pub fn kill_controller(&mut self) {
        if let Some(mut p) = self.controller.take() {
            p.kill();
        }
    }

    /// Writes a manifest file.
    pub fn write(&self, file: &str, yaml: &str) {
        let tmp = self.manifests.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).expect("write manifest");
        std::fs::rename(&tmp, self.manifests.join(file)).expect("rename manifest");
    }

    /// Removes a manifest file.
    pub fn remove(&self, file: &str) {
        std::fs::remove_file(self.manifests.join(file)).expect("remove manifest");
    }

    /// Waits until the controller serves `n` endpoints for `target`
    /// (file watches are asynchronous), at most 10 s.
    pub async fn wait_for_endpoints(&self, target: &str, n: usize) {
        use mesh_proto::destination::{
            destination_client::DestinationClient, update, GetDestination,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut last = String::new();
        let channel = self.controller_channel();
        while Instant::now() < deadline {
            {
                let mut c = DestinationClient::new(channel.clone());
                let req = GetDestination {
                    target: target.into(),
                    context: "test".into(),
                };
                if let Ok(rsp) = c.get(req).await {
                    let mut stream = rsp.into_inner();
                    let first =
                        tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
                    if let Ok(Ok(Some(u))) = first {
                        let count = match &u.update {
                            Some(update::Update::Add(set)) => set.endpoints.len(),
                            _ => 0,
                        };
                        if count == n {
                            return;
                        }
                        last = format!("{u:?}");
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("controller never served {n} endpoints for {target}; last: {last}");
    }

    /// Declares Service `api.demo` (port 80 → the app's `http` port) with one
    /// endpoint, `api-1`, behind `proxy`, announced as service account `sa`,
    /// and waits until the controller serves it.
    pub async fn serve_api(&self, sa: &str, app_port: u16, proxy: &Proxy) {
        self.write(
            "svc.yaml",
            &service("api", "demo", &[("http", 80, "http", "")]),
        );
        self.write(
            "api-1.yaml",
            &workload(
                "api-1",
                "demo",
                "api",
                sa,
                &[("http", app_port)],
                proxy.inbound,
            ),
        );
        self.wait_for_endpoints("api.demo.svc.cluster.local:80", 1)
            .await;
    }

    /// A token for `ns/sa`, as `mesh token` mints it.
    pub fn token(&self, ns: &str, sa: &str) -> String {
        token::mint(&self.token_key, ns, sa, Duration::from_secs(3600))
    }

    /// The PEM trust anchors.
    pub fn anchors_path(&self) -> PathBuf {
        self.identity_dir.join(files::TRUST_ANCHORS)
    }

    /// Starts a proxy for workload `name` running as `ns/sa`, and waits for
    /// it to be ready (its first certificate issued).
    pub async fn proxy(&self, ns: &str, sa: &str, name: &str) -> Proxy {
        self.proxy_with_token(ns, sa, name, &self.token(ns, sa))
            .await
    }

    /// Like `proxy`, for an app on `ports`: the proxy fetches their inbound
    /// policies at startup (`MESH_PROXY_INBOUND_PORTS`, as injected pods do).
    pub async fn proxy_for_ports(&self, ns: &str, sa: &str, name: &str, ports: &[u16]) -> Proxy {
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        let token = self.token(ns, sa);
        for _ in 0..3 {
            if let Some(p) = self
                .try_proxy_env(
                    ns,
                    sa,
                    name,
                    &token,
                    &[("MESH_PROXY_INBOUND_PORTS", &ports.join(","))],
                )
                .await
            {
                return p;
            }
        }
        panic!("proxy {name}: no free ports after 3 tries");
    }

    /// Like `proxy`, with extra `MESH_PROXY_*` variables.
    pub async fn proxy_env(&self, ns: &str, sa: &str, name: &str, env: &[(&str, &str)]) -> Proxy {
        let token = self.token(ns, sa);
        for _ in 0..3 {
            if let Some(p) = self.try_proxy_env(ns, sa, name, &token, env).await {
                return p;
            }
        }
        panic!("proxy {name}: no free ports after 3 tries");
    }

    /// Like `proxy`, with the token given. A port taken between choosing it
    /// and the proxy binding it (another process got it) means a retry with
    /// new ports.
    pub async fn proxy_with_token(&self, ns: &str, sa: &str, name: &str, token: &str) -> Proxy {
        for _ in 0..3 {
            if let Some(p) = self.try_proxy(ns, sa, name, token).await {
                return p;
            }
        }
        panic!("proxy {name}: no free ports after 3 tries");
    }

    async fn try_proxy(&self, ns: &str, sa: &str, name: &str, token: &str) -> Option<Proxy> {
        self.try_proxy_env(ns, sa, name, token, &[]).await
    }

    async fn try_proxy_env(
        &self,
        ns: &str,
        sa: &str,
        name: &str,
        token: &str,
        env: &[(&str, &str)],
    ) -> Option<Proxy> {
        let (outbound, inbound, admin) = (free_addr(), free_addr(), free_addr());
        let mut cmd = Command::new(bin("mesh-proxy"));
        cmd.env("MESH_PROXY_OUTBOUND_ADDR", outbound.to_string())
            .env("MESH_PROXY_INBOUND_ADDR", inbound.to_string())
            .env("MESH_PROXY_ADMIN_ADDR", admin.to_string())
            .env(
                "MESH_PROXY_DESTINATION_ADDR",
                self.controller_addr.to_string(),
            )
            .env("MESH_PROXY_IDENTITY_ADDR", self.identity_addr.to_string())
            .env("MESH_PROXY_TRUST_ANCHORS_FILE", self.anchors_path())
            .env("MESH_PROXY_IDENTITY_TOKEN", token)
            .env("MESH_PROXY_NAMESPACE", ns)
            .env("MESH_PROXY_SERVICE_ACCOUNT", sa)
            .env("MESH_PROXY_WORKLOAD", name)
            .env("MESH_PROXY_LOG", "info,mesh_proxy=debug");
        cmd.envs(env.iter().copied());
        let log = self.root.path().join(format!("proxy-{name}.log"));
        let mut proc = Proc::spawn(&format!("mesh-proxy {name}"), cmd, log);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if admin_get(admin, "/ready").await.map(|(s, _)| s) == Some(200) {
                break;
            }
            if proc.exited() && proc.log_text().contains("Address already in use") {
                return None;
            }
            proc.assert_running();
            assert!(
                Instant::now() < deadline,
                "proxy {name} not ready in 20 s:\n{}",
                proc.log_text()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Some(Proxy {
            outbound,
            inbound,
            admin,
            identity: spiffe(ns, sa),
            namespace: ns.to_string(),
            workload: name.to_string(),
            proc,
        })
    }
}

impl Mesh {
    /// Prometheus file-SD targets for this mesh: `mesh-identity`'s and
    /// `mesh-controller`'s admin servers and `proxies`' (each its own pod of
    /// workload `MESH_PROXY_WORKLOAD`), in the format `mesh demo` writes.
    /// `crate::prometheus::write_file_sd` writes them.
    pub fn file_sd_targets(&self, proxies: &[&Proxy]) -> Vec<crate::prometheus::Target> {
        use crate::prometheus::{Target, JOB_CONTROLLER, JOB_IDENTITY};
        let mut targets = vec![
            Target::component(self.identity_admin, JOB_IDENTITY),
            Target::component(self.controller_admin, JOB_CONTROLLER),
        ];
        targets.extend(
            proxies
                .iter()
                .map(|p| Target::proxy(p.admin, &p.namespace, &p.workload, &p.workload)),
        );
        targets
    }
}

/// A backend replica: an echo app and its proxy.
pub struct Replica {
    pub name: String,
    pub app: crate::apps::EchoApp,
    pub proxy: Proxy,
}

impl Mesh {
    /// Starts replica `name` of app `app` (service account = app) with
    /// `behaviour`, and declares it in `<name>.yaml` with label `app: <app>`.
    pub async fn replica(
        &self,
        app: &str,
        name: &str,
        behaviour: crate::apps::Behaviour,
    ) -> Replica {
        let echo = crate::apps::echo_with(name, behaviour).await;
        let proxy = self
            .proxy_for_ports("demo", app, name, &[echo.addr.port()])
            .await;
        self.write(
            &format!("{name}.yaml"),
            &workload(
                name,
                "demo",
                app,
                app,
                &[("http", echo.addr.port())],
                proxy.inbound,
            ),
        );
        Replica {
            name: name.to_string(),
            app: echo,
            proxy,
        }
    }
}

impl Proxy {
    /// The sum of every sample of metric `name` whose labels contain all
    /// of `labels` (e.g. `reason="status"`).
    pub async fn metric_sum(&self, name: &str, labels: &[&str]) -> f64 {
        self.metrics()
            .await
            .lines()
            .filter(|l| l.starts_with(name) && labels.iter().all(|want| l.contains(want)))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// The proxy's `/metrics` text.
    pub async fn metrics(&self) -> String {
        admin_get(self.admin, "/metrics")
            .await
            .map(|(_, b)| b)
            .unwrap_or_default()
    }
}

/// True when the admin server at `addr` answers `/ready` with 200 (blocking,
/// for synchronous setup code).
fn wait_ready(addr: SocketAddr) -> bool {
    use std::io::{Read, Write};
    let Ok(mut tcp) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return false;
    };
    let _ = tcp.set_read_timeout(Some(Duration::from_secs(2)));
    if tcp
        .write_all(b"GET /ready HTTP/1.0\r\nHost: admin\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut out = String::new();
    let _ = tcp.read_to_string(&mut out);
    out.starts_with("HTTP/1.1 200") || out.starts_with("HTTP/1.0 200")
}

/// A bare HTTP/1.0 GET against an admin server: (status, body).
pub async fn admin_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let fut = async {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
        tcp.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes())
            .await
            .ok()?;
        let mut buf = Vec::new();
        tcp.read_to_end(&mut buf).await.ok()?;
        let text = String::from_utf8_lossy(&buf).to_string();
        let status = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), fut)
        .await
        .ok()
        .flatten()
}

/// A `Service` manifest selecting `app=<name>`, with `(port name, port,
/// targetPort name, appProtocol)` entries.
pub fn service(name: &str, ns: &str, ports: &[(&str, u16, &str, &str)]) -> String {
    let mut y = format!(
        "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {ns}\nspec:\n  selector:\n    app: {name}\n  ports:\n"
    );
    for (pname, port, target, proto) in ports {
        y.push_str(&format!(
            "  - name: {pname}\n    port: {port}\n    targetPort: {target}\n"
        ));
        if !proto.is_empty() {
            y.push_str(&format!("    appProtocol: {proto}\n"));
        }
    }
    y
}

/// An HTTPRoute `api-retry` on Service `api.demo` port 80 retrying 5xx responses up to
/// `attempts` tries with a 1 ms backoff.
pub fn retry_route(attempts: u32) -> String {
    format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: api-retry\n  namespace: demo\n  annotations:\n    retry.mesh.dev/http: 5xx\nspec:\n  parentRefs: [{{kind: Service, name: api, port: 80}}]\n  rules:\n  - backendRefs: [{{name: api, port: 80}}]\n    retry: {{attempts: {attempts}, backoff: 1ms}}\n"
    )
}

/// A meshed `WorkloadEntry` for app `app` on 127.0.0.1 with named ports,
/// reached through the proxy inbound `proxy_inbound`.
pub fn workload(
    name: &str,
    ns: &str,
    app: &str,
    sa: &str,
    ports: &[(&str, u16)],
    proxy_inbound: SocketAddr,
) -> String {
    let mut y = format!(
        "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    app: {app}\nspec:\n  address: 127.0.0.1\n  serviceAccount: {sa}\n  proxyInboundAddress: \"{proxy_inbound}\"\n  ports:\n"
    );
    for (pname, port) in ports {
        y.push_str(&format!("    {pname}: {port}\n"));
    }
    y
}
