//! `mesh demo`: the whole mesh on one machine, on loopback. It starts the
//! identity service and the controller on a generated manifest directory,
//! two services (`web`, and `api` with two replicas) each behind its own
//! `mesh-proxy`, drives traffic through them and reports what happened.
//! Every process it started is stopped when it ends, also on Ctrl-C.

mod apps;
mod procs;
mod report;

use anyhow::{bail, Context};
use procs::{admin_get, free_addr, wait_port, Procs};
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// `mesh demo` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Requests to send through the mesh.
    #[arg(long, default_value_t = 300)]
    requests: u32,
    /// Concurrent client connections.
    #[arg(long, default_value_t = 4)]
    concurrency: u32,
    /// Working directory for certificates, manifests and logs (default: a
    /// new directory under the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
}

const NS: &str = "demo";
const WEB_HOST: &str = "web.demo.svc.cluster.local";
const API_HOST: &str = "api.demo.svc.cluster.local";

/// Runs the demo.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.requests == 0 || args.concurrency == 0 {
        bail!("--requests and --concurrency must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let mut procs = Procs::default();
        let result = tokio::select! {
            r = demo(&args, &mut procs) => r,
            _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
        };
        procs.stop_all().await;
        println!("stopped every process the demo started");
        result
    })
}

/// One meshed workload: its proxy's addresses and identity.
struct Workload {
    /// The replica's name (its WorkloadEntry, its "pod").
    name: &'static str,
    /// Its service account, which is also the workload its replicas share.
    sa: &'static str,
    outbound: SocketAddr,
    inbound: SocketAddr,
    admin: SocketAddr,
}

impl Workload {
    fn new(name: &'static str, sa: &'static str) -> anyhow::Result<Self> {
        Ok(Workload {
            name,
            sa,
            outbound: free_addr()?,
            inbound: free_addr()?,
            admin: free_addr()?,
        })
    }
}

async fn demo(args: &Args, procs: &mut Procs) -> anyhow::Result<()> {
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("mesh-demo-{}", std::process::id())),
    };
    let id_dir = dir.join("identity");
    let manifests = dir.join("manifests");
    let logs = dir.join("logs");
    for d in [&manifests, &logs] {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    mesh_identity::files::init_dir(&id_dir, "cluster.local", true)
        .context("creating the trust anchor and issuer")?;
    let key = mesh_identity::files::load_token_key(&id_dir)?;
    // The tap credential, next to the targets file, for mesh tap/top/dashboard.
    mesh_cli::identity::tap_credential::write(
        &id_dir,
        &dir.join("tap"),
        "cluster.local",
        Duration::from_secs(24 * 3600),
    )?;
    println!("mesh demo: working in {}", dir.display());

    // Control plane.
    let identity_addr = free_addr()?;
    let identity_admin = free_addr()?;
    let controller_addr = free_addr()?;
    let controller_admin = free_addr()?;
    procs.spawn(
        "mesh-identity",
        "mesh-identity",
        &[
            "--dir".into(),
            id_dir.display().to_string(),
            "--addr".into(),
            identity_addr.to_string(),
            "--admin-addr".into(),
            identity_admin.to_string(),
        ],
        &[],
        &logs,
    )?;
    procs.spawn(
        "mesh-controller",
        "mesh-controller",
        &[
            "--source".into(),
            format!("dir:{}", manifests.display()),
            "--grpc-addr".into(),
            controller_addr.to_string(),
            "--admin-addr".into(),
            controller_admin.to_string(),
            "--webhook-addr".into(),
            free_addr()?.to_string(),
            // The controller serves only over mutual TLS, with a certificate
            // from identity like any workload's.
            "--identity-addr".into(),
            identity_addr.to_string(),
            "--trust-anchors".into(),
            id_dir
                .join(mesh_identity::files::TRUST_ANCHORS)
                .display()
                .to_string(),
        ],
        &[(
            "MESH_CONTROLLER_IDENTITY_TOKEN".to_string(),
            mesh_identity::token::mint(
                &key,
                "mesh-system",
                "mesh-controller",
                Duration::from_secs(24 * 3600),
            ),
        )],
        &logs,
    )?;
    wait_port(identity_addr, "mesh-identity", procs).await?;
    wait_port(controller_addr, "mesh-controller", procs).await?;
    wait_admin_ready(controller_admin, "mesh-controller", procs).await?;
    println!("  ✓ identity on {identity_addr}, controller on {controller_addr}");

    // Workloads and their proxies.
    let client = Workload::new("loadgen", "loadgen")?;
    let web = Workload::new("web-1", "web")?;
    let api1 = Workload::new("api-1", "api")?;
    let api2 = Workload::new("api-2", "api")?;
    let (web_app, _web_task) = apps::web(web.outbound, "api.demo.svc.cluster.local:80").await?;
    let api1_app = apps::api("api-1", 0).await?;
    // api-2 fails one request in five; the route's retries hide it.
    let api2_app = apps::api("api-2", 5).await?;

    write_manifests(
        &manifests,
        &web,
        web_app,
        &[(&api1, api1_app.addr), (&api2, api2_app.addr)],
    )?;
    let anchors = id_dir.join(mesh_identity::files::TRUST_ANCHORS);
    // Each proxy forwards inbound traffic only to its own app's port: on a
    // shared loopback every other port belongs to someone else.
    let app_ports = [
        "none".to_string(),
        web_app.port().to_string(),
        api1_app.addr.port().to_string(),
        api2_app.addr.port().to_string(),
    ];
    for (w, app_port) in [&client, &web, &api1, &api2].into_iter().zip(app_ports) {
        let token = mesh_identity::token::mint(&key, NS, w.sa, Duration::from_secs(3600));
        let env = [
            ("MESH_PROXY_OUTBOUND_ADDR", w.outbound.to_string()),
            ("MESH_PROXY_INBOUND_ADDR", w.inbound.to_string()),
            ("MESH_PROXY_ADMIN_ADDR", w.admin.to_string()),
            ("MESH_PROXY_DESTINATION_ADDR", controller_addr.to_string()),
            ("MESH_PROXY_IDENTITY_ADDR", identity_addr.to_string()),
            (
                "MESH_PROXY_TRUST_ANCHORS_FILE",
                anchors.display().to_string(),
            ),
            ("MESH_PROXY_IDENTITY_TOKEN", token),
            ("MESH_PROXY_NAMESPACE", NS.to_string()),
            ("MESH_PROXY_SERVICE_ACCOUNT", w.sa.to_string()),
            ("MESH_PROXY_WORKLOAD", w.sa.to_string()),
            ("MESH_PROXY_POD_NAME", w.name.to_string()),
            ("MESH_PROXY_INBOUND_PORTS", app_port),
        ]
        .map(|(k, v)| (k.to_string(), v));
        procs.spawn(&format!("proxy-{}", w.name), "mesh-proxy", &[], &env, &logs)?;
    }
    for w in [&client, &web, &api1, &api2] {
        wait_ready(w, procs).await?;
    }
    println!("  ✓ 4 proxies ready (loadgen, web-1, api-1, api-2), each with its own certificate");
    // Every admin address, for a Prometheus on manifests/prometheus/local.yaml.
    let mut targets = vec![
        mesh_cli::file_sd::Target::component(identity_admin, "mesh-identity"),
        mesh_cli::file_sd::Target::component(controller_admin, "mesh-controller"),
    ];
    targets.extend(
        [&client, &web, &api1, &api2]
            .map(|w| mesh_cli::file_sd::Target::proxy(w.admin, NS, w.sa, w.name)),
    );
    let targets_file = mesh_cli::file_sd::write(&dir, &targets)?;
    let t = targets_file.display();
    println!("  see the traffic while it runs (another terminal):");
    println!("    mesh tap deploy/api -n {NS} --targets {t}");
    println!("    mesh top deploy/web -n {NS} --targets {t}");
    println!("    mesh edges deploy -n {NS} --targets {t}");
    println!("    mesh dashboard --targets {t}    (then open http://127.0.0.1:8084)");
    warm_up(client.outbound, procs).await?;

    let results = report::drive(client.outbound, WEB_HOST, args.requests, args.concurrency).await;
    let client_metrics = admin_get(client.admin, "/metrics").await.map(|m| m.1);
    report::print(&results, client_metrics.as_deref());
    let web_metrics = admin_get(web.admin, "/metrics").await.map(|m| m.1);
    let retried = web_metrics
        .as_deref()
        .map(|m| report::sum(m, "mesh_retries_total"))
        .unwrap_or(0.0);
    println!(
        "  faults: api-2 answered 503 to {} requests on purpose; web's proxy retried {} times \
         (HTTPRoute api-retry), so the client saw {} failures",
        api2_app.failed.load(std::sync::atomic::Ordering::Relaxed),
        retried,
        results.failed
    );
    println!();
    println!("logs, certificates and manifests: {}", dir.display());
    println!("prometheus targets (file_sd): {}", targets_file.display());
    if results.ok == 0 {
        bail!("no request succeeded; see the logs in {}", logs.display());
    }
    Ok(())
}

fn write_manifests(
    dir: &Path,
    web: &Workload,
    web_app: SocketAddr,
    apis: &[(&Workload, SocketAddr)],
) -> anyhow::Result<()> {
    let service = |name: &str| {
        format!(
            "apiVersion: v1\nkind: Service\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  selector:\n    app: {name}\n  ports:\n  - name: http\n    port: 80\n    targetPort: http\n    appProtocol: http\n"
        )
    };
    let entry = |w: &Workload, app: &str, addr: SocketAddr| {
        format!(
            "apiVersion: policy.mesh.dev/v1alpha1\nkind: WorkloadEntry\nmetadata:\n  name: {}\n  namespace: {NS}\n  labels:\n    app: {app}\nspec:\n  address: 127.0.0.1\n  workload: {app}\n  serviceAccount: {}\n  proxyInboundAddress: \"{}\"\n  ports:\n    http: {}\n",
            w.name,
            w.sa,
            w.inbound,
            addr.port()
        )
    };
    // Retries on 5xx for calls to `api`, within the default budget.
    let retry_route = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata:\n  name: api-retry\n  namespace: {NS}\n  annotations:\n    retry.mesh.dev/http: 5xx\nspec:\n  parentRefs:\n  - kind: Service\n    name: api\n    port: 80\n  rules:\n  - backendRefs:\n    - name: api\n      port: 80\n    timeouts:\n      request: 2s\n    retry:\n      attempts: 2\n      backoff: 5ms\n"
    );
    let mut docs = vec![
        service("web"),
        service("api"),
        retry_route,
        entry(web, "web", web_app),
    ];
    for (w, addr) in apis {
        docs.push(entry(w, "api", *addr));
    }
    std::fs::write(dir.join("demo.yaml"), docs.join("---\n"))
        .context("writing the demo manifests")?;
    Ok(())
}

/// Waits until a control-plane component's admin server answers `/ready`.
async fn wait_admin_ready(admin: SocketAddr, name: &str, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if admin_get(admin, "/ready").await.map(|r| r.0) == Some(200) {
            return Ok(());
        }
        procs.check()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("{name} not ready within 20 s (see its log)")
}

async fn wait_ready(w: &Workload, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if admin_get(w.admin, "/ready").await.map(|r| r.0) == Some(200) {
            return Ok(());
        }
        procs.check()?;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("proxy {} not ready within 20 s (see its log)", w.name)
}

/// Waits until the first request makes it end to end (discovery warm-up).
async fn warm_up(proxy: SocketAddr, procs: &mut Procs) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if report::one(proxy, WEB_HOST).await.is_ok_and(|r| r.0 == 200) {
            return Ok(());
        }
        procs.check()?;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("no request made it through the mesh within 10 s ({API_HOST} via {WEB_HOST})")
}
