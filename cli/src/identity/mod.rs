//! `mesh identity ...`: creates the certificate authority files used by
//! `mesh-identity` in local mode (trust anchor, issuer, token key), and rotates the
//! trust anchor of a running local mesh ([`rotate`]).

mod fleet;
mod rotate;
pub mod tap_credential;

pub use fleet::pem_fingerprints;

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Subcommand;
use mesh_identity::{files, spiffe};

/// `mesh identity` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    command: IdentityCommand,
}

#[derive(Debug, Subcommand)]
enum IdentityCommand {
    /// Create DIR with a new trust anchor, issuer and token key.
    Init {
        /// The identity directory to create.
        dir: PathBuf,
        /// Trust domain of the mesh's SPIFFE IDs.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Replace an existing trust anchor (invalidates every issued certificate).
        #[arg(long)]
        force: bool,
    },
    /// Replace the trust anchor of a running local mesh, step by step, with no restart:
    /// add the new anchor, switch to an issuer it signs (every workload renews), remove
    /// the old anchor.
    Rotate(rotate::Args),
    /// Issue a short-lived certificate for the tap identity
    /// (spiffe://<td>/ns/mesh-system/sa/mesh-tap) into OUT/tap.crt and OUT/tap.key,
    /// for `mesh tap`, `mesh top` and `mesh dashboard`.
    TapCredential {
        /// The identity directory (its issuer signs the certificate).
        #[arg(long)]
        dir: PathBuf,
        /// Where to write tap.crt and tap.key.
        #[arg(long)]
        out: PathBuf,
        /// Trust domain of the mesh's SPIFFE IDs.
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
        /// Lifetime in hours.
        #[arg(long, default_value_t = 8)]
        hours: u64,
    },
}

/// Runs `mesh identity ...`.
pub fn run(args: Args) -> Result<()> {
    match args.command {
        IdentityCommand::Init {
            dir,
            trust_domain,
            force,
        } => init(&dir, &trust_domain, force),
        IdentityCommand::Rotate(args) => rotate::run(args),
        IdentityCommand::TapCredential {
            dir,
            out,
            trust_domain,
            hours,
        } => {
            spiffe::check_segment("trust domain", &trust_domain).context("--trust-domain")?;
            if !(1..=24 * 30).contains(&hours) {
                anyhow::bail!("--hours must be from 1 to 720");
            }
            tap_credential::write(
                &dir,
                &out,
                &trust_domain,
                std::time::Duration::from_secs(hours * 3600),
            )?;
            println!(
                "wrote {} and {} ({}, {hours} h)",
                out.join("tap.crt").display(),
                out.join("tap.key").display(),
                tap_credential::tap_identity(&trust_domain)
            );
            Ok(())
        }
    }
}

fn init(dir: &std::path::Path, trust_domain: &str, force: bool) -> Result<()> {
    spiffe::check_segment("trust domain", trust_domain).context("--trust-domain")?;
    files::init_dir(dir, trust_domain, force)
        .with_context(|| format!("initialising {}", dir.display()))?;
    println!(
        "wrote identity directory {} (trust domain {trust_domain}):",
        dir.display()
    );
    for name in [
        files::TRUST_ANCHORS,
        files::ANCHOR_KEY,
        files::ISSUER_CERT,
        files::ISSUER_KEY,
        files::TOKEN_KEY,
    ] {
        println!("  {}", dir.join(name).display());
    }
    println!(
        "start the CA with: mesh-identity --dir {}\nmint tokens with:  mesh token --key {} --namespace NS --service-account SA",
        dir.display(),
        dir.join(files::TOKEN_KEY).display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_creates_a_loadable_dir_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("id");
        init(&dir, "example.org", false).unwrap();
        files::load_issuer(&dir).unwrap();
        let err = init(&dir, "example.org", false).unwrap_err();
        assert!(format!("{err:#}").contains("--force"), "{err:#}");
        init(&dir, "example.org", true).unwrap();
        assert!(init(&tmp.path().join("bad"), "a/b", false).is_err());
    }
}
