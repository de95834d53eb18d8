//! `mesh identity rotate`: replaces the trust anchor of a running local mesh in three
//! steps, each verified before the next, with no restart and no failed request:
//!
//! 1. `add-anchor`: a new anchor (`next-anchor.pem`, its key `next-anchor.key`) joins
//!    the bundle; waits until mesh-identity and every workload trust it.
//! 2. `switch-issuer`: a new issuer signed by the new anchor replaces `issuer.crt` and
//!    `issuer.key`; once mesh-identity signs with it, the bundle asks every workload to
//!    renew (spread over `--spread`); waits until every leaf comes from the new issuer.
//! 3. `remove-old`: only the anchor that signed the issuer stays in the bundle (its key
//!    becomes `anchor.key`); waits until no workload trusts the old ones.
//!
//! Each step checks its precondition first (step 2: every workload trusts the new
//! anchor; step 3: every leaf comes from the current issuer) and refuses with the names
//! of the workloads that are not there yet, unless `--force`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context, Result};
use mesh_identity::{ca, files};
use mesh_proto::workload::renewal_directive;

use super::fleet::{pem_fingerprints, Fleet, Member};

/// The new anchor while a rotation is under way.
pub const NEXT_ANCHOR: &str = "next-anchor.pem";
/// Its key.
pub const NEXT_ANCHOR_KEY: &str = "next-anchor.key";

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
    /// The identity directory mesh-identity and the proxies read.
    #[arg(long)]
    pub dir: PathBuf,
    /// The Prometheus file-SD targets file listing the proxies, the controller and
    /// mesh-identity (`mesh demo` writes DIR/prometheus-targets.json).
    #[arg(long)]
    pub targets: PathBuf,
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

async fn rotate(args: &Args) -> Result<()> {
    let targets = crate::file_sd::read(&args.targets)?;
    let fleet = Fleet::new(&targets);
    if fleet.len() == 0 {
        bail!(
            "{} lists no proxy and no controller: nothing would be checked",
            args.targets.display()
        );
    }
    let dir = Dir(args.dir.clone());
    let steps: &[Step] = match args.step {
        Step::All => &[Step::AddAnchor, Step::SwitchIssuer, Step::RemoveOld],
        one => std::slice::from_ref(match one {
            Step::AddAnchor => &Step::AddAnchor,
            Step::SwitchIssuer => &Step::SwitchIssuer,
            _ => &Step::RemoveOld,
        }),
    };
    let all = Instant::now();
    for step in steps {
        let started = Instant::now();
        let done = match step {
            Step::AddAnchor => add_anchor(&dir, &fleet, args).await?,
            Step::SwitchIssuer => switch_issuer(&dir, &fleet, args).await?,
            Step::RemoveOld | Step::All => remove_old(&dir, &fleet, args).await?,
        };
        println!("{done} ({:.1} s)", started.elapsed().as_secs_f64());
    }
    if args.step == Step::All {
        println!("rotation complete in {:.1} s", all.elapsed().as_secs_f64());
    }
    Ok(())
}

/// The identity directory's files.
struct Dir(PathBuf);

impl Dir {
    fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    fn read(&self, name: &str) -> Result<String> {
        let path = self.path(name);
        std::fs::read_to_string(&path).with_context(|| format!("cannot read {}", path.display()))
    }

    fn write(&self, name: &str, text: &str, mode: u32) -> Result<()> {
        let path = self.path(name);
        write_atomic(&path, text, mode).with_context(|| format!("cannot write {}", path.display()))
    }

    /// The bundle's anchors as PEM blocks, in order.
    fn anchors(&self) -> Result<Vec<String>> {
        let pem = self.read(files::TRUST_ANCHORS)?;
        let blocks = pem_blocks(&pem);
        if blocks.is_empty() {
            bail!(
                "{} holds no certificate",
                self.path(files::TRUST_ANCHORS).display()
            );
        }
        Ok(blocks)
    }

    /// Writes the bundle: `anchors`, after an optional directive line.
    fn write_bundle(&self, anchors: &[String], directive: Option<String>) -> Result<()> {
        let mut text = String::new();
        if let Some(d) = directive {
            text.push_str(&d);
            text.push('\n');
        }
        for a in anchors {
            text.push_str(a);
        }
        self.write(files::TRUST_ANCHORS, &text, 0o644)
    }
}

/// Writes `text` to `path` through a temporary file and a rename.
fn write_atomic(path: &Path, text: &str, mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("rotate-tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)
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

fn fp_of(pem: &str) -> String {
    pem_fingerprints(pem).into_iter().next().unwrap_or_default()
}

fn short(fp: &str) -> &str {
    &fp[..fp.len().min(16)]
}

/// Step 1.
async fn add_anchor(dir: &Dir, fleet: &Fleet, args: &Args) -> Result<String> {
    let next = match dir.read(NEXT_ANCHOR) {
        Ok(pem) => pem,
        Err(_) => {
            let (cert, key) = ca::generate_trust_anchor(&args.trust_domain)
                .context("generating the new anchor")?;
            dir.write(NEXT_ANCHOR_KEY, &key, 0o600)?;
            dir.write(NEXT_ANCHOR, &cert, 0o644)?;
            cert
        }
    };
    let next_fp = fp_of(&next);
    let mut anchors = dir.anchors()?;
    if !anchors.iter().any(|a| fp_of(a) == next_fp) {
        anchors.extend(pem_blocks(&next));
        dir.write_bundle(&anchors, None)?;
    }
    let bundle_id = bundle_id(&anchors)?;
    wait(
        fleet,
        args.timeout,
        "trust the new anchor",
        |members| lagging(members, |h| h.anchors.contains(&next_fp)),
        Some(&bundle_id),
        None,
    )
    .await?;
    Ok(format!(
        "step 1/3 add-anchor: new anchor sha256 {} trusted by mesh-identity and all {} workloads",
        short(&next_fp),
        fleet.len()
    ))
}

/// Step 2.
async fn switch_issuer(dir: &Dir, fleet: &Fleet, args: &Args) -> Result<String> {
    let next = dir.read(NEXT_ANCHOR).context(
        "no rotation under way (no next-anchor.pem): run `mesh identity rotate --step add-anchor` first",
    )?;
    let next_key = dir.read(NEXT_ANCHOR_KEY)?;
    let next_fp = fp_of(&next);
    let anchors = dir.anchors()?;
    if !anchors.iter().any(|a| fp_of(a) == next_fp) {
        bail!(
            "the new anchor {} is not in the bundle: run step add-anchor first",
            short(&next_fp)
        );
    }
    let members = fleet.read().await;
    let missing = lagging(&members, |h| h.anchors.contains(&next_fp));
    refuse_unless(
        args.force,
        "step 2 (switch-issuer)",
        "do not trust the new anchor yet",
        &missing,
    )?;

    let (cert, key) = ca::generate_issuer(&next, &next_key, &args.trust_domain)
        .context("generating the new issuer")?;
    // Key first: a reader that sees the new certificate with the old key refuses the
    // pair and tries again; mesh-identity also waits for the files to settle.
    dir.write(files::ISSUER_KEY, &key, 0o600)?;
    dir.write(files::ISSUER_CERT, &cert, 0o644)?;
    let issuer_fp = fp_of(&cert);
    let expiry = issuer_expiry(&cert)?;
    if fleet.has_identity() {
        wait(fleet, args.timeout, "", |_| Vec::new(), None, Some(expiry)).await?;
    }
    // Every certificate installed before now is renewed. Asked again while some
    // workload still holds an old one (a renewal may have raced the switch).
    let renewed =
        |members: &[Member]| lagging(members, |h| h.leaf_issuer.as_deref() == Some(&issuer_fp));
    let deadline = Instant::now() + args.timeout;
    loop {
        let before = SystemTime::now() + Duration::from_secs(1);
        dir.write_bundle(&anchors, Some(renewal_directive(before, args.spread)))?;
        let round = args.spread + Duration::from_secs(5);
        let left = deadline.saturating_duration_since(Instant::now());
        match wait(
            fleet,
            round.min(left),
            "renew from the new issuer",
            renewed,
            None,
            None,
        )
        .await
        {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => continue,
        }
    }
    Ok(format!(
        "step 2/3 switch-issuer: issuer sha256 {} signed by the new anchor; all {} workloads renewed their certificates from it",
        short(&issuer_fp),
        fleet.len()
    ))
}

/// Step 3.
async fn remove_old(dir: &Dir, fleet: &Fleet, args: &Args) -> Result<String> {
    let issuer = dir.read(files::ISSUER_CERT)?;
    let issuer_fp = fp_of(&issuer);
    let anchors = dir.anchors()?;
    // The anchor that signed the issuer stays; the others go.
    let keep: Vec<String> = anchors
        .iter()
        .filter(|a| ca::is_signed_by(&issuer, a))
        .cloned()
        .collect();
    if keep.is_empty() {
        bail!(
            "no anchor of the bundle signed {}: refusing to remove anchors",
            dir.path(files::ISSUER_CERT).display()
        );
    }
    let members = fleet.read().await;
    let missing = lagging(&members, |h| h.leaf_issuer.as_deref() == Some(&issuer_fp));
    refuse_unless(
        args.force,
        "step 3 (remove-old)",
        "still hold a certificate from an old issuer",
        &missing,
    )?;
    let removed: BTreeSet<String> = anchors
        .iter()
        .map(|a| fp_of(a))
        .filter(|fp| !keep.iter().any(|k| fp_of(k) == *fp))
        .collect();
    dir.write_bundle(&keep, None)?;
    // The new anchor's key becomes the directory's anchor key.
    if let Ok(next) = dir.read(NEXT_ANCHOR) {
        if keep.iter().any(|k| fp_of(k) == fp_of(&next)) {
            std::fs::rename(dir.path(NEXT_ANCHOR_KEY), dir.path(files::ANCHOR_KEY))
                .context("moving next-anchor.key to anchor.key")?;
            std::fs::remove_file(dir.path(NEXT_ANCHOR)).context("removing next-anchor.pem")?;
        }
    }
    let bundle_id = bundle_id(&keep)?;
    wait(
        fleet,
        args.timeout,
        "drop the old anchors",
        |members| lagging(members, |h| h.anchors.is_disjoint(&removed)),
        Some(&bundle_id),
        None,
    )
    .await?;
    let names: Vec<&str> = removed.iter().map(|fp| short(fp)).collect();
    Ok(format!(
        "step 3/3 remove-old: anchor(s) sha256 {} removed from the bundle of mesh-identity and all {} workloads",
        names.join(", "),
        fleet.len()
    ))
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
fn lagging(members: &[Member], ok: impl Fn(&super::fleet::Holding) -> bool) -> Vec<String> {
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

/// Waits until no member lags and mesh-identity reports `bundle` / `issuer_expiry`
/// (when given), at most `timeout`; the error names who is not there yet.
async fn wait(
    fleet: &Fleet,
    timeout: Duration,
    what: &str,
    lag: impl Fn(&[Member]) -> Vec<String>,
    bundle: Option<&str>,
    issuer_expiry: Option<u64>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let members = fleet.read().await;
        let mut late = lag(&members);
        let id = fleet.identity().await;
        match (&id, bundle, issuer_expiry) {
            (Err(e), Some(_), _) | (Err(e), _, Some(_)) => {
                late.push(format!("mesh-identity (unreachable: {e})"))
            }
            (Ok(s), Some(b), _) if fleet.has_identity() && s.bundle.as_deref() != Some(b) => {
                late.push("mesh-identity (bundle not reloaded yet)".into())
            }
            (Ok(s), _, Some(e)) if fleet.has_identity() && s.issuer_expiry != Some(e) => {
                late.push("mesh-identity (issuer not reloaded yet)".into())
            }
            _ => {}
        }
        if late.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let what = if what.is_empty() {
                "take the change"
            } else {
                what
            };
            bail!(
                "timed out after {timeout:?}: {} of the workloads did not {what}: {}",
                late.len(),
                late.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests;
