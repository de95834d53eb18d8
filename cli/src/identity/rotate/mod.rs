//! `mesh identity rotate`: replaces the trust anchor of a running mesh — a local one
//! (`--dir`, `--targets`) or a cluster (`--kubernetes`) — in three steps, each verified
//! before the next, with no restart and no failed request:
//!
//! 1. `add-anchor`: a new anchor (`next-anchor.pem`, its key `next-anchor.key`) joins
//!    the bundle; waits until mesh-identity and every workload trust it.
//! 2. `switch-issuer`: a new issuer signed by the new anchor replaces the issuer; once
//!    mesh-identity signs with it, the bundle asks every workload to renew (spread over
//!    `--spread`); waits until every leaf comes from the new issuer.
//! 3. `remove-old`: only the anchor that signed the issuer stays in the bundle (its key
//!    becomes `anchor.key`); waits until no workload trusts the old ones.
//!
//! Each step checks its precondition first (step 2: every workload trusts the new
//! anchor; step 3: every leaf comes from the current issuer) and refuses with the names
//! of the workloads that are not there yet, unless `--force`.

mod store;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use mesh_identity::ca;
use mesh_proto::workload::renewal_directive;

use super::fleet::{pem_fingerprints, Fleet, Holding, Member};
use store::Store;

/// Which steps to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Step {
    /// All three, in order.
    All,
    /// 1: add a new anchor to the bundle.
    AddAnchor,
    /// 2: switch to an issuer signed by the new anchor, renew every leaf.
    SwitchIssuer,
    /// 3: remove the old anchors from the bundle.
    RemoveOld,
}

/// `mesh identity rotate` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The identity directory mesh-identity and the proxies read (local mesh).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub dir: Option<PathBuf>,
    /// The Prometheus file-SD targets file listing the proxies, the controller and
    /// mesh-identity (`mesh demo` writes DIR/prometheus-targets.json) (local mesh).
    #[arg(
        long,
        required_unless_present = "kubernetes",
        conflicts_with = "kubernetes"
    )]
    pub targets: Option<PathBuf>,
    /// Rotate the cluster of the current kubeconfig: the mesh-identity-trust-roots
    /// ConfigMap and mesh-identity-issuer Secret; proxies read through the API server.
    #[arg(long)]
    pub kubernetes: bool,
    /// The control-plane namespace (with --kubernetes).
    #[arg(long, default_value = "mesh-system")]
    pub namespace: String,
    /// Where the new anchor and its key are kept between steps, and the anchor after the
    /// rotation (with --kubernetes; keep it safe, it never enters the cluster).
    #[arg(long, default_value = "mesh-rotation")]
    pub state_dir: PathBuf,
    /// Which step to run.
    #[arg(long, value_enum, default_value = "all")]
    pub step: Step,
    /// How long each step waits for the mesh.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Over how long the workloads' renewals are spread in step 2.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub spread: Duration,
    /// The trust domain of the new anchor and issuer.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Run a step even when its precondition does not hold.
    #[arg(long)]
    pub force: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    mesh_identity::duration::parse(s).map_err(|e| e.to_string())
}

/// Runs the steps asked for.
pub fn run(args: Args) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    rt.block_on(rotate(&args))
}

/// A rotation's store, fleet and settings.
struct Rotation<'a> {
    store: Store,
    fleet: Fleet,
    args: &'a Args,
    /// Pause between two reads of the fleet.
    poll: Duration,
}

async fn rotate(args: &Args) -> Result<()> {
    let r = match (&args.dir, &args.targets) {
        (Some(dir), Some(targets)) => {
            let targets = crate::file_sd::read(targets)?;
            let fleet = Fleet::local(&targets);
            if matches!(&fleet, Fleet::Local { members, .. } if members.is_empty()) {
                bail!(
                    "the targets file lists no proxy and no controller: nothing would be checked"
                );
            }
            Rotation {
                store: Store::Local(dir.clone()),
                fleet,
                args,
                poll: Duration::from_millis(250),
            }
        }
        _ => {
            let client = crate::kube_pods::client()
                .await
                .map_err(|e| anyhow::anyhow!("connecting to the Kubernetes API: {e}"))?;
            Rotation {
                store: Store::Kube {
                    client: client.clone(),
                    namespace: args.namespace.clone(),
                    state: args.state_dir.clone(),
                },
                fleet: Fleet::Kube {
                    client,
                    namespace: args.namespace.clone(),
                },
                args,
                poll: Duration::from_secs(1),
            }
        }
    };
    let steps = match args.step {
        Step::All => vec![Step::AddAnchor, Step::SwitchIssuer, Step::RemoveOld],
        one => vec![one],
    };
    let all = Instant::now();
    for step in steps {
        let started = Instant::now();
        let done = match step {
            Step::AddAnchor => r.add_anchor().await?,
            Step::SwitchIssuer => r.switch_issuer().await?,
            Step::RemoveOld | Step::All => r.remove_old().await?,
        };
        println!("{done} ({:.1} s)", started.elapsed().as_secs_f64());
    }
    if args.step == Step::All {
        println!("rotation complete in {:.1} s", all.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The PEM certificate blocks of `pem`, each ending in a newline.
fn pem_blocks(pem: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current: Option<String> = None;
    for line in pem.lines() {
        let line = line.trim_end();
        if line == "-----BEGIN CERTIFICATE-----" {
            current = Some(String::new());
        }
        if let Some(block) = current.as_mut() {
            block.push_str(line);
            block.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            out.extend(current.take());
        }
    }
    out
}

/// A bundle's text: an optional directive line, then the anchors.
fn bundle_text(anchors: &[String], directive: Option<String>) -> String {
    let mut text = directive.map(|d| d + "\n").unwrap_or_default();
    text.extend(anchors.iter().map(String::as_str));
    text
}

fn fp_of(pem: &str) -> String {
    pem_fingerprints(pem).into_iter().next().unwrap_or_default()
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

impl Rotation<'_> {
    /// The bundle's anchors as PEM blocks, in order.
    async fn anchors(&self) -> Result<Vec<String>> {
        let blocks = pem_blocks(&self.store.bundle().await?);
        if blocks.is_empty() {
            bail!("{} holds no certificate", self.store.bundle_name());
        }
        Ok(blocks)
    }

    /// Step 1.
    async fn add_anchor(&self) -> Result<String> {
        let next = match self.store.next_anchor() {
            Some((cert, _)) => cert,
            None => {
                let (cert, key) = ca::generate_trust_anchor(&self.args.trust_domain)
                    .context("generating the new anchor")?;
                self.store.save_next_anchor(&cert, &key)?;
                cert
            }
        };
        let next_fp = fp_of(&next);
        let mut anchors = self.anchors().await?;
        if !anchors.iter().any(|a| fp_of(a) == next_fp) {
            anchors.extend(pem_blocks(&next));
            self.store
                .write_bundle(&bundle_text(&anchors, None))
                .await?;
        }
        let id = bundle_id(&anchors)?;
        let n = self
            .wait(
                "trust the new anchor",
                |h| h.anchors.contains(&next_fp),
                Some(&id),
                None,
                self.args.timeout,
            )
            .await?;
        Ok(format!(
            "step 1/3 add-anchor: new anchor sha256 {} trusted by mesh-identity and all {n} workloads",
            short(&next_fp)
        ))
    }

    /// Step 2.
    async fn switch_issuer(&self) -> Result<String> {
        let (next, next_key) = self.store.next_anchor().context(
            "no rotation under way (no next-anchor.pem): run `mesh identity rotate --step add-anchor` first",
        )?;
        let next_fp = fp_of(&next);
        let anchors = self.anchors().await?;
        if !anchors.iter().any(|a| fp_of(a) == next_fp) {
            bail!(
                "the new anchor {} is not in {}: run step add-anchor first",
                short(&next_fp),
                self.store.bundle_name()
            );
        }
        let members = self.read().await?;
        let missing = lagging(&members, |h| h.anchors.contains(&next_fp));
        refuse_unless(
            self.args.force,
            "step 2 (switch-issuer)",
            "do not trust the new anchor yet",
            &missing,
        )?;

        let (cert, key) = ca::generate_issuer(&next, &next_key, &self.args.trust_domain)
            .context("generating the new issuer")?;
        self.store
            .write_issuer(&cert, &key, &bundle_text(&anchors, None))
            .await?;
        let issuer_fp = fp_of(&cert);
        let expiry = issuer_expiry(&cert)?;
        self.wait(
            "sign with the new issuer",
            |_| true,
            None,
            Some(expiry),
            self.args.timeout,
        )
        .await?;
        // Every certificate installed before now is renewed; asked again while some
        // workload still holds an old one (a renewal may have raced the switch).
        let deadline = Instant::now() + self.args.timeout;
        let n = loop {
            let before = SystemTime::now() + Duration::from_secs(1);
            let directive = renewal_directive(before, self.args.spread);
            self.store
                .write_bundle(&bundle_text(&anchors, Some(directive)))
                .await?;
            // Long enough for the bundle to arrive (a kubelet refreshes volumes about
            // once a minute) and the spread renewals to happen.
            let round = self.args.spread + self.poll * 20;
            let left = deadline.saturating_duration_since(Instant::now());
            let renewed = |h: &Holding| h.leaf_issuer.as_deref() == Some(issuer_fp.as_str());
            match self
                .wait(
                    "renew from the new issuer",
                    renewed,
                    None,
                    None,
                    round.min(left),
                )
                .await
            {
                Ok(n) => break n,
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => continue,
            }
        };
        Ok(format!(
            "step 2/3 switch-issuer: issuer sha256 {} signed by the new anchor; all {n} workloads renewed their certificates from it",
            short(&issuer_fp)
        ))
    }

    /// Step 3.
    async fn remove_old(&self) -> Result<String> {
        let issuer = self.store.issuer_cert().await?;
        let issuer_fp = fp_of(&issuer);
        let anchors = self.anchors().await?;
        // The anchor that signed the issuer stays; the others go.
        let keep: Vec<String> = anchors
            .iter()
            .filter(|a| ca::is_signed_by(&issuer, a))
            .cloned()
            .collect();
        if keep.is_empty() {
            bail!(
                "no anchor of {} signed the issuer in force: refusing to remove anchors",
                self.store.bundle_name()
            );
        }
        let members = self.read().await?;
        let missing = lagging(&members, |h| h.leaf_issuer.as_deref() == Some(&issuer_fp));
        refuse_unless(
            self.args.force,
            "step 3 (remove-old)",
            "still hold a certificate from an old issuer",
            &missing,
        )?;
        let removed: BTreeSet<String> = anchors
            .iter()
            .map(|a| fp_of(a))
            .filter(|fp| !keep.iter().any(|k| fp_of(k) == *fp))
            .collect();
        let text = bundle_text(&keep, None);
        self.store.write_bundle(&text).await?;
        if let Store::Kube { .. } = self.store {
            // The Secret's copy of the anchors follows.
            self.store
                .write_issuer(&issuer, &self.issuer_key().await?, &text)
                .await?;
        }
        let kept_key = match self.store.next_anchor() {
            Some((next, _)) if keep.iter().any(|k| fp_of(k) == fp_of(&next)) => {
                Some(self.store.finish()?)
            }
            _ => None,
        };
        let id = bundle_id(&keep)?;
        let n = self
            .wait(
                "drop the old anchors",
                |h| h.anchors.is_disjoint(&removed),
                Some(&id),
                None,
                self.args.timeout,
            )
            .await?;
        let names: Vec<&str> = removed.iter().map(|fp| short(fp)).collect();
        let key = kept_key.map_or_else(String::new, |k| format!("; the new anchor's key is {k}"));
        Ok(format!(
            "step 3/3 remove-old: anchor(s) sha256 {} removed from the bundle of mesh-identity and all {n} workloads{key}",
            if names.is_empty() { "(none)".to_string() } else { names.join(", ") }
        ))
    }

    /// The issuer key in the Secret (Kubernetes), to rewrite the Secret unchanged.
    async fn issuer_key(&self) -> Result<String> {
        let Store::Kube {
            client, namespace, ..
        } = &self.store
        else {
            bail!("not a cluster");
        };
        let api: kube::Api<k8s_openapi::api::core::v1::Secret> =
            kube::Api::namespaced(client.clone(), namespace);
        let secret = api.get(crate::install::identity::ISSUER_SECRET).await?;
        let key = secret
            .data
            .and_then(|d| d.get("tls.key").cloned())
            .context("the issuer Secret has no tls.key")?;
        String::from_utf8(key.0).context("tls.key is not text")
    }

    async fn read(&self) -> Result<Vec<Member>> {
        self.fleet
            .read()
            .await
            .map_err(|e| anyhow::anyhow!("listing the workloads: {e}"))
    }

    /// Waits until every workload satisfies `ok` and every mesh-identity replica reports
    /// `bundle` / `issuer_expiry` (when given), at most `timeout`; returns how many
    /// workloads were checked. The error names who is not there yet.
    async fn wait(
        &self,
        what: &str,
        ok: impl Fn(&Holding) -> bool,
        bundle: Option<&str>,
        issuer_expiry: Option<u64>,
        timeout: Duration,
    ) -> Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            let (count, mut late) = match self.fleet.read().await {
                Ok(members) => (members.len(), lagging(&members, &ok)),
                Err(e) => (0, vec![format!("the workloads (cannot list them: {e})")]),
            };
            if bundle.is_some() || issuer_expiry.is_some() {
                for replica in self.fleet.identity().await {
                    match replica {
                        Err(e) => late.push(e),
                        Ok(s) if bundle.is_some_and(|b| s.bundle.as_deref() != Some(b)) => {
                            late.push("mesh-identity (bundle not reloaded yet)".into())
                        }
                        Ok(s) if issuer_expiry.is_some_and(|e| s.issuer_expiry != Some(e)) => {
                            late.push("mesh-identity (issuer not reloaded yet)".into())
                        }
                        Ok(_) => {}
                    }
                }
            }
            if late.is_empty() {
                return Ok(count);
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?}: {} did not {what}: {}",
                    late.len(),
                    late.join(", ")
                );
            }
            tokio::time::sleep(self.poll).await;
        }
    }
}

fn bundle_id(anchors: &[String]) -> Result<String> {
    let bundle = mesh_proto::workload::Bundle::parse(&anchors.concat())
        .context("the bundle written does not parse")?;
    Ok(bundle.id())
}

fn issuer_expiry(cert_pem: &str) -> Result<u64> {
    use rustls::pki_types::pem::PemObject;
    let der = rustls::pki_types::CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .filter_map(Result::ok)
        .next()
        .context("the new issuer does not parse")?;
    let (_, x509) =
        x509_parser::parse_x509_certificate(&der).context("the new issuer does not parse")?;
    Ok(u64::try_from(x509.validity().not_after.timestamp()).unwrap_or(0))
}

/// The names of the members for which `ok` does not hold (or that cannot be read, with
/// why).
fn lagging(members: &[Member], ok: impl Fn(&Holding) -> bool) -> Vec<String> {
    members
        .iter()
        .filter_map(|m| match &m.state {
            Ok(h) if ok(h) => None,
            Ok(_) => Some(m.name.clone()),
            Err(e) => Some(format!("{} (unreachable: {e})", m.name)),
        })
        .collect()
}

fn refuse_unless(force: bool, step: &str, what: &str, names: &[String]) -> Result<()> {
    if names.is_empty() {
        return Ok(());
    }
    if force {
        eprintln!(
            "warning: --force: {step} runs although {} {what}",
            names.join(", ")
        );
        return Ok(());
    }
    bail!(
        "{step} refused: {} of the workloads {what}: {} (wait, or use --force)",
        names.len(),
        names.join(", ")
    )
}

#[cfg(test)]
mod tests;
