//! `mesh token`: mints a local-mode workload token with the identity
//! service's token key, for a proxy to present to `Certify`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result};
use mesh_identity::token::{self, TokenKey};
use mesh_identity::{duration, spiffe};

/// `mesh token` arguments.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Namespace of the workload.
    #[arg(long)]
    namespace: String,
    /// Service account of the workload.
    #[arg(long)]
    service_account: String,
    /// Token key file (from `mesh identity init`).
    #[arg(long, env = "MESH_TOKEN_KEY", default_value = "./token.key")]
    key: PathBuf,
    /// How long the token is valid, e.g. 90m, 24h, 8760h.
    #[arg(long, default_value = "8760h", value_parser = parse_ttl)]
    ttl: Duration,
}

fn parse_ttl(s: &str) -> Result<Duration, duration::ParseDurationError> {
    duration::parse(s)
}

/// Runs `mesh token`: prints the token on stdout.
pub fn run(args: Args) -> Result<()> {
    println!("{}", mint(&args)?);
    Ok(())
}

fn mint(args: &Args) -> Result<String> {
    spiffe::check_segment("namespace", &args.namespace).context("--namespace")?;
    spiffe::check_segment("service account", &args.service_account).context("--service-account")?;
    let key = TokenKey::load(&args.key).with_context(|| {
        format!(
            "reading the token key (pass --key, set MESH_TOKEN_KEY, or create one with \
             `mesh identity init DIR`; tried {})",
            args.key.display()
        )
    })?;
    Ok(token::mint(
        &key,
        &args.namespace,
        &args.service_account,
        args.ttl,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn args(key: PathBuf, ns: &str) -> Args {
        Args {
            namespace: ns.to_string(),
            service_account: "web".to_string(),
            key,
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn mints_a_token_the_key_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("token.key");
        let key = TokenKey::generate().unwrap();
        key.write(&path).unwrap();
        let t = mint(&args(path.clone(), "default")).unwrap();
        let claims = token::verify(&key, &t, SystemTime::now()).unwrap();
        assert_eq!(claims.namespace, "default");
        assert_eq!(claims.service_account, "web");
        assert!(mint(&args(path, "a/b")).is_err());
    }

    #[test]
    fn missing_key_is_a_clear_error() {
        let err = mint(&args(PathBuf::from("/nonexistent/token.key"), "default")).unwrap_err();
        let msg = format!("{err:#}");
        assert!(msg.contains("/nonexistent/token.key"), "{msg}");
        assert!(msg.contains("MESH_TOKEN_KEY"), "{msg}");
    }
}
