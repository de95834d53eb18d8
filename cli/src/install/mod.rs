//! `mesh install`: the Kubernetes control plane as one multi-document YAML stream for
//! `kubectl apply -f -`. Every object is a k8s-openapi value serialized with serde_yaml,
//! so the output is well-formed by construction; certificates are generated on the spot
//! (or the identity issuer is read from files). This file holds the flags and the order
//! of the documents; each group of objects has its own module.

mod control_plane;
mod crds;
pub mod identity;
pub(crate) mod meta;
mod rbac;
pub mod webhook;

use std::path::PathBuf;

use anyhow::Context;
use mesh_identity::spiffe;
use serde::Serialize;

pub use self::crds::crd_files;
use self::identity::IdentityMaterial;
use self::webhook::WebhookTls;

/// The control-plane namespace (DESIGN §2).
pub const NAMESPACE: &str = "mesh-system";
/// The Gateway API release whose CRDs users install next to ours (the version the
/// `gateway-api` crate's types are generated from; routes use its experimental channel).
pub const GATEWAY_API_VERSION: &str = "v1.5.1";

/// The command that installs the Gateway API CRDs of [`GATEWAY_API_VERSION`].
pub const GATEWAY_API_INSTALL: &str = "kubectl apply --server-side -f https://github.com/kubernetes-sigs/gateway-api/releases/download/v1.5.1/experimental-install.yaml";

/// `mesh install` arguments.
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    /// High availability: 3 replicas of each component spread over nodes (needs at least
    /// 3 schedulable nodes), PodDisruptionBudgets, and a webhook that fails closed.
    #[arg(long)]
    pub ha: bool,
    /// SPIFFE trust domain of the mesh's identities.
    #[arg(long, default_value = "cluster.local")]
    pub trust_domain: String,
    /// Registry (and path) the `mesh-controller`, `mesh-identity` and `mesh-proxy` images
    /// are pulled from (the injector's default proxy image has the same name).
    #[arg(long, default_value = "ghcr.io/mesh-dev")]
    pub image_registry: String,
    /// Tag of the control-plane and proxy images.
    #[arg(long, default_value = concat!("v", env!("CARGO_PKG_VERSION")))]
    pub image_tag: String,
    /// Render only the mesh's CustomResourceDefinitions.
    #[arg(long)]
    pub crds: bool,
    /// With `--crds`: write one `<crd name>.yaml` per CRD into DIR instead of stdout
    /// (`make manifests`).
    #[arg(long, value_name = "DIR", requires = "crds", hide = true)]
    pub output_dir: Option<PathBuf>,
    /// Trust anchors (PEM) of an existing PKI; with the issuer flags, replaces the
    /// anchor and issuer generated on the spot.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["identity_issuer_certificate_file", "identity_issuer_key_file"]
    )]
    pub identity_trust_anchors_file: Option<PathBuf>,
    /// Issuer certificate (PEM), signed by one of the trust anchors.
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["identity_trust_anchors_file", "identity_issuer_key_file"]
    )]
    pub identity_issuer_certificate_file: Option<PathBuf>,
    /// Issuer private key (PEM).
    #[arg(
        long,
        value_name = "FILE",
        requires_all = ["identity_trust_anchors_file", "identity_issuer_certificate_file"]
    )]
    pub identity_issuer_key_file: Option<PathBuf>,
}

/// The settings the rendering modules read, derived from [`Args`].
#[derive(Debug, Clone)]
pub(crate) struct Settings {
    /// High availability (see [`Args::ha`]).
    pub ha: bool,
    /// SPIFFE trust domain.
    pub trust_domain: String,
    /// `<registry>/controller:<tag>`.
    pub controller_image: String,
    /// `<registry>/identity:<tag>`.
    pub identity_image: String,
    /// `<registry>/proxy:<tag>`, handed to the injector.
    pub proxy_image: String,
}

impl Settings {
    fn from_args(args: &Args) -> anyhow::Result<Self> {
        spiffe::check_segment("trust domain", &args.trust_domain).context("--trust-domain")?;
        let registry = args.image_registry.trim_end_matches('/');
        anyhow::ensure!(!registry.is_empty(), "--image-registry must not be empty");
        anyhow::ensure!(
            !args.image_tag.is_empty() && !args.image_tag.contains([':', '/', '@']),
            "--image-tag {:?}: a tag has no ':', '/' or '@'",
            args.image_tag
        );
        let image = |name: &str| format!("{registry}/{name}:{}", args.image_tag);
        Ok(Self {
            ha: args.ha,
            trust_domain: args.trust_domain.clone(),
            controller_image: image("mesh-controller"),
            identity_image: image("mesh-identity"),
            proxy_image: image("mesh-proxy"),
        })
    }

    /// Replicas of each control-plane Deployment.
    pub fn replicas(&self) -> i32 {
        if self.ha {
            3
        } else {
            1
        }
    }
}

/// Runs `mesh install`: the YAML stream on stdout, or the CRD files with `--output-dir`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.output_dir {
        return crds::write_files(dir);
    }
    let text = render(&args)?;
    if args.identity_trust_anchors_file.is_none() && !args.crds {
        eprintln!(
            "mesh install: generated a new trust anchor whose private key is not kept; \
             to rotate the issuer later, supply your own with --identity-trust-anchors-file, \
             --identity-issuer-certificate-file and --identity-issuer-key-file"
        );
    }
    std::io::Write::write_all(&mut std::io::stdout(), text.as_bytes())
        .context("writing standard output")
}

/// Renders the whole `mesh install` output: certificates are generated, or the supplied
/// issuer files are read and checked.
pub fn render(args: &Args) -> anyhow::Result<String> {
    let settings = Settings::from_args(args)?;
    if args.crds {
        return stream(&crds::documents()?);
    }
    let identity = match (
        &args.identity_trust_anchors_file,
        &args.identity_issuer_certificate_file,
        &args.identity_issuer_key_file,
    ) {
        (Some(anchors), Some(cert), Some(key)) => IdentityMaterial::from_files(anchors, cert, key)?,
        _ => IdentityMaterial::generate(&settings.trust_domain)?,
    };
    let webhook_tls = WebhookTls::generate()?;
    render_with(&settings, &identity, &webhook_tls)
}

/// Renders the control plane from settings and already checked certificate material.
fn render_with(
    settings: &Settings,
    identity: &IdentityMaterial,
    webhook_tls: &WebhookTls,
) -> anyhow::Result<String> {
    let components = control_plane::components(settings);
    let mut docs = vec![doc(&meta::namespace())?];
    docs.extend(crds::documents()?);
    for component in &components {
        docs.push(doc(&component.service_account())?);
    }
    docs.extend(rbac::documents()?);
    docs.push(doc(&identity.secret())?);
    docs.push(doc(&identity.config_map())?);
    docs.push(doc(&webhook_tls.secret())?);
    for component in &components {
        docs.push(doc(&component.service())?);
    }
    for component in &components {
        docs.push(doc(&component.deployment(settings))?);
    }
    if settings.ha {
        for component in &components {
            docs.push(doc(&component.disruption_budget())?);
        }
    }
    docs.push(doc(&webhook_tls.configuration(settings.ha))?);
    stream(&docs)
}

/// Converts one object to a YAML value (its `apiVersion` and `kind` included).
fn doc(object: &impl Serialize) -> anyhow::Result<serde_yaml::Value> {
    serde_yaml::to_value(object).context("serializing a manifest")
}

/// The header comment and the documents, separated by `---`.
fn stream(docs: &[serde_yaml::Value]) -> anyhow::Result<String> {
    let mut out = format!(
        "# The mesh control plane, rendered by `mesh install` for `kubectl apply -f -`.\n\
         # The Gateway API CRDs are not included; install them separately:\n\
         #   {GATEWAY_API_INSTALL}\n"
    );
    for doc in docs {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(doc).context("writing YAML")?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: Args,
    }

    fn parse(argv: &[&str]) -> Result<Args, clap::Error> {
        Cli::try_parse_from(std::iter::once("install").chain(argv.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn the_gateway_install_command_names_the_version() {
        assert!(GATEWAY_API_INSTALL.contains(&format!("/download/{GATEWAY_API_VERSION}/")));
    }

    #[test]
    fn images_follow_registry_and_tag() {
        let args = parse(&["--image-registry", "r.example/x/", "--image-tag", "t1"]).unwrap();
        let s = Settings::from_args(&args).unwrap();
        assert_eq!(s.controller_image, "r.example/x/mesh-controller:t1");
        assert_eq!(s.identity_image, "r.example/x/mesh-identity:t1");
        assert_eq!(s.proxy_image, "r.example/x/mesh-proxy:t1");
        let args = parse(&[]).unwrap();
        let s = Settings::from_args(&args).unwrap();
        let version = env!("CARGO_PKG_VERSION");
        assert_eq!(
            s.proxy_image,
            format!("ghcr.io/mesh-dev/mesh-proxy:v{version}")
        );
        // The same image `mesh inject` uses by default.
        assert_eq!(
            s.proxy_image,
            mesh_controller::inject::InjectConfig::default().proxy_image
        );
        assert_eq!(s.replicas(), 1);
    }

    #[test]
    fn bad_flags_are_refused() {
        let bad_td = parse(&["--trust-domain", "a/b"]).unwrap();
        assert!(Settings::from_args(&bad_td).is_err());
        let bad_tag = parse(&["--image-tag", "a:b"]).unwrap();
        assert!(Settings::from_args(&bad_tag).is_err());
        assert!(
            parse(&["--output-dir", "x"]).is_err(),
            "--output-dir needs --crds"
        );
        assert!(
            parse(&["--identity-trust-anchors-file", "a"]).is_err(),
            "the three identity files go together"
        );
        assert!(parse(&[
            "--identity-trust-anchors-file",
            "a",
            "--identity-issuer-certificate-file",
            "b",
            "--identity-issuer-key-file",
            "c"
        ])
        .is_ok());
    }
}
