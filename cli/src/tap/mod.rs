//! `mesh tap`: a live line per request through the proxies of a resource,
//! from each proxy's Tap API (mutual TLS with the tap identity's certificate).

pub mod client;
pub mod render;
pub mod select;

use std::time::Duration;

pub use client::Source;

/// `mesh tap` flags.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Resources: deploy/NAME, sts/NAME, pod/NAME and ns/NAME tap the requests through
those proxies (both directions); svc/NAME taps every proxy's outbound requests to
the Service. Events are sent when a response ends; header values and bodies are
never sent. Each proxy sends at most --max-rps events a second (it says how many
it dropped).

Proxies are found in --targets FILE (`mesh demo` writes DIR/prometheus-targets.json,
and the tap certificate in DIR/tap/), or among the injected pods of the current
kubeconfig's cluster (dialled at their pod IPs on 4191; give --tap-cert, --tap-key
and --trust-anchors).")]
pub struct Args {
    /// The resource and filters.
    #[command(flatten)]
    pub target: Target,
    /// Only requests to this authority (host:port, host, or a host prefix).
    #[arg(long)]
    pub authority: Option<String>,
    /// Stop after this many events (0: until interrupted).
    #[arg(long, default_value_t = 0)]
    pub max: u32,
    /// Events per second per proxy at most.
    #[arg(long, default_value_t = 100)]
    pub max_rps: u32,
    /// Output format.
    #[arg(short = 'o', long, default_value = "text", value_parser = ["text", "json"])]
    pub output: String,
    /// Where the proxies are, and the tap credential.
    #[command(flatten)]
    pub source: Source,
}

/// What to tap: a resource and filters (`mesh tap` and `mesh top`).
#[derive(Debug, clap::Args)]
pub struct Target {
    /// KIND/NAME: deploy, sts, pod, svc or ns.
    pub resource: String,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Only the resource's outbound requests to deploy/NAME or svc/NAME.
    #[arg(long)]
    pub to: Option<String>,
    /// Only requests whose path starts with this.
    #[arg(long)]
    pub path: Option<String>,
    /// Only requests with this method.
    #[arg(long)]
    pub method: Option<String>,
}

impl Target {
    /// The plan of a tap of this target (and `authority`, if given).
    pub fn plan(&self, authority: Option<String>) -> anyhow::Result<select::Plan> {
        select::plan(&select::Spec {
            resource: self.resource.clone(),
            namespace: self.namespace.clone(),
            to: self.to.clone(),
            path: self.path.clone(),
            method: self.method.clone(),
            authority,
        })
    }
}

/// The proxies of the plan, tapped: the channels of [`client::open`].
pub async fn start(
    plan: &select::Plan,
    source: &Source,
    max_rps: u32,
    limit: u32,
) -> anyhow::Result<(
    tokio::sync::mpsc::Receiver<client::Seen>,
    tokio::sync::mpsc::Receiver<client::Ended>,
    usize,
)> {
    let creds = source.credentials()?;
    let proxies: Vec<_> = source
        .proxies(None)
        .await?
        .into_iter()
        .filter(|(_, labels)| plan.selects(labels))
        .collect();
    if proxies.is_empty() {
        anyhow::bail!("no meshed proxies for {}", plan.describe());
    }
    let (events, ends) = client::open(&creds, &proxies, &plan.filter, max_rps, limit)?;
    Ok((events, ends, proxies.len()))
}

/// Runs `mesh tap`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let plan = args.target.plan(args.authority.clone())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (mut events, mut ends, n) = start(&plan, &args.source, args.max_rps, args.max).await?;
        let mut seen = 0u32;
        let mut open = n;
        let mut failures = Vec::new();
        let interrupted = tokio::signal::ctrl_c();
        tokio::pin!(interrupted);
        loop {
            tokio::select! {
                Some((proxy, e)) = events.recv() => {
                    print(&args.output, &proxy, &e);
                    seen += 1;
                    if args.max > 0 && seen >= args.max {
                        return Ok(());
                    }
                }
                Some((proxy, r)) = ends.recv() => {
                    open -= 1;
                    if let Err(e) = r {
                        eprintln!("tap: {proxy}: {e}");
                        failures.push(e);
                    }
                    if open == 0 {
                        // Each proxy's stream ended: drain what is queued.
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        while let Ok((proxy, e)) = events.try_recv() {
                            if args.max > 0 && seen >= args.max {
                                break;
                            }
                            print(&args.output, &proxy, &e);
                            seen += 1;
                        }
                        if failures.len() == n {
                            anyhow::bail!("no proxy could be tapped: {}", failures.join("; "));
                        }
                        return Ok(());
                    }
                }
                _ = &mut interrupted => return Ok(()),
            }
        }
    })
}

fn print(output: &str, proxy: &str, e: &mesh_proto::tap::TapEvent) {
    match output {
        "json" => println!("{}", render::to_json(proxy, e)),
        _ => println!("{}", render::to_text(proxy, e)),
    }
}
