//! `mesh`: the mesh command line. Each subcommand lives in its own module
//! with an `Args` struct and a `run` function; this file only dispatches.

mod demo;

mod token;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_cli::{authz, check, dashboard, edges, identity, inject, install, stat, tap, top};

/// The mesh command line.
#[derive(Debug, Parser)]
#[command(name = "mesh", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; add one variant and one module per new subcommand.
#[derive(Debug, Subcommand)]
enum Command {
    /// Render the Kubernetes control plane as YAML for `kubectl apply -f -`.
    Install(install::Args),
    /// Check the mesh installation (exits non-zero when a check fails).
    Check(check::Args),
    /// Manage the mesh's certificate authority files.
    Identity(identity::Args),
    /// Mint a local-mode workload token (printed on stdout).
    Token(token::Args),
    /// Run the whole mesh locally on loopback and drive traffic through it.
    Demo(demo::Args),
    /// Add the mesh proxy to the workloads in Kubernetes manifests (YAML on stdout).
    Inject(inject::Args),
    /// Remove the mesh proxy from injected Kubernetes manifests.
    Uninject(inject::UninjectArgs),
    /// Golden metrics per resource, from Prometheus or the proxies themselves.
    Stat(stat::Args),
    /// The authorization policies that apply to a workload, port by port.
    Authz(authz::Args),
    /// Watch the requests through a resource's proxies, live.
    Tap(tap::Args),
    /// The busiest paths through a resource's proxies, live (from tap).
    Top(top::Args),
    /// Who calls whom: client and server identities, mTLS, success rate, RPS.
    Edges(edges::Args),
    /// Serve a live dashboard: topology, golden signals, tap.
    Dashboard(dashboard::Args),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Install(args) => install::run(args),
        Command::Check(args) => match check::run(args) {
            Ok(true) => Ok(()),
            Ok(false) => return ExitCode::FAILURE,
            Err(e) => Err(e),
        },
        Command::Identity(args) => identity::run(args),
        Command::Token(args) => token::run(args),
        Command::Demo(args) => demo::run(args),
        Command::Inject(args) => inject::run(args),
        Command::Uninject(args) => inject::run_uninject(args),
        Command::Stat(args) => stat::run(args),
        Command::Authz(args) => authz::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Top(args) => top::run(args),
        Command::Edges(args) => edges::run(args),
        Command::Dashboard(args) => dashboard::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mesh: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn parses_subcommands() {
        let cli = Cli::try_parse_from(["mesh", "identity", "init", "/tmp/x", "--force"]).unwrap();
        assert!(matches!(cli.command, Command::Identity(_)));
        let cli = Cli::try_parse_from([
            "mesh",
            "token",
            "--namespace",
            "default",
            "--service-account",
            "web",
            "--ttl",
            "1h",
        ])
        .unwrap();
        assert!(matches!(cli.command, Command::Token(_)));
        assert!(Cli::try_parse_from(["mesh", "token", "--namespace", "default"]).is_err());
        let cli = Cli::try_parse_from(["mesh", "inject", "-", "--proxy-image", "p:1"]).unwrap();
        assert!(matches!(cli.command, Command::Inject(ref a) if a.config().init_image == "p:1"));
        let cli = Cli::try_parse_from(["mesh", "install", "--ha", "--crds"]).unwrap();
        assert!(matches!(cli.command, Command::Install(ref a) if a.ha && a.crds));
        let cli = Cli::try_parse_from(["mesh", "uninject", "a.yaml", "b.yaml"]).unwrap();
        assert!(matches!(cli.command, Command::Uninject(ref a) if a.files.len() == 2));
        let cli = Cli::try_parse_from([
            "mesh", "stat", "deploy", "api", "-n", "demo", "-t", "1m", "-o", "wide",
        ])
        .unwrap();
        assert!(
            matches!(cli.command, Command::Stat(ref a) if a.window == "1m" && a.output == "wide")
        );
        assert!(Cli::try_parse_from(["mesh", "stat", "deploy", "-o", "yaml"]).is_err());
        assert!(Cli::try_parse_from([
            "mesh",
            "token",
            "--namespace",
            "a",
            "--service-account",
            "b",
            "--ttl",
            "forever"
        ])
        .is_err());
    }
}
